"""STM's decoder: memory-read features at stride 16 -> 2-class logits at stride 1.

    x [B, h, w, 2Cv] --conv3x3--> dim --ResBlock--> m4              (stride 16)
    Refine(res3 [B, 2h, 2w, C3], m4) -> m3                           (stride 8)
    Refine(res2 [B, 4h, 4w, C2], m3) -> m2                           (stride 4)
    conv3x3(relu(m2)) -> 2 channels, 4x bilinear upsampling -> [B, 16h, 16w, 2]

Refine(skip, coarse) = ResBlock(ResBlock(conv3x3(skip)) + up2(coarse)).

Objects share the query frame's skips: with K objects folded into the batch of
x ([B*K, ...], object-major within each frame), res3 / res2 may be given once
per frame ([B, ...]); the skip branch ResBlock(conv3x3(skip)) then runs once
per frame instead of once per object (STM's code reruns it per object: at 480p
it is 115 of the decoder's 210 GFLOP per object) and is repeated over the K
objects before the merge. Passing [B*K, ...] skips works too.

`conv_algorithm` chooses how the 3x3 convs run: 'direct' (lax.conv), 'winograd'
(F(4x4, 3x3), `munet_jax.models.winograd`) or 'auto' (Winograd on XLA:CPU for
float32 and 128+ channels: on maps of 64x64 and more, i.e. the stride-4 and
stride-8 stages at 480p, or, with prepared kernels, 64+ channels on every map
of 16x16 and more; direct everywhere else). Same parameters either way.

All upsampling is bilinear with half-pixel centres, PyTorch's
`F.interpolate(..., mode='bilinear', align_corners=False)`: output pixel x
samples input coordinate (x + 0.5) / s - 0.5, clamped at the border.
`jax.image.resize(..., 'bilinear')` computes the same when upsampling (its
triangle kernel has no antialiasing effect for scale >= 1, and the kernel
weights are renormalised at the border, which equals PyTorch's clamp);
`upsample_bilinear` computes it as a stencil, much faster on CPU;
tests/test_decoder.py checks it against the formula and against resize.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from munet_jax.models import winograd


def _conv3x3(features: int, dtype: Any, name: str, algorithm: str = "direct") -> winograd.Conv3x3:
    """PyTorch `Conv2d(c, features, 3, padding=1)` with bias: keeps H, W (flax nn.Conv's parameters)."""
    return winograd.Conv3x3(features, dtype=dtype, algorithm=algorithm, name=name)


def upsample_bilinear(x: jax.Array, factor: int) -> jax.Array:
    """[B, H, W, C] -> [B, factor*H, factor*W, C], half-pixel centres (align_corners=False).

    The same numbers as `jax.image.resize(x, ..., 'bilinear')` (module docstring), computed as
    a stencil: along each axis, output pixel factor*i + r is a two-term weighted sum of input
    pixels i and i -/+ 1 (the border pixel repeated), in float32 (float64 for float64 x),
    rounded once to x's dtype.
    resize runs the interpolation as products with [factor*n, n] weight matrices; alone,
    bfloat16, Xeon with AMX, 2x of 60x108x256 (the 480p decoder's refine2): 50 -> 6 ms; 6 x
    50x50x256 (training): 78 -> 16 ms; float32 60x108x256 32 -> 9 ms. Whole programs, interleaved
    (2026-12-07, the machine ~40% slower than in that day's results file): bfloat16 480p decoder
    571 -> 526 ms, frame 1313 -> 1246 ms, 240x432 frame 343 -> 323 ms; float32 480p frame 1808
    -> 1770 ms; the bfloat16 training step (6 x 400x400) 27.0 / 27.4 s, unchanged.
    """
    if factor < 1 or int(factor) != factor:
        raise ValueError(f"upsample_bilinear: factor must be a positive integer, got {factor!r}")
    compute = jnp.promote_types(x.dtype, jnp.float32)  # float32, or float64 with jax_enable_x64
    y = _upsample_axis(x.astype(compute), int(factor), axis=1)
    return _upsample_axis(y, int(factor), axis=2).astype(x.dtype)


def _upsample_axis(x: jax.Array, factor: int, axis: int) -> jax.Array:
    """Bilinear upsampling of x (float32 or float64) along `axis` by `factor`: [.., n, ..] -> [.., factor*n, ..].

    Output pixel factor*i + r samples input coordinate i + d, d = (r + 0.5) / factor - 0.5
    (|d| < 0.5): (1 - |d|) x[i] + |d| x[i - 1] for d < 0, x[i + 1] for d > 0, the border pixel
    standing in for x[-1] and x[n] (PyTorch's clamp; resize's renormalised border weights).
    """
    n = x.shape[axis]
    head = lax.slice_in_dim(x, 0, 1, axis=axis)
    tail = lax.slice_in_dim(x, n - 1, n, axis=axis)
    before = jnp.concatenate([head, lax.slice_in_dim(x, 0, n - 1, axis=axis)], axis)  # x[i - 1]
    after = jnp.concatenate([lax.slice_in_dim(x, 1, n, axis=axis), tail], axis)  # x[i + 1]
    phases = []
    for r in range(factor):
        d = (r + 0.5) / factor - 0.5
        phases.append((1 + d) * x - d * before if d < 0 else (1 - d) * x + d * after)
    y = jnp.stack(phases, axis + 1)  # [.., n, factor, ..]: row i's phases side by side
    return y.reshape(x.shape[:axis] + (factor * n,) + x.shape[axis + 1:])


class ResBlock(nn.Module):
    """x + conv(relu(conv(relu(x)))), 3x3 convs; a 3x3 projection of x when channels change (as STM)."""

    dim: int
    dtype: Any = jnp.float32
    conv_algorithm: str = "direct"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        r = _conv3x3(self.dim, self.dtype, "conv1", self.conv_algorithm)(nn.relu(x))
        r = _conv3x3(self.dim, self.dtype, "conv2", self.conv_algorithm)(nn.relu(r))
        if x.shape[-1] != self.dim:
            x = _conv3x3(self.dim, self.dtype, "downsample", self.conv_algorithm)(x)
        return x + r


class Refine(nn.Module):
    """Merges a skip feature [B, 2h, 2w, Cs] with the coarser map [B*K, h, w, dim] -> [B*K, 2h, 2w, dim].

    The skip branch runs on the B frames and is repeated for their K objects.
    """

    dim: int
    dtype: Any = jnp.float32
    conv_algorithm: str = "direct"

    @nn.compact
    def __call__(self, skip: jax.Array, coarse: jax.Array) -> jax.Array:
        conv = _conv3x3(self.dim, self.dtype, "conv_skip", self.conv_algorithm)
        s = ResBlock(self.dim, self.dtype, self.conv_algorithm, name="res_skip")(conv(skip))  # [B, 2h, 2w, dim]
        k = coarse.shape[0] // skip.shape[0]
        if k > 1:  # [B, ...] -> [B, K, ...] -> [B*K, ...]: frame b's objects are rows b*K .. b*K+K-1
            s = jnp.broadcast_to(s[:, None], (s.shape[0], k) + s.shape[1:]).reshape((-1,) + s.shape[1:])
        m = s + upsample_bilinear(coarse, 2).astype(s.dtype)
        return ResBlock(self.dim, self.dtype, self.conv_algorithm, name="res_merge")(m)


class Decoder(nn.Module):
    """x [B*K, h, w, 2Cv], res3 [B, 2h, 2w, C3], res2 [B, 4h, 4w, C2] -> logits [B*K, 16h, 16w, 2].

    K objects per frame (rows b*K .. b*K+K-1 of x belong to frame b; K = 1 when
    x and the skips have the same batch). Channel 0 is background, 1 foreground,
    of one object; float32 whatever `dtype` (the last upsampling and everything
    after it run in float32).
    """

    dim: int = 256
    dtype: Any = jnp.float32
    conv_algorithm: str = "direct"  # 'direct', 'winograd' or 'auto' (module docstring)

    @nn.compact
    def __call__(self, x: jax.Array, res3: jax.Array, res2: jax.Array) -> jax.Array:
        if x.ndim != 4 or res3.ndim != 4 or res2.ndim != 4:
            raise ValueError(f"Decoder inputs must be [B, H, W, C]; got {x.shape}, {res3.shape}, {res2.shape}")
        bk, h, w = x.shape[:3]
        b = res3.shape[0]
        if b == 0 or bk % b or res2.shape[0] != b:
            raise ValueError(
                f"Decoder: x has batch {bk} (frames x objects) but res3 {res3.shape[0]} and res2 {res2.shape[0]} "
                "frames: the skips need one entry per frame (or per object), the same for both"
            )
        if res3.shape[1:3] != (2 * h, 2 * w) or res2.shape[1:3] != (4 * h, 4 * w):
            raise ValueError(
                f"Decoder: res3 {res3.shape[1:3]} must be [2h, 2w] = {(2 * h, 2 * w)} and res2 "
                f"{res2.shape[1:3]} must be [4h, 4w] = {(4 * h, 4 * w)} for x {x.shape[1:3]}; "
                "pad the input image to a multiple of 16 (munet.pad_spatial)"
            )
        algo = self.conv_algorithm
        m4 = ResBlock(self.dim, self.dtype, algo, name="res_read")(_conv3x3(self.dim, self.dtype, "conv_read", algo)(x))
        m3 = Refine(self.dim, self.dtype, algo, name="refine3")(res3, m4)  # [B*K, 2h, 2w, dim]
        m2 = Refine(self.dim, self.dtype, algo, name="refine2")(res2, m3)  # [B*K, 4h, 4w, dim]
        p2 = _conv3x3(2, self.dtype, "pred", algo)(nn.relu(m2))  # [B*K, 4h, 4w, 2]
        return upsample_bilinear(p2.astype(jnp.float32), 4)
