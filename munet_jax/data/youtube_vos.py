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

from munet_jax.data.folder_source import DatasetLayoutError, FolderVideoSource, check_indexed_header

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


class YouTubeVOSSource(FolderVideoSource):
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
        super().__init__(root, split, name or f"youtube_vos{year}_{split}")
        if require_all_masks is None:
            require_all_masks = split == "train"
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise DatasetLayoutError(
                f"{split_dir}: split folder not found; unpack {split}.zip of YouTube-VOS {year} into {self.root}"
            )
        meta_path = split_dir / "meta.json"
        videos = _read_meta(meta_path)
        objects = {
            video: {int(k): v for k, v in sorted(videos[video]["objects"].items(), key=lambda kv: int(kv[0]))}
            for video in sorted(videos)
        }
        self._objects: list[dict[int, dict]] = list(objects.values())
        self._build_index(list(objects), lambda video: self._scan_video(video, objects[video], meta_path, require_all_masks))

    @property
    def videos(self) -> tuple[str, ...]:
        return self.video_ids

    def image_dir(self, video_id: str) -> Path:
        return self.root / self.split / "JPEGImages" / video_id

    def mask_dir(self, video_id: str) -> Path:
        return self.root / self.split / "Annotations" / video_id

    def _scan_video(self, video: str, objects: dict[int, dict], meta_path: Path, require_all_masks: bool):
        image_dir, mask_dir = self.image_dir(video), self.mask_dir(video)
        frames = self._list_frames(
            video, meta_path, "re-extract the split archive (and use the meta.json of the same release)",
            "re-extract the split archive",
        )
        masks = self._list_masks(image_dir, mask_dir, frames, "re-extract the split archive")
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

    def _video_object_ids(self, index: int) -> tuple[int, ...]:
        return tuple(self._objects[index])

    # ------------------------------------------------------------------ for builders and evaluation

    def first_appearance(self, index: int) -> dict[int, int]:
        """{object id: index into frame_names of the frame where the object first appears} (meta.json)."""
        position = {name: t for t, name in enumerate(self._frames[index])}
        return {oid: position[obj["frames"][0]] for oid, obj in self._objects[index].items()}

    def categories(self, index: int) -> dict[int, str]:
        return {oid: str(obj.get("category", "")) for oid, obj in self._objects[index].items()}
