"""Segment your own video from its first frame's mask.

    python -m munet_jax.segment --checkpoint=WORKDIR --video=clip.mp4 --mask=first_mask.png --out=DIR
        [--max_frames N] [--dtype bfloat16] [--fps F] [--overwrite]

--video is a video file OpenCV decodes (.mp4, ...) or a folder of frame images
(sorted naturally by name). --mask is the first frame's mask: an indexed
(palette) PNG of object ids, or a binary PNG (0 / 255 -> object 1).

Writes DIR/masks/<frame>.png (palette PNGs with the mask's ids; <frame> is the
image's stem, or 00000, 00001, ... for a video file), DIR/overlay.mp4 (the masks
over the frames) and DIR/summary.json. The video is streamed through
`VideoSegmenter` one frame at a time, never loaded whole.

Outputs are built in a hidden folder inside DIR and moved into place only when
the whole video is done: an interrupted or failed run leaves no partial output.
Bad input (unreadable video, empty frames folder, a mask of another size or with
no object, a missing checkpoint) exits with code 2 and a message naming the file
and the fix, before anything is written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from munet_jax import compilation_cache
from munet_jax.video_io import (DEFAULT_FOLDER_FPS, FrameStream, MaskReadError, Mp4Writer, VideoReadError,
                                open_frames, read_first_mask)

EXIT_USAGE = 2
COMPILE_FRAMES = 2  # frame 0 compiles `init`, frame 1 `step`: excluded from the model's steady-state time


class UsageError(Exception):
    """Bad command-line input: printed without a traceback, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m munet_jax.segment", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="training workdir (or its checkpoints/<step> folder)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--video", required=True, help="video file or folder of frame images")
    p.add_argument("--mask", required=True, help="first frame's mask: palette PNG of ids, or binary 0/255 PNG")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max_frames", type=int, default=None, help="segment only the first N frames")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="compute dtype (default: the run's)")
    p.add_argument("--fps", type=float, default=None,
                   help=f"frame rate of overlay.mp4 (default: the video's, {DEFAULT_FOLDER_FPS:g} for a folder)")
    p.add_argument("--overwrite", action="store_true", help="replace masks/ and overlay.mp4 left by an earlier run")
    return p


def check_first_mask(mask_path: str, stream: FrameStream) -> tuple[np.ndarray, str]:
    """The first mask, checked against the first frame -> (ids, description)."""
    ids, how = read_first_mask(mask_path)
    if ids.shape != (stream.height, stream.width):
        raise UsageError(
            f"{mask_path}: the mask is {ids.shape[0]}x{ids.shape[1]} (HxW) but the frames of {stream.path} are "
            f"{stream.height}x{stream.width}; give the first frame's mask at the video's resolution "
            "(resize it with nearest-neighbour interpolation so ids stay ids)")
    if not ids.any():
        raise UsageError(f"{mask_path}: the mask has no object (every pixel is background 0); "
                         "paint at least one object on the first frame")
    return ids, how


def load_checkpoint(checkpoint: str, step: int | None, dtype: str | None):
    """load_model with its input errors turned into UsageError (jax is imported only here)."""
    from munet_jax.inference.restore import load_model

    try:
        return load_model(checkpoint, step=step, dtype=dtype)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(f"--checkpoint: {error}") from error


def make_segmenter(loaded, hw: tuple[int, int]):
    """A VideoSegmenter with one size bucket fitted to this video.

    Buckets exist so that many videos share one compiled program; a single video has
    one size, so the smallest multiple of 16 that holds it wastes no compute on padding
    (a 240x432 clip would otherwise run at the 480x864 bucket, four times the work).
    """
    import ml_collections

    from munet_jax.inference.config import STRIDE, inference_config
    from munet_jax.inference.stream import VideoSegmenter

    config = inference_config()
    if "inference" in loaded.config:  # the run's own memory policy, where it saved one
        config.update(ml_collections.ConfigDict(loaded.config.inference.to_dict()))
    config.size_buckets = ((math.ceil(hw[0] / STRIDE) * STRIDE, math.ceil(hw[1] / STRIDE) * STRIDE),)
    return VideoSegmenter(loaded.model, loaded.variables, config)


def check_out(out: Path, names: tuple[str, ...], overwrite: bool) -> None:
    existing = [n for n in names if (out / n).exists()]
    if existing and not overwrite:
        raise UsageError(f"{out}: already holds {', '.join(existing)} from an earlier run; "
                         "pass --overwrite to replace them, or choose another --out")


def commit(staging: Path, out: Path, names: tuple[str, ...]) -> None:
    """Moves the finished outputs from `staging` into `out`, replacing older ones."""
    for name in names:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        os.replace(staging / name, target)


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def segment(args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    from munet_jax.palette import write_indexed_png
    from munet_jax.visualization.overlay import overlay_masks

    out = Path(args.out).expanduser()
    names = ("masks", "overlay.mp4", "summary.json")
    check_out(out, names, args.overwrite)
    # Cheap checks first: a wrong mask should not wait for the model to load.
    stream = open_frames(args.video, args.max_frames)
    with stream:
        mask, how = check_first_mask(args.mask, stream)
        print(f"mask: {how} ({args.mask})")
        print(f"video: {stream.path} ({stream.kind}, {stream.height}x{stream.width}"
              f"{f', {stream.fps:g} fps' if stream.fps else ''})")
        loaded = load_checkpoint(args.checkpoint, args.step, args.dtype)
        print(f"model: {loaded.workdir} step {loaded.step} ({loaded.model.config.dtype})")
        segmenter = make_segmenter(loaded, (stream.height, stream.width))
        fps = args.fps or stream.fps or DEFAULT_FOLDER_FPS

        created = not out.exists()
        staging = out / f".segment-tmp-{os.getpid()}"
        staging.mkdir(parents=True)
        ok = False
        model_seconds: list[float] = []
        start = time.perf_counter()
        try:
            with Mp4Writer(staging / "overlay.mp4", fps) as writer:
                bar = tqdm(total=stream.expected_frames, unit="frame", file=sys.stderr, dynamic_ncols=True)
                for t, (name, frame) in enumerate(stream):
                    tick = time.perf_counter()
                    # start/add return host ids, so the time includes the device work.
                    ids = segmenter.start(frame, mask) if t == 0 else segmenter.add(frame)
                    model_seconds.append(time.perf_counter() - tick)
                    write_indexed_png(staging / "masks" / f"{name}.png", ids)
                    writer.write(overlay_masks(frame, ids))
                    bar.update(1)
                bar.close()
            total = time.perf_counter() - start
            steady = model_seconds[COMPILE_FRAMES:]
            summary = {
                "video": str(stream.path), "mask": str(args.mask), "mask_read_as": how,
                "checkpoint": str(loaded.workdir), "step": loaded.step, "dtype": loaded.model.config.dtype,
                "object_ids": list(segmenter.object_ids), "frames": len(model_seconds),
                "height": stream.height, "width": stream.width, "overlay_fps": fps,
                "seconds_total": round(total, 3), "frames_per_second": round(len(model_seconds) / total, 3),
                "model_ms_per_frame_after_compile": round(1e3 * float(np.mean(steady)), 2) if steady else None,
                "first_frames_seconds_with_compile": round(sum(model_seconds[:COMPILE_FRAMES]), 3),
            }
            write_json(staging / "summary.json", summary)
            commit(staging, out, names)
            ok = True
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if not ok and created:
                shutil.rmtree(out, ignore_errors=True)  # we made it and it holds nothing finished
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    compilation_cache.enable()
    try:
        summary = segment(args)
    except (UsageError, VideoReadError, MaskReadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    steady = summary["model_ms_per_frame_after_compile"]
    print(f"wrote {summary['frames']} masks to {Path(args.out) / 'masks'} and {Path(args.out) / 'overlay.mp4'} "
          f"({summary['overlay_fps']:g} fps)")
    print(f"{summary['frames']} frames in {summary['seconds_total']:.1f} s: {summary['frames_per_second']:.2f} frames/s "
          f"end to end (decode, model, PNG and MP4 writing, first frames compile); "
          + (f"model {steady:.1f} ms/frame after the first {COMPILE_FRAMES}" if steady is not None else
             "too few frames to time the model after compilation"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
