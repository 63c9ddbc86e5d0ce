"""The stem's max-pool: forward as flax's, gradient (elementwise on CPU) as select-and-scatter's.

References: flax `nn.max_pool` and its autodiff gradient (jax's select-and-scatter), and
a NumPy loop that sends each window's cotangent to the first maximum in row-major order
(the rule jax's `>=` selection gives; PyTorch's CPU kernel picks the same one).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from munet_jax.models import max_pool


def flax_pool(x):
    return nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def numpy_pool_grad(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """dL/dx of the 3x3 / 2 / pad 1 max-pool: each window's g to its first maximum."""
    b, h, w, c = x.shape
    dx = np.zeros(x.shape, np.float64)
    for n in range(b):
        for oi in range(g.shape[1]):
            for oj in range(g.shape[2]):
                for ch in range(c):
                    best, where = -np.inf, None
                    for i in range(3):
                        for j in range(3):
                            r, s = 2 * oi - 1 + i, 2 * oj - 1 + j
                            if 0 <= r < h and 0 <= s < w and (where is None or x[n, r, s, ch] > best):
                                best, where = x[n, r, s, ch], (r, s)
                    dx[n, where[0], where[1], ch] += g[n, oi, oj, ch]
    return dx


def inputs(kind: str, shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype(np.float32)
    if kind == "relu":  # ReLU before the pool, as in the stem: many windows of equal zeros
        x = np.maximum(x - 0.5, 0)
    elif kind == "levels":  # few distinct values: ties inside windows at nonzero levels
        x = rng.integers(-2, 3, size=shape).astype(np.float32)
    return x


@pytest.mark.parametrize("shape", [(2, 8, 10, 3), (1, 7, 9, 2), (1, 1, 1, 1), (1, 2, 3, 1)])
@pytest.mark.parametrize("kind", ["normal", "relu", "levels"])
def test_forward_and_gradient_match_select_and_scatter(shape, kind):
    x = jnp.asarray(inputs(kind, shape))
    y = max_pool.max_pool_3x3_s2(x)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(flax_pool(x)))
    g = jnp.asarray(np.random.default_rng(1).normal(size=y.shape).astype(np.float32))
    ours = jax.jit(jax.vjp(max_pool._max_pool_elementwise_grad, x)[1])(g)[0]
    autodiff = jax.vjp(flax_pool, x)[1](g)[0]
    reference = numpy_pool_grad(np.asarray(x), np.asarray(g))
    # Overlapping windows add up to 4 cotangents at one position: the order of the adds may differ.
    np.testing.assert_allclose(np.asarray(ours), reference, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(autodiff), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(ours) != 0, reference != 0)  # the same positions win


def test_gradient_in_bfloat16_and_under_jit_of_grad():
    x = jnp.asarray(inputs("relu", (2, 12, 14, 4), seed=3), jnp.bfloat16)
    w = jnp.asarray(np.random.default_rng(4).normal(size=(2, 6, 7, 4)), jnp.bfloat16)

    def loss(pool, xx):
        return (pool(xx).astype(jnp.float32) * w.astype(jnp.float32)).sum()

    ours = jax.jit(jax.grad(lambda xx: loss(max_pool._max_pool_elementwise_grad, xx)))(x)
    autodiff = jax.jit(jax.grad(lambda xx: loss(flax_pool, xx)))(x)
    assert ours.dtype == jnp.bfloat16
    reference = numpy_pool_grad(np.asarray(x, np.float32), np.asarray(w, np.float32))
    np.testing.assert_allclose(np.asarray(ours, np.float32), reference, rtol=0, atol=0.05)
    np.testing.assert_allclose(np.asarray(ours, np.float32), np.asarray(autodiff, np.float32), rtol=0, atol=0.05)


def test_cpu_uses_the_elementwise_gradient():
    """On CPU the public function has no select-and-scatter / reduce-window in its gradient."""
    x = jnp.ones((1, 8, 8, 2))
    hlo = jax.jit(jax.grad(lambda xx: max_pool.max_pool_3x3_s2(xx).sum())).lower(x).as_text()
    assert jax.default_backend() == "cpu"
    assert "select_and_scatter" not in hlo
    flax_hlo = jax.jit(jax.grad(lambda xx: flax_pool(xx).sum())).lower(x).as_text()
    assert "select_and_scatter" in flax_hlo  # the check can tell the two apart


def test_bfloat16_pools_in_float32_on_cpu_exactly():
    # On XLA:CPU a bfloat16 input is pooled in float32 (its bfloat16 reduce-window is slow): the
    # same values (max commutes with the widening cast), bfloat16 out, the same gradient.
    x = jnp.asarray(inputs("levels", (2, 9, 12, 3), seed=5) * 0.37, jnp.bfloat16)
    y = max_pool.max_pool_3x3_s2(x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(flax_pool(x), np.float32))
    if jax.default_backend() == "cpu":
        assert "f32" in str(jax.make_jaxpr(max_pool.max_pool_3x3_s2)(x))
    g = jnp.asarray(np.random.default_rng(6).normal(size=y.shape), jnp.bfloat16)
    got = jax.vjp(max_pool.max_pool_3x3_s2, x)[1](g)[0]
    reference = numpy_pool_grad(np.asarray(x, np.float32), np.asarray(g, np.float32))
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), reference, rtol=0, atol=0.05)
    np.testing.assert_array_equal(np.asarray(got, np.float32) != 0, reference != 0)
