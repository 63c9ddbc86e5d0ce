"""Timed inference shared by the benchmark runs: engine set-up, the per-frame and scan loops, FPS.

FPS is reported as the paper does: the mean over videos of (frames / seconds). What
is timed is the model: each `VideoSegmenter.start` / `.add` call (host -> device copy,
the compiled step, the ids copied back), not JPEG decoding or PNG writing. Compilation
is kept out of it in two ways:

- warm-up: before the first video of a new shape bucket, the first two frames of that
  video run through a throw-away segmenter; that time is the bucket's compile time;
- detection: any timed call during which the engine traced a program anyway (e.g. a
  YouTube-VOS video whose objects outgrow their object bucket mid-video) is moved to
  compile time and its frame left out of the FPS count (`frames_excluded`).

Scan mode (`segment_video`, one program per video length) re-runs a video whose call
compiled and times the second, warm run; compile time = first run - second run.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jax
import ml_collections
import numpy as np

from munet_jax.inference import InferenceEngine, VideoSegmenter, inference_config, segment_video
from munet_jax.inference.engine import choose_object_bucket, choose_size_bucket
from munet_jax.inference.config import STRIDE

PROGRAMS = ("init", "step", "video")


def parse_size_buckets(text: str) -> tuple[tuple[int, int], ...]:
    """'480x864,720x1280' -> ((480, 864), (720, 1280)); ValueError naming the bad entry."""
    buckets = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        try:
            h, w = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise ValueError(f"--size_buckets entry {item!r}: expected HxW, e.g. 480x864") from None
        if h <= 0 or w <= 0 or h % STRIDE or w % STRIDE:
            raise ValueError(f"--size_buckets entry {item!r}: H and W must be positive multiples of {STRIDE}")
        buckets.append((h, w))
    if not buckets:
        raise ValueError("--size_buckets is empty: give HxW entries, e.g. 480x864,480x912")
    return tuple(buckets)


def build_inference_config(run_config, *, mem_every=None, size_buckets=None, object_buckets=None):
    """The inference config: the run's `inference` section if it has one, else the defaults,
    with the command-line overrides applied."""
    icfg = inference_config()
    if run_config is not None and "inference" in run_config:
        icfg.update(ml_collections.ConfigDict(run_config.inference.to_dict()))
    if mem_every is not None:
        icfg.mem_every = int(mem_every)
    if size_buckets is not None:
        icfg.size_buckets = tuple(size_buckets)
    if object_buckets is not None:
        icfg.object_buckets = tuple(object_buckets)
    return icfg


def add_missing_buckets(icfg, sizes) -> list[tuple[int, int]]:
    """Adds a bucket (rounded up to multiples of 16) for each (H, W) that fits no bucket, so a
    long run never stops halfway on one odd-sized video; returns the buckets added."""
    added = []
    for h, w in sizes:
        try:
            choose_size_bucket(h, w, icfg.size_buckets)
        except ValueError:
            bucket = (-(-h // STRIDE) * STRIDE, -(-w // STRIDE) * STRIDE)
            icfg.size_buckets = tuple(icfg.size_buckets) + (bucket,)
            added.append(bucket)
    return added


@dataclass
class VideoTiming:
    name: str
    height: int
    width: int
    size_bucket: tuple[int, int]
    object_bucket: int
    num_objects: int
    frames: int = 0  # frames timed (in the FPS)
    seconds: float = 0.0  # model time of those frames
    frames_excluded: int = 0  # frames whose call compiled a program
    compile_seconds: float = 0.0  # warm-up / compiling calls charged to this video

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class TimedEngine:
    """An `InferenceEngine` with the warm-up and compile bookkeeping of a benchmark run."""

    engine: InferenceEngine
    variables: dict
    videos: list[VideoTiming] = field(default_factory=list)
    _warm: set = field(default_factory=set)

    def __post_init__(self):
        # The Winograd kernel transforms once for the whole run, before any timing.
        self.variables = self.engine.prepare(self.variables)

    def _traced(self) -> int:
        return sum(self.engine.traces.values())

    def new_video(self, name, frame0, mask0) -> VideoTiming:
        """Registers a video starting on (frame0, mask0): its shape buckets and object count."""
        h, w = frame0.shape[:2]
        num_objects = len([i for i in np.unique(mask0) if i != 0])
        bucket = choose_size_bucket(h, w, self.engine.config.size_buckets)
        k = choose_object_bucket(num_objects, self.engine.config.object_buckets)
        timing = VideoTiming(name, h, w, bucket, k, num_objects)
        self.videos.append(timing)
        return timing

    def warm_up(self, timing: VideoTiming, frame0, mask0, frame1=None) -> None:
        """Compiles init (and step, given a second frame) of the video's bucket, untimed for FPS."""
        key = (timing.size_bucket, timing.object_bucket)
        if key in self._warm:
            return
        self._warm.add(key)
        start = time.perf_counter()
        seg = VideoSegmenter(None, self.variables, engine=self.engine)
        seg.start(frame0, mask0)
        if frame1 is not None:
            seg.add(frame1)
        timing.compile_seconds += time.perf_counter() - start

    def timed(self, timing: VideoTiming, call, *args, **kwargs):
        """Runs call(*args) (which must return host arrays, i.e. synchronise) and books its time."""
        before = self._traced()
        start = time.perf_counter()
        out = call(*args, **kwargs)
        seconds = time.perf_counter() - start
        if self._traced() != before:
            timing.compile_seconds += seconds
            timing.frames_excluded += 1
        else:
            timing.seconds += seconds
            timing.frames += 1
        return out

    def scan_video(self, timing: VideoTiming, frames, first_mask, new_object_masks=None) -> np.ndarray:
        """The whole video as one `lax.scan` program -> ids [T, H, W]; timed on a warm run."""
        before = self._traced()
        start = time.perf_counter()
        out = segment_video(self.engine, self.variables, frames, first_mask, new_object_masks=new_object_masks)
        first = time.perf_counter() - start
        if self._traced() != before:  # compiled: time a second run of the same program
            start = time.perf_counter()
            out = segment_video(self.engine, self.variables, frames, first_mask, new_object_masks=new_object_masks)
            second = time.perf_counter() - start
            timing.compile_seconds += max(first - second, 0.0)
            first = second
        timing.frames += len(frames)
        timing.seconds += first
        return out["ids"]

    def summary(self, **extra) -> dict:
        """The timing report: FPS as the paper gives it, compile time and program counts."""
        timed = [v for v in self.videos if v.frames and v.seconds > 0]
        frames = sum(v.frames for v in timed)
        seconds = sum(v.seconds for v in timed)
        per_bucket: dict[str, int] = {}
        for (name, hw, k), n in sorted(self.engine.traces.items(), key=str):
            per_bucket[f"{name} {hw[0]}x{hw[1]} K={k}"] = n
        return {
            "fps": float(np.mean([v.fps for v in timed])) if timed else float("nan"),
            "fps_definition": "mean over videos of (frames timed / model seconds); compilation excluded",
            "fps_all_frames": frames / seconds if seconds > 0 else float("nan"),
            "frames_timed": frames,
            "frames_excluded": sum(v.frames_excluded for v in self.videos),
            "model_seconds": seconds,
            "compile_seconds": sum(v.compile_seconds for v in self.videos),
            "compilations": {name: self.engine.compilations(name) for name in PROGRAMS},
            "compilations_per_bucket": per_bucket,
            "size_buckets_used": sorted({f"{v.size_bucket[0]}x{v.size_bucket[1]}" for v in self.videos}),
            "device": str(jax.devices()[0]),
            "mem_every": self.engine.config.mem_every,
            **extra,
            "videos": [{**asdict(v), "fps": v.fps} for v in self.videos],
        }


def write_json_atomic(path: Path, obj) -> Path:
    """JSON written beside its final name and renamed: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(_finite(obj), handle, indent=2, default=_json_default, allow_nan=False)
            handle.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _finite(value):
    # NaN (e.g. the FPS of a run that timed nothing) is not JSON: written as null.
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def format_timing(summary: dict) -> str:
    c = summary["compilations"]
    return (f"FPS {summary['fps']:.2f} (mean over {len(summary['videos'])} videos of frames/s, "
            f"{summary['frames_timed']} frames timed, {summary['frames_excluded']} excluded), "
            f"compile {summary['compile_seconds']:.1f} s, programs compiled: init {c['init']}, "
            f"step {c['step']}, video {c['video']}")
