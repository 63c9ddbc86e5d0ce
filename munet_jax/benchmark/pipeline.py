"""Input pipeline throughput: clips/s of the tf.data training pipeline.

Reuses benchmarks/input_pipeline.py (its synthetic 480x854 source and the
project's `make_train_iterator` at the protocol-1 data config: 6-frame 400x400
clips, K = 3, default augmentation). TensorFlow is imported here only, when this
benchmark runs.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "input_pipeline.py"


def _script():
    spec = importlib.util.spec_from_file_location("benchmarks_input_pipeline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports the data pipeline (and with it TensorFlow)
    return module


def run(args) -> list[dict]:
    try:
        script = _script()
    except ImportError as error:  # accelerator machines have JAX but not TensorFlow
        print(f"pipeline: skipped ({error})", flush=True)
        return [{"skipped": f"{type(error).__name__}: {error}"}]
    from munet_jax.data import pipeline
    from munet_jax.data.config import data_config

    cfg = data_config("1")
    source = script.synthetic_source(num_videos=3, num_frames=20)
    it = pipeline.make_train_iterator({"d": source}, {"d": 1.0}, cfg, global_batch_size=args.pipeline_batch, seed=0)
    seconds, batch = script.time_batches(it, args.pipeline_warmup, args.pipeline_steps)
    clips = args.pipeline_steps * args.pipeline_batch
    row = {
        "source": "synthetic 480x854 videos in memory", "clip": [cfg.clip_length, *cfg.crop_size],
        "batch": args.pipeline_batch, "steps": args.pipeline_steps, "warmup_steps": args.pipeline_warmup,
        "clips_per_s": clips / seconds, "ms_per_batch": 1e3 * seconds / args.pipeline_steps,
        "cpu_cores": os.cpu_count(), "frames_shape": list(batch["frames"].shape),
    }
    print(f"pipeline: {row['clips_per_s']:.1f} clips/s ({row['ms_per_batch']:.0f} ms per batch of "
          f"{args.pipeline_batch}) on {os.cpu_count()} cores", flush=True)
    return [row]
