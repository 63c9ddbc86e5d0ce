"""Training step time: `jit_train_step` on the paper's clips (6 frames, 400x400, K = 3).

The state is replicated and the batch sharded over a 1-D `data` mesh of every
device, exactly as `munet_jax.train` runs it; the step donates the state. The
batch is random frames and random labels (the step's cost does not depend on the
values).

The per-device batch: on an accelerator (or with --fit_batch) the largest that
fits `--memory_budget_gb` by XLA's memory analysis of the compiled step
(`largest_batch_under`: compile at 1 and 2 clips, extrapolate, confirm at the
boundary; a handful of compiles instead of running every size), then timed; on
CPU otherwise `--batch` (default 1): the full-size step at batch 1 takes over a
minute per step on a 2-core machine, hence `--tiny`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from munet_jax.benchmark import common, models
from munet_jax.models import conv_grad
from munet_jax.training.mesh import batch_sharded, make_mesh, replicated
from munet_jax.training.state import create_train_state, make_optimizer
from munet_jax.training.step import jit_train_step

CLIP_LENGTH = 6
CROP = (400, 400)
NUM_OBJECTS = 3  # the data config's K
GB = 1e9


def optim_config() -> ml_collections.ConfigDict:
    """The paper's AdamW (configs/common.py)."""
    return ml_collections.ConfigDict(dict(
        name="adamw", lr=2e-5, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.5, grad_clip_norm=None,
        schedule="constant", warmup_steps=0, end_lr_fraction=0.0))


def loss_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(kind="bsce_iou", top_fraction=0.4, iou_weight=1.0))


def make_batch(batch_size: int, mesh, crop=CROP, length=CLIP_LENGTH, k=NUM_OBJECTS) -> dict:
    rng = np.random.default_rng(0)
    host = {
        "frames": rng.integers(0, 256, size=(batch_size, length, *crop, 3), dtype=np.uint8),
        "masks": rng.integers(0, k + 1, size=(batch_size, length, *crop), dtype=np.uint8),
        "object_valid": np.ones((batch_size, k), bool),
    }
    return jax.device_put(host, batch_sharded(mesh))


def _step_and_inputs(tiny, dtype, batch_size, crop, conv3x3=None, memory_read=None):
    """(jitted step, (state, batch)) at a per-device batch, placed on the mesh as train.py places them."""
    mesh = make_mesh()
    model = models.build(tiny, dtype, conv3x3, memory_read)
    optimizer, schedule = make_optimizer(optim_config(), 1000)
    # A replicated copy: the step donates the state, and the cached variables serve the next run.
    variables = jax.device_put(jax.tree_util.tree_map(jnp.copy, models.variables(tiny, NUM_OBJECTS)), replicated(mesh))
    state = create_train_state(variables, optimizer, replicated(mesh))
    step = jit_train_step(model, optimizer, schedule, loss_config(), mesh)
    batch = make_batch(batch_size * mesh.devices.size, mesh, crop)
    return step, (state, batch), (mesh, optimizer, schedule)


def _time(tiny, dtype, batch_size, repeats, crop, conv3x3=None, memory_read=None):
    step, args, (mesh, optimizer, schedule) = _step_and_inputs(tiny, dtype, batch_size, crop, conv3x3, memory_read)
    # Model FLOPs: the same step as `models.counting_model`, lowered only (as inference does),
    # with lax's conv gradients (the GEMM form loops over kernel taps: counted once by XLA).
    counted = jit_train_step(models.counting_model(tiny, dtype), optimizer, schedule, loss_config(), mesh)
    with conv_grad.lax_gradients():
        flops = common.model_flops(counted, args)
    return common.measure(step, args, repeats, carry=lambda a, r: (r[0], a[1]), flops=flops)


def compiled_step_bytes(tiny, dtype, batch_size, crop, conv3x3=None, memory_read=None) -> float:
    """Per-device bytes of the compiled train step (XLA memory analysis: arguments + outputs -
    donated + temporaries) at a per-device batch; inf where even compiling runs out of memory.

    On GPU these compiles skip autotuning (`xla_gpu_autotune_level=0`: a fraction of the
    compile time; the kernels' workspaces may differ a little from the autotuned program's),
    so the timed program, compiled normally, records its own memory analysis beside the fit
    (`batch_fit['timed_program_gb']`).
    """
    step, args, _ = _step_and_inputs(tiny, dtype, batch_size, crop, conv3x3, memory_read)
    options = {"xla_gpu_autotune_level": 0} if jax.default_backend() == "gpu" else None
    try:
        memory = common.compiled_memory(step.lower(*args).compile(compiler_options=options))
    except Exception as error:  # noqa: BLE001 - only out-of-memory counts as "does not fit"
        if not _too_big(error):
            raise
        return float("inf")
    if memory is None:
        raise RuntimeError(f"{jax.default_backend()} gives no memory analysis of the compiled step: "
                           "pass --batch")
    print(f"training {dtype}: per-device batch {batch_size} compiles to {memory['peak_estimate'] / GB:.3g} GB",
          flush=True)
    return float(memory["peak_estimate"])


def largest_batch_under(bytes_at: Callable[[int], float], budget: float, max_batch: int) -> tuple[int, dict]:
    """The largest batch b <= max_batch with bytes_at(b) <= budget (0 if not even 1), and every
    bytes_at it evaluated {b: bytes}.

    bytes_at is a compile, so it is called as few times as possible: a step's memory is
    affine in the batch (parameters and optimizer state once, activations per clip), so
    1 and 2 give a guess; the guess and guess + 1 usually settle it, bisection otherwise
    (bytes_at must grow with b).
    """
    seen = {}

    def fits(b):
        if b not in seen:
            seen[b] = float(bytes_at(b))
        return seen[b] <= budget

    if not fits(1):
        return 0, seen
    if max_batch < 2 or not fits(2):
        return 1, seen
    per_clip = max(seen[2] - seen[1], 1.0)
    guess = int(min(max_batch, max(2, 2 + (budget - seen[2]) // per_clip)))
    lo, hi = 2, max_batch + 1  # lo fits; hi does not (or is past max_batch)
    for b in (guess, guess + 1):
        if lo < b < hi:
            if fits(b):
                lo = b
            else:
                hi = b
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo, seen


def _too_big(error: Exception) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower() or "OOM" in text


def run(args) -> list[dict]:
    crop = common.parse_size(args.train_size)
    rows = []
    on_accelerator = jax.default_backend() != "cpu"
    settings = [(d, c, r) for d in common.parse_strs(args.dtype) for c in common.parse_strs(args.conv3x3)
                for r in common.parse_strs(args.memory_read)]
    for dtype, conv, read in settings:
        fit = None
        if (on_accelerator or args.fit_batch) and not args.batch:
            # The budget (default: 90% of an 80 GB GPU), or less where this device has less.
            limit = common.device_memory_limit()
            budget = min(args.memory_budget_gb * GB, limit or float("inf"))
            batch, seen = largest_batch_under(
                lambda b: compiled_step_bytes(args.tiny, dtype, b, crop, conv, read), budget, args.max_batch)
            fit = {"budget_gb": budget / GB, "device_limit_gb": None if limit is None else limit / GB,
                   "compiled_gb": {str(b): v / GB for b, v in sorted(seen.items())},
                   "per_clip_gb": (seen[2] - seen[1]) / GB if 2 in seen else None}
            print(f"training {dtype}: largest per-device batch by XLA's memory "
                  f"analysis: {batch} (budget {budget / GB:.3g} GB; compiled GB by batch: "
                  f"{', '.join(f'{b}: {v:.3g}' for b, v in fit['compiled_gb'].items())})", flush=True)
            if batch == 0:
                print(f"training {dtype}: even batch 1 does not fit", flush=True)
                continue
        else:
            batch = args.batch or 1
        timing = None
        while timing is None and batch > 0:
            try:
                timing = _time(args.tiny, dtype, batch, args.repeats, crop, conv, read)
            except Exception as error:  # noqa: BLE001 - the analysis can miss the allocator's overheads
                if fit is None or not _too_big(error):
                    raise
                print(f"training {dtype}: batch {batch} ran out of memory at run time; trying {batch - 1}", flush=True)
                fit["ran_out_at_run_time"] = fit.get("ran_out_at_run_time", []) + [batch]
                batch -= 1
        if timing is None:
            continue
        if fit is not None and timing.memory:
            fit["timed_program_gb"] = timing.memory["peak_estimate"] / GB
        clips = batch * jax.device_count()
        row = {
            "config": "tiny" if args.tiny else "full", "clip": [CLIP_LENGTH, *crop], "objects": NUM_OBJECTS,
            "dtype": dtype, "conv3x3": conv, "memory_read": read, "per_device_batch": batch, "global_batch": clips,
            "batch_fit": fit,
            "clips_per_s": clips / (timing.median_ms / 1e3),
            **timing.to_dict(), **common.utilisation(timing, dtype, args.peak_gflops),
        }
        rows.append(row)
        print(f"training {row['config']} {CLIP_LENGTH}x{crop[0]}x{crop[1]} batch {clips} {dtype} conv3x3 {conv}, read {read}: "
              f"{timing.median_ms:.1f} ms/step (min {timing.min_ms:.1f}), {row['clips_per_s']:.2f} clips/s, "
              f"compile {timing.compile_s:.1f} s, "
              f"{'n/a' if timing.flops is None else f'{timing.flops / 1e9:.1f}'} GFLOP/step, "
              f"recompiled={timing.recompiled}", flush=True)
    return rows
