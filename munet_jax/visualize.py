"""Pictures of a segmentation and of the motion layer (the paper's Figs. 5, 6, 7 and 9).

Run the model on a video and draw, per frame, a panel of four tiles: the predicted
masks over the frame; the motion t-1 -> t colour-coded (hue = direction, saturation
= magnitude, white = still; legend wheel in the corner); the MU-Layer's
uncertainty map as a heatmap over the frame (Figs. 5/6); the MSAM attention map in
grey (Fig. 7). Maps are at stride 16 and upsampled bilinearly to the frame.

    python -m munet_jax.visualize --checkpoint=WORKDIR --video=clip.mp4 --mask=first.png --out=DIR
        [--frames 0,10,20] [--max_frames N] [--ground_truth=GT_FOLDER] [--dtype bfloat16] [--fps F]
    python -m munet_jax.visualize --checkpoint=WORKDIR --davis_root=ROOT --sequence=NAME --out=DIR
    python -m munet_jax.visualize --results=RESULTS_DIR --davis_root=ROOT --sequence=NAME --out=DIR

Writes DIR/panels/<frame>.png for the chosen frames (default: frame 1 and the frames
at 25/50/75/100% of the video, the paper's Fig. 6 choice), DIR/panels.mp4 of every
frame, and, when ground truth is known (--ground_truth, or --davis_root), the
per-frame IoU of every object over time (Fig. 9) as DIR/iou_over_time.png and .csv.
With --results (a folder of predicted PNGs, <RESULTS_DIR>/<sequence>/<frame>.png as
the evaluation writes them) only the IoU plot is drawn, without running a model.
Exit code 2 with a message naming the file and the fix for bad input.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

from munet_jax import compilation_cache
from munet_jax.palette import DAVIS_PALETTE, NotIndexedMaskError, read_indexed_png
from munet_jax.segment import (EXIT_USAGE, UsageError, check_first_mask, check_out, commit, load_checkpoint,
                               make_segmenter)
from munet_jax.video_io import (DEFAULT_FOLDER_FPS, MaskReadError, Mp4Writer, VideoReadError, list_frame_files,
                                open_frames)
from munet_jax.visualization.motion import colour_wheel, flow_to_colour, greyscale, heatmap_over_image, upsample
from munet_jax.visualization.overlay import grid, overlay_masks, titled
from munet_jax.visualization.plots import Series, iou_over_time_plot

STRIDE = 16
MIN_TILE_WIDTH = 360  # the longest title needs about this many pixels


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m munet_jax.visualize", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--checkpoint", help="training workdir: run the model and draw panels")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--video", help="video file or folder of frames")
    p.add_argument("--mask", help="first frame's mask (palette PNG of ids, or binary 0/255 PNG)")
    p.add_argument("--ground_truth", help="folder of ground-truth palette PNGs named like the frames (IoU plot)")
    p.add_argument("--davis_root", help="DAVIS root: video, first mask and ground truth of --sequence")
    p.add_argument("--sequence", help="DAVIS sequence name")
    p.add_argument("--resolution", default="480p", help="DAVIS resolution folder")
    p.add_argument("--results", help="folder of predicted PNGs (<results>/<sequence>/*.png): IoU plot only")
    p.add_argument("--frames", help="comma-separated frame indices (from 0) to save as panel PNGs")
    p.add_argument("--max_frames", type=int, default=None, help="process only the first N frames")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
    p.add_argument("--fps", type=float, default=None, help="frame rate of panels.mp4")
    p.add_argument("--overwrite", action="store_true", help="replace outputs of an earlier run")
    return p


# ----------------------------------------------------------------------------- panels


def motion_tiles(frame: np.ndarray, motion: dict, first: bool) -> list[np.ndarray]:
    """[motion colour, uncertainty heatmap over frame, attention grey], titled."""
    hw = frame.shape[:2]
    if first:  # no previous frame: the model has no motion maps for frame 0
        blank = np.full_like(frame, 230)  # light grey: the empty tile still reads as a tile
        return [(blank, "motion: none on the first frame"), (frame, "uncertainty: none on the first frame"),
                (blank, "MSAM attention: none on the first frame")]
    # The cost volume matches F_t(x) with F_{t-1}(x + d): d points back to where the content
    # was, so the motion from t-1 to t is -d. Units: res4 cells of 16 pixels.
    flow = -upsample(motion["displacement"], hw) * STRIDE
    # Full colour at the 99th percentile of the speed, so a few outliers (often at the
    # image border, where the search window is cut) do not wash out everything else.
    peak = float(np.percentile(np.hypot(flow[..., 0], flow[..., 1]), 99))
    coloured = flow_to_colour(flow, max_magnitude=max(peak, 1e-6))
    wheel = colour_wheel(max(24, min(64, min(hw) // 4)))
    coloured[4 : 4 + wheel.shape[0], -4 - wheel.shape[1] : -4] = wheel
    u = motion["uncertainty"][..., 0]
    a = motion["attention"][..., 0]
    return [
        (coloured, f"motion t-1 -> t (full colour: {peak:.1f} px)"),
        (heatmap_over_image(frame, upsample(u, hw)), f"uncertainty {u.min():.2f} (blue) .. {u.max():.2f} (red)"),
        (greyscale(upsample(a, hw)), f"MSAM attention (0 black, 1 white): {a.min():.2f}..{a.max():.2f}"),
    ]


def panel(name: str, frame: np.ndarray, ids: np.ndarray, motion: dict, first: bool) -> np.ndarray:
    """2x2 tiles (masks, motion / uncertainty, attention) with titles: uint8 RGB."""
    tiles = [(overlay_masks(frame, ids), f"frame {name}: predicted masks")] + motion_tiles(frame, motion, first)
    # Small videos are enlarged (whole pixels, nearest) so that the titles fit above the tiles.
    factor = -(-MIN_TILE_WIDTH // frame.shape[1])
    if factor > 1:
        tiles = [(np.repeat(np.repeat(t, factor, axis=0), factor, axis=1), title) for t, title in tiles]
    return grid([titled(t, title) for t, title in tiles], columns=2)


def default_frames(count: int | None) -> list[int]:
    """Frame 1 and the frames at 25/50/75/100% of the video (the paper's Fig. 6)."""
    if not count:
        return [1]
    last = count - 1
    return sorted({min(1, last)} | {round(q * last) for q in (0.25, 0.5, 0.75, 1.0)})


def parse_frames(text: str | None, count: int | None) -> list[int]:
    if text is None:
        return default_frames(count)
    try:
        frames = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise UsageError(f"--frames={text!r}: expected comma-separated frame indices, e.g. --frames 0,10,20") from None
    if not frames or frames[0] < 0:
        raise UsageError(f"--frames={text!r}: give frame indices >= 0, e.g. --frames 0,10,20")
    if count is not None and frames[-1] >= count:
        raise UsageError(f"--frames={text!r}: the video has {count} frames (indices 0..{count - 1})")
    return frames


# ----------------------------------------------------------------------------- IoU over time


def iou(gt: np.ndarray, pred: np.ndarray) -> float:
    """|gt & pred| / |gt | pred|, 1 when both are empty (the DAVIS J convention)."""
    union = np.count_nonzero(gt | pred)
    return 1.0 if union == 0 else np.count_nonzero(gt & pred) / union


def read_mask_file(path: Path) -> np.ndarray:
    try:
        return read_indexed_png(path)
    except (NotIndexedMaskError, ValueError) as error:
        raise UsageError(str(error)) from error


def iou_outputs(staging: Path, title: str, names: list[str], per_object: dict[int, list[float]]) -> None:
    """Writes iou_over_time.png (Fig. 9) and iou_over_time.csv (frame index, name, one column per object)."""
    frames = np.arange(len(names))
    series = [Series(f"object {k} (mean {np.nanmean(v):.3f})", frames, np.asarray(v), tuple(int(c) for c in DAVIS_PALETTE[k]))
              for k, v in per_object.items()]
    image, _ = iou_over_time_plot(series, title=f"{title}: per-frame IoU")
    cv2.imwrite(str(staging / "iou_over_time.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["index", "frame"] + [f"object_{k}" for k in per_object])
    for t, name in enumerate(names):
        writer.writerow([t, name] + [f"{per_object[k][t]:.6f}" for k in per_object])
    (staging / "iou_over_time.csv").write_text(text.getvalue())


def results_iou(args, staging: Path) -> None:
    """--results mode: IoU of saved predictions against DAVIS ground truth."""
    gt_dir = Path(args.davis_root) / "Annotations" / args.resolution / args.sequence
    if not gt_dir.is_dir():
        raise UsageError(f"{gt_dir}: no ground-truth folder; check --davis_root, --sequence and --resolution")
    pred_dir = Path(args.results) / args.sequence
    if not pred_dir.is_dir():
        pred_dir = Path(args.results)  # also accept the sequence's own folder
    gt_files = sorted(gt_dir.glob("*.png"))
    if not gt_files:
        raise UsageError(f"{gt_dir}: holds no PNG annotations")
    pairs = [(g, pred_dir / g.name) for g in gt_files if (pred_dir / g.name).is_file()]
    if not pairs:
        raise UsageError(f"{pred_dir}: no predicted PNG named like the ground truth ({gt_files[0].name}, ...); "
                         "point --results at the results folder holding <sequence>/<frame>.png")
    # Objects as the official evaluation counts them: ids 1..N, N the first annotation's largest id.
    num_objects = int(np.max(np.where(read_mask_file(gt_files[0]) == 255, 0, read_mask_file(gt_files[0]))))
    if num_objects == 0:
        raise UsageError(f"{gt_files[0]}: the first annotation has no object")
    per_object: dict[int, list[float]] = {k: [] for k in range(1, num_objects + 1)}
    for g, p in pairs:
        gt, pred = read_mask_file(g), read_mask_file(p)
        if gt.shape != pred.shape:
            raise UsageError(f"{p}: prediction is {pred.shape} but ground truth {g} is {gt.shape}; "
                             "write predictions at the annotation's resolution")
        for k in per_object:
            per_object[k].append(iou(gt == k, pred == k))
    skipped = len(gt_files) - len(pairs)
    print(f"IoU of {len(pairs)} frames{f' ({skipped} without prediction skipped)' if skipped else ''}, "
          f"{num_objects} objects, from {pred_dir}")
    iou_outputs(staging, args.sequence, [g.stem for g, _ in pairs], per_object)


def video_panels(args, staging: Path) -> None:
    """--checkpoint mode: run the model, write panels (and the IoU plot given ground truth)."""
    from tqdm import tqdm

    stream = open_frames(args.video, args.max_frames)
    with stream:
        mask, how = check_first_mask(args.mask, stream)
        chosen = set(parse_frames(args.frames, stream.expected_frames))
        gt_dir = Path(args.ground_truth) if args.ground_truth else None
        if gt_dir is not None and not gt_dir.is_dir():
            raise UsageError(f"--ground_truth={gt_dir}: no such folder of ground-truth PNGs")
        print(f"mask: {how} ({args.mask})")
        loaded = load_checkpoint(args.checkpoint, args.step, args.dtype)
        segmenter = make_segmenter(loaded, (stream.height, stream.width))
        names: list[str] = []
        per_object: dict[int, list[float]] = {}
        (staging / "panels").mkdir()
        with Mp4Writer(staging / "panels.mp4", args.fps or stream.fps or DEFAULT_FOLDER_FPS) as writer:
            for t, (name, frame) in enumerate(tqdm(stream, total=stream.expected_frames, unit="frame", file=sys.stderr)):
                ids = segmenter.start(frame, mask) if t == 0 else segmenter.add(frame)
                image = panel(name, frame, ids, segmenter.motion, first=t == 0)
                writer.write(image)
                if t in chosen:
                    cv2.imwrite(str(staging / "panels" / f"{name}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                    chosen.discard(t)
                gt_file = gt_dir / f"{name}.png" if gt_dir is not None else None
                if gt_file is not None and gt_file.is_file():
                    gt = read_mask_file(gt_file)
                    names.append(name)
                    for k in segmenter.object_ids:
                        per_object.setdefault(k, []).append(iou(gt == k, ids == k))
        if chosen:
            print(f"note: frames {sorted(chosen)} are beyond the end of the video; no panel for them")
        if gt_dir is not None:
            if not names:
                raise UsageError(f"{gt_dir}: no ground-truth PNG named like the frames ({name}.png, ...)")
            iou_outputs(staging, args.sequence or stream.path.stem, names, per_object)


def resolve_davis(args) -> None:
    """--davis_root + --sequence fill in --video, --mask (first annotation) and --ground_truth."""
    root = Path(args.davis_root)
    frames = root / "JPEGImages" / args.resolution / args.sequence
    annotations = root / "Annotations" / args.resolution / args.sequence
    if not frames.is_dir() or not annotations.is_dir():
        raise UsageError(f"{root}: no {frames.relative_to(root)} or {annotations.relative_to(root)}; "
                         "check --davis_root, --sequence and --resolution")
    masks = list_frame_files(annotations)
    if not masks:
        raise UsageError(f"{annotations}: holds no annotation PNG")
    args.video = args.video or str(frames)
    args.mask = args.mask or str(masks[0])
    args.ground_truth = args.ground_truth or str(annotations)


def run(args) -> list[str]:
    if bool(args.checkpoint) == bool(args.results):
        raise UsageError("give --checkpoint (run the model, draw panels) or --results (IoU plot of saved "
                         "predictions), exactly one of them")
    if (args.davis_root is None) != (args.sequence is None):
        raise UsageError("--davis_root and --sequence go together")
    if args.results and not args.davis_root:
        raise UsageError("--results needs the ground truth: add --davis_root=ROOT --sequence=NAME")
    if args.checkpoint:
        if args.davis_root:
            resolve_davis(args)
        if not args.video or not args.mask:
            raise UsageError("--checkpoint needs --video and --mask (or --davis_root and --sequence)")
    out = Path(args.out).expanduser()
    names = ("panels", "panels.mp4", "iou_over_time.png", "iou_over_time.csv")
    check_out(out, names, args.overwrite)
    created = not out.exists()
    staging = out / f".visualize-tmp-{os.getpid()}"
    staging.mkdir(parents=True)
    ok = False
    try:
        (video_panels if args.checkpoint else results_iou)(args, staging)
        written = sorted(p.name for p in staging.iterdir())
        commit(staging, out, tuple(written))
        ok = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not ok and created:
            shutil.rmtree(out, ignore_errors=True)
    return written


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    compilation_cache.enable()
    try:
        written = run(args)
    except (UsageError, VideoReadError, MaskReadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {', '.join(str(Path(args.out) / n) for n in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
