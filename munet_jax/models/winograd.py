"""Winograd F(4x4, 3x3) convolution: the decoder's 3x3 convs with 4x fewer multiplications.

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
themselves, so `auto` uses it on the CPU backend only.

Precision: float32 results differ from the direct conv by ~2e-5 of the output's
largest magnitude (the transforms' rounding); always computed in float32.

The output is computed in horizontal strips of tile rows so that each strip's
transformed tiles (36 / 16 = 2.25x the input strip) stay in cache between the
transforms and the GEMMs.

    conv3x3(x [B, H, W, C], kernel [3, 3, C, K]) -> [B, H, W, K]    (padding 1, stride 1)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

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

# `auto`: only where Winograd wins on XLA:CPU (measured): at least 64x64 output
# pixels (stride 4 of a 480p frame is 120x216) and 128 channels in and out.
AUTO_MIN_PIXELS = 64 * 64
AUTO_MIN_CHANNELS = 128

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
    """kernel [3, 3, C, K] -> U = G g G^T as [36, C, K] float32 (tile position major)."""
    g = jnp.asarray(G, jnp.float32)
    u = jnp.einsum("ai,ijck,bj->abck", g, kernel.astype(jnp.float32), g, precision=lax.Precision.HIGHEST)
    return u.reshape(ALPHA * ALPHA, *kernel.shape[2:])


def _input_tiles(xp: jax.Array, tile_rows: int, tile_cols: int) -> jax.Array:
    """Padded strip [B, 4 tr + 2, 4 tc + 2, C] -> V = B^T d B as [36, B * tr * tc, C].

    Tile (i, j) covers input rows 4i..4i+5 and columns 4j..4j+5: the transform is
    applied separably to strided slices (rows first, then columns).
    """
    c = xp.shape[-1]
    rows = [xp[:, a: a + TILE * tile_rows: TILE] for a in range(ALPHA)]  # 6 x [B, tr, Wp, C]
    rows = [_combine(B_T[r], rows) for r in range(ALPHA)]
    tiles = []
    for row in rows:
        cols = [row[:, :, b: b + TILE * tile_cols: TILE] for b in range(ALPHA)]  # 6 x [B, tr, tc, C]
        tiles += [_combine(B_T[s], cols) for s in range(ALPHA)]
    return jnp.stack(tiles).reshape(ALPHA * ALPHA, -1, c)


def _output_tiles(m: jax.Array, batch: int, tile_rows: int, tile_cols: int) -> jax.Array:
    """M [36, B * tr * tc, K] -> Y = A^T M A laid out as [B, 4 tr, 4 tc, K]."""
    k = m.shape[-1]
    m = m.reshape(ALPHA, ALPHA, batch, tile_rows, tile_cols, k)
    rows = [_combine(A_T[r], [m[i] for i in range(ALPHA)]) for r in range(TILE)]  # 4 x [6, B, tr, tc, K]
    out = [jnp.stack([_combine(A_T[s], [row[j] for j in range(ALPHA)]) for s in range(TILE)], axis=3)
           for row in rows]  # 4 x [B, tr, tc, 4, K]
    y = jnp.stack(out, axis=2)  # [B, tr, 4, tc, 4, K]
    return y.reshape(batch, TILE * tile_rows, TILE * tile_cols, k)


def _direct(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The same conv with lax (NHWC / HWIO, padding 1)."""
    return lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv3x3(x: jax.Array, kernel: jax.Array, strip_bytes: int = STRIP_BYTES) -> jax.Array:
    """3x3 conv, stride 1, zero padding 1 (PyTorch `Conv2d(C, K, 3, padding=1)`, no bias).

    x [B, H, W, C], kernel [3, 3, C, K] (HWIO) -> [B, H, W, K] in x's dtype,
    computed in float32. Gradients are the direct conv's (below): the function is
    the same, and differentiating through the tile transforms measured slower
    than lax's transposed convs in the backward pass.
    """
    return _winograd(x, kernel, strip_bytes)


def _conv3x3_fwd(x, kernel, strip_bytes):
    return _winograd(x, kernel, strip_bytes), (x, kernel)


def _conv3x3_bwd(strip_bytes, residuals, g):
    """Transposes of the direct conv (linear in x and in the kernel): no forward recomputed."""
    del strip_bytes
    x, kernel = residuals
    g = g.astype(jnp.result_type(x, kernel))
    (gx,) = jax.linear_transpose(lambda x_: _direct(x_, kernel.astype(g.dtype)), x.astype(g.dtype))(g)
    (gk,) = jax.linear_transpose(lambda k_: _direct(x.astype(g.dtype), k_), kernel.astype(g.dtype))(g)
    return gx.astype(x.dtype), gk.astype(kernel.dtype)


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


def _winograd(x: jax.Array, kernel: jax.Array, strip_bytes: int) -> jax.Array:
    """The forward pass of `conv3x3`."""
    if x.ndim != 4 or kernel.shape[:2] != (3, 3) or kernel.shape[2] != x.shape[-1]:
        raise ValueError(f"winograd.conv3x3: x {x.shape} must be [B, H, W, C] and kernel {kernel.shape} [3, 3, C, K]")
    out_dtype = x.dtype
    b, h, w, c = x.shape
    k = kernel.shape[-1]
    tile_rows, tile_cols = -(-h // TILE), -(-w // TILE)
    # Zero padding 1 on top/left; bottom/right up to whole tiles (+1 of the conv's own padding).
    xp = jnp.pad(x.astype(jnp.float32),
                 ((0, 0), (1, TILE * tile_rows + 1 - h), (1, TILE * tile_cols + 1 - w), (0, 0)))
    u = transform_kernel(kernel)  # [36, C, K]
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


def _is_plain_3x3(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                  feature_group_count, batch_group_count) -> bool:
    """True for flax `nn.Conv(kernel_size=(3, 3), padding=((1, 1), (1, 1)))` on NHWC input."""
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    return (
        lhs.ndim == 4 and tuple(rhs.shape[:2]) == (3, 3)
        and tuple(window_strides) == (1, 1)
        and not isinstance(padding, str) and tuple(map(tuple, padding)) == ((1, 1), (1, 1))
        and all(d == 1 for d in (lhs_dilation or (1, 1))) and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and feature_group_count == 1 and batch_group_count == 1
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc
    )


def _worth_it(lhs, rhs) -> bool:
    """`auto`: the CPU backend, float32, a large map and wide channels (where it measured faster)."""
    return (
        jax.default_backend() == "cpu"
        and lhs.dtype == jnp.float32
        and lhs.shape[1] * lhs.shape[2] >= AUTO_MIN_PIXELS
        and min(rhs.shape[2], rhs.shape[3]) >= AUTO_MIN_CHANNELS
    )


def conv_general_dilated(algorithm: str, lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
    """`lax.conv_general_dilated` with Winograd for plain 3x3 convs (flax `nn.Conv(conv_general_dilated=)`).

    algorithm: 'direct' (always lax), 'winograd' (every plain 3x3 conv), 'auto'
    (plain 3x3 convs where `_worth_it`). Anything else goes to lax unchanged.
    """
    plain = _is_plain_3x3(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                          feature_group_count, batch_group_count)
    if plain and (algorithm == "winograd" or (algorithm == "auto" and _worth_it(lhs, rhs))):
        return conv3x3(lhs, rhs)
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision, preferred_element_type=preferred_element_type,
    )


def conv_fn(algorithm: str):
    """The `conv_general_dilated` to give flax's `nn.Conv` for `algorithm` (None: flax's default)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"conv algorithm {algorithm!r}: choose one of {ALGORITHMS}")
    if algorithm == "direct":
        return None
    return functools.partial(conv_general_dilated, algorithm)
