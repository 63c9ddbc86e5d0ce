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

    (stride 2: every other row and column of each shifted window, read from the even / odd
    phases of xp so that each tap's rows are contiguous). x [N, H, W, C], kernel [3, 3, C, K]
    -> [N, ceil(H / s), ceil(W / s), K] in x's dtype. For bfloat16 on XLA:CPU, where a dot
    runs on the matrix units and a conv does not. Gradients: the direct conv's
    (`lax_conv3x3`'s, as before this path existed): autodiff through the taps made the
    bfloat16 training step slower (6 x 400x400, 3 objects: 38.8 -> 44.1 s, interleaved); for
    stride 1 the input gradient is then run as taps again, forward-style (`_tap_matmuls_bwd`).
    """
    if strides not in (1, 2):
        raise ValueError(f"conv3x3_tap_matmuls: strides={strides!r}, only 1 and 2 are supported")
    return _tap_conv(x, kernel, strides)


def _tap_matmuls(x, kernel, strides):
    n, h, w, c = x.shape
    if strides == 1:
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))

        def window(i, j):  # [N, H, W, C]
            return xp[:, i:i + h, j:j + w]
    else:
        ho, wo = -(-h // 2), -(-w // 2)
        # Padding 1 and as many zeros after as make the rows / columns even: [N, 2Ho + 2, 2Wo + 2, C],
        # split into phases xp[:, 2a + p, 2b + q] = phases[:, a, p, b, q] (a strided slice per tap
        # made each tap's copy slower).
        xp = jnp.pad(x, ((0, 0), (1, 2 * ho + 1 - h), (1, 2 * wo + 1 - w), (0, 0)))
        phases = xp.reshape(n, ho + 1, 2, wo + 1, 2, c)

        def window(i, j):  # rows 2o + i, columns 2v + j of xp for o < Ho, v < Wo: [N, Ho, Wo, C]
            return phases[:, i // 2:i // 2 + ho, i % 2, j // 2:j // 2 + wo, j % 2]
    # Each tap's product comes out in x's dtype and the nine are summed in float32: float32
    # products of a whole map (9 x 6.6 MB at 60x108x256) made the sum memory-bound (the
    # 240x432 bfloat16 decoder 158 -> 128 ms, interleaved). Rounding each product to bfloat16
    # moved the frame no further from float32's than bfloat16 itself does (random weights,
    # 240x432, 2 objects: 0.46% of pixel ids differ from float32's, 0.47% with float32 products).
    y = None
    for i in range(3):
        for j in range(3):
            tap = lax.dot_general(window(i, j), kernel[i, j].astype(x.dtype), (((3,), (0,)), ((), ())),
                                  preferred_element_type=x.dtype).astype(jnp.float32)
            y = tap if y is None else y + tap
    return y.astype(x.dtype)


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
