"""3x3 convs (padding 1, stride 1 or 2) as one matrix product per kernel tap.

For bfloat16 on XLA:CPU: a dot runs on the CPU's bfloat16 matrix units (AMX, AVX512-BF16), a
conv is widened to float32 vector code. `munet_jax.models.winograd.Conv3x3` chooses when
(`auto`); `lax_conv3x3` is the direct conv both fall back to, and whose gradients these take.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from munet_jax.models import conv_grad


def conv3x3_tap_matmuls(x: jax.Array, kernel: jax.Array, strides: int = 1) -> jax.Array:
    """The 3x3 conv (padding 1, stride 1 or 2) as one matrix product per kernel tap (each in x's
    dtype), summed in float32:

        y = sum_ij  xp[:, i:i+H, j:j+W, :] @ kernel[i, j]      [N, H, W, C] @ [C, K] -> [N, H, W, K]

    (stride 1, maps of about 30x54 and larger: each product taken over the flattened padded map
    and shifted, `uses_flat_products`, rather than over a copied window; stride 2: every other
    row and column of each shifted window, read from the even / odd phases of xp so that each
    tap's rows are contiguous). x [N, H, W, C], kernel [3, 3, C, K]
    -> [N, ceil(H / s), ceil(W / s), K] in x's dtype. For bfloat16 on XLA:CPU, where a dot
    runs on the matrix units and a conv does not. Gradients: the direct conv's
    (`lax_conv3x3`'s, as before this path existed): autodiff through the taps made the
    bfloat16 training step slower (6 x 400x400, 3 objects: 38.8 -> 44.1 s, interleaved); for
    stride 1 the input gradient is then run as taps again, forward-style (`_tap_matmuls_bwd`).
    """
    if strides not in (1, 2):
        raise ValueError(f"conv3x3_tap_matmuls: strides={strides!r}, only 1 and 2 are supported")
    return _tap_conv(x, kernel, strides)


# Stride 1: the taps' products over the flattened padded map (`_tap_matmuls`) where that computes
# at most this many times the output's rows, else one window per tap. The extra rows cost more on
# small maps: the query key/value convs (1024 -> 128 + 512) at 15x27 (1.29x the rows) 10.3 -> 12.1
# ms flattened, at 30x54 (1.14x) 38.5 -> 32.8 ms (bfloat16, interleaved).
FLAT_MAX_ROWS_RATIO = 1.15


def uses_flat_products(h: int, w: int) -> bool:
    """Whether a stride-1 tap conv of an H x W map takes its products over the flattened padded map."""
    return (h + 3) * (w + 2) <= FLAT_MAX_ROWS_RATIO * h * w


def _tap_matmuls(x, kernel, strides):
    n, h, w, c = x.shape

    def product(window, i, j):  # window [..., C] @ kernel[i, j] -> [..., K], in x's dtype
        return lax.dot_general(window, kernel[i, j].astype(x.dtype), (((window.ndim - 1,), (0,)), ((), ())),
                               preferred_element_type=x.dtype)

    if strides == 1 and uses_flat_products(h, w):
        # Each tap's product is taken over the whole padded map, flattened, and shifted instead of
        # each tap reading its own shifted window: with xp [N, H + 3, Wp = W + 2, C] flattened to
        # [N, (H + 3) * Wp, C], output pixel (r, s) at p = r * Wp + s is
        #     y[p] = sum_ij (flat @ kernel[i, j])[p + i * Wp + j],   p < H * Wp,
        # which for s < W reads row r + i of xp, columns s .. s + 2; the two columns s >= W wrap
        # into the next row and are cropped (the extra bottom row keeps every shift in range).
        # A window per tap was a copy of the map per tap (8 copies of 13 MB at 120x216x256).
        # Four chained 3x3 convs 256 -> 256 with ReLU and residual, bfloat16, interleaved: 120x216
        # 293 -> 248 ms, 60x108 79 -> 74 ms; the 480p bfloat16 decoder 532 -> 488 ms; the engine's
        # bfloat16 step (the same output bits) 480p 1109 -> 1034 ms, 3 objects 2116 -> 1967 ms,
        # 240x432 241 -> 229 ms; the bfloat16 training step (6 x 400x400) 23.2 / 23.8 s, unchanged
        # (2026-12-08, the machine ~25% slower than in 2026-12-07's file).
        wp = w + 2
        flat = jnp.pad(x, ((0, 0), (1, 2), (1, 1), (0, 0))).reshape(n, (h + 3) * wp, c)
        span = h * wp
        y = _sum_taps(lambda i, j: product(flat, i, j)[:, i * wp + j:i * wp + j + span])  # [N, H * Wp, K]
        return y.reshape(n, h, wp, -1)[:, :, :w]
    if strides == 1:
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        return _sum_taps(lambda i, j: product(xp[:, i:i + h, j:j + w], i, j))
    ho, wo = -(-h // 2), -(-w // 2)
    # Padding 1 and as many zeros after as make the rows / columns even: [N, 2Ho + 2, 2Wo + 2, C],
    # split into phases xp[:, 2a + p, 2b + q] = phases[:, a, p, b, q] (a strided slice per tap
    # made each tap's copy slower). Tap (i, j) reads rows 2o + i, columns 2v + j of xp, o < Ho, v < Wo.
    xp = jnp.pad(x, ((0, 0), (1, 2 * ho + 1 - h), (1, 2 * wo + 1 - w), (0, 0)))
    phases = xp.reshape(n, ho + 1, 2, wo + 1, 2, c)
    return _sum_taps(lambda i, j: product(phases[:, i // 2:i // 2 + ho, i % 2, j // 2:j // 2 + wo, j % 2], i, j))


def _sum_taps(product):
    """sum_ij product(i, j) over the 9 taps: each product in the conv's dtype, summed in float32,
    rounded back once.

    Each tap's product comes out in x's dtype: float32 products of a whole map (9 x 6.6 MB at
    60x108x256) made the sum memory-bound (the 240x432 bfloat16 decoder 158 -> 128 ms,
    interleaved). Rounding each product to bfloat16 moved the frame no further from float32's
    than bfloat16 itself does (random weights, 240x432, 2 objects: 0.46% of pixel ids differ
    from float32's, 0.47% with float32 products).
    """
    taps = [product(i, j) for i in range(3) for j in range(3)]
    y = taps[0].astype(jnp.float32)
    for tap in taps[1:]:
        y = y + tap.astype(jnp.float32)
    return y.astype(taps[0].dtype)


def _tap_matmuls_fwd(x, kernel, strides):
    return _tap_matmuls(x, kernel, strides), (x, kernel)


def _tap_matmuls_bwd(strides, residuals, g):
    x, kernel = residuals
    kernel_x = kernel.astype(x.dtype)
    g = g.astype(x.dtype)
    if strides != 1:
        _, vjp = jax.vjp(lambda a, b: lax_conv3x3(a, b, strides), x, kernel_x)
        gx, gk = vjp(g)
        return gx, gk.astype(kernel.dtype)
    # Stride 1: the input gradient is the 3x3 conv of g with the kernel flipped and its channels
    # swapped, so it runs as taps too (lax's bfloat16 conv is widened to float32 on XLA:CPU).
    # Alone, bfloat16, Xeon with AMX (lax / taps, ms): 3 x 100x100, 256 -> 256: 158 / 90;
    # 3 x 50x50, 256 -> 256: 43 / 13; 3 x 25x25, 1024 -> 512: 89 / 40.
    gx = _tap_matmuls(g, kernel_x[::-1, ::-1].transpose(0, 1, 3, 2), 1)
    gk = conv_grad.kernel_gradient(x, g, kernel_x, (1, 1), ((1, 1), (1, 1)))
    return gx, gk.astype(kernel.dtype)


_tap_conv = jax.custom_vjp(_tap_matmuls, nondiff_argnums=(2,))
_tap_conv.defvjp(_tap_matmuls_fwd, _tap_matmuls_bwd)


def lax_conv3x3(x: jax.Array, kernel: jax.Array, strides: int) -> jax.Array:
    """x [N, H, W, C], kernel [3, 3, C, K] -> [N, ceil(H / s), ceil(W / s), K], padding 1 (as nn.Conv);
    lax's conv, with the kernel gradient as GEMMs where that is faster (munet_jax.models.conv_grad)."""
    return conv_grad.conv_general_dilated(x, kernel, (strides, strides), ((1, 1), (1, 1)),
                                          dimension_numbers=conv_grad.NHWC)
