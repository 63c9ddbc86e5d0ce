"""The built-in synthetic VOS dataset, written in the DAVIS 2017 or YouTube-VOS 2018 layout.

It needs no download: the README demo, and the tests of the readers, the input
pipeline, training and evaluation, run on it. Videos come from
`synthetic_scene` (textured objects that move, rotate, scale, occlude each
other, sometimes look identical, over a panning background).

Default (demo) size: 60 train + 10 val videos of 24 frames at 240x432, about
40 MB, about 7 CPU-seconds to write (7-17 s wall on a busy 2-core machine):

    python -m munet_jax.data.synthetic --out data/synthetic_davis --layout davis

DAVIS 2017 layout (the folder is named 480p as in DAVIS although frames are smaller):
    <root>/JPEGImages/480p/<video>/00000.jpg ...
    <root>/Annotations/480p/<video>/00000.png ...   every frame, indexed palette PNG
    <root>/ImageSets/2017/train.txt, val.txt         video names, one per line
    <root>/SYNTHETIC.json                            generation parameters (written last)

YouTube-VOS 2018 layout (frames of a 30 fps video kept every 5th: 00000, 00005, ...):
    <root>/{train,valid}/JPEGImages/<video>/<frame>.jpg
    <root>/train/Annotations/<video>/<frame>.png     every frame
    <root>/valid/Annotations/<video>/<frame>.png     only frames where some object first appears,
                                                     holding only the objects that first appear there
    <root>/{train,valid}/meta.json  {"videos": {v: {"objects": {"1": {"category", "frames"}}}}}
        train: "frames" = the frames where the object is visible (annotated);
        valid: "frames" = from the object's first appearance to the end of the video (the frames
               to be segmented; the benchmark hides visibility), so "frames"[0] is its first frame.
    <root>/SYNTHETIC.json

Every video's random stream is derived from (seed, split, index), so video i is
the same whatever the number of videos asked for, and the same arguments give
byte-identical files. The dataset is written into `<root>.tmp-<pid>` and renamed
to `<root>` only when complete, so an interrupted run leaves no complete-looking set.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
import zlib
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from munet_jax.data.source import ArrayVideoSource
from munet_jax.data.synthetic_scene import Scene, render_video, render_video_with_scene
from munet_jax.palette import write_indexed_png

__all__ = [
    "generate_davis_layout",
    "generate_youtube_layout",
    "render_video",
    "synthetic_array_source",
    "synthetic_video",
    "youtube_video_name",
    "main",
]

FORMAT_VERSION = 1
JPEG_QUALITY = 90
YOUTUBE_FRAME_STEP = 5
YOUTUBE_SPEED = 1.5  # stored YouTube-VOS frames are 5 source frames apart, so objects move further
DEMO = dict(num_train=60, num_val=10, num_frames=24, height=240, width=432, seed=0)


def _check_args(
    num_frames: int, height: int, width: int, max_objects: int, jpeg_quality: int = JPEG_QUALITY, **fractions: float
) -> None:
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must lie in 1..100, got {jpeg_quality!r}")
    for name, value, low in (("num_frames", num_frames, 1), ("height", height, 16), ("width", width, 16)):
        if int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not 1 <= max_objects <= 255:
        raise ValueError(f"max_objects must lie in 1..255, got {max_objects!r}")
    for name, value in fractions.items():
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value!r}")


def synthetic_video(
    seed: int,
    split: str,
    index: int,
    *,
    num_frames: int,
    height: int,
    width: int,
    twins_fraction: float = 0.25,
    max_objects: int = 4,
    enter_fraction: float = 0.0,
    speed: float = 1.0,
    noise_std: float = 2.0,
) -> tuple[Scene, np.ndarray, np.ndarray]:
    """Video `index` of stream `split`: (scene, frames uint8 [T, H, W, 3], masks uint8 [T, H, W]).

    The number of objects (1..max_objects), whether it has twins (probability
    twins_fraction, needs 2+ objects) and whether some objects enter mid-video
    (probability enter_fraction; they pop in at a frame in 1..T/2, and ids are
    numbered in order of first appearance) are drawn from the video's own stream.
    """
    _check_args(num_frames, height, width, max_objects, twins_fraction=twins_fraction, enter_fraction=enter_fraction)
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    # A list seed hashes (seed, split, index) through SeedSequence: independent streams per video.
    rng = np.random.default_rng([int(seed), zlib.crc32(split.encode()), int(index)])
    twins = max_objects >= 2 and rng.random() < twins_fraction
    num_objects = int(rng.integers(2 if twins else 1, max_objects + 1))
    appear = None
    if num_objects >= 2 and num_frames >= 2 and rng.random() < enter_fraction:
        late = int(rng.integers(1, num_objects))  # at least one object stays at frame 0
        starts = np.sort(rng.integers(1, max(2, num_frames // 2 + 1), size=late))
        appear = [0] * (num_objects - late) + [int(s) for s in starts]
    return render_video_with_scene(
        rng, num_frames, height, width, num_objects, twins, appear_frames=appear, speed=speed, noise_std=noise_std
    )


def _describe(scene: Scene, masks: np.ndarray) -> dict:
    """What SYNTHETIC.json records about one video (JSON-ready, deterministic)."""
    return {
        "num_objects": len(scene.objects),
        "objects": {
            str(o.object_id): {
                "kind": o.kind,
                "texture": o.texture,
                "depth": o.depth,
                "appear_frame": o.appear_frame,
                "twin_of": o.twin_of,
                "visible_frames": int(np.count_nonzero((masks == o.object_id).any(axis=(1, 2)))),
            }
            for o in scene.objects
        },
    }


def synthetic_array_source(
    name: str = "synthetic",
    *,
    num_videos: int = 8,
    num_frames: int = 8,
    height: int = 64,
    width: int = 96,
    seed: int = 0,
    twins_fraction: float = 0.25,
    max_objects: int = 4,
) -> ArrayVideoSource:
    """In memory, the videos `generate_davis_layout` writes to its train split (same seed, same pixels
    before JPEG), named train-0000, train-0001, ..."""
    if int(num_videos) != num_videos or num_videos < 1:
        raise ValueError(f"num_videos must be an integer >= 1, got {num_videos!r}")
    videos = []
    for i in range(num_videos):
        _, frames, masks = synthetic_video(
            seed, "train", i, num_frames=num_frames, height=height, width=width,
            twins_fraction=twins_fraction, max_objects=max_objects,
        )
        videos.append((f"train-{i:04d}", frames, masks))
    return ArrayVideoSource(name, videos)


@contextlib.contextmanager
def _staging_dir(root: Path, overwrite: bool) -> Iterator[Path]:
    """Yields an empty `<root>.tmp-<pid>`; on success it replaces `root`, on any error it is deleted."""
    root = Path(os.path.abspath(root))  # so that "." or "out/" still have a name to put .tmp-<pid> beside
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"output path {root} exists and is not a folder; choose another --out")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(
            f"output folder {root} exists and is not empty; choose another --out, delete it, "
            "or pass --overwrite (overwrite=True) to replace it"
        )
    tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # a leftover of an earlier crashed run with our pid
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if root.exists():
        old = root.with_name(f"{root.name}.old-{os.getpid()}")
        os.rename(root, old)  # the old set stays whole until the new one is complete
        os.rename(tmp, root)
        shutil.rmtree(old)
    else:
        os.rename(tmp, root)


def _write_jpeg(path: Path, rgb: np.ndarray, quality: int) -> None:
    # 4:4:4 (no chroma subsampling): the small, saturated objects would otherwise bleed colour
    # over their edges (at 64x96, 99th-percentile error 47 grey levels with 4:2:0 vs 16 with 4:4:4).
    options = [cv2.IMWRITE_JPEG_QUALITY, int(quality), cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), options)
    if not ok:
        raise OSError(f"{path}: JPEG encoding failed")
    path.write_bytes(data.tobytes())


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


def _check_counts(num_train: int, num_eval: int, eval_name: str) -> None:
    if num_train < 0 or num_eval < 0 or num_train + num_eval < 1:
        raise ValueError(f"need num_train, {eval_name} >= 0 and at least one video, got {num_train}, {num_eval}")


def _write_frames(image_dir: Path, names: list[str], frames: np.ndarray, jpeg_quality: int) -> None:
    """Frame t as `image_dir/<names[t]>.jpg`, creating the folder."""
    image_dir.mkdir(parents=True)
    for name, rgb in zip(names, frames):
        _write_jpeg(image_dir / f"{name}.jpg", rgb, jpeg_quality)


def _write_manifest(root: Path, layout: str, seed: int, jpeg_quality: int, params: dict, described: dict, **counts) -> None:
    """SYNTHETIC.json: how the set was generated and what each video holds (written last)."""
    _write_json(root / "SYNTHETIC.json", {
        "generator": "munet_jax.data.synthetic", "format_version": FORMAT_VERSION, "layout": layout,
        "seed": seed, "jpeg_quality": jpeg_quality, **counts, **params, "videos": described,
    })


def generate_davis_layout(
    root: str | os.PathLike,
    *,
    num_train: int = DEMO["num_train"],
    num_val: int = DEMO["num_val"],
    num_frames: int = DEMO["num_frames"],
    height: int = DEMO["height"],
    width: int = DEMO["width"],
    seed: int = DEMO["seed"],
    twins_fraction: float = 0.25,
    max_objects: int = 4,
    noise_std: float = 2.0,
    jpeg_quality: int = JPEG_QUALITY,
    overwrite: bool = False,
) -> Path:
    """Writes the set in the DAVIS 2017 layout (see the module docstring); returns `root`."""
    _check_args(num_frames, height, width, max_objects, jpeg_quality, twins_fraction=twins_fraction)
    _check_counts(num_train, num_val, "num_val")
    root = Path(root)
    params = dict(num_frames=num_frames, height=height, width=width, twins_fraction=twins_fraction,
                  max_objects=max_objects, noise_std=noise_std)
    frame_names = [f"{t:05d}" for t in range(num_frames)]
    with _staging_dir(root, overwrite) as tmp:
        described = {}
        for split, count in (("train", num_train), ("val", num_val)):
            names = []
            for i in range(count):
                name = f"{split}-{i:04d}"
                scene, frames, masks = synthetic_video(seed, split, i, **params)
                _write_frames(tmp / "JPEGImages" / "480p" / name, frame_names, frames, jpeg_quality)
                for t in range(num_frames):
                    write_indexed_png(tmp / "Annotations" / "480p" / name / f"{frame_names[t]}.png", masks[t])
                names.append(name)
                described[name] = {"split": split, **_describe(scene, masks)}
            sets = tmp / "ImageSets" / "2017"
            sets.mkdir(parents=True, exist_ok=True)
            (sets / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
        _write_manifest(tmp, "davis2017", seed, jpeg_quality, params, described, num_train=num_train, num_val=num_val)
    return root


def youtube_video_name(seed: int, split: str, index: int) -> str:
    """A 10-hex-digit video name like YouTube-VOS's, a pure function of (seed, split, index)."""
    return hashlib.blake2b(f"{seed}/{split}/{index}".encode(), digest_size=5).hexdigest()


def generate_youtube_layout(
    root: str | os.PathLike,
    *,
    num_train: int = DEMO["num_train"],
    num_valid: int = DEMO["num_val"],
    num_frames: int = DEMO["num_frames"],
    height: int = DEMO["height"],
    width: int = DEMO["width"],
    seed: int = DEMO["seed"],
    twins_fraction: float = 0.25,
    max_objects: int = 4,
    enter_fraction: float = 0.5,
    speed: float = YOUTUBE_SPEED,
    noise_std: float = 2.0,
    jpeg_quality: int = JPEG_QUALITY,
    overwrite: bool = False,
) -> Path:
    """Writes the set in the YouTube-VOS 2018 layout (see the module docstring); returns `root`.

    enter_fraction: the share of videos (with 2+ objects) where some objects first
    appear after frame 0. num_frames counts the stored frames (named 00000, 00005, ...).
    """
    _check_args(
        num_frames, height, width, max_objects, jpeg_quality, twins_fraction=twins_fraction, enter_fraction=enter_fraction
    )
    _check_counts(num_train, num_valid, "num_valid")
    root = Path(root)
    params = dict(num_frames=num_frames, height=height, width=width, twins_fraction=twins_fraction,
                  max_objects=max_objects, enter_fraction=enter_fraction, speed=speed, noise_std=noise_std)
    frame_names = [f"{YOUTUBE_FRAME_STEP * t:05d}" for t in range(num_frames)]
    with _staging_dir(root, overwrite) as tmp:
        described = {}
        for split, count in (("train", num_train), ("valid", num_valid)):
            stream, meta = f"youtube-{split}", {}
            for i in range(count):
                name = youtube_video_name(seed, split, i)
                if name in described:
                    raise RuntimeError(f"video name collision {name}; use another seed")
                scene, frames, masks = synthetic_video(seed, stream, i, **params)
                _write_frames(tmp / split / "JPEGImages" / name, frame_names, frames, jpeg_quality)
                visible = np.stack([(masks == o.object_id).any(axis=(1, 2)) for o in scene.objects])  # bool [N, T]
                first = visible.argmax(axis=1)  # [N] first frame where each object shows (all show somewhere)
                objects = {}
                for k, o in enumerate(scene.objects):
                    shown = range(num_frames) if split == "train" else range(int(first[k]), num_frames)
                    frames_listed = [frame_names[t] for t in shown if split == "valid" or visible[k, t]]
                    objects[str(o.object_id)] = {"category": o.kind, "frames": frames_listed}
                meta[name] = {"objects": objects}
                anno_dir = tmp / split / "Annotations" / name
                for t in range(num_frames):
                    if split == "train":
                        write_indexed_png(anno_dir / f"{frame_names[t]}.png", masks[t])
                    elif (first == t).any():
                        # Only the objects that first appear on this frame, as in the benchmark.
                        new_ids = [o.object_id for k, o in enumerate(scene.objects) if first[k] == t]
                        write_indexed_png(anno_dir / f"{frame_names[t]}.png", np.where(np.isin(masks[t], new_ids), masks[t], 0))
                described[name] = {"split": split, **_describe(scene, masks)}
            (tmp / split).mkdir(parents=True, exist_ok=True)  # a split may have no videos
            _write_json(tmp / split / "meta.json", {"videos": meta})
        _write_manifest(tmp, "youtube_vos2018", seed, jpeg_quality, params, described,
                        num_train=num_train, num_valid=num_valid, frame_step=YOUTUBE_FRAME_STEP)
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m munet_jax.data.synthetic",
        description="Write the synthetic VOS dataset in the DAVIS 2017 or YouTube-VOS 2018 layout.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (must be absent or empty)")
    parser.add_argument("--layout", choices=("davis", "youtube"), default="davis")
    parser.add_argument("--num_train", type=int, default=DEMO["num_train"])
    parser.add_argument("--num_val", type=int, default=DEMO["num_val"], help="val (DAVIS) / valid (YouTube-VOS) videos")
    parser.add_argument("--frames", type=int, default=DEMO["num_frames"], help="frames per video")
    parser.add_argument("--height", type=int, default=DEMO["height"])
    parser.add_argument("--width", type=int, default=DEMO["width"])
    parser.add_argument("--seed", type=int, default=DEMO["seed"])
    parser.add_argument("--twins_fraction", type=float, default=0.25)
    parser.add_argument("--max_objects", type=int, default=4)
    parser.add_argument("--enter_fraction", type=float, default=0.5, help="YouTube layout: videos with late objects")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = parser.parse_args(argv)
    common = dict(num_train=args.num_train, num_frames=args.frames, height=args.height, width=args.width,
                  seed=args.seed, twins_fraction=args.twins_fraction, max_objects=args.max_objects,
                  overwrite=args.overwrite)
    start = time.perf_counter()
    try:
        if args.layout == "davis":
            root = generate_davis_layout(args.out, num_val=args.num_val, **common)
        else:
            root = generate_youtube_layout(args.out, num_valid=args.num_val, enter_fraction=args.enter_fraction, **common)
    except (FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    total = (args.num_train + args.num_val) * args.frames
    print(
        f"wrote the {args.layout} layout to {root}: {args.num_train} train + {args.num_val} "
        f"{'val' if args.layout == 'davis' else 'valid'} videos of {args.frames} frames at "
        f"{args.height}x{args.width} in {seconds:.1f} s ({total / seconds:.0f} frames/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
