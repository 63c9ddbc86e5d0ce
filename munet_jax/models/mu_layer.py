"""Motion Uncertainty-aware Layer (MU-Layer, Sec. 3.2 of the paper).

  F_{t-1}, F_t [B, H, W, D] (Enc-Q res4)
    -> shared 1x1 conv D -> D / reduction (linear, no activation)
    -> cosine cost volume over a window x window search grid (Eq. 1)
    -> soft-argmin displacement (dx, dy) [B, H, W, 2] and max-cost
       uncertainty U [B, H, W, 1] (Eq. 2)
    -> motion network of Table 1 on [dx, dy, U] (3 channels) -> F_m [B, H, W, D]

The cost volume, softmax and max run in float32 (see `cost_volume.py`); the
convolutions run in `dtype` with float32 parameters.

Ablations (Table 4): `use_uncertainty=False` is row (d) (displacement only;
rows c/e feed both); `use_displacement=False` (uncertainty only) is an extra
ablation the paper does not report. A switched-off input is replaced by zeros
in the motion network's input [B, H, W, 3] = (dx, dy, U), so the network keeps
Table 1's 3 input channels and parameter shapes whatever the switches, and
checkpoints stay interchangeable between ablations. The displacement and
uncertainty maps returned for visualisation are always the computed ones.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from munet_jax.models import conv_grad
from munet_jax.models.cost_volume import cost_volume, soft_argmin, uncertainty_map


class MotionNet(nn.Module):
    """Table 1: 'same'-size stride-1 convolutions, ReLU after all but the last.

    layers: (out_channels, kernel) of Table 1's layers 1..7; out_features: the
    1x1 layer 8 (D). [B, H, W, 3] -> [B, H, W, out_features].
    """

    layers: Sequence[tuple[int, int]]
    out_features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        specs = [tuple(layer) for layer in self.layers] + [(self.out_features, 1)]
        for i, (features, kernel) in enumerate(specs):
            if kernel < 1 or kernel % 2 == 0:
                raise ValueError(
                    f"motion net layer {i + 1}: kernel={kernel}; 'same'-size padding k // 2 needs an odd kernel "
                    "(Table 1 uses 7, 3 and 1)"
                )
            pad = kernel // 2
            x = nn.Conv(
                features,
                (kernel, kernel),
                strides=(1, 1),
                padding=((pad, pad), (pad, pad)),
                dtype=self.dtype,
                conv_general_dilated=conv_grad.conv_general_dilated,
                name=f"conv{i + 1}",
            )(x)
            if i < len(specs) - 1:
                x = nn.relu(x)
        return x


class MotionUncertaintyLayer(nn.Module):
    """The MU-Layer. `__call__(f_prev, f_cur)` with F_{t-1}, F_t [B, H, W, D] returns

    {'motion': F_m [B, H, W, D] in `dtype`,
     'displacement': (dx, dy) [B, H, W, 2] float32, feature-map pixels,
     'uncertainty': U [B, H, W, 1] float32 in [-1, 1]}.

    The returned displacement and uncertainty are the real values even when an
    ablation switch hides them from the motion network. The motion network's
    input [B, H, W, 3] = (dx, dy, U) after the switches is sown as
    ('intermediates', 'motion_input') for inspection (a no-op unless that
    collection is mutable).
    """

    window: int
    reduction: int
    tau: float
    motion_net: Sequence[tuple[int, int]]
    use_displacement: bool = True
    use_uncertainty: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, f_prev: jax.Array, f_cur: jax.Array) -> dict[str, jax.Array]:
        if f_prev.ndim != 4 or f_prev.shape != f_cur.shape:
            raise ValueError(
                f"MotionUncertaintyLayer needs F_(t-1) and F_t of one shape [B, H, W, D]; got {f_prev.shape} "
                f"and {f_cur.shape}: pass the res4 features of two frames of the same size"
            )
        d = f_cur.shape[-1]
        if self.reduction < 1 or d % self.reduction:
            raise ValueError(
                f"reduction={self.reduction} must be a positive divisor of the feature dimension D={d} "
                "(the paper reduces 1024 -> 256 with reduction 4)"
            )
        # One 1x1 conv shared by both frames, so both live in the same matching space.
        reduce = nn.Conv(d // self.reduction, (1, 1), dtype=self.dtype, name="reduce",
                         conv_general_dilated=conv_grad.conv_general_dilated)
        cost, valid = cost_volume(reduce(f_cur), reduce(f_prev), self.window)  # [B, H, W, window^2]
        displacement = soft_argmin(cost, valid, self.window, self.tau)  # [B, H, W, 2] float32
        uncertainty = uncertainty_map(cost, valid)  # [B, H, W, 1] float32

        # Ablations zero the hidden channels instead of dropping them (Table 1's shapes stay).
        disp_in = displacement if self.use_displacement else jnp.zeros_like(displacement)
        unc_in = uncertainty if self.use_uncertainty else jnp.zeros_like(uncertainty)
        motion_input = jnp.concatenate([disp_in, unc_in], axis=-1)  # [B, H, W, 3]
        self.sow("intermediates", "motion_input", motion_input)
        motion = MotionNet(layers=self.motion_net, out_features=d, dtype=self.dtype, name="motion_net")(
            motion_input.astype(self.dtype)
        )
        return {"motion": motion, "displacement": displacement, "uncertainty": uncertainty}
