"""MU-Layer: cost volume (Eq. 1), soft-argmin, uncertainty (Eq. 2), Table 1 motion net."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from munet_jax.models.config import munet_config, tiny_munet_config
from munet_jax.models.cost_volume import cost_volume, soft_argmin, uncertainty_map
from munet_jax.models.mu_layer import MotionNet, MotionUncertaintyLayer

METHODS = ("rows", "allpairs", "auto")


def random_params(module, *args, seed=0):
    """Parameters of `module` drawn in NumPy with the shapes of its init (via eval_shape).

    Compiling flax's PRNG initialisers costs seconds per shape on this CPU; the
    tests need parameters, not the initialisers. Kernels ~ N(0, 1/fan_in),
    biases ~ N(0, 0.1^2) (non-zero, so a misplaced ReLU shows).
    """
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)["params"]
    rng = np.random.default_rng(seed)

    def draw(s):
        scale = 0.1 if len(s.shape) == 1 else 1.0 / np.sqrt(np.prod(s.shape[:-1]))
        return jnp.asarray(scale * rng.normal(size=s.shape), jnp.float32)

    return jax.tree_util.tree_map(draw, shapes)


def _numpy_cost_at(f_query, f_ref, window, y, x):
    """Reference for one position: loops over the candidate grid (dy outer, dx inner).

    Returns cost [B, window^2] (nan where invalid) and valid [window^2].
    """
    b, h, w, _ = f_query.shape
    r = window // 2
    cost = np.full((b, window * window), np.nan)
    valid = np.zeros(window * window, bool)
    k = 0
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            yy, xx = y + dy, x + dx
            if 0 <= yy < h and 0 <= xx < w:
                valid[k] = True
                for i in range(b):
                    a = f_query[i, y, x].astype(np.float64)
                    c = f_ref[i, yy, xx].astype(np.float64)
                    cost[i, k] = a @ c / np.sqrt((a @ a) * (c @ c))
            k += 1
    return cost, valid


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("hw,window", [((7, 10), 5), ((4, 5), 7)])  # second: window wider than the map
def test_cost_volume_matches_numpy_loops(method, hw, window):
    rng = np.random.default_rng(0)
    h, w = hw
    f_query = rng.normal(size=(2, h, w, 6)).astype(np.float32)
    f_ref = rng.normal(size=(2, h, w, 6)).astype(np.float32)
    cost, valid = cost_volume(jnp.asarray(f_query), jnp.asarray(f_ref), window, method=method)
    assert cost.shape == (2, h, w, window * window) and cost.dtype == jnp.float32
    assert valid.shape == (h, w, window * window) and valid.dtype == jnp.bool_
    cost, valid = np.asarray(cost), np.asarray(valid)
    assert np.all(np.isfinite(cost))
    corners = [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)]
    edges = [(0, w // 2), (h - 1, w // 2), (h // 2, 0), (h // 2, w - 1), (1, 1)]
    random = [tuple(p) for p in zip(rng.integers(0, h, 4), rng.integers(0, w, 4))]
    for y, x in corners + edges + random:
        want, want_valid = _numpy_cost_at(f_query, f_ref, window, y, x)
        np.testing.assert_array_equal(valid[y, x], want_valid, err_msg=f"valid at {(y, x)}")
        np.testing.assert_allclose(cost[:, y, x][:, want_valid], want[:, want_valid], atol=2e-6, err_msg=f"{(y, x)}")
    # Count of valid candidates over the whole map, worked out per axis.
    r = window // 2
    per_axis = lambda n: sum(min(n - 1, p + r) - max(0, p - r) + 1 for p in range(n))
    assert valid.sum() == per_axis(h) * per_axis(w)


@pytest.mark.parametrize("window", [4, 0, -3, 2.5, True])
def test_cost_volume_rejects_bad_window(window):
    f = jnp.ones((1, 4, 4, 3))
    with pytest.raises(ValueError, match="window"):
        cost_volume(f, f, window)


def test_cost_volume_rejects_mismatched_frames():
    with pytest.raises(ValueError, match="same"):
        cost_volume(jnp.ones((1, 4, 4, 3)), jnp.ones((1, 4, 5, 3)), 3)


def _naive_jnp_cost(f_query, f_ref, window):
    """Independent differentiable formulation: one shifted copy of F_{t-1} per candidate."""
    _, h, w, _ = f_query.shape
    r = window // 2
    unit = lambda f: f / jnp.linalg.norm(f, axis=-1, keepdims=True)
    q, ref = unit(f_query), jnp.pad(unit(f_ref), [(0, 0), (r, r), (r, r), (0, 0)])
    out = [jnp.sum(q * ref[:, r + dy : r + dy + h, r + dx : r + dx + w], -1) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
    return jnp.stack(out, axis=-1)


def test_cost_volume_gradients_agree_across_formulations():
    rng = np.random.default_rng(1)
    fq, fr = (jnp.asarray(rng.normal(size=(2, 5, 7, 4)), jnp.float32) for _ in range(2))
    weights = jnp.asarray(rng.normal(size=(2, 5, 7, 9)), jnp.float32)
    valid = cost_volume(fq, fr, 3)[1]

    def loss(fn):
        return lambda a, b: jnp.sum(jnp.where(valid, fn(a, b) * weights, 0.0))

    grad = lambda fn: jax.jit(jax.grad(loss(fn), argnums=(0, 1)))(fq, fr)
    want = grad(lambda a, b: _naive_jnp_cost(a, b, 3))
    for method in ("rows", "allpairs"):
        got = grad(lambda a, b: cost_volume(a, b, 3, method=method)[0])
        for g, x in zip(got, want):
            np.testing.assert_allclose(g, x, atol=1e-5, err_msg=method)


def test_soft_argmin_and_uncertainty_against_numpy():
    rng = np.random.default_rng(2)
    window, tau = 3, 0.7
    cost = rng.uniform(-1, 1, size=(2, 3, 4, 9)).astype(np.float32)
    valid = rng.random((3, 4, 9)) < 0.6
    valid[..., 4] = True  # the centre is always valid
    cost_junk = np.where(valid, cost, 50.0).astype(np.float32)  # invalid entries must be ignored
    disp = np.asarray(soft_argmin(jnp.asarray(cost_junk), jnp.asarray(valid), window, tau))
    unc = np.asarray(uncertainty_map(jnp.asarray(cost_junk), jnp.asarray(valid)))
    for b in range(2):
        for y in range(3):
            for x in range(4):
                ks = np.flatnonzero(valid[y, x])
                e = np.exp(cost[b, y, x, ks] / tau)
                p = e / e.sum()
                dx, dy = ks % 3 - 1, ks // 3 - 1
                np.testing.assert_allclose(disp[b, y, x], [p @ dx, p @ dy], atol=1e-5)
                np.testing.assert_allclose(unc[b, y, x, 0], cost[b, y, x, ks].max(), atol=1e-7)
    with pytest.raises(ValueError, match="tau"):
        soft_argmin(jnp.asarray(cost), jnp.asarray(valid), window, 0.0)


@pytest.mark.parametrize("method", ("rows", "allpairs"))
def test_soft_argmin_recovers_a_known_shift(method):
    rng = np.random.default_rng(3)
    window, r = 5, 2
    f_prev = rng.normal(size=(1, 11, 13, 16)).astype(np.float32)
    # F_t(y, x) = F_{t-1}(y - 2, x + 1): the content moved down 2 and left 1, so the
    # best match of F_t(x) is F_{t-1}(x + u) with u = (dx, dy) = (+1, -2).
    f_cur = np.roll(f_prev, shift=(2, -1), axis=(1, 2))
    cost, valid = cost_volume(jnp.asarray(f_cur), jnp.asarray(f_prev), window, method=method)
    disp = np.asarray(soft_argmin(cost, valid, window, 0.01))
    inner = disp[0, r:-r, r:-r]  # whole window inside the map and away from np.roll's wrap-around
    np.testing.assert_allclose(inner[..., 0], 1.0, atol=1e-3)
    np.testing.assert_allclose(inner[..., 1], -2.0, atol=1e-3)


def test_uncertainty_is_one_for_identical_frames_and_lower_where_they_differ():
    rng = np.random.default_rng(4)
    f_prev = rng.normal(size=(1, 9, 9, 16)).astype(np.float32)
    cost, valid = cost_volume(jnp.asarray(f_prev), jnp.asarray(f_prev), 5)
    np.testing.assert_allclose(uncertainty_map(cost, valid), 1.0, atol=1e-5)
    f_cur = f_prev.copy()
    f_cur[0, 2:5, 3:7] += 2.0 * rng.normal(size=(3, 4, 16))
    unc = np.asarray(uncertainty_map(*cost_volume(jnp.asarray(f_cur), jnp.asarray(f_prev), 5)))[0, ..., 0]
    changed = np.zeros((9, 9), bool)
    changed[2:5, 3:7] = True
    np.testing.assert_allclose(unc[~changed], 1.0, atol=1e-5)
    assert unc[changed].max() < 0.95


def _numpy_conv_same(x, kernel, bias):
    """x [H, W, Cin], kernel [k, k, Cin, Cout]: zero-padded stride-1 correlation, offset by offset."""
    k = kernel.shape[0]
    p = k // 2
    xp = np.pad(x, [(p, p), (p, p), (0, 0)])
    h, w = x.shape[:2]
    out = np.zeros((h, w, kernel.shape[-1])) + bias
    for i in range(k):
        for j in range(k):
            out += xp[i : i + h, j : j + w] @ kernel[i, j]
    return out


def test_motion_net_matches_numpy_convs():
    layers = ((3, 3), (4, 1), (4, 3))
    net = MotionNet(layers=layers, out_features=5)
    x = np.random.default_rng(5).normal(size=(1, 6, 7, 3)).astype(np.float32)
    params = random_params(net, jnp.asarray(x))
    got = np.asarray(net.apply({"params": params}, jnp.asarray(x)))[0]
    h = x[0].astype(np.float64)
    for i in range(len(layers) + 1):
        layer = params[f"conv{i + 1}"]
        h = _numpy_conv_same(h, np.asarray(layer["kernel"], np.float64), np.asarray(layer["bias"], np.float64))
        if i < len(layers):
            h = np.maximum(h, 0.0)
    assert got.shape == (6, 7, 5)
    assert (h < 0).any()  # the last layer is linear: negative outputs survive
    np.testing.assert_allclose(got, h, atol=1e-4)


def _mu_layer(config, **overrides):
    m = config.mu_layer
    kwargs = dict(window=m.window, reduction=m.reduction, tau=m.tau, motion_net=tuple(tuple(l) for l in m.motion_net))
    return MotionUncertaintyLayer(**{**kwargs, **overrides})


def test_table1_layers_of_the_full_config():
    layer = _mu_layer(munet_config())
    f = jax.ShapeDtypeStruct((1, 30, 54, 1024), jnp.float32)
    params = jax.eval_shape(lambda a, b: layer.init(jax.random.PRNGKey(0), a, b), f, f)["params"]
    net = params["motion_net"]
    got = []
    for i in range(len(net)):
        k = net[f"conv{i + 1}"]["kernel"].shape  # [kh, kw, Cin, Cout]
        assert k[0] == k[1]
        got.append((k[2], k[3], k[0], 1))
    table1 = [(3, 3, 7, 1), (3, 16, 1, 1), (16, 16, 3, 1), (16, 32, 1, 1),
              (32, 32, 3, 1), (32, 32, 1, 1), (32, 64, 3, 1), (64, 1024, 1, 1)]  # fmt: skip
    assert got == table1
    assert params["reduce"]["kernel"].shape == (1, 1, 1024, 256)  # D -> D/4
    assert set(params) == {"reduce", "motion_net"}
    # Stride 1 and 'same' padding: every size keeps the feature map's shape.
    for hw in [(30, 54), (68, 120), (25, 25)]:
        f = jax.ShapeDtypeStruct((1, *hw, 1024), jnp.float32)
        out = jax.eval_shape(lambda p, a, b: layer.apply({"params": p}, a, b), params, f, f)
        assert out["motion"].shape == (1, *hw, 1024)
        assert out["displacement"].shape == (1, *hw, 2) and out["uncertainty"].shape == (1, *hw, 1)


def _tiny_inputs(seed=6, d=32):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.normal(size=(2, 6, 8, d)), jnp.float32) for _ in range(2))


def test_mu_layer_composes_reduction_cost_volume_and_motion_net():
    config = tiny_munet_config()
    layer = _mu_layer(config, tau=0.5)
    f_prev, f_cur = _tiny_inputs()
    params = random_params(layer, f_prev, f_cur)
    out, state = layer.apply({"params": params}, f_prev, f_cur, mutable=["intermediates"])
    # The same 1x1 reduction (x @ K + b) applied to each frame in NumPy, then the cost volume.
    k = np.asarray(params["reduce"]["kernel"])[0, 0]
    bias = np.asarray(params["reduce"]["bias"])
    assert k.shape == (32, 8)
    rq, rp = np.asarray(f_cur) @ k + bias, np.asarray(f_prev) @ k + bias
    cost, valid = cost_volume(jnp.asarray(rq), jnp.asarray(rp), 5)
    np.testing.assert_allclose(out["displacement"], soft_argmin(cost, valid, 5, 0.5), atol=1e-5)
    np.testing.assert_allclose(out["uncertainty"], uncertainty_map(cost, valid), atol=1e-5)
    motion_input = state["intermediates"]["motion_input"][0]
    np.testing.assert_array_equal(motion_input, jnp.concatenate([out["displacement"], out["uncertainty"]], -1))
    net = MotionNet(layers=tuple(tuple(l) for l in config.mu_layer.motion_net), out_features=32)
    np.testing.assert_allclose(out["motion"], net.apply({"params": params["motion_net"]}, motion_input), atol=1e-5)


@pytest.mark.parametrize("use_displacement,use_uncertainty", [(False, True), (True, False), (False, False)])
def test_ablation_switches_zero_only_the_named_input(use_displacement, use_uncertainty):
    config = tiny_munet_config()
    f_prev, f_cur = _tiny_inputs(7)
    full = _mu_layer(config)
    params = random_params(full, f_prev, f_cur)
    ablated = _mu_layer(config, use_displacement=use_displacement, use_uncertainty=use_uncertainty)
    # Same parameter tree: the switches keep Table 1's shapes.
    shapes = lambda p: jax.tree_util.tree_map(jnp.shape, p)
    assert shapes(random_params(ablated, f_prev, f_cur)) == shapes(params)
    ref, ref_state = full.apply({"params": params}, f_prev, f_cur, mutable=["intermediates"])
    out, state = ablated.apply({"params": params}, f_prev, f_cur, mutable=["intermediates"])
    ref_in = np.asarray(ref_state["intermediates"]["motion_input"][0])
    got_in = np.asarray(state["intermediates"]["motion_input"][0])
    assert np.abs(ref_in[..., :2]).max() > 0 and np.abs(ref_in[..., 2]).max() > 0
    want_in = ref_in.copy()
    if not use_displacement:
        want_in[..., :2] = 0.0
    if not use_uncertainty:
        want_in[..., 2] = 0.0
    np.testing.assert_array_equal(got_in, want_in)
    # Reported maps are unaffected; the motion feature changes.
    np.testing.assert_array_equal(out["displacement"], ref["displacement"])
    np.testing.assert_array_equal(out["uncertainty"], ref["uncertainty"])
    assert np.abs(np.asarray(out["motion"]) - np.asarray(ref["motion"])).max() > 1e-6


def test_mu_layer_bfloat16_keeps_matching_in_float32():
    layer = _mu_layer(tiny_munet_config(), dtype=jnp.bfloat16)
    f_prev, f_cur = _tiny_inputs(8)
    out = layer.apply({"params": random_params(layer, f_prev, f_cur)}, f_prev, f_cur)
    assert out["motion"].dtype == jnp.bfloat16
    assert out["displacement"].dtype == jnp.float32 and out["uncertainty"].dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(out["motion"], np.float32)))


def test_mu_layer_rejects_bad_inputs():
    layer = _mu_layer(tiny_munet_config())
    f = jnp.ones((1, 4, 4, 32))
    with pytest.raises(ValueError, match="same shape|one shape"):
        layer.init(jax.random.PRNGKey(0), f, jnp.ones((1, 4, 5, 32)))
    with pytest.raises(ValueError, match="reduction"):
        _mu_layer(tiny_munet_config(), reduction=5).init(jax.random.PRNGKey(0), f, f)
