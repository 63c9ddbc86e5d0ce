"""Orbax checkpoints of the train state: periodic, asynchronous, atomic, resumable.

Layout: <workdir>/checkpoints/<step>/{model,train}/ where
  model = {'params', 'batch_stats'}   what a later stage (protocol 3-1/3-2) starts from
  train = {'step', 'opt_state'}       what resuming this run needs besides the model
Orbax writes each step into a temporary folder and renames it when complete, so
a run killed mid-save leaves the previous checkpoint as the latest one.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from munet_jax.training.state import TrainState

CHECKPOINT_DIR = "checkpoints"


def _abstract(tree, sharding):
    """Shapes and dtypes of `tree` with `sharding`: the target orbax restores into."""
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _write_one_replica_in_one_process() -> None:
    """In a single-process run, orbax writes each replicated array from one device.

    Orbax's default on CPU and TPU (and GPU unless JAX_PLATFORMS names it) is
    "replica-parallel" saving: each of the R devices holding a copy of an array
    writes 1/R of it, cut out by a jitted slice, one compiled program per array
    shape and device. Across hosts that spreads the writing; within one process
    it is the same bytes written by the same host, after compiling ~250 slice
    programs for this model on the first save (14 s of blocked training on 8
    CPU devices, 0.3 s without). Multi-process runs keep orbax's default. The
    setting is orbax's global jax.Array handler (the same handler and metadata
    store, copied with only this flag changed).
    """
    if jax.process_count() != 1:
        return
    handler = ocp.type_handlers.get_type_handler(jax.Array)
    if getattr(handler, "_use_replica_parallel", False):
        single = copy.copy(handler)
        single._use_replica_parallel = False
        # Orbax logs a warning (through absl's logger) for every override; this one is intended.
        absl_logger = logging.getLogger("absl")
        level = absl_logger.level
        absl_logger.setLevel(logging.ERROR)
        try:
            ocp.type_handlers.register_type_handler(jax.Array, single, override=True)
        finally:
            absl_logger.setLevel(level)


class Checkpointer:
    """A `CheckpointManager` over <workdir>/checkpoints for one run."""

    def __init__(self, workdir: str | Path, *, max_to_keep: int | None, async_save: bool = True):
        _write_one_replica_in_one_process()
        self.directory = Path(workdir).resolve() / CHECKPOINT_DIR
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            enable_async_checkpointing=async_save,
            # Every save is asked for explicitly by the loop (interval, preemption, end).
            save_interval_steps=1,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("model", "train"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, state: TrainState, step: int, *, force: bool = False) -> bool:
        """Starts saving `state` (after `step` updates; the loop's counter, so no device
        read) and returns once the arrays are copied to host; the write continues async."""
        args = ocp.args.Composite(
            model=ocp.args.StandardSave({"params": state.params, "batch_stats": state.batch_stats}),
            train=ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state}),
        )
        saved = self.manager.save(step, args=args, force=force)
        if saved:
            logging.info("saving checkpoint of step %d to %s", step, self.directory)
        return saved

    def restore(self, like: TrainState, sharding, step: int | None = None) -> TrainState:
        """The state saved at `step` (default: latest), with `like`'s structure and `sharding`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        args = ocp.args.Composite(
            model=ocp.args.StandardRestore(_abstract({"params": like.params, "batch_stats": like.batch_stats}, sharding)),
            train=ocp.args.StandardRestore(_abstract({"step": like.step, "opt_state": like.opt_state}, sharding)),
        )
        restored = self.manager.restore(step, args=args)
        model, train = restored["model"], restored["train"]
        return like.replace(
            step=train["step"], params=model["params"], batch_stats=model["batch_stats"], opt_state=train["opt_state"]
        )

    def wait(self) -> None:
        """Blocks until an asynchronous save has been committed."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def restore_model_variables(source: str | Path, like: dict, sharding, step: int | None = None) -> tuple[dict, int]:
    """{'params', 'batch_stats'} of another run (a workdir or its checkpoints folder),
    e.g. the protocol 3 pretraining for fine-tuning stages 3-1 / 3-2. The optimizer
    state of that run is not read: fine-tuning starts a fresh AdamW."""
    source = Path(source).resolve()
    directory = source / CHECKPOINT_DIR if (source / CHECKPOINT_DIR).is_dir() else source
    if not directory.is_dir():
        raise FileNotFoundError(f"init.from_checkpoint={str(source)!r}: no such run directory")
    manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(read_only=True), item_names=("model", "train")
    )
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"init.from_checkpoint={str(source)!r}: no checkpoint in {directory}")
        restored = manager.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore(_abstract(like, sharding))))
    finally:
        manager.close()
    return dict(restored["model"]), step
