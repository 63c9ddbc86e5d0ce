"""ResNetEncoder: numerical equivalence with PyTorch, parameter counts, output sizes.

The PyTorch reference lives in tests/fixtures/ (made by scripts/make_resnet_fixture.py
with torch; these tests need no torch). Tolerance for the equivalence tests: every
element's absolute error <= 1e-5 * max|reference| of that output (scale-relative;
the reference is float64, JAX float32, and ReLU outputs near zero make a pure
elementwise relative bound meaningless).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from munet_jax.models.resnet import FrozenBatchNorm, ResNetEncoder, max_pool_3x3_s2
from munet_jax.pretrained import torchvision_resnet_to_flax

FIXTURES = Path(__file__).parent / "fixtures"
NARROW_WIDTH, NARROW_STAGES = 8, (1, 2, 1)  # as in scripts/make_resnet_fixture.py


@pytest.fixture(scope="module")
def fixture_arrays():
    state = load_file(str(FIXTURES / "resnet_narrow.safetensors"))
    return state, load_file(str(FIXTURES / "resnet_narrow_io.safetensors"))


@pytest.fixture(scope="module")
def narrow_apply():
    model = ResNetEncoder(stage_sizes=NARROW_STAGES, width=NARROW_WIDTH)
    return jax.jit(model.apply)


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def assert_matches_torch(out: dict, io: dict, suffix: str = "") -> None:
    assert sorted(out) == ["res2", "res3", "res4"]
    for name in ("res2", "res3", "res4"):
        ref = nchw_to_nhwc(io[name + suffix])
        got = np.asarray(out[name])
        assert got.shape == ref.shape, name
        scale = np.abs(ref).max()
        assert scale > 1.0  # a non-degenerate reference
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * scale, err_msg=name + suffix)


def test_matches_pytorch_rgb(fixture_arrays, narrow_apply):
    state, io = fixture_arrays
    variables = torchvision_resnet_to_flax(state, in_channels=3, stage_sizes=NARROW_STAGES)
    # apply without mutable=: frozen BN reads batch_stats and never writes them.
    out = narrow_apply(variables, nchw_to_nhwc(io["input"]))
    assert_matches_torch(out, io)


def test_enc_r_zero_mask_weights_reproduce_rgb_features(fixture_arrays, narrow_apply):
    state, io = fixture_arrays
    variables = torchvision_resnet_to_flax(state, in_channels=4, stage_sizes=NARROW_STAGES)
    # The mask channel (non-zero here) has no effect right after the import.
    out = narrow_apply(variables, nchw_to_nhwc(io["input_rgbm"]))
    assert_matches_torch(out, io)


def test_matches_pytorch_four_channels(fixture_arrays, narrow_apply):
    state, io = fixture_arrays
    variables = torchvision_resnet_to_flax(state, in_channels=4, stage_sizes=NARROW_STAGES)
    # Put PyTorch's mask-channel slice [O, 1, 7, 7] at input channel 3 of the HWIO kernel.
    kernel = np.array(variables["params"]["conv1"]["kernel"])
    kernel[:, :, 3, :] = io["mask_conv1_weight"][:, 0].transpose(1, 2, 0)
    variables["params"]["conv1"]["kernel"] = kernel
    out = narrow_apply(variables, nchw_to_nhwc(io["input_rgbm"]))
    assert_matches_torch(out, io, suffix="_rgbm")


def test_max_pool_pads_with_minus_infinity():
    # All-negative input: zero padding would put 0 on the border; PyTorch's pool ignores the pad.
    x = -1.0 - np.random.default_rng(0).random((1, 6, 7, 2)).astype(np.float32)
    got = np.asarray(max_pool_3x3_s2(jnp.asarray(x)))
    h, w = (6 - 1) // 2 + 1, (7 - 1) // 2 + 1  # floor((n + 2 - 3) / 2) + 1
    ref = np.empty((1, h, w, 2), np.float32)
    for i in range(h):
        for j in range(w):
            rows = slice(max(2 * i - 1, 0), 2 * i + 2)
            cols = slice(max(2 * j - 1, 0), 2 * j + 2)
            ref[0, i, j] = x[0, rows, cols].max(axis=(0, 1))
    np.testing.assert_array_equal(got, ref)


# ---------------------------------------------------------------- full size, via eval_shape


def bottleneck_params(inplanes: int, planes: int, projection: bool) -> int:
    """torchvision Bottleneck: 3 convs (no bias) + 3 BN affines (+ projection conv + BN)."""
    n = inplanes * planes + 9 * planes * planes + planes * 4 * planes
    n += 2 * (planes + planes + 4 * planes)
    if projection:
        n += inplanes * 4 * planes + 2 * 4 * planes
    return n


def stage_params(inplanes: int, planes: int, blocks: int) -> int:
    return bottleneck_params(inplanes, planes, True) + (blocks - 1) * bottleneck_params(4 * planes, planes, False)


def count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def full_shapes():
    def init(c):
        return jax.eval_shape(ResNetEncoder().init, jax.random.key(0), jnp.zeros((1, 64, 64, c)))

    return {3: init(3), 4: init(4)}


def test_full_size_parameter_counts(full_shapes):
    stem = 3 * 64 * 7 * 7 + 2 * 64
    layers = [stage_params(64, 64, 3), stage_params(256, 128, 4), stage_params(512, 256, 6)]
    layer4 = stage_params(1024, 512, 3)
    fc = 2048 * 1000 + 1000
    # The published torchvision resnet50 total ties the formulas to the real network.
    assert stem + sum(layers) + layer4 + fc == 25_557_032
    assert (layer4, fc) == (14_964_736, 2_049_000)
    enc_q = stem + sum(layers)
    assert enc_q == 8_543_296

    assert count(full_shapes[3]["params"]) == enc_q
    assert count(full_shapes[4]["params"]) == enc_q + 64 * 7 * 7  # Enc-R: the mask channel's stem weights
    # Running statistics: one mean and one var per BN channel (= per scale), outside 'params'.
    for c in (3, 4):
        params, stats = full_shapes[c]["params"], full_shapes[c]["batch_stats"]
        assert set(jax.tree.leaves(jax.tree.map(lambda x: str(x.dtype), params))) == {"float32"}
        leaves = jax.tree_util.tree_leaves_with_path(params)
        scales = sum(int(np.prod(x.shape)) for p, x in leaves if p[-1].key == "scale")
        assert count(stats) == 2 * scales


def pytorch_size(n: int, kernel: int, stride: int, pad: int) -> int:
    return (n + 2 * pad - kernel) // stride + 1  # torch.nn.Conv2d / MaxPool2d output size (floor)


@pytest.mark.parametrize("hw", [(480, 854), (481, 855), (37, 53)])
def test_full_size_output_shapes(hw):
    # PyTorch's floor formula along the path stem conv -> max-pool -> layer2/3 stride-2 conv2;
    # each step is ceil(n / 2) for these kernels, so res4 is ceil(H / 16) (480 -> 30, 481 -> 31).
    sizes = []  # per axis: (res2, res3, res4)
    for n in hw:
        res2 = pytorch_size(pytorch_size(n, 7, 2, 3), 3, 2, 1)
        res3 = pytorch_size(res2, 3, 2, 1)
        res4 = pytorch_size(res3, 3, 2, 1)
        assert res4 == -(-n // 16)
        sizes.append((res2, res3, res4))
    model = ResNetEncoder()
    x = jax.ShapeDtypeStruct((2,) + hw + (4,), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    out = jax.eval_shape(model.apply, variables, x)
    for i, (name, channels) in enumerate((("res2", 256), ("res3", 512), ("res4", 1024))):
        assert out[name].shape == (2, sizes[0][i], sizes[1][i], channels), name
        assert out[name].dtype == jnp.float32


def test_bfloat16_compute_keeps_float32_params():
    model = ResNetEncoder(stage_sizes=(1, 1, 1), width=8, dtype=jnp.bfloat16)
    x = jax.ShapeDtypeStruct((1, 35, 35, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    out = jax.eval_shape(model.apply, variables, x)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    assert {v.dtype for v in out.values()} == {jnp.dtype(jnp.bfloat16)}
    assert out["res4"].shape == (1, 3, 3, 128)


def test_bn_affine_trainable_statistics_frozen(fixture_arrays, narrow_apply):
    state, io = fixture_arrays
    variables = torchvision_resnet_to_flax(state, in_channels=3, stage_sizes=NARROW_STAGES)
    x = nchw_to_nhwc(io["input"])

    def loss(params):
        return narrow_apply({"params": params, "batch_stats": variables["batch_stats"]}, x)["res4"].sum()

    grads = jax.grad(loss)(variables["params"])
    assert np.abs(np.asarray(grads["bn1"]["scale"])).max() > 0
    assert np.abs(np.asarray(grads["layer3_0"]["downsample_bn"]["bias"])).max() > 0
    # Same input, different running statistics -> different output: the stats are used as given.
    stats = jax.tree.map(lambda v: v * 1.5, variables["batch_stats"])
    a = narrow_apply(variables, x)["res2"]
    b = narrow_apply({"params": variables["params"], "batch_stats": stats}, x)["res2"]
    assert not np.allclose(np.asarray(a), np.asarray(b))


def test_frozen_batch_norm_matches_flax_batch_norm_and_numpy():
    """FrozenBatchNorm (x * a + b) against flax's BatchNorm with running averages and a
    float64 NumPy (x - mean) / sqrt(var + eps) * scale + bias: same variables, outputs and
    gradients (input, scale, bias) to float32 rounding. Statistics far from (0, 1), with
    a mean large against the spread, where the two forms round differently."""
    import flax.linen as nn

    rng = np.random.default_rng(7)
    c = 16
    x = jnp.asarray(rng.normal(3.0, 2.0, size=(2, 5, 6, c)), jnp.float32)
    ours, theirs = FrozenBatchNorm(), nn.BatchNorm(use_running_average=True, epsilon=1e-5)
    v_ours, v_theirs = ours.init(jax.random.key(0), x), theirs.init(jax.random.key(0), x)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), v_ours) == jax.tree.map(lambda a: (a.shape, a.dtype), v_theirs)
    for a, b in zip(jax.tree.leaves(v_ours), jax.tree.leaves(v_theirs)):
        np.testing.assert_array_equal(a, b)  # the same initial values (ones / zeros)
    variables = {
        "params": {"scale": jnp.asarray(rng.uniform(0.2, 2.0, c), jnp.float32),
                   "bias": jnp.asarray(rng.normal(size=c), jnp.float32)},
        "batch_stats": {"mean": jnp.asarray(rng.normal(3.0, 1.0, c), jnp.float32),
                        "var": jnp.asarray(rng.uniform(0.5, 4.0, c), jnp.float32)},
    }
    p, st = variables["params"], variables["batch_stats"]
    x64 = np.asarray(x, np.float64)
    std = np.sqrt(np.asarray(st["var"], np.float64) + 1e-5)
    reference = (x64 - np.asarray(st["mean"], np.float64)) / std * np.asarray(p["scale"], np.float64) + np.asarray(
        p["bias"], np.float64)
    y_ours = np.asarray(ours.apply(variables, x))
    np.testing.assert_allclose(y_ours, reference, rtol=0, atol=2e-6 * np.abs(reference).max())
    np.testing.assert_allclose(y_ours, np.asarray(theirs.apply(variables, x)), rtol=0, atol=2e-6 * np.abs(reference).max())

    w = jnp.asarray(rng.normal(size=x.shape), jnp.float32)  # a random cotangent

    def loss(module, params, inputs):
        return (module.apply({"params": params, "batch_stats": st}, inputs) * w).sum()

    g_ours = jax.grad(lambda pp, xx: loss(ours, pp, xx), argnums=(0, 1))(p, x)
    g_theirs = jax.grad(lambda pp, xx: loss(theirs, pp, xx), argnums=(0, 1))(p, x)
    # By hand: dL/dscale = sum(w * (x - mean) / std), dL/dbias = sum(w), dL/dx = w * scale / std.
    w64 = np.asarray(w, np.float64)
    by_hand = ({"scale": (w64 * (x64 - np.asarray(st["mean"], np.float64)) / std).sum((0, 1, 2)),
                "bias": w64.sum((0, 1, 2))}, w64 * np.asarray(p["scale"], np.float64) / std)
    for a, b, h in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_theirs), jax.tree.leaves(by_hand)):
        np.testing.assert_allclose(np.asarray(a), h, rtol=0, atol=2e-5 * np.abs(h).max())
        np.testing.assert_allclose(np.asarray(b), h, rtol=0, atol=2e-5 * np.abs(h).max())


def test_group_norm_encoder_normalises_and_has_no_statistics():
    """backbone.norm='group_norm': no batch_stats, and each group of the stem's output
    (before the ReLU) has mean 0 / variance 1 at init, checked by a NumPy recomputation."""
    model = ResNetEncoder(stage_sizes=(1, 1, 1), width=16, norm="group_norm")
    x = jax.random.normal(jax.random.key(1), (2, 32, 48, 3)) * 5.0 + 3.0
    variables = model.init(jax.random.key(0), x)
    assert set(variables) == {"params"}
    _, inter = model.apply(variables, x, capture_intermediates=lambda m, _: m.name == "gn")
    stem = np.asarray(inter["intermediates"]["bn1"]["gn"]["__call__"][0])  # [2, 16, 24, 16]
    assert stem.shape == (2, 16, 24, 16)  # 16 channels: 16 groups of one channel
    assert np.allclose(stem.mean(axis=(1, 2)), 0.0, atol=1e-4)
    assert np.allclose(stem.var(axis=(1, 2)), 1.0, atol=1e-2)
    out = model.apply(variables, x)
    assert out["res4"].shape == (2, 2, 3, 256)
    with pytest.raises(ValueError, match="backbone.norm='batch'"):
        ResNetEncoder(stage_sizes=(1, 1, 1), width=8, norm="batch").init(jax.random.key(0), x)
