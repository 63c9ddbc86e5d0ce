"""The parts of one frame's time, each jitted alone on the shapes of the real step.

At a bucket Hb x Wb (480x864 for DAVIS 480p) with K objects and T memory frames:

  enc_q        Enc-Q on the frame [1, Hb, Wb, 3] -> res2/res3/res4
  enc_r        Enc-R on the frame + K masks -> memory key/value [1, K, h, w, C]
  mu_layer     MU-Layer on res4 of I_{t-1}, I_t [1, h, w, D] (1x1 reduction, cost
               volume, soft-argmin, uncertainty, Table 1 motion network)
  cost_volume  the cost volume + soft-argmin + uncertainty alone (part of mu_layer)
               on the reduced features [1, h, w, D/4]; formulations compared in
               benchmarks/cost_volume.py
  msam         MSAM fusion of res4 and F_m
  kv_query     query key/value convs on the fused res4
  memory_read  space-time memory read of K objects over T x h x w positions
  decoder      decoder of K objects (the frame's res3/res2 skips, shared) to Hb x Wb logits

The frame total is the sum of the parts other than cost_volume (contained in
mu_layer); it leaves out the soft aggregation and the bank write (small), and
XLA fuses across parts in the real step, so it is an estimate of the step.

A part jitted alone also pays a call's fixed costs (the MU-Layer's dozen small ops
took 3.6 ms of op time in a 5.2 ms call at 240x432), which overstates the small
parts. So the MU-Layer + MSAM share is also measured inside the compiled step:
the engine's step (`step_state`, as `inference` times it) against the same step
without them (`mu_layer.enabled=False`: STM's frame), timed interleaved; the
difference of the medians is what they cost the frame
(`mu_layer_plus_msam_step_share` of the `frame_total(sum)` row).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from munet_jax.benchmark import common, models
from munet_jax.benchmark.inference import jit_step, step_program
from munet_jax.inference.config import inference_config
from munet_jax.inference.engine import choose_size_bucket
from munet_jax.models import cost_volume as cv
from munet_jax.models.memory import memory_read
from munet_jax.models.munet import MUNet, compute_dtype

IN_FRAME = ("enc_q", "enc_r", "mu_layer", "msam", "kv_query", "memory_read", "decoder")


def _programs(model, variables, k: int, t: int, bucket) -> dict:
    """name -> (jitted function, args)."""
    c = model.config
    dtype = compute_dtype(c)
    hb, wb = bucket
    h, w = hb // 16, wb // 16
    d = 16 * c.backbone.width
    rng = np.random.default_rng(0)

    def normal(*shape):
        return jnp.asarray(rng.normal(size=shape).astype(np.float32), dtype)

    def method(fn):
        return jax.jit(lambda v, *a: model.apply(v, *a, method=fn))

    image = jnp.asarray(rng.integers(0, 256, size=(1, hb, wb, 3), dtype=np.uint8))
    masks = jnp.asarray(rng.uniform(size=(1, k, hb, wb)).astype(np.float32))
    res4, prev4 = normal(1, h, w, d), normal(1, h, w, d)
    reduced = normal(1, h, w, d // c.mu_layer.reduction)
    window, tau = c.mu_layer.window, c.mu_layer.tau

    def motion_maps(fq, fr):
        cost, valid = cv.cost_volume(fq, fr, window)
        return cv.soft_argmin(cost, valid, window, tau), cv.uncertainty_map(cost, valid)

    return {
        "enc_q": (method(MUNet.encode_query), (variables, image)),
        "enc_r": (method(MUNet.encode_memory), (variables, image, masks)),
        "mu_layer": (method(lambda m, a, b: m.mu_layer(a, b)), (variables, prev4, res4)),
        "cost_volume": (jax.jit(motion_maps), (reduced, reduced[:, ::-1])),
        "msam": (method(lambda m, a, b: m.fusion(a, b)), (variables, res4, normal(1, h, w, d))),
        "kv_query": (method(lambda m, a: m.kv_query(a)), (variables, res4)),
        "memory_read": (jax.jit(functools.partial(memory_read, algorithm=c.get("memory_read", "auto"))), (
            normal(k, t, h, w, c.key_dim), normal(k, t, h, w, c.value_dim), jnp.ones((k, t), bool),
            normal(k, h, w, c.key_dim), normal(k, h, w, c.value_dim))),
        "decoder": (method(lambda m, *a: m.decoder(*a)), (
            variables, normal(k, h, w, 2 * c.value_dim), normal(1, 2 * h, 2 * w, 8 * c.backbone.width),
            normal(1, 4 * h, 4 * w, 4 * c.backbone.width))),
    }


def step_with_and_without_motion(model, variables, k: int, t: int, bucket, repeats: int):
    """(Timing of the engine's step, Timing of the same step without MU-Layer and MSAM), timed
    interleaved, K objects and a bank of T full slots, one frame of `bucket` size."""
    frame = jnp.asarray(np.random.default_rng(1).integers(0, 256, size=(*bucket, 3), dtype=np.uint8))
    return common.measure_many([step_program(jit_step(m), m, variables, k, t, bucket, bucket, frame)
                                for m in (model, models.without_motion(model))], repeats)


def run(args) -> list[dict]:
    size = common.parse_size(args.size)
    bucket = choose_size_bucket(*size, inference_config().size_buckets)
    k = common.parse_ints(args.objects)[0]
    t = int(args.parts_memory)
    variables = models.variables(args.tiny)
    rows = []
    part_flops = {}  # dtype -> part -> model FLOPs, lowered once per dtype (not per variant)
    for variant, (model, model_vars) in models.inference_variants(args, variables).items():
        dtype = variant.dtype
        if dtype not in part_flops:
            # The same parts with direct convolutions and the dense read (lowered only).
            counted = _programs(models.counting_model(args.tiny, dtype), variables, k, t, bucket)
            part_flops[dtype] = {name: common.model_flops(fn, fn_args) for name, (fn, fn_args) in counted.items()}
        measured = {}
        setting = {"dtype": dtype, "conv3x3": variant.conv3x3, "prepared_kernels": variant.prepared,
                   "memory_read": variant.memory_read,
                   "memory_read_ran": models.read_ran(args.tiny, variant.memory_read, t, bucket, variant.dtype)}
        for name, (program, call_args) in _programs(model, model_vars, k, t, bucket).items():
            timing = common.measure(program, call_args, args.repeats, flops=part_flops[dtype][name])
            measured[name] = timing
            print(f"part {name:<12} K={k} T={t} {dtype} conv3x3 {common.conv_label(setting)}, "
                  f"read {variant.memory_read}: {timing.median_ms:8.1f} ms "
                  f"(min {timing.min_ms:.1f}), {'n/a' if timing.flops is None else f'{timing.flops / 1e9:.2f}'} "
                  f"model GFLOP, compile {timing.compile_s:.1f} s", flush=True)
        with_motion, without = step_with_and_without_motion(model, model_vars, k, t, bucket, 2 * args.repeats)
        step_share = (with_motion.median_ms - without.median_ms) / with_motion.median_ms
        print(f"step {with_motion.median_ms:.1f} ms (min {with_motion.min_ms:.1f}), without MU-Layer + MSAM "
              f"{without.median_ms:.1f} ms (min {without.min_ms:.1f}): MU-Layer + MSAM {100 * step_share:.1f}% "
              "of the step", flush=True)
        total = sum(measured[n].median_ms for n in IN_FRAME)
        for name, timing in measured.items():
            rows.append({
                "config": "tiny" if args.tiny else "full", "part": name, "bucket": list(bucket),
                "objects": k, "memory_frames": t, **setting,
                "share_of_frame": timing.median_ms / total if name in IN_FRAME or name == "cost_volume" else None,
                **timing.to_dict(),
            })
        rows.append({
            "config": "tiny" if args.tiny else "full", "part": "frame_total(sum)", "bucket": list(bucket),
            "objects": k, "memory_frames": t, **setting, "median_ms": total,
            "min_ms": sum(measured[n].min_ms for n in IN_FRAME),
            "flops": sum(measured[n].flops or 0.0 for n in IN_FRAME) or None,
            "mu_layer_plus_msam_share": (measured["mu_layer"].median_ms + measured["msam"].median_ms) / total,
            # Inside the compiled step: the step against the step without them, interleaved.
            "step_ms": with_motion.median_ms, "step_min_ms": with_motion.min_ms,
            "step_without_mu_msam_ms": without.median_ms, "step_without_mu_msam_min_ms": without.min_ms,
            "mu_layer_plus_msam_step_share": step_share,
            "slowest_part": max(IN_FRAME, key=lambda n: measured[n].median_ms),
        })
        print(f"parts total {total:.1f} ms; MU-Layer + MSAM {100 * rows[-1]['mu_layer_plus_msam_share']:.1f}% "
              f"of the frame; slowest: {rows[-1]['slowest_part']}", flush=True)
    return rows
