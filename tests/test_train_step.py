"""The data-parallel train step: 8 devices agree with 1, and 2 processes agree with 1.

Run as a script (`python tests/test_train_step.py worker ...`) this file is also the
worker of the two-process test.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# Tiny clips so that a step compiles and runs in seconds on CPU: 3 frames of 32x32, 2 object slots.
TINY = [
    "--config.data.crop_size=(32,32)", "--config.data.clip_length=3", "--config.data.max_objects=2",
    "--config.data.synthetic.height=48", "--config.data.synthetic.width=48",
    "--config.data.synthetic.num_frames=6", "--config.data.synthetic.num_train=4",
    "--config.train.global_batch_size=8", "--config.train.image_every=0", "--config.train.log_every=1",
    # The demo warms the learning rate up from 0; these tests need the first step to move.
    "--config.optim.schedule=constant",
]


def tiny_config(*overrides: str):
    from munet_jax.train import parse_flags

    config, _, _ = parse_flags([f"--config={REPO}/configs/demo.py:memory", "--workdir=unused", *TINY, *overrides])
    return config


def _setup(config):
    """Model, optimizer, variables (replicated on all devices) and one global batch as numpy."""
    import jax

    from munet_jax.models.munet import build_model
    from munet_jax.training import mesh as mesh_lib
    from munet_jax.training.input import make_input
    from munet_jax.training.state import init_variables_on, make_optimizer, model_config

    model = build_model(model_config(config).as_configdict())
    optimizer, schedule = make_optimizer(config.optim, config.train.num_steps)
    mesh = mesh_lib.make_mesh()
    variables = init_variables_on(model, 0, (32, 32), 2, mesh_lib.replicated(mesh))
    variables = jax.tree_util.tree_map(np.asarray, variables)
    batch = next(make_input(config, "unused", start_step=0))
    return model, optimizer, schedule, variables, batch


def _one_step(model, optimizer, schedule, loss_cfg, variables, batch, devices):
    """One train step on a mesh over `devices`; returns host (params, metrics)."""
    import jax

    from munet_jax.training import mesh as mesh_lib
    from munet_jax.training.state import create_train_state
    from munet_jax.training.step import BATCH_FIELDS, jit_train_step

    mesh = mesh_lib.make_mesh(devices)
    state = create_train_state(mesh_lib.replicate(variables, mesh), optimizer, mesh_lib.replicated(mesh))
    step = jit_train_step(model, optimizer, schedule, loss_cfg, mesh, donate=False)
    global_batch = mesh_lib.global_batch({k: batch[k] for k in BATCH_FIELDS}, mesh, len(batch["frames"]))
    new_state, metrics = step(state, global_batch)
    assert new_state.params is not state.params
    return jax.device_get(new_state.params), {k: float(v) for k, v in jax.device_get(metrics).items()}, new_state


def test_step_on_8_devices_equals_step_on_1_device():
    import jax

    assert len(jax.devices()) == 8, "conftest.py provides 8 simulated CPU devices"
    config = tiny_config()
    model, optimizer, schedule, variables, batch = _setup(config)
    params8, metrics8, state8 = _one_step(model, optimizer, schedule, config.loss, variables, batch, jax.devices())
    params1, metrics1, _ = _one_step(model, optimizer, schedule, config.loss, variables, batch, jax.devices()[:1])

    # The 8-device step really ran data parallel: the batch split over 8 devices, params on all 8.
    assert len(state8.params["decoder"][next(iter(state8.params["decoder"]))]["kernel"].sharding.device_set) == 8
    for name in ("loss", "bsce", "iou", "ce", "grad_norm", "param_norm"):
        assert np.isfinite(metrics8[name]), (name, metrics8)
        np.testing.assert_allclose(metrics8[name], metrics1[name], rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(metrics8["loss"], metrics8["bsce"] + metrics8["iou"], rtol=1e-6)  # lambda = 1
    leaves8, leaves1 = jax.tree_util.tree_leaves(params8), jax.tree_util.tree_leaves(params1)
    before = jax.tree_util.tree_leaves(variables["params"])
    moved = sum(not np.array_equal(a, b) for a, b in zip(leaves8, before))
    assert moved > len(before) // 2, "the update changed most parameter tensors"
    # Adam's first update is lr * g / (|g| + eps): about lr * sign(g), but anything in [-lr, lr]
    # where |g| is near eps, and there the reduction order's float noise decides. So parameters
    # agree to a small fraction of lr but for a rare entry, which still moves by at most 2 lr
    # (seen on jax 0.11.2: 1 of 36,864 entries of a 3x3 kernel, 1.8 lr). A step that did not
    # average the gradients over the 8 devices would move most entries differently.
    lr = config.optim.lr
    for a, b in zip(leaves8, leaves1):
        difference = np.abs(np.asarray(a) - np.asarray(b))
        assert difference.max() <= 2 * lr * (1 + 1e-3), difference.max() / lr
        assert np.mean(difference > 0.01 * lr) <= 1e-3, np.mean(difference > 0.01 * lr)


def test_mixed_precision_step_keeps_float32_state():
    """bfloat16 compute: the loss is close to float32's; params and Adam moments stay float32."""
    import jax

    config = tiny_config("--config.train.mixed_precision=true")
    model, optimizer, schedule, variables, batch = _setup(config)
    assert model.config.dtype == "bfloat16"
    params, metrics, state = _one_step(model, optimizer, schedule, config.loss, variables, batch, jax.devices())
    from munet_jax.models.munet import build_model
    from munet_jax.training.state import model_config

    reference = tiny_config()
    ref_model = build_model(model_config(reference).as_configdict())
    _, ref_metrics, _ = _one_step(ref_model, optimizer, schedule, reference.loss, variables, batch, jax.devices())
    assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {np.dtype("float32")}
    moments = [x for x in jax.tree_util.tree_leaves(state.opt_state) if x.ndim > 0]
    assert moments and {x.dtype for x in moments} == {np.dtype("float32")}
    for name in ("loss", "bsce", "iou"):
        np.testing.assert_allclose(metrics[name], ref_metrics[name], rtol=0.05, err_msg=name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two fresh Python processes, each importing JAX and compiling
def test_two_processes_train_like_one(tmp_path):
    """Two processes x 4 CPU devices (gloo collectives) = one process x 8 devices."""
    import jax

    from munet_jax.training.loop import train

    steps = ["--config.train.num_steps=2", "--config.train.checkpoint_every=0"]
    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(REPO)}
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, "worker", str(tmp_path / "two"), str(port), str(i), *steps],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=540)[0] for w in workers]
    for i, (w, out) in enumerate(zip(workers, outputs)):
        assert w.returncode == 0, f"process {i} failed:\n{out[-4000:]}"
    two = dict(np.load(tmp_path / "two" / "params.npz"))

    state = train(tiny_config(*steps), tmp_path / "one")
    flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
    one = {jax.tree_util.keystr(path): np.asarray(v) for path, v in flat}
    # Process 0 logged the global loss of every step; step 2's loss sees the whole batch of
    # step 1 through the update, so any mix-up of the two processes' rows shows here.
    losses_two = [json.loads(line)["train/loss"] for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    losses_one = [json.loads(line)["train/loss"] for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses_one) == 2
    np.testing.assert_allclose(losses_two, losses_one, rtol=1e-5)
    assert sorted(one) == sorted(two)
    # Parameters with a near-zero gradient (e.g. the memory key bias, which the softmax over
    # memory positions nearly ignores) move by Adam's lr * sign(noise): compare to a fraction of lr.
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=0, atol=0.05 * 1e-3, err_msg=name)


def _worker(workdir: str, port: str, process_id: str, *overrides: str) -> None:
    import jax

    config = tiny_config(
        f"--config.distributed.coordinator_address=localhost:{port}", "--config.distributed.num_processes=2",
        f"--config.distributed.process_id={process_id}", "--config.distributed.cpu_collectives=gloo", *overrides)
    from munet_jax.training.loop import host_value, train

    state = train(config, workdir)
    assert jax.process_count() == 2 and len(jax.devices()) == 8 and len(jax.local_devices()) == 4
    if jax.process_index() == 0:
        flat = jax.tree_util.tree_flatten_with_path(state.params)[0]
        np.savez(Path(workdir) / "params.npz", **{jax.tree_util.keystr(p): host_value(v) for p, v in flat})


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    _worker(*sys.argv[2:])
