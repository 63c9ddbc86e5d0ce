"""STM's decoder: memory-read features at stride 16 -> 2-class logits at stride 1.

    x [B, h, w, 2Cv] --conv3x3--> dim --ResBlock--> m4              (stride 16)
    Refine(res3 [B, 2h, 2w, C3], m4) -> m3                           (stride 8)
    Refine(res2 [B, 4h, 4w, C2], m3) -> m2                           (stride 4)
    conv3x3(relu(m2)) -> 2 channels, 4x bilinear upsampling -> [B, 16h, 16w, 2]

Refine(skip, coarse) = ResBlock(ResBlock(conv3x3(skip)) + up2(coarse)).

All upsampling is bilinear with half-pixel centres, PyTorch's
`F.interpolate(..., mode='bilinear', align_corners=False)`: output pixel x
samples input coordinate (x + 0.5) / s - 0.5, clamped at the border.
`jax.image.resize(..., 'bilinear')` computes exactly this when upsampling (its
triangle kernel has no antialiasing effect for scale >= 1, and the kernel
weights are renormalised at the border, which equals PyTorch's clamp);
tests/test_decoder.py checks it against the formula.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def _conv3x3(features: int, dtype: Any, name: str) -> nn.Conv:
    """PyTorch `Conv2d(c, features, 3, padding=1)` with bias: keeps H, W."""
    return nn.Conv(
        features,
        kernel_size=(3, 3),
        padding=((1, 1), (1, 1)),
        use_bias=True,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


def upsample_bilinear(x: jax.Array, factor: int) -> jax.Array:
    """[B, H, W, C] -> [B, factor*H, factor*W, C], half-pixel centres (align_corners=False)."""
    b, h, w, c = x.shape
    return jax.image.resize(x, (b, factor * h, factor * w, c), method="bilinear")


class ResBlock(nn.Module):
    """x + conv(relu(conv(relu(x)))), 3x3 convs; a 3x3 projection of x when channels change (as STM)."""

    dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        r = _conv3x3(self.dim, self.dtype, "conv1")(nn.relu(x))
        r = _conv3x3(self.dim, self.dtype, "conv2")(nn.relu(r))
        if x.shape[-1] != self.dim:
            x = _conv3x3(self.dim, self.dtype, "downsample")(x)
        return x + r


class Refine(nn.Module):
    """Merges a skip feature [B, 2h, 2w, Cs] with the coarser map [B, h, w, dim] -> [B, 2h, 2w, dim]."""

    dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, skip: jax.Array, coarse: jax.Array) -> jax.Array:
        s = ResBlock(self.dim, self.dtype, name="res_skip")(_conv3x3(self.dim, self.dtype, "conv_skip")(skip))
        m = s + upsample_bilinear(coarse, 2).astype(s.dtype)
        return ResBlock(self.dim, self.dtype, name="res_merge")(m)


class Decoder(nn.Module):
    """x [B, h, w, 2Cv], res3 [B, 2h, 2w, C3], res2 [B, 4h, 4w, C2] -> logits [B, 16h, 16w, 2].

    Channel 0 is background, 1 foreground, of one object; float32 whatever
    `dtype` (the last upsampling and everything after it run in float32).
    """

    dim: int = 256
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, res3: jax.Array, res2: jax.Array) -> jax.Array:
        if x.ndim != 4 or res3.ndim != 4 or res2.ndim != 4:
            raise ValueError(f"Decoder inputs must be [B, H, W, C]; got {x.shape}, {res3.shape}, {res2.shape}")
        b, h, w = x.shape[:3]
        if res3.shape[:3] != (b, 2 * h, 2 * w) or res2.shape[:3] != (b, 4 * h, 4 * w):
            raise ValueError(
                f"Decoder: res3 {res3.shape[:3]} must be [B, 2h, 2w] = {(b, 2 * h, 2 * w)} and res2 "
                f"{res2.shape[:3]} must be [B, 4h, 4w] = {(b, 4 * h, 4 * w)} for x {x.shape[:3]}; "
                "pad the input image to a multiple of 16 (munet.pad_spatial)"
            )
        m4 = ResBlock(self.dim, self.dtype, name="res_read")(_conv3x3(self.dim, self.dtype, "conv_read")(x))
        m3 = Refine(self.dim, self.dtype, name="refine3")(res3, m4)  # [B, 2h, 2w, dim]
        m2 = Refine(self.dim, self.dtype, name="refine2")(res2, m3)  # [B, 4h, 4w, dim]
        p2 = _conv3x3(2, self.dtype, "pred")(nn.relu(m2))  # [B, 4h, 4w, 2]
        return upsample_bilinear(p2.astype(jnp.float32), 4)
