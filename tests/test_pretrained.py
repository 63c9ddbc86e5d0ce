"""munet_jax.pretrained: key mapping, prefixes, errors by name, file formats, load_resnet_into."""

from __future__ import annotations

import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from munet_jax.models.resnet import ResNetEncoder
from munet_jax.pretrained import (
    PretrainedWeightsError,
    load_resnet_into,
    load_state_dict,
    torchvision_resnet_to_flax,
)

FIXTURES = Path(__file__).parent / "fixtures"
STAGES = (1, 2, 1)  # the narrow fixture network (scripts/make_resnet_fixture.py)


@pytest.fixture(scope="module")
def state():
    return load_file(str(FIXTURES / "resnet_narrow.safetensors"))


def convert(sd, in_channels=3):
    return torchvision_resnet_to_flax(sd, in_channels=in_channels, stage_sizes=STAGES)


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_mapping_by_element(state):
    v = convert(state)
    rng = np.random.default_rng(0)
    # HWIO kernel[h, w, i, o] is OIHW weight[o, i, h, w].
    src, dst = state["layer2.1.conv2.weight"], v["params"]["layer2_1"]["conv2"]["kernel"]
    for _ in range(20):
        o, i, h, w = (int(rng.integers(n)) for n in src.shape)
        assert dst[h, w, i, o] == src[o, i, h, w]
    np.testing.assert_array_equal(v["params"]["layer3_0"]["downsample_conv"]["kernel"][0, 0],
                                  state["layer3.0.downsample.0.weight"][:, :, 0, 0].T)
    bn = "layer3.0.downsample.1"
    np.testing.assert_array_equal(v["params"]["layer3_0"]["downsample_bn"]["scale"], state[bn + ".weight"])
    np.testing.assert_array_equal(v["params"]["layer3_0"]["downsample_bn"]["bias"], state[bn + ".bias"])
    np.testing.assert_array_equal(v["batch_stats"]["layer3_0"]["downsample_bn"]["mean"], state[bn + ".running_mean"])
    np.testing.assert_array_equal(v["batch_stats"]["layer3_0"]["downsample_bn"]["var"], state[bn + ".running_var"])
    # Every tensor of the checkpoint except num_batches_tracked is used exactly once.
    used = sum(x.size for x in jax.tree.leaves(v))
    assert used == sum(x.size for k, x in state.items() if not k.endswith("num_batches_tracked"))


def test_mask_channel_zero_rgb_copied(state):
    kernel = convert(state, in_channels=4)["params"]["conv1"]["kernel"]  # [7, 7, 4, 8]
    assert kernel.shape == (7, 7, 4, 8)
    np.testing.assert_array_equal(kernel[:, :, 3, :], 0.0)
    src = state["conv1.weight"]  # [8, 3, 7, 7]
    for c in range(3):
        np.testing.assert_array_equal(kernel[:, :, c, :], src[:, c].transpose(1, 2, 0))


def test_known_extra_keys_are_ignored(state):
    sd = dict(state)
    sd["layer4.0.conv1.weight"] = np.zeros((64, 128, 1, 1), np.float32)
    sd["layer4.2.bn3.running_var"] = np.ones((256,), np.float32)
    sd["fc.weight"] = np.zeros((1000, 256), np.float32)
    sd["fc.bias"] = np.zeros((1000,), np.float32)
    assert_trees_equal(convert(sd), convert(state))


def test_mask_rcnn_prefix(state):
    sd = {"backbone.body." + k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    sd["backbone.body.layer4.0.conv1.weight"] = np.zeros((64, 128, 1, 1), np.float32)
    sd["backbone.fpn.inner_blocks.0.0.weight"] = np.zeros((256, 32, 1, 1), np.float32)
    sd["rpn.head.conv.0.0.weight"] = np.zeros((256, 256, 3, 3), np.float32)
    sd["roi_heads.box_head.fc6.weight"] = np.zeros((1024, 12544), np.float32)
    assert_trees_equal(convert(sd), convert(state))


def test_data_parallel_prefix(state):
    sd = {"module." + k: v for k, v in state.items()}
    sd["module.fc.weight"] = np.zeros((1000, 128), np.float32)
    assert_trees_equal(convert(sd), convert(state))


def test_missing_keys_named(state):
    sd = {k: v for k, v in state.items() if k not in ("layer2.1.conv3.weight", "bn1.running_var")}
    with pytest.raises(PretrainedWeightsError) as e:
        convert(sd)
    assert e.value.missing == ["bn1.running_var", "layer2.1.conv3.weight"]
    assert "layer2.1.conv3.weight" in str(e.value) and "bn1.running_var" in str(e.value)
    assert not e.value.unexpected and not e.value.mismatched


def test_unexpected_keys_named(state):
    sd = dict(state)
    sd["layer1.0.conv9.weight"] = np.zeros((8, 8, 1, 1), np.float32)
    sd["layer2.2.conv1.weight"] = np.zeros((16, 64, 1, 1), np.float32)  # a block the config lacks
    sd["backbone.body.conv1.weight.typo"] = np.zeros((1,), np.float32)
    with pytest.raises(PretrainedWeightsError) as e:
        convert(sd)
    expected = ["layer1.0.conv9.weight", "layer2.2.conv1.weight", "backbone.body.conv1.weight.typo"]
    assert e.value.unexpected == sorted(expected)
    for key in e.value.unexpected:
        assert key in str(e.value)


def test_shape_mismatch_named_with_shapes(state):
    sd = dict(state)
    sd["layer3.0.bn2.bias"] = np.zeros((31,), np.float32)
    sd["layer1.0.conv2.weight"] = np.zeros((8, 8, 1, 1), np.float32)
    with pytest.raises(PretrainedWeightsError) as e:
        convert(sd)
    msg = str(e.value)
    assert len(e.value.mismatched) == 2
    assert "layer3.0.bn2.bias: checkpoint (31,) vs expected (32,)" in msg
    assert "layer1.0.conv2.weight: checkpoint (8, 8, 1, 1) vs expected (8, 8, 3, 3)" in msg


def test_all_problems_reported_together(state):
    sd = {k: v for k, v in state.items() if k != "layer3.0.conv1.weight"}
    sd["extra.weight"] = np.zeros((2,), np.float32)
    sd["bn1.weight"] = np.zeros((9,), np.float32)
    with pytest.raises(PretrainedWeightsError) as e:
        convert(sd)
    assert e.value.missing == ["layer3.0.conv1.weight"]
    assert e.value.unexpected == ["extra.weight"]
    assert [m.split(":")[0] for m in e.value.mismatched] == ["bn1.weight"]


def test_more_checkpoint_channels_than_encoder(state):
    sd = dict(state)
    sd["conv1.weight"] = np.zeros((8, 4, 7, 7), np.float32)
    with pytest.raises(PretrainedWeightsError, match="conv1.weight"):
        convert(sd, in_channels=3)


# ------------------------------------------------------------------ files


def test_safetensors_round_trip(state, tmp_path):
    path = tmp_path / "copy.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))
    loaded = load_state_dict(path)
    assert sorted(loaded) == sorted(state)
    for k in state:
        np.testing.assert_array_equal(loaded[k], state[k])
        assert loaded[k].dtype == state[k].dtype


def test_pth_matches_safetensors(state):
    pytest.importorskip("torch")
    loaded = load_state_dict(FIXTURES / "resnet_narrow.pth")
    assert sorted(loaded) == sorted(state)
    for k in state:
        np.testing.assert_array_equal(loaded[k], state[k])


def test_pth_without_torch_suggests_safetensors(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(ImportError, match="safetensors"):
        load_state_dict(FIXTURES / "resnet_narrow.pth")


def test_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_state_dict(tmp_path / "nope.safetensors")
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"\.safetensors"):
        load_state_dict(tmp_path / "w.npz")


# ------------------------------------------------------------------ load_resnet_into


class TwoEncoders(nn.Module):
    """Stands in for MUNet: enc_q (RGB), enc_r (RGB + mask) and one unrelated layer."""

    stage_sizes: tuple = STAGES
    width: int = 8

    @nn.compact
    def __call__(self, rgb, rgbm):
        q = ResNetEncoder(self.stage_sizes, self.width, name="enc_q")(rgb)
        r = ResNetEncoder(self.stage_sizes, self.width, name="enc_r")(rgbm)
        return nn.Dense(2, name="head")(q["res4"] + r["res4"])


def model_variables(stage_sizes=STAGES, width=8):
    """Zero-filled variables with the module's init structure (eval_shape: nothing is run)."""
    shapes = jax.eval_shape(
        TwoEncoders(stage_sizes, width).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 32, 32, 4))
    )
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


@pytest.fixture(scope="module")
def variables():
    return model_variables()


def test_load_resnet_into(state, variables):
    new = load_resnet_into(variables, FIXTURES / "resnet_narrow.safetensors")
    assert jax.tree.structure(new) == jax.tree.structure(variables)
    assert_trees_equal({c: new[c]["enc_q"] for c in ("params", "batch_stats")}, convert(state))
    assert_trees_equal({c: new[c]["enc_r"] for c in ("params", "batch_stats")}, convert(state, in_channels=4))
    assert_trees_equal(new["params"]["head"], variables["params"]["head"])
    # Pure: the input still holds zeros.
    assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(variables))
    assert {x.dtype for x in jax.tree.leaves(new)} == {np.dtype(np.float32)}


def test_load_only_named_encoder(variables):
    new = load_resnet_into(variables, FIXTURES / "resnet_narrow.safetensors", encoder_names=("enc_q",))
    assert float(jnp.abs(new["params"]["enc_r"]["conv1"]["kernel"]).max()) == 0
    assert float(np.abs(new["params"]["enc_q"]["conv1"]["kernel"]).max()) > 0
    with pytest.raises(KeyError, match="enc_x"):
        load_resnet_into(variables, FIXTURES / "resnet_narrow.safetensors", encoder_names=("enc_x",))


@pytest.mark.parametrize("stage_sizes, width", [((1, 1, 1), 8), (STAGES, 16)])
def test_config_mismatch_names_config(stage_sizes, width):
    with pytest.raises(PretrainedWeightsError) as e:
        load_resnet_into(model_variables(stage_sizes, width), FIXTURES / "resnet_narrow.safetensors")
    msg = str(e.value)
    assert "resnet_narrow.safetensors" in msg
    assert f"backbone.width={width}" in msg and f"backbone.stage_sizes={stage_sizes}" in msg
    assert "width 8, blocks (1, 2, 1)" in msg


def torchvision_resnet50_shapes() -> dict[str, tuple]:
    """Every state-dict key of torchvision resnet50 with its shape, written from its layout."""
    shapes = {"conv1.weight": (64, 3, 7, 7)}

    def bn(name, n):
        shapes.update({f"{name}.weight": (n,), f"{name}.bias": (n,), f"{name}.running_mean": (n,),
                       f"{name}.running_var": (n,), f"{name}.num_batches_tracked": ()})

    bn("bn1", 64)
    inplanes = 64
    for layer, (planes, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)], start=1):
        for b in range(blocks):
            p = f"layer{layer}.{b}"
            shapes[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            shapes[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            bn(f"{p}.bn1", planes), bn(f"{p}.bn2", planes), bn(f"{p}.bn3", planes * 4)
            if b == 0:
                shapes[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    shapes["fc.weight"], shapes["fc.bias"] = (1000, 2048), (1000,)
    return shapes


def test_full_resnet50_checkpoint_fits_full_encoders(tmp_path):
    shapes = torchvision_resnet50_shapes()
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    trainable = sum(int(np.prod(s)) for k, s in shapes.items() if not k.endswith(buffers))
    assert trainable == 25_557_032  # torchvision's published resnet50 parameter count
    rng = np.random.default_rng(0)
    sd = {k: (np.zeros(s, np.int64) if k.endswith("num_batches_tracked") else rng.standard_normal(s, np.float32))
          for k, s in shapes.items()}
    path = tmp_path / "resnet50.safetensors"
    save_file(sd, str(path))
    shapes_full = jax.eval_shape(
        TwoEncoders((3, 4, 6), 64).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 32, 32, 4))
    )
    new = load_resnet_into(shapes_full, path)  # ShapeDtypeStruct leaves elsewhere stay as they are
    rgb = new["params"]["enc_r"]["conv1"]["kernel"][:, :, :3]
    np.testing.assert_array_equal(rgb, sd["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(new["batch_stats"]["enc_q"]["layer3_5"]["bn3"]["var"], sd["layer3.5.bn3.running_var"])


def test_group_norm_encoders_refuse_imagenet_weights():
    model = ResNetEncoder(stage_sizes=STAGES, width=8, norm="group_norm")
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    variables = {"params": {"enc_q": params["params"]}}
    with pytest.raises(PretrainedWeightsError, match="backbone.norm=frozen_bn"):
        load_resnet_into(variables, FIXTURES / "resnet_narrow.safetensors", encoder_names=("enc_q",))
