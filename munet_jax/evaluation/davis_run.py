"""DAVIS 2017 semi-supervised benchmark run: segment every video of a split, write the
results in the DAVIS layout, time the model, score J&F.

    <output>/<sequence>/<frame>.png          palette PNGs (DAVIS palette), first-frame ids
    <output>/timing-<split>.json             FPS, compile time, programs compiled, per video
    <output>/global_results-<split>.csv      the official evaluator's tables
    <output>/per-sequence_results-<split>.csv

Every frame is segmented at the dataset's resolution with the frozen model (no online
fine-tuning), one frame at a time through `VideoSegmenter` (default) or as one
`lax.scan` program per video (`use_scan`). Frame 0's result is its given mask.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from munet_jax.data.davis import DavisSource, read_image_rgb
from munet_jax.evaluation.timing import TimedEngine, add_missing_buckets, write_json_atomic
from munet_jax.inference import InferenceEngine, VideoSegmenter
from munet_jax.metrics import EvaluationResult, evaluate_davis
from munet_jax.palette import write_indexed_png

VOID_ID = 255  # DAVIS "void": not an object, never given to the model as one


@dataclass(frozen=True)
class DavisRun:
    output: Path
    sequences: tuple[str, ...]
    frames_written: int
    timing: dict
    timing_path: Path
    scores: EvaluationResult | None = None
    csv_paths: tuple[Path, Path] | None = None


def select_sequences(source: DavisSource, names) -> list[int]:
    """Indices of `names` (all of the split if None); ValueError naming unknown ones."""
    if not names:
        return list(range(len(source)))
    unknown = [n for n in names if n not in source.sequences]
    if unknown:
        raise ValueError(
            f"--sequences: {unknown} not in split {source.split!r} of {source.root} "
            f"(ImageSets/2017/{source.split}.txt lists {len(source)}: {', '.join(source.sequences[:8])}"
            f"{', ...' if len(source) > 8 else ''}); check the names or --split"
        )
    return [source.sequences.index(n) for n in names]


def first_mask(source: DavisSource, index: int) -> np.ndarray:
    """Frame 0's object ids, void removed; ValueError if it holds no object."""
    mask = source.first_frame_mask(index)
    mask = np.where(mask == VOID_ID, 0, mask).astype(np.uint8)
    if not mask.any():
        raise ValueError(f"{source.mask_path(index, 0)}: the first-frame annotation holds no object; "
                         "semi-supervised VOS needs at least one object on frame 0")
    return mask


def run_davis(model, variables, dataset_root, split: str, output, *, icfg, resolution: str = "480p",
              sequences=None, use_scan: bool = False, score: bool = True, workers: int = 1,
              progress: bool = True, timing_extra: dict | None = None) -> DavisRun:
    """Segments, times and (unless score=False) scores one DAVIS-layout split."""
    source = DavisSource(dataset_root, split, resolution)
    indices = select_sequences(source, sequences)
    names = tuple(source.sequences[i] for i in indices)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)  # only once the inputs are known to be good
    added = add_missing_buckets(icfg, {(source.info(i).height, source.info(i).width) for i in indices})
    if added and progress:
        tqdm.write(f"note: added size buckets {added} for frames larger than inference.size_buckets")
    timed = TimedEngine(InferenceEngine(model, icfg), variables)

    written = 0
    videos = tqdm(indices, desc=f"DAVIS {split}", unit="video", disable=not progress)
    for index in videos:
        info = source.info(index)
        videos.set_postfix_str(info.video_id)
        mask0 = first_mask(source, index)
        out_dir = output / info.video_id
        if use_scan:
            frames = np.stack([read_image_rgb(source.frame_path(index, t)) for t in range(info.num_frames)])
            timing = timed.new_video(info.video_id, frames[0], mask0)
            for name, ids in zip(info.frame_names, timed.scan_video(timing, frames, mask0)):
                write_indexed_png(out_dir / f"{name}.png", ids)
                written += 1
            continue
        written += _segment_per_frame(timed, source, index, mask0, out_dir, progress)

    summary = timed.summary(dataset=f"DAVIS {split} {resolution}", mode="scan" if use_scan else "per_frame",
                            **(timing_extra or {}))
    timing_path = write_json_atomic(output / f"timing-{split}.json", summary)
    if not score:
        return DavisRun(output, names, written, summary, timing_path)
    scores = evaluate_davis(dataset_root, output, split, resolution, sequences=list(names), progress=progress,
                            num_workers=workers)
    csv_paths = scores.write_csvs(output)
    return DavisRun(output, names, written, summary, timing_path, scores, csv_paths)


def _segment_per_frame(timed: TimedEngine, source: DavisSource, index: int, mask0, out_dir: Path,
                       progress: bool) -> int:
    """Streams one sequence through a `VideoSegmenter`, writing each frame's PNG; returns the count."""
    info = source.info(index)
    frame0 = read_image_rgb(source.frame_path(index, 0))
    timing = timed.new_video(info.video_id, frame0, mask0)
    frame1 = read_image_rgb(source.frame_path(index, 1)) if info.num_frames > 1 else None
    timed.warm_up(timing, frame0, mask0, frame1)

    segmenter = VideoSegmenter(None, timed.variables, engine=timed.engine)
    frames = tqdm(range(info.num_frames), desc=info.video_id, unit="frame", leave=False, disable=not progress)
    for t in frames:
        if t == 0:
            ids = timed.timed(timing, segmenter.start, frame0, mask0)
        else:
            frame = frame1 if t == 1 else read_image_rgb(source.frame_path(index, t))
            ids = timed.timed(timing, segmenter.add, frame)
        # Not timed: writing is I/O, and the paper's FPS is the model's.
        write_indexed_png(out_dir / f"{info.frame_names[t]}.png", ids)
    return info.num_frames


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))
