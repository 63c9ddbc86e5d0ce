"""MSAM (Eq. 3), addition fusion (Table 4 f), and gradients through MU-Layer + MSAM."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from munet_jax.models.config import tiny_munet_config
from munet_jax.models.msam import AdditionFusion, MotionAwareSpatialAttention, make_fusion
from munet_jax.models.mu_layer import MotionUncertaintyLayer


def random_params(module, *args, seed=0):
    """NumPy-drawn parameters with the shapes of `module.init` (flax's PRNG initialisers are slow to compile here)."""
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)["params"]
    rng = np.random.default_rng(seed)

    def draw(s):
        scale = 0.1 if len(s.shape) == 1 else 1.0 / np.sqrt(np.prod(s.shape[:-1]))
        return jnp.asarray(scale * rng.normal(size=s.shape), jnp.float32)

    return jax.tree_util.tree_map(draw, shapes)


def _features(seed, shape=(2, 5, 6, 12)):
    rng = np.random.default_rng(seed)
    return tuple(rng.normal(size=shape).astype(np.float32) for _ in range(2))


def test_msam_matches_equation_3_in_numpy():
    f_s, f_m = _features(0)
    msam = make_fusion("attention", jnp.float32)
    assert isinstance(msam, MotionAwareSpatialAttention)
    params = random_params(msam, f_s, f_m, seed=1)
    out, attention = msam.apply({"params": params}, jnp.asarray(f_s), jnp.asarray(f_m))
    kernel = np.asarray(params["attention_conv"]["kernel"], np.float64)  # [1, 1, D, 1]
    bias = np.asarray(params["attention_conv"]["bias"], np.float64)
    assert kernel.shape == (1, 1, 12, 1)
    # Conv1x1 to one channel = a dot product with the kernel's column at every pixel.
    logits = np.einsum("bhwd,d->bhw", f_m.astype(np.float64), kernel[0, 0, :, 0]) + bias[0]
    a = 1.0 / (1.0 + np.exp(-logits))
    want = f_s * a[..., None] + f_s
    assert attention.shape == (2, 5, 6, 1) and attention.dtype == jnp.float32
    np.testing.assert_allclose(attention[..., 0], a, atol=1e-6)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    # The attention depends on the motion feature only; F_s is passed through the gate.
    out2, attention2 = msam.apply({"params": params}, jnp.asarray(2.0 * f_s), jnp.asarray(f_m))
    np.testing.assert_array_equal(attention2, attention)
    np.testing.assert_allclose(out2, 2.0 * np.asarray(out), rtol=1e-6)


def test_addition_fusion_is_exactly_the_sum():
    f_s, f_m = _features(2)
    add = make_fusion("add", jnp.float32)
    assert isinstance(add, AdditionFusion)
    variables = add.init(jax.random.PRNGKey(0), jnp.asarray(f_s), jnp.asarray(f_m))
    assert not variables  # no parameters at all
    out, attention = add.apply(variables, jnp.asarray(f_s), jnp.asarray(f_m))
    assert attention is None
    np.testing.assert_array_equal(out, f_s + f_m)


def test_make_fusion_rejects_unknown_kinds():
    with pytest.raises(ValueError, match="'concat'.*attention.*add"):
        make_fusion("concat", jnp.float32)


@pytest.mark.parametrize("kind", ["attention", "add"])
def test_fusion_rejects_mismatched_features(kind):
    with pytest.raises(ValueError, match="out_features"):
        make_fusion(kind, jnp.float32).init(jax.random.PRNGKey(0), jnp.ones((1, 4, 4, 8)), jnp.ones((1, 4, 4, 6)))


def test_msam_bfloat16():
    f_s, f_m = (jnp.asarray(f, jnp.bfloat16) for f in _features(3))
    msam = make_fusion("attention", jnp.bfloat16)
    out, attention = msam.apply({"params": random_params(msam, f_s, f_m)}, f_s, f_m)
    assert out.dtype == jnp.bfloat16 and attention.dtype == jnp.float32


@pytest.mark.parametrize("tau", [1.0, 0.1])
def test_gradients_reach_every_parameter_of_mu_layer_and_msam(tau):
    config = tiny_munet_config()
    d = 16 * config.backbone.width  # the tiny res4 width (128)
    m = config.mu_layer
    mu = MotionUncertaintyLayer(
        window=m.window, reduction=m.reduction, tau=tau, motion_net=tuple(tuple(layer) for layer in m.motion_net)
    )
    msam = MotionAwareSpatialAttention()
    rng = np.random.default_rng(4)
    f_prev, f_cur = (jnp.asarray(rng.normal(size=(1, 6, 7, d)), jnp.float32) for _ in range(2))
    weights = jnp.asarray(rng.normal(size=(1, 6, 7, d)), jnp.float32)
    params = {
        "mu": random_params(mu, f_prev, f_cur, seed=5),
        "msam": random_params(msam, f_cur, f_cur, seed=6),
    }

    def loss(p):
        motion = mu.apply({"params": p["mu"]}, f_prev, f_cur)
        fused, attention = msam.apply({"params": p["msam"]}, f_cur, motion["motion"])
        return jnp.sum(fused * weights) + jnp.sum(attention)

    grads = jax.jit(jax.grad(loss))(params)
    names = []
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        g = np.asarray(g)
        name = jax.tree_util.keystr(path)
        names.append(name)
        assert np.all(np.isfinite(g)), name
        assert np.abs(g).max() > 0, f"no gradient reaches {name}"
    # Every layer is covered: reduction, 8 motion-net convs, the attention conv (kernel + bias each).
    assert len(names) == 2 * (1 + 8 + 1)
