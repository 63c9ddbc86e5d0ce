"""The command line, the config files (against the paper's numbers) and the optimizer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ["protocol1", "protocol2", "protocol3_pretrain", "protocol3_1", "protocol3_2"]


def parse(*argv):
    from munet_jax.train import parse_flags

    return parse_flags(list(argv))


def test_overrides_are_applied_with_their_types():
    config, workdir, _ = parse(
        f"--config={REPO}/configs/protocol2.py", "--workdir=/tmp/run", "--config.optim.lr=1e-5",
        "--config.optim.grad_clip_norm=1.0", "--config.data.roots.davis2017=/data/DAVIS",
        "--config.train.global_batch_size=16", "--config.train.mixed_precision=true")
    assert workdir == "/tmp/run"
    assert config.optim.lr == 1e-5 and config.optim.grad_clip_norm == 1.0
    assert config.data.roots.davis2017 == "/data/DAVIS"
    assert config.train.global_batch_size == 16 and config.train.mixed_precision is True


@pytest.mark.parametrize("argv, message", [
    (["--config.optim.lrr=1e-5"], r"unknown config field.*optim\.lrr"),
    (["--config.optim.lr=fast"], r"could not convert"),
    (["--config.train.global_batch_size=2.5"], r"global_batch_size"),
])
def test_bad_overrides_are_errors(argv, message):
    from absl import flags

    with pytest.raises(flags.Error, match=message):
        parse(f"--config={REPO}/configs/protocol2.py", "--workdir=/tmp/run", *argv)


def test_main_reports_usage_errors(capsys):
    from munet_jax.train import main

    assert main([f"--config={REPO}/configs/protocol1.py", "--config.optim.nope=1", "--workdir=/tmp/x"]) == 2
    assert "unknown config field" in capsys.readouterr().err
    assert main([f"--config={REPO}/configs/protocol1.py"]) == 2
    assert "--workdir" in capsys.readouterr().err
    # Assigning a new field in code fails too: the config is locked.
    config, _, _ = parse(f"--config={REPO}/configs/protocol1.py", "--workdir=/tmp/x")
    with pytest.raises(AttributeError):
        config.optim.learning_rate = 1.0


@pytest.mark.parametrize("name", CONFIGS)
def test_configs_hold_the_papers_numbers(name):
    config, _, _ = parse(f"--config={REPO}/configs/{name}.py", "--workdir=/tmp/x")
    # Sec. 3.5, typed from the paper: AdamW beta1 = 0.9, beta2 = 0.999, lr 2 x 10^-5,
    # weight decay 0.5; 400 x 400 crops; 6 frames (1 reference + 5 queries); ResNet-50.
    assert (config.optim.name, config.optim.b1, config.optim.b2) == ("adamw", 0.9, 0.999)
    assert config.optim.lr == 2e-5 and config.optim.weight_decay == 0.5
    assert config.optim.schedule == "constant" and config.optim.grad_clip_norm is None
    assert tuple(config.data.crop_size) == (400, 400) and config.data.clip_length == 6
    assert tuple(config.model.backbone.stage_sizes) == (3, 4, 6) and config.model.backbone.width == 64
    # Sec. 3.4: BsCE over the top 40% hardest pixels + mask-IoU with lambda = 1.
    assert (config.loss.kind, config.loss.top_fraction, config.loss.iou_weight) == ("bsce_iou", 0.4, 1.0)
    assert config.train.mixed_precision is False and config.model.dtype == "float32"
    # Fig. 4: which data each protocol trains on, and where fine-tuning starts from.
    datasets = {k for k, v in config.data.weights.items() if v}
    expected = {"protocol1": {"davis2017"}, "protocol2": {"davis2017", "youtube_vos2018"},
                "protocol3_pretrain": {"static_images"}, "protocol3_1": {"davis2017"},
                "protocol3_2": {"davis2017", "youtube_vos2018"}}[name]
    assert datasets == expected
    assert bool(config.init.from_checkpoint) == (name in ("protocol3_1", "protocol3_2"))
    if name in ("protocol2", "protocol3_2"):  # 5:1 per video: DAVIS 60 videos x 5 : YouTube-VOS 3471 videos x 1
        assert config.data.weights["davis2017"] / config.data.weights["youtube_vos2018"] == pytest.approx(5 * 60 / 3471)


def _torch_adamw(p, grads, lr, b1, b2, eps, wd, clip=None):
    """torch.optim.AdamW's update rule written out (decay first, bias-corrected moments)."""
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        if clip is not None:
            g = g * min(1.0, clip / np.sqrt(np.sum(g * g)))
        p = p * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return p


@pytest.mark.parametrize("clip", [None, 0.5])
def test_optimizer_is_pytorch_adamw(clip):
    import optax

    from munet_jax.training.state import make_optimizer

    config, _, _ = parse(f"--config={REPO}/configs/protocol2.py", "--workdir=/tmp/x", "--config.optim.lr=0.01",
                         *([f"--config.optim.grad_clip_norm={clip}"] if clip else []))
    optimizer, _ = make_optimizer(config.optim, 10)
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(5, 3)).astype(np.float64)
    grads = [rng.normal(size=(5, 3)) for _ in range(3)]
    params, state = np.float32(p0), optimizer.init(np.float32(p0))
    for g in grads:
        updates, state = optimizer.update(np.float32(g), state, params)
        params = optax.apply_updates(params, updates)
    expected = _torch_adamw(p0, grads, 0.01, 0.9, 0.999, 1e-8, 0.5, clip)
    np.testing.assert_allclose(params, expected, rtol=1e-5, atol=1e-6)


def test_missing_dataset_and_bad_batch_are_clear_errors():
    from munet_jax.training.input import make_input
    from munet_jax.training.mesh import local_batch_size, make_mesh

    config, _, _ = parse(f"--config={REPO}/configs/protocol2.py", "--workdir=/tmp/x",
                         "--config.data.roots.davis2017=/does/not/exist")
    with pytest.raises(FileNotFoundError, match=r"--config\.data\.roots\.davis2017=PATH"):
        make_input(config, "/tmp/x", start_step=0)
    with pytest.raises(ValueError, match=r"multiple of the number of devices \(8\)"):
        local_batch_size(3, make_mesh())


@pytest.mark.slow  # a fresh Python process that imports JAX and compiles
def test_cli_trains_without_tensorflow(tmp_path):
    """`python -m munet_jax.train` end to end in a process where TensorFlow cannot be imported."""
    workdir = tmp_path / "run"
    args = [f"--config={REPO}/configs/demo.py:memory", f"--workdir={workdir}", "--config.data.crop_size=(32,32)",
            "--config.data.clip_length=3", "--config.data.synthetic.height=48", "--config.data.synthetic.width=48",
            "--config.data.synthetic.num_frames=6", "--config.data.synthetic.num_train=2",
            "--config.train.global_batch_size=2", "--config.train.num_steps=2", "--config.train.image_every=0",
            "--config.optim.lr=3e-4", "--config.train.log_every=1"]
    # sys.modules['tensorflow'] = None makes every `import tensorflow` fail, as on the GPU machines.
    code = ("import sys; sys.modules['tensorflow'] = None; from munet_jax.train import main; "
            f"sys.exit(main({args!r}))")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=540)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "step 2/2 | loss" in done.stderr and "clips/s" in done.stderr
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["optim"]["lr"] == 3e-4 and saved["train"]["num_steps"] == 2
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2] and all(np.isfinite(x["train/loss"]) for x in lines)
