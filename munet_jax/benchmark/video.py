"""Whole-video throughput: `segment_video`'s one compiled program (init + `lax.scan` of the step).

The per-frame benchmark (`inference`) times one call of the jitted step, so each
frame pays a dispatch and a device-to-host wait; a video known in advance runs as
ONE program (`munet_jax.inference.engine.video_program`, what `segment_video`
compiles per bucket): frames [T, Hb, Wb, 3] in, ids [T, Hb, Wb] out, the memory
bank carried through the scan. This times that program on --video_frames random
frames already on the device (the engine's own memory config: a bank of
`inference.capacity` slots, written every `mem_every` frames), so frames/s is
what a user of `segment_video` gets, less the host copies.

Model FLOPs: XLA counts a loop body once, so they are the init program's plus
(T - 1) steps' (each lowered alone with direct convolutions).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from munet_jax.benchmark import common, models
from munet_jax.inference.config import inference_config
from munet_jax.inference.engine import (choose_object_bucket, choose_size_bucket, init_state, pad_to, step_state,
                                       video_program)


def first_frame_labels(hw, num_objects: int) -> np.ndarray:
    """Indices 0..num_objects of `num_objects` side-by-side boxes (the annotated first frame), [H, W] uint8."""
    h, w = hw
    labels = np.zeros(hw, np.uint8)
    for i in range(num_objects):
        x0 = (2 * i + 1) * w // (2 * num_objects + 1)
        labels[h // 4: 3 * h // 4, x0: x0 + max(w // (2 * num_objects + 1), 1)] = i + 1
    return labels


def run(args) -> list[dict]:
    size = common.parse_size(args.size)
    icfg = inference_config()
    bucket = choose_size_bucket(*size, icfg.size_buckets)
    n = args.video_frames
    if n < 2:
        raise SystemExit(f"--video_frames={n}: the video benchmark needs at least 2 frames")
    rng = np.random.default_rng(3)
    frames = jnp.asarray(np.stack([pad_to(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8), bucket)
                                   for _ in range(n)]))
    variables = models.variables(args.tiny)
    variants = models.inference_variants(args, variables)
    rows = []
    for k in common.parse_ints(args.objects):
        slots = choose_object_bucket(k, icfg.object_buckets)
        labels = jnp.asarray(pad_to(first_frame_labels(size, k), bucket))
        object_valid = jnp.arange(slots) < k
        image_hw = jnp.asarray(size, jnp.int32)
        # Model FLOPs depend only on the dtype: counted once per dtype, not per variant.
        flops = {d: _video_flops(args.tiny, d, icfg, variables, frames, labels, image_hw, object_valid)
                 for d in {v.dtype for v in variants}}
        batch = []
        for variant, (model, model_vars) in variants.items():
            program = jax.jit(functools.partial(video_program, model, icfg.capacity, icfg.mem_every, False))
            batch.append(common.Program(program, (model_vars, frames, labels, image_hw, object_valid),
                                        flops=flops[variant.dtype]))
        names = list(variants)
        for variant, timing in zip(names, common.measure_many(batch, args.repeats)):
            row = {
                "image": list(size), "bucket": list(bucket), "objects": k, "object_slots": slots, "frames": n,
                "capacity": icfg.capacity, "mem_every": icfg.mem_every,
                "fps": n / (timing.median_ms / 1e3), "ms_per_frame": timing.median_ms / n,
                **models.variant_row(args, variant, names, timing),
                "memory_read_ran": models.read_ran(args.tiny, variant.memory_read, icfg.capacity, bucket, variant.dtype),
            }
            rows.append(row)
            print(f"video {row['config']} {n} frames {size[0]}x{size[1]}->{bucket[0]}x{bucket[1]} K={k} "
                  f"{variant.dtype} conv3x3 {common.conv_label(row)}, read {variant.memory_read}: "
                  f"{timing.median_ms:.1f} ms per video, "
                  f"{row['ms_per_frame']:.2f} ms/frame, {row['fps']:.2f} FPS, compile {timing.compile_s:.1f} s, "
                  f"recompiled={timing.recompiled}", flush=True)
    return rows


def _video_flops(tiny, dtype, icfg, variables, frames, labels, image_hw, object_valid) -> float | None:
    """Model FLOPs of the whole video: init + (T - 1) steps, each lowered alone (`models.counting_model`)."""
    model = models.counting_model(tiny, dtype)
    init = jax.jit(functools.partial(init_state, model, icfg.capacity))
    init_flops = common.model_flops(init, (variables, frames[0], labels, image_hw, object_valid))
    state, _ = jax.eval_shape(init, variables, frames[0], labels, image_hw, object_valid)
    k = object_valid.shape[0]
    step = jax.jit(functools.partial(step_state, model, icfg.mem_every))
    step_args = (variables, state, frames[0], jax.ShapeDtypeStruct(frames.shape[1:3], jnp.uint8),
                 jax.ShapeDtypeStruct((k,), jnp.bool_))
    step_flops = common.model_flops(step, step_args)
    if init_flops is None or step_flops is None:
        return None
    return init_flops + (frames.shape[0] - 1) * step_flops
