"""The training loop: build, restore or initialise, step, observe, checkpoint, stop cleanly.

Stopping: SIGTERM (a preemption notice, `scancel`, a TPU maintenance event) sets a
flag; the loop finishes the current step, saves a checkpoint and returns. On
multi-host runs the decision is agreed between processes (JAX's preemption sync
point, plus an all-gather of the local flags at every flush) because saving is a
collective. A non-finite loss, gradient or parameter stops the run with
`NonFiniteLossError` before anything from that step is saved.

Metrics stay on device between flushes (every `log_every` steps and before every
save), so the host never waits on the accelerator in between.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import signal
import threading
from pathlib import Path
from typing import Callable

import jax
import ml_collections
import numpy as np

from munet_jax.training import checkpoint as ckpt_lib
from munet_jax.training import mesh as mesh_lib
from munet_jax.training.input import make_input
from munet_jax.models.munet import build_model
from munet_jax.training.state import TrainState, create_train_state, init_variables_on, make_optimizer, model_config
from munet_jax.training.step import BATCH_FIELDS, jit_predict, jit_train_step
from munet_jax.training.summaries import Progress, SummaryWriter, clip_panel


class NonFiniteLossError(FloatingPointError):
    """The run produced a non-finite loss, gradient or parameter; nothing of it was saved."""


def host_value(x) -> np.ndarray:
    """A replicated array's value on this host (no cross-process transfer)."""
    return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)


class StopRequest:
    """SIGTERM/SIGINT -> a flag the loop polls; the handlers are restored on `close`."""

    def __init__(self, signals=(signal.SIGTERM,)):
        self.requested = False
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        logging.warning("received signal %d: saving a checkpoint and stopping after this step", signum)
        self.requested = True

    def agreed(self, step: int, sync: bool) -> bool:
        """Whether every process should stop after `step`; `sync` only at steps all processes flush."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        stop = False
        try:  # JAX's own preemption notice (needs jax.distributed's preemption service)
            stop = multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError:
            pass
        if sync:
            stop |= bool(np.any(multihost_utils.process_allgather(np.int32(self.requested))))
        return stop

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def write_config(config: ml_collections.ConfigDict, workdir: Path) -> None:
    """<workdir>/config.json: the resolved config (atomic; an earlier run's is kept as config.<n>.json)."""
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    path = workdir / "config.json"
    if path.is_file() and path.read_text() != text:
        n = 1
        while (workdir / f"config.{n}.json").exists():
            n += 1
        os.replace(path, workdir / f"config.{n}.json")
    tmp = workdir / f".config.json.tmp-{os.getpid()}"
    tmp.write_text(text)
    os.replace(tmp, path)


@functools.lru_cache(maxsize=4)
def _programs(model_cfg, optim_cfg, loss_cfg, num_steps: int, mesh) -> tuple:
    """Model, optimizer and compiled step / predict for one configuration, cached so
    that several runs in one process (tests, a notebook) trace and compile once."""
    model = build_model(model_cfg.as_configdict())
    optimizer, schedule = make_optimizer(optim_cfg, num_steps)
    step_fn = jit_train_step(model, optimizer, schedule, loss_cfg, mesh)
    return model, optimizer, step_fn, jit_predict(model, mesh)


def initial_variables(config, model, mesh) -> dict:
    """Fresh variables, then ImageNet / Mask R-CNN ResNet-50 encoders or a pretraining
    run's weights when `init` names them."""
    repl = mesh_lib.replicated(mesh)
    hw = tuple(config.data.crop_size)
    variables = init_variables_on(model, config.train.seed, hw, config.data.max_objects, repl)
    init = config.init
    if init.from_checkpoint:
        variables, step = ckpt_lib.restore_model_variables(init.from_checkpoint, variables, repl, init.from_checkpoint_step)
        logging.info("initialised from %s (step %d), params only", init.from_checkpoint, step)
    elif init.backbone_weights:
        from munet_jax.pretrained import load_resnet_into

        host = jax.tree_util.tree_map(host_value, variables)
        variables = mesh_lib.replicate(load_resnet_into(host, init.backbone_weights), mesh)
        logging.info("Enc-Q and Enc-R initialised from %s", init.backbone_weights)
    return variables


def _check_finite(pending: list[tuple[int, dict]], ckpt: ckpt_lib.Checkpointer) -> list[tuple[int, dict]]:
    """Fetches the pending metrics; raises at the first step with a non-finite one."""
    fetched = [(step, {k: float(host_value(v)) for k, v in m.items()}) for step, m in pending]
    for step, m in fetched:
        if not all(math.isfinite(m[k]) for k in ("loss", "grad_norm", "param_norm")):
            ckpt.wait()
            last = ckpt.latest_step()
            terms = ", ".join(f"{k} {v:.6g}" for k, v in m.items())
            raise NonFiniteLossError(
                f"non-finite training metrics at step {step} ({terms}); stopped without saving. "
                + (f"The last good checkpoint is step {last} in {ckpt.directory}." if last is not None
                   else f"No checkpoint was written to {ckpt.directory}.")
                + " Try a lower --config.optim.lr or --config.optim.grad_clip_norm=1.0."
            )
    return fetched


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def train(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, on_step: Callable[[int], None] | None = None
) -> TrainState:
    """Trains to `config.train.num_steps`, resuming from <workdir>/checkpoints if present.

    on_step(step): called after every step is dispatched (tests use it to interrupt).
    Returns the final (or, when stopped by a signal, the saved) train state.
    """
    mesh_lib.initialize_distributed(config.distributed)
    workdir = Path(workdir).resolve()
    tc = config.train
    is_main = jax.process_index() == 0
    mesh = mesh_lib.make_mesh()
    mesh_lib.local_batch_size(tc.global_batch_size, mesh)  # validates divisibility before any work
    if tc.num_steps < 1:
        raise ValueError(f"train.num_steps={tc.num_steps}: must be >= 1")
    workdir.mkdir(parents=True, exist_ok=True)
    if is_main:
        write_config(config, workdir)
    repl = mesh_lib.replicated(mesh)
    model, optimizer, step_fn, predict_fn = _programs(
        model_config(config), ml_collections.FrozenConfigDict(config.optim),
        ml_collections.FrozenConfigDict(config.loss),
        # The run length matters to the program only through a decaying schedule.
        0 if config.optim.schedule == "constant" else int(tc.num_steps), mesh)

    ckpt = ckpt_lib.Checkpointer(workdir, max_to_keep=tc.max_to_keep, async_save=tc.async_checkpointing)
    writer = SummaryWriter(workdir, enabled=is_main)
    stop = StopRequest()
    try:
        state = create_train_state(initial_variables(config, model, mesh), optimizer, repl)
        if ckpt.latest_step() is not None:
            state = ckpt.restore(state, repl)
            logging.info("resumed from %s at step %d", ckpt.directory, int(host_value(state.step)))
        start = int(host_value(state.step))
        if start >= tc.num_steps:
            logging.info("nothing to do: the run is at step %d of %d", start, tc.num_steps)
            return state
        data = make_input(config, workdir, start_step=start, process_index=jax.process_index(),
                          process_count=jax.process_count())
        progress = Progress(tc.num_steps, tc.global_batch_size)
        pending: list[tuple[int, dict]] = []
        for step in range(start, tc.num_steps):
            local = next(data)
            batch = mesh_lib.global_batch({k: local[k] for k in BATCH_FIELDS}, mesh, tc.global_batch_size)
            state, metrics = step_fn(state, batch)
            done = step + 1
            pending.append((done, metrics))
            if on_step is not None:
                on_step(done)
            last = done == tc.num_steps
            flush = last or _due(done, tc.log_every) or _due(done, tc.checkpoint_every) or len(pending) >= 1000
            stopping = stop.agreed(done, sync=flush)
            if flush or stopping:
                fetched = _check_finite(pending, ckpt)
                pending = []
                for s, m in fetched:
                    if _due(s, tc.summary_every) or s == done:
                        writer.scalars(s, m)
                if is_main and (_due(done, tc.log_every) or last or stopping):
                    logging.info(progress.line(done, fetched[-1][1]))
            if _due(done, tc.image_every):  # every process joins the (global) program; process 0 writes
                variables = {"params": state.params, "batch_stats": state.batch_stats}
                outputs = jax.tree_util.tree_map(host_value, predict_fn(variables, batch))  # first clip only
                if is_main:
                    panel = clip_panel(local["frames"][0], local["masks"][0], {k: v[0] for k, v in outputs.items()})
                    writer.image(done, "train/clip", panel)
            if last or stopping or _due(done, tc.checkpoint_every):
                ckpt.save(state, done, force=True)
            if _due(done, tc.eval_every):
                _validate(config, model, state, done, workdir, writer)
            if flush:
                writer.flush()
            if stopping:
                logging.warning("stopped at step %d on request; resume with the same --workdir", done)
                break
        return state
    finally:
        stop.close()
        ckpt.close()
        writer.close()


def _validate(config, model, state: TrainState, step: int, workdir: Path, writer: SummaryWriter) -> None:
    """The periodic J&F hook: runs `training.validation` when the inference engine and
    the evaluator are installed and `eval.davis_root` is set; otherwise says why not."""
    if not config.eval.davis_root and config.data.source == "synthetic":
        from munet_jax.training.input import synthetic_root

        config = ml_collections.ConfigDict(config.to_dict())  # a copy: the run's config stays as written
        config.eval.davis_root = str(synthetic_root(config, workdir))
    if not config.eval.davis_root:
        logging.warning("train.eval_every is set but eval.davis_root is empty: skipping validation")
        return
    try:
        from munet_jax.training.validation import validate_davis
    except ImportError as err:
        logging.warning("validation skipped (%s)", err)
        return
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    scores = validate_davis(config, model, variables, workdir / "validation" / f"step_{step}")
    writer.scalars(step, scores, prefix="val")
    logging.info("step %d validation: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
