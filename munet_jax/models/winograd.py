"""Winograd F(4x4, 3x3) convolution: MUNet's wide 3x3 convs with 4x fewer multiplications on CPU.

A 3x3 stride-1 conv with padding 1 computes each 4x4 output tile from a 6x6
input tile. Winograd's minimal filtering (Lavin & Gray, "Fast Algorithms for
Convolutional Neural Networks", 2016; interpolation points 0, +-1, +-2, inf)
writes it as

    Y = A^T [ (G g G^T) * (B^T d B) ] A        (* elementwise over the 6x6 tile)

so that the channel contraction becomes 36 independent GEMMs
[tiles, C_in] x [C_in, C_out] with 36 / (16 * 9) = 1 / 4 of the direct
conv's multiply-adds; the transforms are cheap linear combinations.

Why it is here: on XLA:CPU the decoder's stride-4 convs (256 -> 256 channels
at 120x216 for a 480p frame, 153 of a frame's ~377 GFLOP) run as direct
convs near the CPU's GEMM ceiling, so only fewer FLOPs make them faster
(measured: 120x216, 256 -> 256, 2-core AMD EPYC: direct 213 ms, this 114 ms).
GPU and TPU conv libraries choose Winograd / implicit-GEMM algorithms
themselves, so `auto` uses it on the CPU backend only. `Conv3x3` (flax
`nn.Conv`'s parameters) is the module the encoders' bottlenecks, the key/value
convs and the decoder use; `model.conv3x3` chooses the algorithm.

Prepared kernels: the kernel transform U = G g G^T is a function of the
parameters alone. For inference, where the parameters do not change from frame
to frame, `Conv3x3` can take U from the variable collection `PREPARED`
(filled once by `munet_jax.models.munet.prepared_kernels`, which
`InferenceEngine.prepare` calls) instead
of recomputing it on every call: at stride 16 (30x54 at 480p) the 1024 -> 640
key/value conv then runs in 62 ms instead of 150-190 ms direct (measured, the
same CPU), and Winograd wins on every map of 16x16 or more with 64+ channels.

Precision: float32 results differ from the direct conv by ~2e-5 of the output's
largest magnitude (the transforms' rounding); always computed in float32.

The output is computed in horizontal strips of tile rows so that each strip's
transformed tiles (36 / 16 = 2.25x the input strip) stay in cache between the
transforms and the GEMMs.

    conv3x3(x [B, H, W, C], kernel [3, 3, C, K]) -> [B, H, W, K]    (padding 1, stride 1)
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from munet_jax.models import conv_grad
from munet_jax.models.affine import add_bias
from munet_jax.models.tap_matmuls import conv3x3_tap_matmuls, lax_conv3x3 as _lax_conv3x3

TILE = 4  # output tile side m
ALPHA = TILE + 2  # input tile side m + r - 1

# F(4, 3) with points 0, 1, -1, 2, -2, inf.
B_T = np.array(
    [[4, 0, -5, 0, 1, 0],
     [0, -4, -4, 1, 1, 0],
     [0, 4, -4, -1, 1, 0],
     [0, -2, -1, 2, 1, 0],
     [0, 2, -1, -2, 1, 0],
     [0, 4, 0, -5, 0, 1]], np.float64)  # [6, 6]: input tile transform
G = np.array(
    [[1 / 4, 0, 0],
     [-1 / 6, -1 / 6, -1 / 6],
     [-1 / 6, 1 / 6, -1 / 6],
     [1 / 24, 1 / 12, 1 / 6],
     [1 / 24, -1 / 12, 1 / 6],
     [0, 0, 1]], np.float64)  # [6, 3]: kernel transform
A_T = np.array(
    [[1, 1, 1, 1, 1, 0],
     [0, 1, -1, 2, -2, 0],
     [0, 1, 1, 4, 4, 0],
     [0, 1, -1, 8, -8, 1]], np.float64)  # [4, 6]: output tile transform

# Transformed tiles per strip, in bytes: ~8 MB keeps a strip's tiles in this CPU's
# 32 MB L3 between the input transform, the GEMM and the output transform.
STRIP_BYTES = 8 * 2**20

# `auto`: only where Winograd wins on XLA:CPU (measured, 2-core AMD EPYC). With the
# kernel transformed on every call: 128 channels in and out and a map of at least
# 64x64 output pixels (stride 4 of a 480p frame is 120x216). With a prepared kernel:
# 64 channels and a map of 16x16 (16x28, 1024 -> 640: 25 ms vs 60 ms direct;
# 120x216, 64 -> 64: 12.9 vs 14.9 ms; at 8x8 the two are equal).
AUTO_MIN_PIXELS = 64 * 64
AUTO_MIN_CHANNELS = 128
PREPARED_MIN_PIXELS = 16 * 16
PREPARED_MIN_CHANNELS = 64
# Compute dtypes that `auto` runs as Winograd (in float32, the result cast back). For
# bfloat16 too: XLA:CPU's bfloat16 direct conv is slower than its float32 one (no AMX
# path: 184 against 273 GFLOP/s, 3x3 256 -> 256 at 120x216 on a Xeon with AMX), and the
# float32 Winograd conv beats both (76 ms against 129 ms for the bfloat16 direct conv).
# Winograd's GEMMs themselves in bfloat16 were 1.6x faster but 7% of the output's largest
# magnitude off (F(4x4, 3x3)'s transforms amplify bfloat16's rounding): not done.
AUTO_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
# bfloat16 on XLA:CPU, maps of at most this many pixels: `auto` runs the conv as 9 bfloat16
# matrix products (`conv3x3_tap_matmuls`, on the CPU's matrix units) instead of Winograd,
# whose prepared kernel (36 / 9 = 4x the kernel, float32) is then read from memory for too
# few tiles. Measured alone on a Xeon with AMX, 3x3 1024 -> 640 (the key/value convs): 15x27
# 6.8 against 15.7 ms, 30x54 37.8 against 46.4 ms; 256 -> 256 at 30x54 5.2 against 4.8 ms;
# 128 -> 128 at 60x108 6.7 against 5.6 ms; 256 -> 256 at 120x216 113 against 76 ms. In the
# whole bfloat16 frame (interleaved): 240x432 329-336 -> 275 ms with 2048 pixels, 270-280
# with 8192; 480p 1098 -> 996 ms with 2048, 8192 1-5% faster again (res3's 60x108 too).
# With each tap's product in bfloat16 (`_tap_matmuls`) the taps also beat Winograd on the
# decoder's stride-4 maps: 480p decoder 649 -> 510 ms with 32768 (120x216 = 25,920 pixels);
# bfloat16 training step (6 x 400x400, 3 objects; its 100x100 decoder maps then take the taps
# and lax's gradients) 52.1 / 50.1 / 49.2 -> 46.7 / 46.3 / 51.2 s, interleaved. Larger maps
# (frames above ~480x1080) keep Winograd: not measured.
TAP_MATMUL_MAX_PIXELS = 32768
# ... and with at least this many channels in and out: with 64 the products are too thin for
# the matrix units (3x3 64 -> 64 at 60x108: 3.4 ms as taps, 1.7 ms prepared Winograd). Parts
# of the bfloat16 frame, interleaved: with float32 tap products, 64 -> 256 made Enc-Q at
# 240x432 66.8 -> 57.6 ms and Enc-R 81.7 -> 75.0 ms; with bfloat16 products (below), Enc-Q
# with 256 / 128 / 64 took 58.3 / 56.3 / 60.8 ms at 240x432, 256 / 128 250 / 241 ms at 480p.
TAP_MATMUL_MIN_CHANNELS = 128
# Stride-2 3x3 convs in bfloat16 on XLA:CPU with at least this many channels in and out run as
# tap matmuls at any map size: the alternative is lax's conv (Winograd is stride 1 only), which
# XLA:CPU widens to float32. The bottlenecks' stride-2 convs, alone, interleaved: 128 -> 128
# from 60x108 3.5 -> 2.0 ms, from 120x216 12.9 -> 7.8 ms; 256 -> 256 from 30x54 4.8 -> 1.9 ms,
# from 60x108 14.1 -> 5.9 ms.
STRIDED_TAP_MATMUL_MIN_CHANNELS = 128

# Variable collection of prepared (transformed) kernels, mirroring the params tree.
PREPARED = "winograd_kernels"

ALGORITHMS = ("direct", "winograd", "auto")


def _combine(coefficients, terms):
    """sum_i coefficients[i] * terms[i], skipping zero coefficients (constants: XLA fuses this)."""
    out = None
    for c, t in zip(coefficients, terms):
        if c == 0:
            continue
        v = t if c == 1 else (-t if c == -1 else t * np.float32(c))
        out = v if out is None else out + v
    return out


def transform_kernel(kernel: jax.Array) -> jax.Array:
    """kernel [3, 3, C, K] -> U = G g G^T as [36, C, K] float32 (tile position major).

    Constant linear combinations, rows then columns (two small XLA fusions):
    on XLA:CPU 5 ms for a 256 x 256 kernel against 14 ms as an einsum, and 0.2 s
    to compile against 0.6 s for all 36 outputs in one fusion (measured).
    """
    g = kernel.astype(jnp.float32)
    t = jnp.stack([_combine(G[a], [g[i] for i in range(3)]) for a in range(ALPHA)])  # [6, 3, C, K]
    u = jnp.stack([_combine(G[b], [t[:, j] for j in range(3)]) for b in range(ALPHA)], axis=1)  # [6, 6, C, K]
    return u.reshape((ALPHA * ALPHA,) + kernel.shape[2:])


def _input_tiles(xp: jax.Array, tile_rows: int, tile_cols: int) -> jax.Array:
    """Padded strip [B, 4 tr + 2, 4 tc + 2, C] -> V = B^T d B as [36, B * tr * tc, C].

    Tile (i, j) covers input rows 4i..4i+5 and columns 4j..4j+5: the transform is
    applied separably to strided slices, rows first, then columns, each stage as 6
    linear combinations of whole stacks (not 36 of single slices: 4x faster to
    compile, 1.4 vs 0.35 s per conv, and no slower to run).
    """
    c = xp.shape[-1]
    rows = [xp[:, a: a + TILE * tile_rows: TILE] for a in range(ALPHA)]  # 6 x [B, tr, Wp, C]
    # The row stage is materialised ([6, B, tr, Wp, C], a strip stays in cache): fused into the
    # column stage, XLA recomputed it for each of the 6 column outputs (conv with a prepared
    # kernel, interleaved: 120x216 256->256 146 -> 115 ms, 30x54 1024->512 76 -> 63 ms).
    rows = lax.optimization_barrier(jnp.stack([_combine(B_T[r], rows) for r in range(ALPHA)]))
    cols = [rows[:, :, :, b: b + TILE * tile_cols: TILE] for b in range(ALPHA)]  # 6 x [6, B, tr, tc, C]
    tiles = jnp.stack([_combine(B_T[s], cols) for s in range(ALPHA)], axis=1)  # [6 (row), 6 (col), B, tr, tc, C]
    return tiles.reshape(ALPHA * ALPHA, -1, c)


def _output_tiles(m: jax.Array, batch: int, tile_rows: int, tile_cols: int) -> jax.Array:
    """M [36, B * tr * tc, K] -> Y = A^T M A laid out as [B, 4 tr, 4 tc, K] (rows, then columns,
    each as 4 combinations of whole stacks: half the compile time of 16 separate outputs)."""
    k = m.shape[-1]
    m = m.reshape(ALPHA, ALPHA, batch, tile_rows, tile_cols, k)
    rows = jnp.stack([_combine(A_T[r], [m[i] for i in range(ALPHA)]) for r in range(TILE)])  # [4, 6, B, tr, tc, K]
    y = jnp.stack([_combine(A_T[s], [rows[:, j] for j in range(ALPHA)]) for s in range(TILE)], axis=1)  # [4, 4, B, tr, tc, K]
    y = y.transpose(2, 3, 0, 4, 1, 5)  # [B, tr, 4 (row in tile), tc, 4 (column in tile), K]
    return y.reshape(batch, TILE * tile_rows, TILE * tile_cols, k)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv3x3(x: jax.Array, kernel: jax.Array, strip_bytes: int = STRIP_BYTES) -> jax.Array:
    """3x3 conv, stride 1, zero padding 1 (PyTorch `Conv2d(C, K, 3, padding=1)`, no bias).

    x [B, H, W, C], kernel [3, 3, C, K] (HWIO) -> [B, H, W, K] in x's dtype,
    computed in float32. Gradients (below) are those of the direct conv, computed
    as convs and GEMMs rather than by differentiating through the tile transforms
    (measured slower).
    """
    return _winograd(x, transform_kernel(kernel), strip_bytes)


def _conv3x3_fwd(x, kernel, strip_bytes):
    return _winograd(x, transform_kernel(kernel), strip_bytes), (x, kernel)


def _conv3x3_bwd(strip_bytes, residuals, g):
    """The input gradient is itself a 3x3 stride-1 conv (of g with the kernel flipped and its
    channels swapped), so it runs as Winograd too; the kernel gradient as GEMMs where
    `conv_grad.uses_gemm` says so, else lax's. No forward recomputed."""
    x, kernel = residuals
    g = g.astype(jnp.result_type(x, kernel))
    flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2).astype(jnp.float32)  # [3, 3, K, C]
    gx = _winograd(g, transform_kernel(flipped), strip_bytes)
    gk = conv_grad.kernel_gradient(x.astype(g.dtype), g, kernel.astype(g.dtype), (1, 1), ((1, 1), (1, 1)))
    return gx.astype(x.dtype), gk.astype(kernel.dtype)


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


def conv3x3_transformed(x: jax.Array, u: jax.Array, strip_bytes: int = STRIP_BYTES) -> jax.Array:
    """`conv3x3` with the kernel already transformed: u = `transform_kernel(kernel)` [36, C, K].

    For inference with prepared kernels (module docstring). Differentiable by
    plain autodiff through the tile transforms (not the fast path for training).
    """
    return _winograd(x, u, strip_bytes)


def _winograd(x: jax.Array, u: jax.Array, strip_bytes: int) -> jax.Array:
    """x [B, H, W, C], u [36, C, K] (transformed kernel) -> [B, H, W, K] in x's dtype."""
    if x.ndim != 4 or u.shape[0] != ALPHA * ALPHA or u.ndim != 3 or u.shape[1] != x.shape[-1]:
        raise ValueError(f"winograd.conv3x3: x {x.shape} must be [B, H, W, C] and the transformed kernel {u.shape} "
                         f"[{ALPHA * ALPHA}, C, K] (from a [3, 3, C, K] kernel)")
    out_dtype = x.dtype
    b, h, w, c = x.shape
    k = u.shape[-1]
    u = u.astype(jnp.float32)
    tile_rows, tile_cols = -(-h // TILE), -(-w // TILE)
    # Zero padding 1 on top/left; bottom/right up to whole tiles (+1 of the conv's own padding).
    xp = jnp.pad(x.astype(jnp.float32),
                 ((0, 0), (1, TILE * tile_rows + 1 - h), (1, TILE * tile_cols + 1 - w), (0, 0)))
    per_tile_row = ALPHA * ALPHA * b * tile_cols * max(c, k) * 4
    strip = max(1, min(tile_rows, strip_bytes // per_tile_row))  # tile rows per strip
    num_strips = -(-tile_rows // strip)

    def strip_output(xs):  # [B, 4 strip + 2, Wp, C] -> [B, 4 strip, 4 tc, K]
        v = _input_tiles(xs, strip, tile_cols)  # [36, N, C]
        m = lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))))  # [36, N, K]
        return _output_tiles(m, b, strip, tile_cols)

    if num_strips == 1:
        y = strip_output(xp)
    else:
        # A loop over strips (one compiled body; unrolling them multiplied XLA's
        # compile time of a 480p decoder by 7). Whole tiles of zeros pad the last strip.
        xp = jnp.pad(xp, ((0, 0), (0, TILE * (num_strips * strip - tile_rows)), (0, 0), (0, 0)))
        rows_out = TILE * strip

        def body(i, y):
            xs = lax.dynamic_slice_in_dim(xp, i * rows_out, rows_out + 2, axis=1)
            return lax.dynamic_update_slice_in_dim(y, strip_output(xs), i * rows_out, axis=1)

        y = jnp.zeros((b, num_strips * rows_out, TILE * tile_cols, k), jnp.float32)
        y = lax.fori_loop(0, num_strips, body, y)
    return y[:, :h, :w].astype(out_dtype)


def _auto_on_the_fly(x_shape, kernel_shape, dtype) -> bool:
    """`auto` without a prepared kernel: the kernel transform is paid on every call."""
    return (
        jax.default_backend() == "cpu"
        and jnp.dtype(dtype) in AUTO_DTYPES
        and x_shape[-3] * x_shape[-2] >= AUTO_MIN_PIXELS
        and min(kernel_shape[2], kernel_shape[3]) >= AUTO_MIN_CHANNELS
    )


def _auto_preparable(kernel_shape, dtype) -> bool:
    """`auto` with a prepared kernel: Winograd wins on XLA:CPU for 64+ channels (any map >= 16x16)."""
    return (jax.default_backend() == "cpu" and jnp.dtype(dtype) in AUTO_DTYPES
            and min(kernel_shape[2:]) >= PREPARED_MIN_CHANNELS)


def _auto_tap_matmuls(x_shape, kernel_shape, dtype) -> bool:
    """`auto` as 9 bfloat16 matrix products: XLA:CPU, bfloat16, maps up to 32768 pixels, 128+ channels."""
    return (jax.default_backend() == "cpu" and jnp.dtype(dtype) == jnp.bfloat16
            and x_shape[-3] * x_shape[-2] <= TAP_MATMUL_MAX_PIXELS
            and min(kernel_shape[2:]) >= TAP_MATMUL_MIN_CHANNELS)


def _auto_strided_tap_matmuls(strides, kernel_shape, dtype) -> bool:
    """`auto` for a stride-2 conv: tap matmuls on XLA:CPU in bfloat16 with 128+ channels."""
    return (strides == 2 and jax.default_backend() == "cpu" and jnp.dtype(dtype) == jnp.bfloat16
            and min(kernel_shape[2:]) >= STRIDED_TAP_MATMUL_MIN_CHANNELS)


class Conv3x3(nn.Module):
    """flax `nn.Conv(features, (3, 3), strides, padding=((1, 1), (1, 1)))` whose stride-1 convs may run as Winograd.

    The same parameters as `nn.Conv` ('kernel' [3, 3, C, K] HWIO, 'bias' [K]),
    created in the same order with the same initialisers, so checkpoints and
    imported weights are unchanged whichever `algorithm` runs:
      'direct'   always `lax.conv_general_dilated`;
      'winograd' every stride-1 call (any backend / dtype; computed in float32);
      'auto'     on XLA:CPU for float32 and bfloat16 (computed in float32): with a
                 prepared kernel for 64+ channels in and out and maps of 16x16 and
                 more, otherwise (the kernel transformed on every call) for 128+
                 channels and maps of 64x64 and more; in bfloat16, maps of at most
                 `TAP_MATMUL_MAX_PIXELS` (128+ channels) as 9 bfloat16 matrix
                 products (`conv3x3_tap_matmuls`) instead; bfloat16 stride-2
                 convs with 128+ channels as tap matmuls too.
    Prepared kernel: U in the `PREPARED` collection at this module's path
    ('kernel'), written when that collection is mutable (and not during init),
    read when it is present.

    x [..., H, W, C] -> [..., ceil(H / strides), ceil(W / strides), features].
    """

    features: int
    strides: int = 1
    use_bias: bool = True
    dtype: Any = None  # compute dtype (None: from the input and parameters, as nn.Conv)
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()  # nn.Conv's default
    bias_init: Callable = nn.initializers.zeros_init()
    algorithm: str = "direct"

    @nn.compact
    def __call__(self, x: jax.Array, *, parameters_only: bool = False):
        """The conv of x; or, with `parameters_only`, just (kernel, bias) for an input like x
        (created if needed; used by `conv3x3_group`)."""
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"conv algorithm {self.algorithm!r}: choose one of {ALGORITHMS}")
        if x.ndim < 3:
            raise ValueError(f"Conv3x3 expects [..., H, W, C] input, got shape {x.shape}")
        kernel = self.param("kernel", self.kernel_init, (3, 3, x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        if parameters_only:
            return kernel, bias
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        lead = x.shape[:-3]
        x4 = x.reshape((-1,) + x.shape[-3:])  # [N, H, W, C]
        y = self._conv(x4, kernel)
        y = y.reshape(lead + y.shape[1:])
        # The bias in its parameter dtype: in bfloat16 on CPU its gradient is summed in float32.
        return y if bias is None else add_bias(y, bias)

    def _conv(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        if self.strides == 1 and self.algorithm != "direct":
            eligible = self.algorithm == "winograd" or _auto_preparable(kernel.shape, x.dtype)
            # Recorded whatever this call's map size (`prepare` runs on a small dummy frame).
            u = _prepared(self, "kernel", eligible, lambda: transform_kernel(kernel))
            if self.algorithm == "auto" and _auto_tap_matmuls(x.shape, kernel.shape, x.dtype):
                return conv3x3_tap_matmuls(x, kernel)
            if u is not None and _prepared_applies(self.algorithm, x.shape):
                return conv3x3_transformed(x, u)
            if self.algorithm == "winograd" or _auto_on_the_fly(x.shape, kernel.shape, x.dtype):
                return conv3x3(x, kernel)
        if self.algorithm == "auto" and _auto_strided_tap_matmuls(self.strides, kernel.shape, x.dtype):
            return conv3x3_tap_matmuls(x, kernel, 2)
        return _lax_conv3x3(x, kernel, self.strides)


def _prepared(module: nn.Module, name: str, eligible: bool, transform: Callable[[], jax.Array]) -> jax.Array | None:
    """U of `module`'s entry `name` in `PREPARED`: recorded (computed by `transform`) when the
    collection is mutable outside init and the conv is `eligible`, else read where present, else None."""
    if eligible and module.is_mutable_collection(PREPARED) and not module.is_initializing():
        return module.variable(PREPARED, name, transform).value
    if eligible and module.has_variable(PREPARED, name):
        return module.get_variable(PREPARED, name)
    return None


def _prepared_applies(algorithm: str, x_shape) -> bool:
    """Whether a prepared kernel is used on a map of x_shape [..., H, W, C] (`auto`: from 16x16)."""
    return algorithm == "winograd" or x_shape[-3] * x_shape[-2] >= PREPARED_MIN_PIXELS


GROUP_SEPARATOR = "+"  # a PREPARED entry named 'key+value' holds the children's kernels side by side


def conv3x3_group(parent: nn.Module, x: jax.Array, convs: Sequence[Conv3x3]) -> list[jax.Array]:
    """[conv(x) for conv in convs], the convs (children of `parent`, same input) sharing one Winograd conv.

    With prepared kernels, the convs' kernels are transformed side by side into one
    U [36, C, K1 + K2 + ...] (entry 'name1+name2' of `PREPARED` at the parent's path),
    so the input is transformed once and the channel contraction is one GEMM per
    tile position. For STM's key (1024 -> 128) and value (1024 -> 512) convs at
    30x54: 65-73 ms against 86-131 ms as two prepared convs (measured, interleaved).
    Everywhere else (no prepared kernels, direct, small maps) each conv runs alone,
    as `conv(x)`. Each conv keeps its own parameters either way.
    """
    kernels = [conv(x, parameters_only=True) for conv in convs]  # [(kernel, bias)], creates them
    name = GROUP_SEPARATOR.join(conv.name for conv in convs)
    first = convs[0]
    dtype = first.dtype if first.dtype is not None else jnp.result_type(x, kernels[0][0])  # compute dtype
    wide_enough = all(_auto_preparable(k.shape, dtype) for k, _ in kernels)
    eligible = (
        len({(c.algorithm, c.dtype) for c in convs}) == 1 and all(c.strides == 1 for c in convs)
        and (first.algorithm == "winograd" or (first.algorithm == "auto" and wide_enough))
    )
    u = _prepared(parent, name, eligible, lambda: transform_kernel(jnp.concatenate([k for k, _ in kernels], -1)))
    if u is None:
        return [conv(x) for conv in convs]
    xc = nn.dtypes.promote_dtype(x, kernels[0][0], dtype=first.dtype)[0]
    x4 = xc.reshape((-1,) + xc.shape[-3:])  # [N, H, W, C]
    splits = np.cumsum([c.features for c in convs])[:-1].tolist()
    joined_shape = kernels[0][0].shape[:3] + (sum(c.features for c in convs),)
    if first.algorithm == "auto" and _auto_tap_matmuls(x.shape, joined_shape, xc.dtype):
        # Each conv's taps alone: joining the kernels copied them in every call (key/value
        # 1024 -> 128 + 512 at 15x27: 8.5 ms joined, 6.0 separate; 30x54: 35.8 against 29.5).
        outs = [conv3x3_tap_matmuls(x4, k.astype(xc.dtype)) for k, _ in kernels]
    elif _prepared_applies(first.algorithm, x.shape):
        y = conv3x3_transformed(x4, u)  # [N, H, W, K1 + K2 + ...]
        outs = jnp.split(y, splits, axis=-1)
    else:  # a small map: lax, here rather than in the children (they would record their own kernels)
        outs = [_lax_conv3x3(x4, k.astype(xc.dtype), 1) for k, _ in kernels]
    outs = [o.reshape(xc.shape[:-3] + o.shape[1:]) for o in outs]
    return [o if b is None else add_bias(o, b) for o, (_, b) in zip(outs, kernels)]


def kernel_for(path: Sequence[str], params: dict) -> jax.Array:
    """The [3, 3, C, K] kernel whose transform is the PREPARED entry at `path`: the kernel at the
    same path of `params` ('.../conv/kernel'), or a group's kernels side by side ('.../key+value')."""
    node = params
    for key in path[:-1]:
        node = node[key]
    if GROUP_SEPARATOR in path[-1]:
        return jnp.concatenate([node[child]["kernel"] for child in path[-1].split(GROUP_SEPARATOR)], -1)
    return node[path[-1]]
