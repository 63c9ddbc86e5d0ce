"""Checkpoints: an interrupted and resumed run ends where an uninterrupted one does; a
non-finite loss stops the run and leaves the last good checkpoint intact; a later
stage starts from an earlier run's parameters."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import jax
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--config.data.crop_size=(32,32)", "--config.data.clip_length=3", "--config.data.max_objects=2",
    "--config.data.synthetic.height=48", "--config.data.synthetic.width=48",
    "--config.data.synthetic.num_frames=6", "--config.data.synthetic.num_train=4",
    "--config.train.global_batch_size=8", "--config.train.num_steps=4", "--config.train.log_every=1",
    "--config.train.checkpoint_every=0", "--config.train.image_every=4",
]


def tiny_config(*overrides: str):
    from munet_jax.train import parse_flags

    config, _, _ = parse_flags([f"--config={REPO}/configs/demo.py:memory", "--workdir=unused", *TINY, *overrides])
    return config


def host_tree(tree):
    from munet_jax.training.loop import host_value

    return jax.tree_util.tree_map(host_value, tree)


def assert_trees_equal(a, b):
    flat_a, tree_a = jax.tree_util.tree_flatten(a)
    flat_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b
    for x, y in zip(flat_a, flat_b):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted 4-step run, and the same run stopped by SIGTERM after step 2 then resumed."""
    from munet_jax.training.checkpoint import Checkpointer
    from munet_jax.training.loop import train

    root = tmp_path_factory.mktemp("runs")
    full = host_tree(train(tiny_config(), root / "full"))

    def sigterm_at_2(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the real handler: flag, save, return

    handler_before = signal.getsignal(signal.SIGTERM)
    stopped = host_tree(train(tiny_config(), root / "resumed", on_step=sigterm_at_2))
    assert signal.getsignal(signal.SIGTERM) is handler_before, "the loop restores the SIGTERM handler"
    ckpt = Checkpointer(root / "resumed", max_to_keep=3)
    steps_after_stop = ckpt.all_steps()
    ckpt.close()
    shutil.copytree(root / "resumed", root / "at_step_2")  # for the non-finite test
    resumed = host_tree(train(tiny_config(), root / "resumed"))
    return dict(root=root, full=full, stopped=stopped, resumed=resumed, steps_after_stop=steps_after_stop)


def test_sigterm_saves_and_resume_matches_uninterrupted_run(runs):
    assert runs["steps_after_stop"] == [2]
    assert int(runs["stopped"].step) == 2 and int(runs["resumed"].step) == 4 and int(runs["full"].step) == 4
    # Same compiled program, same data from the restored step on: bit-identical weights.
    assert_trees_equal(runs["resumed"].params, runs["full"].params)
    assert_trees_equal(runs["resumed"].opt_state, runs["full"].opt_state)
    # Not trivially equal: the run moved away from where it stopped.
    assert not np.array_equal(*(jax.tree_util.tree_leaves(t.params)[0] for t in (runs["stopped"], runs["resumed"])))
    # The resumed run logged steps 3 and 4 after the stopped run's 1 and 2: the same losses as the full run.
    def losses(name):
        lines = (runs["root"] / name / "metrics.jsonl").read_text().splitlines()
        return {json.loads(line)["step"]: json.loads(line)["train/loss"] for line in lines}

    assert losses("resumed") == losses("full")


def test_non_finite_loss_stops_and_keeps_last_checkpoint(runs):
    from munet_jax.training.checkpoint import Checkpointer
    from munet_jax.training.loop import NonFiniteLossError, train
    from munet_jax.training.mesh import make_mesh, replicated

    workdir = runs["root"] / "at_step_2"
    # An infinite learning rate: step 3's loss is finite (computed before the update) but its
    # update makes the parameters non-finite; with checkpoint_every=1 step 3 would be saved.
    with pytest.raises(NonFiniteLossError, match=r"at step 3 .*last good checkpoint is step 2"):
        train(tiny_config("--config.optim.lr=inf", "--config.train.checkpoint_every=1"), workdir)
    ckpt = Checkpointer(workdir, max_to_keep=3)
    try:
        assert ckpt.all_steps() == [2]
        restored = host_tree(ckpt.restore(runs["stopped"], replicated(make_mesh())))
    finally:
        ckpt.close()
    assert_trees_equal(restored.params, runs["stopped"].params)
    assert_trees_equal(restored.opt_state, runs["stopped"].opt_state)
    assert not any(p.name.endswith(".orbax-checkpoint-tmp") or "tmp" in p.name for p in (workdir / "checkpoints").iterdir())


def test_from_checkpoint_initialises_params_only(runs):
    from munet_jax.training.loop import initial_variables
    from munet_jax.training.mesh import make_mesh
    from munet_jax.training.state import make_model

    config = tiny_config(f"--config.init.from_checkpoint={runs['root'] / 'full'}")
    variables = host_tree(initial_variables(config, make_model(config), make_mesh()))
    assert_trees_equal(variables["params"], runs["full"].params)
    fresh = host_tree(initial_variables(tiny_config(), make_model(config), make_mesh()))
    assert not np.array_equal(jax.tree_util.tree_leaves(fresh["params"])[0], jax.tree_util.tree_leaves(variables["params"])[0])
    with pytest.raises(FileNotFoundError, match="from_checkpoint"):
        initial_variables(tiny_config(f"--config.init.from_checkpoint={runs['root'] / 'nowhere'}"),
                          make_model(config), make_mesh())


def test_event_file_has_scalars_and_images_without_tensorflow(runs):
    import sys

    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    tags, steps, image = set(), set(), None
    for path in sorted((runs["root"] / "full" / "tensorboard").glob("events.out.tfevents.*")):
        for event in LegacyEventFileLoader(str(path)).Load():
            for value in event.summary.value:
                tags.add(value.tag)
                steps.add(event.step)
                if value.HasField("image"):
                    image = value.image
    assert {"train/loss", "train/bsce", "train/iou", "train/grad_norm"} <= tags and "train/clip" in tags
    assert steps == {1, 2, 3, 4}
    # The clip panel: 2 predicted frames x [prediction | truth | uncertainty | attention] of 32x32.
    assert (image.height, image.width) == (2 * 32, 4 * 32)
    from PIL import Image

    import io

    assert Image.open(io.BytesIO(image.encoded_image_string)).size == (4 * 32, 2 * 32)
    # Written without TensorFlow: TensorBoard's pure-Python file layer was used.
    assert "tensorboard.compat.notf" in sys.modules


def test_backbone_weights_initialise_both_encoders():
    """init.backbone_weights: a torchvision-layout ResNet (the narrow test fixture) fills
    Enc-Q and Enc-R; Enc-R's mask input channel starts at zero."""
    from safetensors.numpy import load_file

    from munet_jax.training.loop import initial_variables
    from munet_jax.training.mesh import make_mesh
    from munet_jax.training.state import make_model

    fixture = REPO / "tests" / "fixtures" / "resnet_narrow.safetensors"
    config = tiny_config("--config.model.backbone.stage_sizes=(1,2,1)", "--config.model.backbone.width=8",
                         f"--config.init.backbone_weights={fixture}")
    variables = host_tree(initial_variables(config, make_model(config), make_mesh()))
    torch = load_file(str(fixture))
    stem = np.transpose(torch["conv1.weight"], (2, 3, 1, 0))  # OIHW -> HWIO [7, 7, 3, 8]
    np.testing.assert_array_equal(variables["params"]["enc_q"]["conv1"]["kernel"], stem)
    enc_r = variables["params"]["enc_r"]["conv1"]["kernel"]  # [7, 7, 4, 8]: RGB + mask
    np.testing.assert_array_equal(enc_r[:, :, :3], stem)
    np.testing.assert_array_equal(enc_r[:, :, 3], 0.0)
    np.testing.assert_array_equal(variables["batch_stats"]["enc_q"]["bn1"]["var"], torch["bn1.running_var"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        initial_variables(tiny_config("--config.model.backbone.stage_sizes=(1,2,1)", "--config.model.backbone.width=8",
                                      "--config.init.backbone_weights=/no/such/file.safetensors"),
                          make_model(config), make_mesh())


def test_one_process_save_compiles_nothing_and_round_trips(tmp_path):
    """Replicated arrays on 8 devices are written from one device: orbax's replica-parallel
    default would compile a slice program per array shape and device on the first save."""
    from munet_jax.training.checkpoint import Checkpointer
    from munet_jax.training.mesh import make_mesh, replicated
    from munet_jax.training.state import TrainState

    mesh = make_mesh()
    assert mesh.size == 8
    rng = np.random.default_rng(0)
    # Shapes no other test uses (a compiled slice of another test's array cannot hide one here).
    host = TrainState(step=np.int32(7),
                      params={"w": rng.normal(size=(8, 13, 3)).astype(np.float32), "b": np.arange(24, dtype=np.float32)},
                      batch_stats={"mean": rng.normal(size=(40,)).astype(np.float32)},
                      opt_state={"mu": rng.normal(size=(16, 6)).astype(np.float32)})
    state = jax.device_put(host, replicated(mesh))
    compiles = []

    def listener(name, secs, **kw):
        if name == "/jax/core/compile/backend_compile_duration":
            compiles.append(name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        ckpt = Checkpointer(tmp_path, max_to_keep=None)
        ckpt.save(state, 7)
        ckpt.wait()
        saving = len(compiles)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    restored = ckpt.restore(state, replicated(mesh))
    ckpt.close()
    assert saving == 0, f"the save compiled {saving} programs"
    assert_trees_equal(host_tree(restored), host)


def test_one_process_handler_switch_logs_no_warning(caplog):
    import copy

    import orbax.checkpoint as ocp

    from munet_jax.training import checkpoint

    # Start from a replica-parallel handler (orbax's default on CPU), as a fresh process does.
    default = copy.copy(ocp.type_handlers.get_type_handler(jax.Array))
    default._use_replica_parallel = True
    ocp.type_handlers.register_type_handler(jax.Array, default, override=True)
    caplog.clear()  # the set-up's own override warned
    with caplog.at_level("WARNING"):
        checkpoint._write_one_replica_in_one_process()
    assert ocp.type_handlers.get_type_handler(jax.Array)._use_replica_parallel is False
    assert not [r.getMessage() for r in caplog.records if r.levelno >= 30]
