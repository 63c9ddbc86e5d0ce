"""channel_affine (munet_jax.models.affine): x * a + b with float32 gradient sums in bfloat16 on
XLA:CPU, against NumPy float64 and against autodiff of the plain expression."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from munet_jax.models.affine import add_bias, channel_affine


def plain(x, a, b):
    return x * a.astype(x.dtype) + b.astype(x.dtype)


def numpy_grads(x, a, g):
    """(dx, da, db) of sum((x * a + b) * g) in float64."""
    x64, a64, g64 = (np.asarray(v, np.float64) for v in (x, a, g))
    pixels = tuple(range(x64.ndim - 1))
    return g64 * a64, np.sum(g64 * x64, axis=pixels), np.sum(g64, axis=pixels)


@pytest.mark.parametrize("shape", [(2, 5, 7, 6), (3, 4, 8), (33, 40, 3)])
def test_bfloat16_gradients_match_float64_sums(shape):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape), jnp.bfloat16)
    a = jnp.asarray(rng.normal(size=shape[-1]), jnp.float32)
    b = jnp.asarray(rng.normal(size=shape[-1]), jnp.float32)
    g = jnp.asarray(rng.normal(size=shape), jnp.bfloat16)
    y, vjp = jax.vjp(channel_affine, x, a, b)
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(plain(x, a, b), np.float32))
    dx, da, db = jax.jit(vjp)(g)
    assert (dx.dtype, da.dtype, db.dtype) == (jnp.bfloat16, jnp.float32, jnp.float32)
    want_dx, want_da, want_db = numpy_grads(x, a, g)
    np.testing.assert_allclose(np.asarray(dx, np.float64), want_dx, rtol=1e-2, atol=1e-2)  # bf16 rounding
    # Summed in float32 over bfloat16 inputs: float32 rounding only, far tighter than a bfloat16 sum.
    for got, want in ((da, want_da), (db, want_db)):
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0, atol=1e-5 * np.abs(want).max() + 1e-5)


def test_bfloat16_sums_are_more_exact_than_autodiffs_bfloat16_sums():
    # 63 * 64 terms of 1 + 2^-7: 4063.5 exactly, which bfloat16 (8 significant bits) cannot hold.
    x = jnp.ones((63, 64, 4), jnp.bfloat16)
    a, b = jnp.ones(4), jnp.zeros(4)
    g = jnp.full((63, 64, 4), 1.0 + 2**-7, jnp.bfloat16)
    want = 63 * 64 * (1.0 + 2**-7)
    _, da, db = jax.vjp(channel_affine, x, a, b)[1](g)
    np.testing.assert_allclose(np.asarray([da, db]), want, rtol=1e-6)


def test_bfloat16_on_cpu_takes_the_custom_gradient_and_float32_autodiffs():
    assert jax.default_backend() == "cpu"
    x16 = jnp.ones((2, 3, 4), jnp.bfloat16)
    a, b = jnp.ones(4), jnp.zeros(4)
    assert "custom_vjp_call" in str(jax.make_jaxpr(channel_affine)(x16, a, b))
    assert "custom_vjp_call" not in str(jax.make_jaxpr(channel_affine)(x16.astype(jnp.float32), a, b))


def test_float32_gradients_match_the_hand_derived_ones():
    # y = x * a + b per channel: dx = g * a, da = sum over pixels of g * x, db = sum of g
    # (float64 NumPy); float32 keeps autodiff's own sums, exact up to float32 rounding.
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 5, 6, 3)), jnp.float32)
    a, b = jnp.asarray(rng.normal(size=3), jnp.float32), jnp.asarray(rng.normal(size=3), jnp.float32)
    g = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    dx, da, db = jax.jit(jax.vjp(channel_affine, x, a, b)[1])(g)
    assert (dx.dtype, da.dtype, db.dtype) == (jnp.float32,) * 3
    want_dx, want_da, want_db = numpy_grads(x, a, g)
    np.testing.assert_allclose(np.asarray(dx), want_dx, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(da), want_da, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(db), want_db, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_add_bias_values_and_gradients(dtype):
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(3, 6, 5, 4)), dtype)
    b = jnp.asarray(rng.normal(size=4), jnp.float32)
    g = jnp.asarray(rng.normal(size=x.shape), dtype)
    y, vjp = jax.vjp(add_bias, x, b)
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(x + b.astype(dtype), np.float32))
    dx, db = jax.jit(vjp)(g)
    assert (dx.dtype, db.dtype) == (dtype, jnp.float32)
    np.testing.assert_array_equal(np.asarray(dx, np.float32), np.asarray(g, np.float32))
    want = np.sum(np.asarray(g, np.float64), axis=(0, 1, 2))
    np.testing.assert_allclose(np.asarray(db, np.float64), want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_add_bias_gradient_does_not_stall_in_bfloat16():
    g = jnp.full((63, 64, 4), 1.0 + 2**-7, jnp.bfloat16)
    _, db = jax.vjp(add_bias, jnp.zeros_like(g), jnp.zeros(4))[1](g)
    np.testing.assert_allclose(np.asarray(db), 63 * 64 * (1.0 + 2**-7), rtol=1e-6)
