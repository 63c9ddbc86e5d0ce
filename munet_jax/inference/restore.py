"""Loading a trained MUNet for evaluation and inference, without the training code.

A training run's workdir holds `config.json` (the resolved config) and orbax
checkpoints `checkpoints/<step>/model` = {'params', 'batch_stats'} (plus
`train` = step and optimizer state, which inference never reads). This module
reads them directly so that evaluate / segment / visualize do not import the
training loop (DESIGN.md: nothing imports a loop module).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from munet_jax.models.munet import MUNet, build_model, init_variables

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
ITEM_NAMES = ("model", "train")


@dataclass(frozen=True)
class LoadedModel:
    model: MUNet
    variables: dict  # {'params', 'batch_stats'}
    config: ml_collections.ConfigDict  # the run's whole config (config.model is the network's)
    step: int
    workdir: Path


def _run_dirs(checkpoint: str | Path) -> tuple[Path, Path]:
    """(workdir, checkpoints dir) from a workdir, its checkpoints folder, or one step's folder."""
    path = Path(checkpoint).expanduser().resolve()
    if (path / CHECKPOINT_DIR).is_dir():
        return path, path / CHECKPOINT_DIR
    if path.name == CHECKPOINT_DIR and path.is_dir():
        return path.parent, path
    if path.parent.name == CHECKPOINT_DIR and path.name.isdigit():
        return path.parent.parent, path.parent
    raise FileNotFoundError(
        f"--checkpoint={str(checkpoint)!r}: expected a training workdir containing {CHECKPOINT_DIR}/ "
        f"(as written by `python -m munet_jax.train --workdir=...`), its {CHECKPOINT_DIR}/ folder, "
        f"or one step folder {CHECKPOINT_DIR}/<step>"
    )


def read_run_config(workdir: Path) -> ml_collections.ConfigDict:
    path = workdir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; the model's architecture is read from the run's config.json")
    try:
        return ml_collections.ConfigDict(json.loads(path.read_text()))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error


def load_model(checkpoint: str | Path, *, step: int | None = None, dtype: str | None = None) -> LoadedModel:
    """The model and weights of a training run (latest checkpoint unless `step`).

    dtype overrides the compute dtype ('float32' / 'bfloat16'); parameters stay
    as saved (float32).
    """
    workdir, ckpt_dir = _run_dirs(checkpoint)
    if Path(checkpoint).expanduser().resolve().parent == ckpt_dir and step is None:
        step = int(Path(checkpoint).name)
    config = read_run_config(workdir)
    model_config = ml_collections.ConfigDict(config.model.to_dict())
    if dtype is not None:
        model_config.dtype = dtype
    model = build_model(model_config)
    # Restore into the exact structure, shapes and dtypes of a fresh model, so a
    # checkpoint of another architecture fails loudly instead of half-loading.
    like = jax.eval_shape(lambda: init_variables(model, 0, (64, 64), 1))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), like)
    # Orbax logs a warning per read-only manager ("Given directory is read only"): noise here.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    manager = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(read_only=True), item_names=ITEM_NAMES)
    try:
        available = list(manager.all_steps())
        if not available:
            raise FileNotFoundError(f"{ckpt_dir}: no checkpoint saved yet")
        step = manager.latest_step() if step is None else step
        if step not in available:
            raise FileNotFoundError(f"{ckpt_dir}: no checkpoint for step {step}; available: {sorted(available)}")
        restored = manager.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore(target)))
    finally:
        manager.close()
        absl_logger.setLevel(level)
    variables = {"params": restored["model"]["params"], "batch_stats": restored["model"]["batch_stats"]}
    return LoadedModel(model, variables, config, int(step), workdir)


def save_model(workdir: str | Path, config: ml_collections.ConfigDict, variables: dict, step: int) -> Path:
    """Writes `config.json` and `checkpoints/<step>/model` in the training run's layout.

    For exporting weights made elsewhere and for tests; training runs write their
    own (with the optimizer state beside the model).
    """
    workdir = Path(workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    manager = ocp.CheckpointManager(
        workdir / CHECKPOINT_DIR, options=ocp.CheckpointManagerOptions(create=True), item_names=ITEM_NAMES
    )
    try:
        model_tree = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
        model_tree = jax.tree_util.tree_map(jnp.asarray, model_tree)
        manager.save(step, args=ocp.args.Composite(model=ocp.args.StandardSave(model_tree)), force=True)
        manager.wait_until_finished()
    finally:
        manager.close()
    return workdir
