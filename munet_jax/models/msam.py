"""Fusion of the semantic feature F_s and the motion feature F_m (Sec. 3.3).

`MotionAwareSpatialAttention` (MSAM, Eq. 3, Table 4 g):
    A = sigmoid(Conv1x1_{D -> 1}(F_m))        [B, H, W, 1]
    F_out = F_s * A + F_s                      [B, H, W, D] (A broadcast over D)
`AdditionFusion` (Table 4 f): F_out = F_s + F_m, no parameters.

Both return (F_out, attention); attention is the map of the paper's Fig. 7
(float32) for MSAM and None for addition.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from munet_jax.models import conv_grad

FUSIONS = ("attention", "add")


def _check_shapes(f_s: jax.Array, f_m: jax.Array, name: str) -> None:
    if f_s.ndim != 4 or f_s.shape != f_m.shape:
        raise ValueError(
            f"{name} needs F_s and F_m of one shape [B, H, W, D]; got {f_s.shape} and {f_m.shape}: "
            "the MU-Layer's motion_net.out_features must equal the res4 channels D"
        )


class MotionAwareSpatialAttention(nn.Module):
    """MSAM, Eq. 3. `__call__(f_s, f_m)` -> (F_out [B, H, W, D], attention [B, H, W, 1] float32)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, f_s: jax.Array, f_m: jax.Array) -> tuple[jax.Array, jax.Array]:
        _check_shapes(f_s, f_m, "MotionAwareSpatialAttention")
        logits = nn.Conv(1, (1, 1), dtype=self.dtype, name="attention_conv",
                         conv_general_dilated=conv_grad.conv_general_dilated)(f_m)  # [B, H, W, 1]
        attention = jax.nn.sigmoid(logits.astype(jnp.float32))
        f_s = f_s.astype(self.dtype)
        return f_s * attention.astype(self.dtype) + f_s, attention


class AdditionFusion(nn.Module):
    """Table 4 (f): F_out = F_s + F_m. `__call__(f_s, f_m)` -> (F_out, None)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, f_s: jax.Array, f_m: jax.Array) -> tuple[jax.Array, None]:
        _check_shapes(f_s, f_m, "AdditionFusion")
        return f_s.astype(self.dtype) + f_m.astype(self.dtype), None


def make_fusion(kind: str, dtype: Any = jnp.float32) -> nn.Module:
    """`config.fusion` -> the fusion module: 'attention' (MSAM) or 'add'."""
    if kind == "attention":
        return MotionAwareSpatialAttention(dtype=dtype)
    if kind == "add":
        return AdditionFusion(dtype=dtype)
    raise ValueError(f"fusion={kind!r}: choose one of {FUSIONS} ('attention' is MSAM, Eq. 3; 'add' is Table 4 f)")
