"""The top-level MUNet: entry points, shapes, padding, ablation switches, gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from munet_jax.losses import segmentation_loss
from munet_jax.models.config import munet_config, tiny_munet_config
from munet_jax.models.munet import build_model, crop_to, init_variables, pad_spatial, padding_for


def _tiny(**overrides):
    config = tiny_munet_config()
    for dotted, value in overrides.items():
        node = config
        *path, leaf = dotted.split(".")
        for name in path:
            node = node[name]
        node[leaf] = value
    return config


@functools.lru_cache(maxsize=None)
def _model_and_variables(overrides=()):
    model = build_model(_tiny(**dict(overrides)))
    variables = init_variables(model, 0, image_hw=(48, 64), num_objects=2)
    return model, variables


def _inputs(rng, hw=(50, 70), k=2, t=2):
    images = rng.integers(0, 256, size=(3, 1, *hw, 3)).astype(np.uint8)  # I_1, I_{t-1}, I_t
    masks = (rng.random((1, k, *hw)) > 0.5).astype(np.float32)
    return images, masks


@functools.partial(jax.jit, static_argnums=0)
def _segment(model, variables, images, masks, object_valid, mem_valid=None):
    """Writes frame 1 to memory, segments frame 3 with frame 2 as I_{t-1}."""
    keys, values = model.apply(variables, images[0], masks, method=model.encode_memory)
    prev = model.apply(variables, images[1], method=model.encode_query)
    query = model.apply(variables, images[2], method=model.encode_query)
    if mem_valid is None:
        mem_valid = jnp.broadcast_to(object_valid[:, :, None], object_valid.shape + (1,))
    return model.apply(
        variables, query, prev["res4"], keys[:, :, None], values[:, :, None], mem_valid, object_valid,
        images.shape[2:4], method=model.segment,
    )


def test_padding_round_trip():
    x = jnp.arange(2 * 37 * 51 * 3, dtype=jnp.float32).reshape(2, 37, 51, 3)
    padded = pad_spatial(x)
    assert padded.shape == (2, 48, 64, 3)
    np.testing.assert_array_equal(crop_to(padded, (37, 51)), x)
    assert padding_for(480, 854) == ((0, 0), (5, 5))


def test_segment_shapes_and_probabilities():
    model, variables = _model_and_variables()
    rng = np.random.default_rng(0)
    images, masks = _inputs(rng)
    out = _segment(model, variables, images, masks, jnp.ones((1, 2), bool))
    assert out["logits"].shape == (1, 50, 70, 3)
    assert out["fg_probs"].shape == (1, 2, 50, 70)
    probs = jax.nn.softmax(out["logits"], axis=-1)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    h, w = 64 // 16, 80 // 16  # padded 50x70 -> 64x80
    assert out["displacement"].shape == (1, h, w, 2)
    assert out["uncertainty"].shape == (1, h, w, 1)
    assert out["attention"].shape == (1, h, w, 1)
    assert np.all(np.isfinite(out["logits"]))


def test_padded_object_slot_changes_nothing():
    """An invalid object slot leaves the other objects' probabilities as if it were absent."""
    model, variables = _model_and_variables()
    rng = np.random.default_rng(1)
    images, masks = _inputs(rng, k=2)
    two = _segment(model, variables, images, masks, jnp.array([[True, False]]))
    one = _segment(model, variables, images, masks[:, :1], jnp.array([[True]]))
    p_two = jax.nn.softmax(two["logits"], -1)
    p_one = jax.nn.softmax(one["logits"], -1)
    np.testing.assert_allclose(p_two[..., :2], p_one, atol=1e-6)
    assert float(p_two[..., 2].max()) < 1e-6


def test_invalid_memory_slots_have_no_effect():
    model, variables = _model_and_variables()
    rng = np.random.default_rng(2)
    images, masks = _inputs(rng)
    valid = jnp.ones((1, 2), bool)
    keys, values = model.apply(variables, images[0], masks, method=model.encode_memory)
    junk_k = jnp.asarray(rng.normal(size=keys.shape) * 100, keys.dtype)
    junk_v = jnp.asarray(rng.normal(size=values.shape) * 100, values.dtype)
    prev = model.apply(variables, images[1], method=model.encode_query)
    query = model.apply(variables, images[2], method=model.encode_query)
    seg = functools.partial(model.apply, variables, method=model.segment)
    one_slot = seg(query, prev["res4"], keys[:, :, None], values[:, :, None], jnp.ones((1, 2, 1), bool), valid, (50, 70))
    two_slots = seg(
        query, prev["res4"],
        jnp.stack([keys, junk_k], axis=2), jnp.stack([values, junk_v], axis=2),
        jnp.array([[[True, False], [True, False]]]), valid, (50, 70),
    )
    np.testing.assert_allclose(one_slot["logits"], two_slots["logits"], atol=1e-5)


def test_baseline_switch_removes_mu_layer():
    base_model, base_vars = _model_and_variables((("mu_layer.enabled", False),))
    full_model, full_vars = _model_and_variables()
    assert "mu_layer" in full_vars["params"] and "fusion" in full_vars["params"]
    assert "mu_layer" not in base_vars["params"] and "fusion" not in base_vars["params"]
    # Everything else has the same structure.
    strip = lambda p: {k: v for k, v in p.items() if k not in ("mu_layer", "fusion")}
    assert jax.tree_util.tree_structure(strip(full_vars["params"])) == jax.tree_util.tree_structure(
        base_vars["params"]
    )
    rng = np.random.default_rng(3)
    images, masks = _inputs(rng)
    out = _segment(base_model, base_vars, images, masks, jnp.ones((1, 2), bool))
    assert float(jnp.abs(out["displacement"]).max()) == 0.0


def test_addition_fusion_switch():
    add_model, add_vars = _model_and_variables((("fusion", "add"),))
    assert "mu_layer" in add_vars["params"]
    assert "fusion" not in add_vars["params"]  # F_s + F_m has no parameters
    rng = np.random.default_rng(4)
    images, masks = _inputs(rng)
    out = _segment(add_model, add_vars, images, masks, jnp.ones((1, 2), bool))
    assert float(jnp.abs(out["attention"]).max()) == 0.0


def test_gradients_reach_mu_layer_and_msam():
    model, variables = _model_and_variables()
    rng = np.random.default_rng(5)
    images, masks = _inputs(rng, hw=(48, 64))
    labels = jnp.asarray(rng.integers(0, 3, size=(1, 48, 64)))
    valid = jnp.ones((1, 2), bool)

    def loss_fn(params):
        out = _segment(model, {**variables, "params": params}, images, masks, valid)
        return segmentation_loss(out["logits"], labels, valid)[0]

    grads = jax.jit(jax.grad(loss_fn))(variables["params"])
    for name in ("mu_layer", "fusion"):
        for path, g in jax.tree_util.tree_leaves_with_path(grads[name]):
            g = np.asarray(g)
            assert np.all(np.isfinite(g)), (name, path)
            assert np.abs(g).max() > 0, f"no gradient reaches {name}{jax.tree_util.keystr(path)}"


@pytest.mark.parametrize("hw", [(480, 854), (487, 863)])
def test_full_size_shapes(hw):
    """The paper's network at DAVIS 480p and at a size not divisible by 16, shapes only."""
    model = build_model(munet_config())
    images = jax.ShapeDtypeStruct((1, *hw, 3), jnp.uint8)
    masks = jax.ShapeDtypeStruct((1, 2, *hw), jnp.float32)
    valid = jax.ShapeDtypeStruct((1, 2), jnp.bool_)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images, images, images, masks, valid)
    out = jax.eval_shape(model.apply, variables, images, images, images, masks, valid)
    assert out["logits"].shape == (1, *hw, 3)
    hp, wp = -(-hw[0] // 16), -(-hw[1] // 16)
    assert out["uncertainty"].shape == (1, hp, wp, 1)
    keys, values = jax.eval_shape(
        functools.partial(model.apply, method=model.encode_memory), variables, images, masks
    )
    assert keys.shape == (1, 2, hp, wp, 128) and values.shape == (1, 2, hp, wp, 512)
