"""Per-frame inference latency: the inference engine's jitted step at a shape bucket.

The program timed is `munet_jax.inference.engine.step_state` jitted with the
state donated, exactly what `InferenceEngine` compiles per bucket (Enc-Q of the
frame, MU-Layer on the cached res4 of the previous frame, MSAM, query key/value,
memory read per object, decoder, soft aggregation, then Enc-R of the frame with
its predicted masks and the write into the bank). The frame is padded as the
evaluator pads it (bottom/right to the engine's size bucket, 480x854 -> 480x864).

"Memory of T frames" is a bank of exactly T slots, all valid: the memory read
attends over all T x h x w positions (the engine's own config needs T >= 3, so
the state is built here rather than with `InferenceEngine.init`; the cost of a
step depends only on the bank's shape).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from munet_jax.benchmark import common, models
from munet_jax.inference.config import inference_config
from munet_jax.inference.engine import InferenceState, choose_size_bucket, pad_to, step_state
from munet_jax.inference.memory_bank import MemoryBank
from munet_jax.models.munet import compute_dtype


def full_state(model, num_objects: int, capacity: int, bucket_hw, image_hw) -> InferenceState:
    """A state whose bank holds `capacity` valid frames of every object."""
    c = model.config
    dtype = compute_dtype(c)
    h, w = bucket_hw[0] // 16, bucket_hw[1] // 16
    d = 16 * c.backbone.width
    rng = np.random.default_rng(0)

    def normal(shape):
        return jnp.asarray(rng.normal(size=shape).astype(np.float32), dtype)

    bank = MemoryBank(
        keys=normal((num_objects, capacity, h, w, c.key_dim)),
        values=normal((num_objects, capacity, h, w, c.value_dim)),
        valid=jnp.ones((num_objects, capacity), bool),
        frame_index=jnp.arange(capacity, dtype=jnp.int32),
        ring_writes=jnp.asarray(max(capacity - 2, 0), jnp.int32),
    )
    return InferenceState(
        bank=bank,
        prev_res4=normal((1, h, w, d)),
        frame_index=jnp.asarray(capacity, jnp.int32),
        object_valid=jnp.ones((num_objects,), bool),
        image_hw=jnp.asarray(image_hw, jnp.int32),
    )


def jit_step(model):
    """The engine's step as `InferenceEngine` compiles it (the state donated)."""
    return jax.jit(functools.partial(step_state, model, inference_config().mem_every), donate_argnums=(1,))


def step_program(step, model, variables, k: int, t: int, bucket, image_hw, frame, flops=None) -> common.Program:
    """A timed call of `step` (`jit_step(model)`): K objects, a bank of T full slots, `frame`
    [Hb, Wb, 3] (padded to `bucket`, the image `image_hw` inside it), no new objects; each call's
    state is the previous call's output (the input state is donated)."""
    no_new = (jnp.zeros(bucket, jnp.uint8), jnp.zeros((k,), bool))
    call_args = (variables, full_state(model, k, t, bucket, image_hw), frame, *no_new)
    return common.Program(step, call_args, carry=lambda a, r: (a[0], r[0], *a[2:]), flops=flops)


def run(args) -> list[dict]:
    size = common.parse_size(args.size)
    icfg = inference_config()
    bucket = choose_size_bucket(*size, icfg.size_buckets)
    rng = np.random.default_rng(1)
    frame = jnp.asarray(pad_to(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8), bucket))
    rows = []
    variables = models.variables(args.tiny)
    # Variant -> (model, its variables, jitted step)
    programs = {key: (model, model_vars, jit_step(model))
                for key, (model, model_vars) in models.inference_variants(args, variables).items()}
    variants = list(programs)
    # Model FLOPs: the same step with direct convolutions and the dense read, lowered only.
    counted = {d: jax.jit(functools.partial(step_state, models.counting_model(args.tiny, d), icfg.mem_every))
               for d in common.parse_strs(args.dtype)}
    for k in common.parse_ints(args.objects):
        for t in common.parse_ints(args.memory):
            # Every dtype / conv variant of this setting, timed interleaved (common.measure_many).
            batch, flops = [], {}  # model FLOPs lowered once per dtype, not per variant
            for variant in variants:
                model, model_vars, program = programs[variant]
                timed = step_program(program, model, model_vars, k, t, bucket, size, frame)
                if variant.dtype not in flops:
                    flops[variant.dtype] = common.model_flops(counted[variant.dtype], (variables,) + timed.args[1:])
                timed.flops = flops[variant.dtype]
                batch.append(timed)
            for variant, timing in zip(variants, common.measure_many(batch, args.repeats)):
                row = {
                    "image": list(size), "bucket": list(bucket), "objects": k, "memory_frames": t,
                    "fps": 1e3 / timing.median_ms,
                    **models.variant_row(args, variant, variants, timing),
                    "memory_read_ran": models.read_ran(args.tiny, variant.memory_read, t, bucket, variant.dtype),
                }
                rows.append(row)
                print(f"inference {row['config']} {size[0]}x{size[1]}->{bucket[0]}x{bucket[1]} K={k} T={t} {variant.dtype} "
                      f"conv3x3 {common.conv_label(row)}, read {variant.memory_read}: {timing.median_ms:.1f} ms (min {timing.min_ms:.1f}), {row['fps']:.2f} FPS, "
                      f"compile {timing.compile_s:.1f} s, {fmt_gflops(timing.flops)} model GFLOP/frame, "
                      f"recompiled={timing.recompiled}", flush=True)
    return rows


def fmt_gflops(flops) -> str:
    return "n/a" if flops is None else f"{flops / 1e9:.1f}"
