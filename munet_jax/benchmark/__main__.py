"""Benchmarks of every hot path of MUNet; prints the figures and records them.

    python -m munet_jax.benchmark {inference,video,training,parts,pipeline,all} [flags]

  inference  per-frame latency / FPS of the inference engine's jitted step at
             --size (padded to the engine's bucket) for every --objects x
             --memory x --dtype; compile time, XLA FLOPs, GFLOP/s, MFU, peak memory
  video      frames/s of a whole --video_frames video as one compiled program
             (segment_video's init + lax.scan of the step) for every --objects x --dtype
  training   the jitted train step on 6-frame --train_size clips: step time,
             clips/s (on GPU the per-device batch is the largest whose compiled
             step fits --memory_budget_gb, unless --batch), compile time, FLOPs, memory
  parts      Enc-Q, Enc-R, MU-Layer, cost volume, MSAM, query key/value, memory
             read, decoder, each jitted alone on the real shapes
  pipeline   clips/s of the tf.data training pipeline (TensorFlow needed)
  all        all five

Results go to --out/<device-kind>-<date>.json and .md; a run replaces the rows
of the settings it measures again and keeps the others of that day's file. --tiny uses the tiny config.
Examples:
  python -m munet_jax.benchmark inference --objects 1 --memory 5 --dtype float32 --repeats 5
  python -m munet_jax.benchmark training --tiny --batch 1
  python -m munet_jax.benchmark all --tiny --size 64x64 --train_size 64x64 --repeats 2
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

COMMANDS = ("inference", "video", "training", "parts", "pipeline", "all")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m munet_jax.benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=COMMANDS)
    p.add_argument("--size", default="480x854", help="inference frame HxW (padded to the engine's bucket)")
    p.add_argument("--objects", default="1,3", help="object counts (inference; parts use the first)")
    p.add_argument("--memory", default="1,5,20", help="memory frames in the bank (inference)")
    p.add_argument("--video_frames", type=int, default=24, help="frames of the video (video)")
    p.add_argument("--parts_memory", type=int, default=5, help="memory frames for the parts table")
    p.add_argument("--dtype", default="float32,bfloat16", help="compute dtypes")
    p.add_argument("--repeats", type=int, default=10, help="timed calls after the warm-up")
    p.add_argument("--tiny", action="store_true", help="tiny model config (quick runs, tests)")
    p.add_argument("--train_size", default="400x400", help="training crop HxW (the paper: 400x400)")
    p.add_argument("--batch", type=int, default=0,
                   help="per-device training batch (0: the largest that fits --memory_budget_gb on an accelerator "
                        "or with --fit_batch, else 1)")
    p.add_argument("--memory_budget_gb", type=float, default=72.0,
                   help="device memory the training batch must fit: default 90%% of an 80 GB GPU (the rest goes "
                        "to the CUDA context, library workspaces and fragmentation)")
    p.add_argument("--fit_batch", action="store_true",
                   help="fit the training batch to --memory_budget_gb on CPU too (XLA's memory analysis)")
    p.add_argument("--max_batch", type=int, default=256, help="upper end of the batch search")
    p.add_argument("--pipeline_batch", type=int, default=8)
    p.add_argument("--pipeline_steps", type=int, default=10)
    p.add_argument("--pipeline_warmup", type=int, default=3)
    p.add_argument("--peak_gflops", type=float, default=None,
                   help="peak GFLOP/s for MFU (default: datasheet for H100/H200; on CPU the measured "
                        "best float32 2048^3 matmul)")
    p.add_argument("--conv3x3", default="auto",
                   help="3x3 conv algorithm(s), comma-separated: auto (the default: Winograd on CPU where "
                        "faster), direct, winograd (inference, parts, training; model.conv3x3)")
    p.add_argument("--memory_read", default="auto",
                   help="memory read algorithm(s), comma-separated: auto (the default: on CPU query_blocked "
                        "for bfloat16, blocked for narrow float32 reads spanning several blocks), dense, "
                        "blocked, query_blocked (inference, video, parts, training; model.memory_read)")
    p.add_argument("--prepared", default="yes",
                   help="inference and parts: 'yes' (Winograd kernels transformed once, as "
                        "InferenceEngine.prepare does), 'no' (in every call), or 'yes,no' (both, interleaved)")
    p.add_argument("--stm_results", default="",
                   help="JSON written by benchmarks/stm_pytorch.py on this machine: merged into the report "
                        "as the STM baseline and compared with the inference rows")
    p.add_argument("--out", default="benchmarks/results", help="results folder ('' : do not write)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message=".*donated buffers were not usable.*")
    from munet_jax.benchmark import common, report

    info = common.device_info()
    print(f"{info['device_kind']} ({info['platform']}), {info['num_devices']} device(s), {info['cpu_cores']} CPU cores, "
          f"jax {info['versions']['jax']}, load average {info['load_average']}", flush=True)
    commands = ("inference", "video", "parts", "training", "pipeline") if args.command == "all" else (args.command,)
    sections = {}
    for name in commands:
        if name == "inference":
            from munet_jax.benchmark import inference as module
        elif name == "video":
            from munet_jax.benchmark import video as module
        elif name == "parts":
            from munet_jax.benchmark import parts as module
        elif name == "training":
            from munet_jax.benchmark import training as module
        else:
            from munet_jax.benchmark import pipeline as module
        try:
            sections[name] = module.run(args)
        except KeyboardInterrupt:  # e.g. `timeout --signal=INT`: keep the sections already measured
            print(f"{name}: interrupted; writing the sections finished before it", flush=True)
            break
    if args.stm_results:
        from munet_jax.benchmark import report as report_module
        sections["stm_baseline"] = report_module.read_stm_results(Path(args.stm_results))
        if "inference" in sections:
            sections["inference"] = report_module.tag_compared_rows(sections["inference"], sections["stm_baseline"])
    if args.out:
        settings = {k: v for k, v in vars(args).items() if k not in ("out",)}
        paths = report.write(Path(args.out), info, sections, settings)
        print("wrote " + ", ".join(str(p) for p in paths), flush=True)
    return sections


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
