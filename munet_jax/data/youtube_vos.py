"""YouTube-VOS 2018 (and 2019, same layout) folders as a `VideoSource`.

Layout (train.zip -> train/, valid.zip -> valid/ under one root):

    <root>/<split>/JPEGImages/<video>/00000.jpg 00005.jpg ...   every 5th frame of the 30 fps video
    <root>/<split>/Annotations/<video>/00000.png ...             indexed PNGs of object ids
    <root>/<split>/meta.json
        {"videos": {"<video>": {"objects": {"<id>": {"category": str, "frames": [frame names]}}}}}

train: every stored frame is annotated; an object's "frames" are those where it is
visible. valid: a PNG exists only for the frames where some object first appears
and holds only the objects that first appear there; an object's "frames" run from
its first appearance to the end of the video (so "frames"[0] is where the
evaluator must start segmenting it). `first_appearance(index)` exposes that.

Frame names are the real ones ('00000', '00005', ...), kept as file stems.
Object ids come from meta.json (no mask decoding at construction).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from munet_jax.data.davis import (
    DatasetLayoutError,
    check_indexed_header,
    image_size,
    list_stems,
    read_image_bytes,
    read_image_rgb,
    read_mask_checked,
)
from munet_jax.data.source import VideoInfo

__all__ = ["YouTubeVOSSource"]


def _read_meta(path: Path) -> dict:
    fix = "it ships inside the split's archive (train.zip / valid.zip): re-extract it"
    if not path.is_file():
        raise DatasetLayoutError(f"{path}: meta.json not found; {fix}")
    try:
        meta = json.loads(path.read_text())
        videos = meta["videos"]
        for video, entry in videos.items():
            for oid, obj in entry["objects"].items():
                int(oid)
                if not isinstance(obj["frames"], list) or not obj["frames"]:
                    raise ValueError(f"video {video} object {oid} lists no frames")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise DatasetLayoutError(
            f"{path}: not a YouTube-VOS meta.json ({type(error).__name__}: {error}); expected "
            '{"videos": {video: {"objects": {id: {"category", "frames"}}}}}; ' + fix
        ) from error
    if not videos:
        raise DatasetLayoutError(f"{path}: lists no videos; {fix}")
    return videos


class YouTubeVOSSource:
    """One split of YouTube-VOS 2018/2019 as a `VideoSource`.

    require_all_masks: every stored frame must have its PNG. Default: True for
    'train', False otherwise (valid/test annotate first appearances only; those
    PNGs are always required).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        year: int = 2018,
        require_all_masks: bool | None = None,
        name: str | None = None,
    ):
        self.root = Path(root).expanduser()
        self.split = split
        self.name = name or f"youtube_vos{year}_{split}"
        if require_all_masks is None:
            require_all_masks = split == "train"
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise DatasetLayoutError(
                f"{split_dir}: split folder not found; unpack {split}.zip of YouTube-VOS {year} into {self.root}"
            )
        meta_path = split_dir / "meta.json"
        videos = _read_meta(meta_path)
        self.videos = tuple(sorted(videos))
        self._frames: list[tuple[str, ...]] = []
        self._annotated: list[tuple[bool, ...]] = []
        self._sizes: list[tuple[int, int]] = []
        self._objects: list[dict[int, dict]] = []
        for video in self.videos:
            objects = {int(k): v for k, v in sorted(videos[video]["objects"].items(), key=lambda kv: int(kv[0]))}
            frames, annotated = self._scan_video(video, objects, meta_path, require_all_masks)
            self._frames.append(frames)
            self._annotated.append(annotated)
            self._objects.append(objects)
            self._sizes.append(image_size(split_dir / "JPEGImages" / video / f"{frames[0]}.jpg"))

    def _scan_video(self, video: str, objects: dict[int, dict], meta_path: Path, require_all_masks: bool):
        image_dir = self.root / self.split / "JPEGImages" / video
        mask_dir = self.root / self.split / "Annotations" / video
        if not image_dir.is_dir():
            raise DatasetLayoutError(
                f"{image_dir}: video {video!r} is listed in {meta_path} but its frame folder is missing; "
                "re-extract the split archive (and use the meta.json of the same release)"
            )
        frames = list_stems(image_dir, ".jpg")
        if not frames:
            raise DatasetLayoutError(f"{image_dir}: no .jpg frames; re-extract the split archive")
        masks = set(list_stems(mask_dir, ".png")) if mask_dir.is_dir() else set()
        orphans = sorted(masks.difference(frames))
        if orphans:
            raise DatasetLayoutError(
                f"{mask_dir / (orphans[0] + '.png')}: mask without a frame {image_dir / (orphans[0] + '.jpg')}; "
                "frames and masks must pair up by name: re-extract the split archive"
            )
        if require_all_masks:
            missing = [f for f in frames if f not in masks]
            if missing:
                raise DatasetLayoutError(
                    f"{mask_dir / (missing[0] + '.png')}: mask missing for frame {image_dir / (missing[0] + '.jpg')}; "
                    "re-extract the split archive, or pass require_all_masks=False"
                )
        names = set(frames)
        for oid, obj in objects.items():
            unknown = [f for f in obj["frames"] if f not in names]
            if unknown:
                raise DatasetLayoutError(
                    f"{meta_path}: video {video} object {oid} lists frame {unknown[0]!r}, which has no "
                    f"{image_dir / (unknown[0] + '.jpg')}; meta.json and JPEGImages come from different releases"
                )
            first = obj["frames"][0]
            if first not in masks:
                raise DatasetLayoutError(
                    f"{mask_dir / (first + '.png')}: missing; object {oid} of video {video} first appears on "
                    f"frame {first} per {meta_path}, so that frame must be annotated: re-extract the split archive"
                )
        if masks:
            check_indexed_header(mask_dir / f"{min(masks)}.png")
        return tuple(frames), tuple(f in masks for f in frames)

    # ------------------------------------------------------------------ VideoSource

    def __len__(self) -> int:
        return len(self.videos)

    def info(self, index: int) -> VideoInfo:
        height, width = self._sizes[index]
        frames = self._frames[index]
        return VideoInfo(self.videos[index], len(frames), height, width, frames,
                         self._annotated[index], tuple(self._objects[index]))

    def load(self, index: int, frame_indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Frames uint8 [n, H, W, 3] RGB and masks uint8 [n, H, W] (zeros where not annotated)."""
        indices = self._check_indices(index, frame_indices)
        shape = self._sizes[index]
        frames = np.empty((len(indices), *shape, 3), np.uint8)
        for k, t in enumerate(indices):
            path = self.frame_path(index, t)
            rgb = read_image_rgb(path)
            if rgb.shape[:2] != shape:
                raise DatasetLayoutError(
                    f"{path}: frame is {rgb.shape[0]}x{rgb.shape[1]}, the video's first frame "
                    f"{shape[0]}x{shape[1]}; re-extract the video"
                )
            frames[k] = rgb
        return frames, self.load_masks(index, indices)

    # ------------------------------------------------------------------ for builders and evaluation

    def frame_names(self, index: int) -> tuple[str, ...]:
        return self._frames[index]

    def frame_path(self, index: int, t: int) -> Path:
        return self.root / self.split / "JPEGImages" / self.videos[index] / f"{self._frames[index][t]}.jpg"

    def mask_path(self, index: int, t: int) -> Path:
        return self.root / self.split / "Annotations" / self.videos[index] / f"{self._frames[index][t]}.png"

    def frame_bytes(self, index: int, t: int) -> bytes:
        return read_image_bytes(self.frame_path(index, t))

    def load_masks(self, index: int, frame_indices: Sequence[int]) -> np.ndarray:
        shape = self._sizes[index]
        masks = np.zeros((len(frame_indices), *shape), np.uint8)
        for k, t in enumerate(self._check_indices(index, frame_indices)):
            if self._annotated[index][t]:
                masks[k] = read_mask_checked(self.mask_path(index, t), shape)
        return masks

    def first_appearance(self, index: int) -> dict[int, int]:
        """{object id: index into frame_names of the frame where the object first appears} (meta.json)."""
        position = {name: t for t, name in enumerate(self._frames[index])}
        return {oid: position[obj["frames"][0]] for oid, obj in self._objects[index].items()}

    def categories(self, index: int) -> dict[int, str]:
        return {oid: str(obj.get("category", "")) for oid, obj in self._objects[index].items()}

    def index_of(self, video_id: str) -> int:
        try:
            return self.videos.index(video_id)
        except ValueError:
            raise KeyError(f"{video_id!r} is not in {self.name} ({len(self)} videos)") from None

    def _check_indices(self, index: int, frame_indices: Sequence[int]) -> list[int]:
        n = len(self._frames[index])
        out = [int(t) for t in frame_indices]
        bad = [t for t in out if not 0 <= t < n]
        if bad:
            raise IndexError(f"{self.name}/{self.videos[index]}: frame indices {bad} outside 0..{n - 1}")
        return out
