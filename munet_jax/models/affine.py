"""Per-channel affine maps y = x * a + b (and bias adds y = x + b) whose parameter gradients
XLA:CPU runs fast, and sums in float32, in bfloat16.

Autodiff gives the gradients of a and b [C] as sums over every pixel of g * x and g
(g = dL/dy [..., C]). In bfloat16, XLA:CPU widens such a reduction to float32 and
rewrites it into a windowed reduce-window that runs far below memory speed, where the
float32 reduction runs on its fast reduction kernels. Measured on a Xeon with AMX,
frozen BN + ReLU forward and backward (ms, float32 / bfloat16 autodiff / bfloat16 with
the float32 sums below):

    6 x 200x200 x   64    53 / 161 / 70     (Enc-R's and Enc-Q's stems at 400x400)
    6 x 100x100 x  256    55 / 192 / 70     (layer1)
    6 x  25x25  x 1024     7 /  54 / 12     (layer3)

Worse, autodiff's bfloat16 sum can stall: 4032 terms of 1 + 2^-7 summed to 2048 (the
test), so a bias or BN gradient over a 100x100 map lost most of its value.

So in bfloat16 on XLA:CPU the backward is written out, with the sums over float32
values: da = sum(float32(g) * float32(x)), db = sum(float32(g)), dx = g * a (in x's
dtype). Elsewhere (float32; GPU and TPU, which accumulate bfloat16 reductions in
float32) autodiff's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def channel_affine(x: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """x [..., C] * a [C] + b [C] in x's dtype (a and b cast to it); gradients in a's / b's dtypes."""
    if x.dtype == jnp.bfloat16 and jax.default_backend() == "cpu":
        return _affine_float32_sums(x, a, b)
    return _affine(x, a, b)


def add_bias(x: jax.Array, b: jax.Array) -> jax.Array:
    """x [..., C] + b [C] in x's dtype; b's gradient summed in float32 (bfloat16 on XLA:CPU)."""
    if x.dtype == jnp.bfloat16 and jax.default_backend() == "cpu":
        return _bias_float32_sum(x, b)
    return x + b.astype(x.dtype)


def _pixels(x):
    return tuple(range(x.ndim - 1))  # every axis but the channels


@jax.custom_vjp
def _bias_float32_sum(x, b):
    return x + b.astype(x.dtype)


def _bias_fwd(x, b):
    return x + b.astype(x.dtype), b


def _bias_bwd(b, g):
    return g, jnp.sum(g.astype(jnp.float32), axis=_pixels(g)).astype(b.dtype)


_bias_float32_sum.defvjp(_bias_fwd, _bias_bwd)


def _affine(x, a, b):
    return x * a.astype(x.dtype) + b.astype(x.dtype)


@jax.custom_vjp
def _affine_float32_sums(x, a, b):
    return _affine(x, a, b)


def _fwd(x, a, b):
    return _affine(x, a, b), (x, a, b)


def _bwd(residuals, g):
    x, a, b = residuals
    pixels = _pixels(x)
    g32 = g.astype(jnp.float32)
    da = jnp.sum(g32 * x.astype(jnp.float32), axis=pixels)
    db = jnp.sum(g32, axis=pixels)
    return (g * a.astype(g.dtype)).astype(x.dtype), da.astype(a.dtype), db.astype(b.dtype)


_affine_float32_sums.defvjp(_fwd, _bwd)
