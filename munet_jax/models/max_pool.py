"""The ResNet stem's 3x3 / stride 2 / pad 1 max-pool, with a gradient XLA:CPU runs fast.

Forward: PyTorch's MaxPool2d(kernel_size=3, stride=2, padding=1) on [B, H, W, C]
(-inf border, so padding never wins) -> [B, ceil(H/2), ceil(W/2), C].

Why a custom gradient: autodiff gives the max-pool's gradient as select-and-scatter,
which XLA:CPU rewrites into a variadic reduce-window carrying four int32 iota arrays
of the padded input's size (the window positions of the running argmax). In the
full training step (6 query frames and 3 objects' Enc-R at 200x200x64) those iotas
and reduce-windows took 1.2 s of 36 s. Here the gradient is written with
elementwise ops on the 9 strided taps instead:

    y[o] = max_t x_t[o]                x_t = the tap-t view of the padded input, [B, Ho, Wo, C]
    hit_t = (x_t == y) & no earlier tap hit      (first maximum in row-major window order)
    dx    = sum_t scatter_t(where(hit_t, g, 0))  (each tap's stride-2 placement, via lax.pad)

which is select-and-scatter's own rule (jax selects with `>=`, keeping the first
maximum of the window), so the gradient matches autodiff's up to the order of the
adds where windows overlap. CPU only, like conv_grad: other backends keep
select-and-scatter (not measured there).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

WINDOW, STRIDE, PAD = 3, 2, 1


def _pool(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, ceil(H/2), ceil(W/2), C]: flax's pool (it pads with -inf, max's identity)."""
    return nn.max_pool(x, (WINDOW, WINDOW), strides=(STRIDE, STRIDE), padding=((PAD, PAD), (PAD, PAD)))


def _padded(x: jax.Array, ho: int, wo: int) -> jax.Array:
    """x with the -inf border: PAD before, and after as much as the last window needs."""
    _, h, w, _ = x.shape
    hp, wp = STRIDE * (ho - 1) + WINDOW, STRIDE * (wo - 1) + WINDOW  # >= H + 2 PAD - 1
    return lax.pad(x, jnp.array(-jnp.inf, x.dtype),
                   ((0, 0, 0), (PAD, hp - h - PAD, 0), (PAD, wp - w - PAD, 0), (0, 0, 0)))


def _tap(xp: jax.Array, i: int, j: int, ho: int, wo: int) -> jax.Array:
    """The window element (i, j) of every output position: [B, Ho, Wo, C]."""
    b, _, _, c = xp.shape
    return lax.slice(xp, (0, i, j, 0), (b, i + STRIDE * (ho - 1) + 1, j + STRIDE * (wo - 1) + 1, c),
                     (1, STRIDE, STRIDE, 1))


@jax.custom_vjp
def _max_pool_elementwise_grad(x: jax.Array) -> jax.Array:
    return _pool(x)


def _fwd(x):
    y = _pool(x)
    return y, (x, y)


def _bwd(residuals, g):
    x, y = residuals  # x [B, H, W, C], y and g [B, Ho, Wo, C]
    _, h, w, _ = x.shape
    ho, wo = y.shape[1:3]
    xp = _padded(x, ho, wo)  # [B, Hp, Wp, C]
    hp, wp = xp.shape[1:3]
    zero = jnp.zeros((), g.dtype)
    claimed = jnp.zeros(y.shape, bool)
    dxp = None
    for i in range(WINDOW):
        for j in range(WINDOW):
            hit = (_tap(xp, i, j, ho, wo) == y) & ~claimed
            claimed = claimed | hit
            # Place tap (i, j)'s share at rows i, i + 2, ... and columns j, j + 2, ... of the padded grid.
            share = lax.pad(jnp.where(hit, g, zero), zero,
                            ((0, 0, 0), (i, hp - i - STRIDE * (ho - 1) - 1, STRIDE - 1),
                             (j, wp - j - STRIDE * (wo - 1) - 1, STRIDE - 1), (0, 0, 0)))
            dxp = share if dxp is None else dxp + share
    return (dxp[:, PAD:PAD + h, PAD:PAD + w, :],)


_max_pool_elementwise_grad.defvjp(_fwd, _bwd)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """PyTorch's MaxPool2d(3, stride=2, padding=1): [B, H, W, C] -> [B, ceil(H/2), ceil(W/2), C].

    On XLA:CPU its gradient is the elementwise form above; elsewhere autodiff's. On XLA:CPU
    a bfloat16 input is pooled in float32 (exact: the widening cast keeps the order), since
    XLA:CPU's bfloat16 reduce-window is slow (240x432x64, Enc-Q's stem at 480p: 48 ms
    against 8 ms with the casts, on a Xeon with AMX).
    """
    if jax.default_backend() == "cpu":
        if x.dtype == jnp.bfloat16:
            return _max_pool_elementwise_grad(x.astype(jnp.float32)).astype(x.dtype)
        return _max_pool_elementwise_grad(x)
    return _pool(x)
