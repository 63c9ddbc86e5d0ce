"""Training step time: `jit_train_step` on the paper's clips (6 frames, 400x400, K = 3).

The state is replicated and the batch sharded over a 1-D `data` mesh of every
device, exactly as `munet_jax.train` runs it; the step donates the state. The
batch is random frames and random labels (the step's cost does not depend on the
values). On an accelerator the per-device batch is searched by doubling (1, 2,
4, ...) until the step no longer fits, and the largest that fits is timed; on
CPU the batch is `--batch` (default 1): the full-size step at batch 1 takes
minutes per step on a 2-core machine, hence `--tiny`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from munet_jax.benchmark import common, models
from munet_jax.training.mesh import batch_sharded, make_mesh, replicated
from munet_jax.training.state import create_train_state, make_optimizer
from munet_jax.training.step import jit_train_step

CLIP_LENGTH = 6
CROP = (400, 400)
NUM_OBJECTS = 3  # the data config's K


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


def _time(tiny, dtype, batch_size, repeats, crop, conv3x3=None):
    mesh = make_mesh()
    model = models.build(tiny, dtype, conv3x3)
    optimizer, schedule = make_optimizer(optim_config(), 1000)
    # A replicated copy: the step donates the state, and the cached variables serve the next run.
    variables = jax.device_put(jax.tree_util.tree_map(jnp.copy, models.variables(tiny, NUM_OBJECTS)), replicated(mesh))
    state = create_train_state(variables, optimizer, replicated(mesh))
    step = jit_train_step(model, optimizer, schedule, loss_config(), mesh)
    batch = make_batch(batch_size * mesh.devices.size, mesh, crop)
    # Model FLOPs: the same step with direct convolutions, lowered only (as inference does).
    counted = jit_train_step(models.build(tiny, dtype, "direct"), optimizer, schedule, loss_config(), mesh)
    flops = common.model_flops(counted, (state, batch))
    timing = common.measure(step, (state, batch), repeats, carry=lambda a, r: (r[0], a[1]), flops=flops)
    return timing


def _too_big(error: Exception) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower() or "OOM" in text


def run(args) -> list[dict]:
    crop = common.parse_size(args.train_size)
    rows = []
    on_accelerator = jax.default_backend() != "cpu"
    for dtype, conv in ((d, c) for d in common.parse_strs(args.dtype) for c in common.parse_strs(args.conv3x3)):
        if on_accelerator and not args.batch:
            batch, fits = 1, None
            while batch <= args.max_batch:
                try:
                    _time(args.tiny, dtype, batch, 1, crop, conv)
                    fits = batch
                    print(f"training {dtype}: per-device batch {batch} fits", flush=True)
                    batch *= 2
                except Exception as error:  # noqa: BLE001 - only out-of-memory ends the search
                    if not _too_big(error):
                        raise
                    print(f"training {dtype}: per-device batch {batch} does not fit", flush=True)
                    break
            if fits is None:
                print(f"training {dtype}: even batch 1 does not fit", flush=True)
                continue
            batch, searched = fits, True
        else:
            batch, searched = args.batch or 1, False
        timing = _time(args.tiny, dtype, batch, args.repeats, crop, conv)
        clips = batch * jax.device_count()
        row = {
            "config": "tiny" if args.tiny else "full", "clip": [CLIP_LENGTH, *crop], "objects": NUM_OBJECTS,
            "dtype": dtype, "conv3x3": conv, "per_device_batch": batch, "global_batch": clips,
            "batch_searched_by_doubling": searched,
            "clips_per_s": clips / (timing.median_ms / 1e3),
            **timing.to_dict(), **common.utilisation(timing, dtype, args.peak_gflops),
        }
        rows.append(row)
        print(f"training {row['config']} {CLIP_LENGTH}x{crop[0]}x{crop[1]} batch {clips} {dtype} conv3x3 {conv}: "
              f"{timing.median_ms:.1f} ms/step (min {timing.min_ms:.1f}), {row['clips_per_s']:.2f} clips/s, "
              f"compile {timing.compile_s:.1f} s, "
              f"{'n/a' if timing.flops is None else f'{timing.flops / 1e9:.1f}'} GFLOP/step, "
              f"recompiled={timing.recompiled}", flush=True)
    return rows
