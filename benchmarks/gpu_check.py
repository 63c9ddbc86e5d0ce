"""Correctness of the full model on an accelerator against the same program on the host CPU.

    python benchmarks/gpu_check.py [--size 240x432] [--frames 4] [--objects 2] [--json PATH]

Segments one synthetic video (munet_jax.data.synthetic_scene, no TensorFlow) with
the full MUNet and random weights through `segment_video` three times: on the
CPU in float32 (the reference: the code CI tests against NumPy), on the default
accelerator in float32 and in bfloat16. Prints, for each accelerator run, the
largest |probability| difference from the reference and the share of pixels whose
object id differs; exits 1 if the float32 run is off by more than `--tolerance`.

GPU float32 convolutions and matmuls run at XLA's default precision (TF32 on
Ampere and Hopper), so a few 1e-3 is expected there; `--highest` sets
`jax_default_matmul_precision=highest` to check the exact-float32 path instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import numpy as np


def segment_on(device, dtype: str, frames, first_mask, variables_host):
    from munet_jax.inference import InferenceEngine, segment_video
    from munet_jax.models.config import munet_config
    from munet_jax.models.munet import build_model

    cfg = munet_config()
    cfg.dtype = dtype
    engine = InferenceEngine(build_model(cfg))
    with jax.default_device(device):
        variables = engine.prepare(jax.device_put(variables_host, device))
        start = time.perf_counter()
        out = segment_video(engine, variables, frames, first_mask, return_probs=True)
    return out, time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="240x432")
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--objects", type=int, default=2)
    p.add_argument("--tolerance", type=float, default=2e-2, help="largest |p| difference allowed in float32")
    p.add_argument("--highest", action="store_true", help="float32 matmuls / convs at highest precision")
    p.add_argument("--json", default="", help="also write the figures here")
    args = p.parse_args(argv)
    if args.highest:
        jax.config.update("jax_default_matmul_precision", "highest")

    from munet_jax.data.synthetic_scene import render_video
    from munet_jax.models.config import munet_config
    from munet_jax.models.munet import build_model, init_variables

    accelerator = jax.devices()[0]
    cpu = jax.devices("cpu")[0]
    if accelerator.platform == "cpu":
        print("no accelerator: the default device is the CPU, nothing to compare", flush=True)
        return 0
    h, w = (int(v) for v in args.size.lower().split("x"))
    frames, masks = render_video(0, args.frames, h, w, args.objects)
    with jax.default_device(cpu):
        variables = jax.device_get(init_variables(build_model(munet_config()), 0, num_objects=args.objects))

    reference, cpu_s = segment_on(cpu, "float32", frames, masks[0], variables)
    figures = {"device": accelerator.device_kind, "size": [h, w], "frames": args.frames, "objects": args.objects,
               "highest_precision": args.highest, "cpu_float32_s": cpu_s}
    ok = True
    for dtype in ("float32", "bfloat16"):
        out, seconds = segment_on(accelerator, dtype, frames, masks[0], variables)
        diff = float(np.max(np.abs(out["probs"].astype(np.float64) - reference["probs"])))
        changed = float(np.mean(out["ids"][1:] != reference["ids"][1:]))
        figures[dtype] = {"max_abs_prob_diff": diff, "ids_changed_fraction": changed, "seconds_with_compile": seconds}
        print(f"{accelerator.device_kind} {dtype} vs CPU float32: max |p| difference {diff:.2e}, "
              f"ids differ on {100 * changed:.3f}% of pixels ({seconds:.1f} s with compile)", flush=True)
        if dtype == "float32" and not diff <= args.tolerance:
            ok = False
            print(f"FAIL: float32 on {accelerator.device_kind} differs by {diff:.2e} > --tolerance "
                  f"{args.tolerance:g}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
