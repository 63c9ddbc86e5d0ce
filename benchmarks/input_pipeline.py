"""Throughput of the training input pipeline: clips/s of 400x400 6-frame clips.

Usage:
  python benchmarks/input_pipeline.py                  # synthetic 480x854 videos in memory
  python benchmarks/input_pipeline.py --source davis   # ../shared/data/davis_sample (JPEG + PNG decoding)

The figure is measured after warm-up (graph tracing, autotuning, filled prefetch
buffer) over --steps batches, on however many CPU cores this machine has.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from munet_jax.data import pipeline  # noqa: E402
from munet_jax.data.config import data_config  # noqa: E402
from munet_jax.data.davis import DavisSource  # noqa: E402
from munet_jax.data.source import ArrayVideoSource  # noqa: E402

DAVIS_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis_sample"


def synthetic_source(num_videos: int, num_frames: int, height: int = 480, width: int = 854) -> ArrayVideoSource:
    """Textured frames with a few moving ellipses as objects (ids 1..3)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:height, :width]
    videos = []
    for v in range(num_videos):
        base = rng.integers(0, 256, size=(height // 8, width // 8, 3), dtype=np.uint8)
        background = cv2.resize(base, (width, height), interpolation=cv2.INTER_LINEAR)
        frames = np.repeat(background[None], num_frames, axis=0)
        masks = np.zeros((num_frames, height, width), np.uint8)
        centres = rng.uniform([100, 100], [height - 100, width - 100], size=(3, 2))
        velocity = rng.uniform(-6, 6, size=(3, 2))
        for t in range(num_frames):
            for o, ((cy, cx), (vy, vx)) in enumerate(zip(centres, velocity), start=1):
                inside = ((yy - cy - vy * t) / 60.0) ** 2 + ((xx - cx - vx * t) / 90.0) ** 2 < 1.0
                frames[t][inside] = (80 * o) % 256
                masks[t][inside] = o
        videos.append((f"synthetic-{v}", frames, masks))
    return ArrayVideoSource("synthetic", videos)


def time_batches(it, warmup: int, steps: int) -> tuple[float, dict]:
    """Seconds for `steps` batches of `it` after `warmup` untimed ones, and the last batch."""
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(it)
    return time.perf_counter() - start, batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=("synthetic", "davis"), default="synthetic")
    parser.add_argument("--davis_root", type=Path, default=DAVIS_SAMPLE,
                        help="a DAVIS 2017 folder for --source davis (default: the two-sequence sample in ../shared)")
    parser.add_argument("--split", default="val", help="the DAVIS split read with --source davis")
    parser.add_argument("--batch", type=int, default=8, help="global batch size (clips per step)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--static", action="store_true", help="also time static-image (one-frame) clips")
    args = parser.parse_args()

    if args.source == "davis":
        if not args.davis_root.is_dir():
            raise SystemExit(f"{args.davis_root} not found; pass --davis_root, or use --source synthetic")
        source = DavisSource(args.davis_root, split=args.split)  # what training reads
    else:
        source = synthetic_source(num_videos=3, num_frames=20)
    cfg = data_config("1")  # 400x400, 6 frames, K = 3, the default augmentation
    runs = [("video clips", source)]
    if args.static:
        images = [(f"image-{i}", f[:1], m[:1]) for i, (_, f, m) in enumerate(source._videos)] \
            if isinstance(source, ArrayVideoSource) else None
        if images:
            runs.append(("static-image clips", ArrayVideoSource("static", images)))
    print(f"cpu cores: {os.cpu_count()}, source: {args.source}, crop {tuple(cfg.crop_size)}, "
          f"clip_length {cfg.clip_length}, batch {args.batch}")
    for label, src in runs:
        it = pipeline.make_train_iterator({"d": src}, {"d": 1.0}, cfg, global_batch_size=args.batch, seed=0)
        seconds, batch = time_batches(it, args.warmup, args.steps)
        assert batch["frames"].shape == (args.batch, cfg.clip_length, *cfg.crop_size, 3)
        clips = args.steps * args.batch
        print(f"{label}: {clips / seconds:.1f} clips/s ({clips} clips in {seconds:.2f} s, "
              f"{1000 * seconds / args.steps:.0f} ms/batch)")


if __name__ == "__main__":
    main()
