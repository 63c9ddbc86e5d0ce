"""ResNet-50 encoder (Enc-Q, Enc-R) up to res4, laid out exactly like torchvision.

torchvision's `resnet50` is ResNet v1.5: in each bottleneck the stride sits on
the 3x3 conv (conv2), and the first block of every stage has a projection
shortcut (1x1 conv with the block's stride + BN). Only the stem and layer1..3
are built (res2/res3/res4, strides 4/8/16); layer4 and fc are not used by MUNet.

Submodule names mirror torchvision's state-dict keys so that the weight import
in `munet_jax.pretrained` is a table, not guesswork:

    torchvision key                     this module's path
    conv1.weight                        conv1/kernel
    bn1.{weight,bias}                   bn1/{scale,bias}          ('params')
    bn1.{running_mean,running_var}      bn1/{mean,var}            ('batch_stats')
    layer2.0.conv2.weight               layer2_0/conv2/kernel
    layer2.0.downsample.0.weight        layer2_0/downsample_conv/kernel
    layer2.0.downsample.1.*             layer2_0/downsample_bn/*

BatchNorm is frozen (as in STM): it always normalises with the running
statistics in the `batch_stats` collection and never updates them, so `apply`
needs no `mutable=` and train/eval behave alike. The affine scale/bias stay in
`params` and are trainable, like PyTorch's eval-mode BN affine.

Spatial sizes follow PyTorch's floor formula with symmetric explicit padding:
every stride-2 op (7x7/2 pad 3 conv, 3x3/2 pad 1 max-pool, 3x3/2 pad 1 conv,
1x1/2 pad 0 conv) maps n -> floor((n - 1) / 2) + 1 = ceil(n / 2), so
res2 = ceil(ceil(H / 2) / 2) = ceil(H / 4), res3 = ceil(H / 8), res4 = ceil(H / 16).
'SAME' padding would pad (0, 1) instead of (1, 1) on even sizes and shift the
sampling grid by one pixel relative to the PyTorch weights.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from munet_jax.models import conv_grad, winograd
from munet_jax.models.affine import channel_affine
from munet_jax.models.max_pool import max_pool_3x3_s2  # the stem's pool (custom gradient on CPU)

BN_EPSILON = 1e-5  # torch.nn.BatchNorm2d / torchvision FrozenBatchNorm2d default
EXPANSION = 4  # bottleneck output channels = EXPANSION * planes

# torchvision initialises convs with kaiming_normal_(mode='fan_out', nonlinearity='relu').
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(features: int, kernel: int, stride: int, dtype: Any, name: str) -> nn.Conv:
    """Bias-free conv with PyTorch's symmetric padding kernel // 2."""
    pad = kernel // 2
    return nn.Conv(
        features,
        kernel_size=(kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=_conv_init,
        conv_general_dilated=conv_grad.conv_general_dilated,  # kernel gradients as GEMMs on CPU
        name=name,
    )


NORMS = ("frozen_bn", "group_norm")


def _norm(kind: str, dtype: Any, name: str) -> nn.Module:
    """The encoder's normalisation layer at a BatchNorm position.

    'frozen_bn': BatchNorm that always uses (and never updates) the running statistics
    in `batch_stats` (STM; what ImageNet weights need). 'group_norm': GroupNorm with 32
    groups (fewer on narrow layers: one per channel below 32 channels), no running
    statistics; for training from random weights, where frozen BN with its initial
    statistics (mean 0, var 1) normalises nothing.
    """
    if kind == "frozen_bn":
        return FrozenBatchNorm(dtype=dtype, name=name)
    if kind == "group_norm":
        return _GroupNorm32(dtype=dtype, name=name)
    raise ValueError(f"backbone.norm={kind!r}: expected one of {NORMS}")


class FrozenBatchNorm(nn.Module):
    """BatchNorm with frozen statistics as one affine map, torchvision FrozenBatchNorm2d's form.

        a = scale * rsqrt(var + eps),  b = bias - mean * a     [C] float32
        y = x * a + b                                          [B, H, W, C] -> same, `dtype`

    Variables exactly as `nn.BatchNorm(use_running_average=True)`: params {scale (1),
    bias (0)}, batch_stats {mean (0), var (1)}, float32, so checkpoints and the
    torchvision import are unchanged; its outputs agree to float32 rounding. Why not
    flax's (x - mean) * a + bias: in training the scale's gradient then needs x - mean,
    which XLA materialises as one more full-size activation per BN (1.9 s and memory of
    the 36 s CPU training step); with x * a + b it is sum(g * x) - mean * sum(g) on the
    conv output that is kept anyway (`channel_affine`: in bfloat16 on CPU those two sums
    run over float32 values, 2-4x faster there and without bfloat16's stalled sums). Statistics
    are read, never written (no `mutable=`).
    """

    dtype: Any = jnp.float32
    epsilon: float = BN_EPSILON

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = (x.shape[-1],)
        mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32).value
        var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32).value
        scale = self.param("scale", nn.initializers.ones, features, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
        a = scale * jax.lax.rsqrt(var + self.epsilon)  # [C]
        b = bias - mean * a  # [C]
        return channel_affine(x.astype(self.dtype), a, b)  # bfloat16 on CPU: float32 gradient sums


class _GroupNorm32(nn.Module):
    """GroupNorm with min(32, C) groups; scale/bias named like BN's affine. [B, H, W, C] -> same."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        groups = min(32, x.shape[-1])
        while x.shape[-1] % groups:  # channel counts that 32 does not divide
            groups -= 1
        return nn.GroupNorm(num_groups=groups, epsilon=BN_EPSILON, dtype=self.dtype, param_dtype=jnp.float32,
                            name="gn")(x)


class Bottleneck(nn.Module):
    """torchvision `Bottleneck` (v1.5): 1x1 -> 3x3 (stride) -> 1x1 (x4), residual, ReLU.

    [B, H, W, C_in] -> [B, ceil(H / stride), ceil(W / stride), EXPANSION * planes].
    """

    planes: int
    stride: int = 1
    downsample: bool = False  # projection shortcut (first block of each stage)
    dtype: Any = jnp.float32
    norm: str = "frozen_bn"  # see _norm
    conv_algorithm: str = "direct"  # how the stride-1 3x3 conv runs (munet_jax.models.winograd.Conv3x3)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        identity = x
        y = _conv(self.planes, 1, 1, self.dtype, "conv1")(x)
        y = nn.relu(_norm(self.norm, self.dtype, "bn1")(y))
        # The same parameter as _conv(planes, 3, stride) (bias-free, padding 1), Winograd-capable.
        y = winograd.Conv3x3(self.planes, strides=self.stride, use_bias=False, dtype=self.dtype,
                             kernel_init=_conv_init, algorithm=self.conv_algorithm, name="conv2")(y)
        y = nn.relu(_norm(self.norm, self.dtype, "bn2")(y))
        y = _conv(EXPANSION * self.planes, 1, 1, self.dtype, "conv3")(y)
        y = _norm(self.norm, self.dtype, "bn3")(y)
        if self.downsample:
            identity = _conv(EXPANSION * self.planes, 1, self.stride, self.dtype, "downsample_conv")(x)
            identity = _norm(self.norm, self.dtype, "downsample_bn")(identity)
        return nn.relu(y + identity)


class ResNetEncoder(nn.Module):
    """torchvision ResNet stem + layer1..layer(len(stage_sizes)), returning each stage's output.

    x: [B, H, W, C] float, already ImageNet-normalised (C = 3 for Enc-Q; 4 for
    Enc-R: RGB then the mask channel). Returns, with w = width,
      {'res2': [B, ceil(H/4),  ceil(W/4),  4 w],
       'res3': [B, ceil(H/8),  ceil(W/8),  8 w],
       'res4': [B, ceil(H/16), ceil(W/16), 16 w]}
    (for the default 3 stages; stage k > 1 halves the resolution and doubles planes).
    """

    stage_sizes: Sequence[int] = (3, 4, 6)  # ResNet-50 layer1..layer3
    width: int = 64
    dtype: Any = jnp.float32  # compute dtype; parameters and statistics stay float32
    norm: str = "frozen_bn"  # 'frozen_bn' (ImageNet weights) or 'group_norm' (from scratch), see _norm
    conv_algorithm: str = "direct"  # the bottlenecks' 3x3 convs (munet_jax.models.winograd.Conv3x3)

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        if x.ndim != 4:
            raise ValueError(f"ResNetEncoder expects [B, H, W, C] input, got shape {x.shape}")
        x = x.astype(self.dtype)
        x = _conv(self.width, 7, 2, self.dtype, "conv1")(x)  # [B, H/2, W/2, w]
        x = nn.relu(_norm(self.norm, self.dtype, "bn1")(x))
        x = max_pool_3x3_s2(x)  # [B, H/4, W/4, w]
        features = {}
        for stage, num_blocks in enumerate(self.stage_sizes):
            planes = self.width * 2**stage
            for block in range(num_blocks):
                first = block == 0
                x = Bottleneck(
                    planes=planes,
                    # layer1 keeps stride 4 (the max-pool already halved); later stages halve.
                    stride=2 if (first and stage > 0) else 1,
                    # torchvision adds a projection when stride != 1 or channels change:
                    # always true on a stage's first block, never after.
                    downsample=first,
                    dtype=self.dtype,
                    norm=self.norm,
                    conv_algorithm=self.conv_algorithm,
                    name=f"layer{stage + 1}_{block}",
                )(x)
            features[f"res{stage + 2}"] = x  # res2 = layer1, res3 = layer2, res4 = layer3
        return features
