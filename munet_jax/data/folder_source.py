"""What the folder readers share: file helpers and `FolderVideoSource`, a `VideoSource` over
folders of per-video frames (JPEG) and masks (indexed PNG) paired by file stem.

Subclasses (`DavisSource`, `YouTubeVOSSource`) supply the layout: where a video's
frame and mask folders are (`image_dir`, `mask_dir`), how the index is scanned
(`_build_index` with a per-video scan that lists and checks the files), and where
object ids come from (`_video_object_ids`). The base holds the per-video frame
names, annotated flags and sizes, and implements `info`, `load`, `load_masks`,
`frame_bytes`, `index_of` and the frame-index checks once.

Construction only lists folders and reads file headers (PIL reads the size and
the colour mode without decoding pixels). Pixels are decoded in `load`: JPEGs
with OpenCV (-> RGB), masks with `read_indexed_png` (ids, not palette colours).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np
from PIL import Image

from munet_jax.data.source import VideoInfo
from munet_jax.palette import NotIndexedMaskError, read_indexed_png

__all__ = [
    "DatasetLayoutError",
    "FolderVideoSource",
    "check_frame_indices",
    "check_indexed_header",
    "decode_image_bytes",
    "image_size",
    "list_stems",
    "read_image_bytes",
    "read_image_rgb",
    "read_mask_checked",
    "read_split_file",
]

_REEXTRACT = "re-extract it from the dataset archive (the file is damaged or was cut short)"


class DatasetLayoutError(ValueError):
    """A dataset folder does not have the expected files; the message names the file and the fix."""


# ----------------------------------------------------------------------------- file helpers


def list_stems(folder: Path, ext: str) -> list[str]:
    """Sorted file stems of `folder/*<ext>` (ext like '.jpg'; hidden files skipped)."""
    return sorted(p[: -len(ext)] for p in os.listdir(folder) if p.endswith(ext) and not p.startswith("."))


def read_split_file(path: Path, fix: str) -> list[str]:
    """Non-empty, stripped lines of a split list; errors name the file and `fix`."""
    if not path.is_file():
        siblings = sorted(p.name for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
        raise DatasetLayoutError(
            f"{path}: split file not found (split files there: {siblings or 'none'}); {fix}"
        )
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetLayoutError(f"{path}: split file is empty; {fix}")
    if len(set(names)) != len(names):
        raise DatasetLayoutError(f"{path}: split file lists a name twice; {fix}")
    return names


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the image header, without decoding pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, SyntaxError) as error:
        raise DatasetLayoutError(f"{path}: cannot read image header ({error}); {_REEXTRACT}") from error
    return height, width


def read_image_bytes(path: Path) -> bytes:
    """The encoded file, checked to be a complete JPEG (SOI first, EOI near the end) or a PNG.

    The check matters because libjpeg decodes a truncated JPEG with only a warning,
    filling the missing rows with grey, which would go unnoticed in training.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DatasetLayoutError(f"{path}: cannot read image ({error}); {_REEXTRACT}") from error
    if data[:2] == b"\xff\xd8":
        # Entropy-coded data never holds FF D9 (0xFF is stuffed as FF 00), so EOI in the tail means a
        # complete file; some encoders pad a little after it.
        if b"\xff\xd9" not in data[-1024:]:
            raise DatasetLayoutError(f"{path}: JPEG has no end-of-image marker (truncated file); {_REEXTRACT}")
    elif data[:8] != b"\x89PNG\r\n\x1a\n":
        raise DatasetLayoutError(f"{path}: not a JPEG or PNG file; {_REEXTRACT}")
    return data


def decode_image_bytes(data: bytes, where: str | os.PathLike) -> np.ndarray:
    """Encoded JPEG/PNG bytes -> RGB uint8 [H, W, 3] with OpenCV; `where` names the origin in errors.

    The folder readers and `TfdsVideoSource` both decode with this function, so the
    same file gives the same pixels whichever way it is read.
    """
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DatasetLayoutError(f"{where}: OpenCV cannot decode this image; {_REEXTRACT}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_image_rgb(path: Path) -> np.ndarray:
    """A JPEG/PNG file -> RGB uint8 [H, W, 3], rejecting truncated or corrupt files."""
    return decode_image_bytes(read_image_bytes(path), path)


def read_mask_checked(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Indexed PNG -> uint8 ids [H, W], which must match the frame size `shape`."""
    ids = read_indexed_png(path)
    if ids.shape != shape:
        raise DatasetLayoutError(
            f"{path}: mask is {ids.shape[0]}x{ids.shape[1]} but its frame is {shape[0]}x{shape[1]}; "
            "masks and frames must come from the same resolution folder"
        )
    return ids


def check_indexed_header(path: Path) -> None:
    """Raises NotIndexedMaskError early (at construction) if `path` is not a palette PNG."""
    try:
        with Image.open(path) as image:
            mode = image.mode
    except (OSError, SyntaxError) as error:
        raise DatasetLayoutError(f"{path}: cannot read mask header ({error}); {_REEXTRACT}") from error
    if mode != "P":
        read_indexed_png(path)  # raises the shared NotIndexedMaskError, which explains the conversion
        raise NotIndexedMaskError(f"{path}: mask is a {mode!r} image, not an indexed (palette) PNG")  # unreachable guard


def check_frame_indices(where: str, num_frames: int, frame_indices: Iterable[int]) -> list[int]:
    """`frame_indices` as ints, each in 0..num_frames - 1, else IndexError naming `where` (dataset/video)."""
    out = [int(t) for t in frame_indices]
    bad = [t for t in out if not 0 <= t < num_frames]
    if bad:
        raise IndexError(f"{where}: frame indices {bad} outside 0..{num_frames - 1}")
    return out


# ----------------------------------------------------------------------------- the base reader


class FolderVideoSource:
    """A `VideoSource` over per-video folders of `<frame>.jpg` frames and `<frame>.png` indexed masks.

    Subclasses call this constructor and then `_build_index`, and define `image_dir`,
    `mask_dir` and `_video_object_ids`.
    """

    unit = "video"  # what the dataset calls one video, in messages ('sequence' for DAVIS)
    size_fix = "re-extract the video"  # the advice when a frame's size differs from the first frame's

    def __init__(self, root: str | os.PathLike, split: str, name: str):
        self.root = Path(root).expanduser()
        self.split = split
        self.name = name

    # ------------------------------------------------------------------ the layout (subclasses)

    def image_dir(self, video_id: str) -> Path:
        """The folder holding the frames of `video_id`."""
        raise NotImplementedError

    def mask_dir(self, video_id: str) -> Path:
        """The folder holding the masks of `video_id`."""
        raise NotImplementedError

    def _video_object_ids(self, index: int) -> tuple[int, ...]:
        """Sorted object ids of video `index` (no 0)."""
        raise NotImplementedError

    def _build_index(
        self, video_ids: Sequence[str], scan: Callable[[str], tuple[Sequence[str], Sequence[bool]]]
    ) -> None:
        """Scans every video in order: `scan(video_id)` -> (frame names, annotated flags), checked;
        then the video's size is read from its first frame's header."""
        self.video_ids: tuple[str, ...] = tuple(video_ids)
        self._frames: list[tuple[str, ...]] = []
        self._annotated: list[tuple[bool, ...]] = []
        self._sizes: list[tuple[int, int]] = []
        for index, video_id in enumerate(self.video_ids):
            frames, annotated = scan(video_id)
            self._frames.append(tuple(frames))
            self._annotated.append(tuple(annotated))
            self._sizes.append(image_size(self.frame_path(index, 0)))

    def _list_frames(self, video_id: str, listed_in: Path, missing_fix: str, empty_fix: str) -> list[str]:
        """The frame stems of `video_id` (listed in the file `listed_in`), at least one; the errors
        for a missing or an empty frame folder end in `missing_fix` / `empty_fix`."""
        image_dir = self.image_dir(video_id)
        if not image_dir.is_dir():
            raise DatasetLayoutError(
                f"{image_dir}: {self.unit} {video_id!r} is listed in {listed_in} but its frame folder is missing; "
                + missing_fix
            )
        frames = list_stems(image_dir, ".jpg")
        if not frames:
            raise DatasetLayoutError(f"{image_dir}: no .jpg frames; {empty_fix}")
        return frames

    def _list_masks(self, image_dir: Path, mask_dir: Path, frames: Sequence[str], fix: str) -> set[str]:
        """The mask stems in `mask_dir` (none if it is absent); each must have its frame."""
        masks = set(list_stems(mask_dir, ".png")) if mask_dir.is_dir() else set()
        orphans = sorted(masks.difference(frames))
        if orphans:
            raise DatasetLayoutError(
                f"{mask_dir / (orphans[0] + '.png')}: mask without a frame {image_dir / (orphans[0] + '.jpg')}; "
                f"frames and masks must pair up by name: {fix}"
            )
        return masks

    # ------------------------------------------------------------------ VideoSource

    def __len__(self) -> int:
        return len(self.video_ids)

    def info(self, index: int) -> VideoInfo:
        frames = self._frames[index]
        height, width = self._sizes[index]
        return VideoInfo(self.video_ids[index], len(frames), height, width, frames,
                         self._annotated[index], self._video_object_ids(index))

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
                    f"{path}: frame is {rgb.shape[0]}x{rgb.shape[1]}, the {self.unit}'s first frame "
                    f"{shape[0]}x{shape[1]}; {self.size_fix}"
                )
            frames[k] = rgb
        return frames, self.load_masks(index, indices)

    # ------------------------------------------------------------------ for builders and evaluation

    def frame_names(self, index: int) -> tuple[str, ...]:
        return self._frames[index]

    def frame_path(self, index: int, t: int) -> Path:
        return self.image_dir(self.video_ids[index]) / f"{self._frames[index][t]}.jpg"

    def mask_path(self, index: int, t: int) -> Path:
        return self.mask_dir(self.video_ids[index]) / f"{self._frames[index][t]}.png"

    def frame_bytes(self, index: int, t: int) -> bytes:
        """The JPEG file of frame t, checked complete (stored as is by the TFDS builders)."""
        return read_image_bytes(self.frame_path(index, t))

    def load_masks(self, index: int, frame_indices: Sequence[int]) -> np.ndarray:
        """Masks only: uint8 [n, H, W] (zeros where not annotated)."""
        shape = self._sizes[index]
        masks = np.zeros((len(frame_indices), *shape), np.uint8)
        for k, t in enumerate(self._check_indices(index, frame_indices)):
            if self._annotated[index][t]:
                masks[k] = read_mask_checked(self.mask_path(index, t), shape)
        return masks

    def index_of(self, video_id: str) -> int:
        try:
            return self.video_ids.index(video_id)
        except ValueError:
            raise KeyError(f"{video_id!r} is not in {self.name} ({len(self)} {self.unit}s)") from None

    def _check_indices(self, index: int, frame_indices: Sequence[int]) -> list[int]:
        return check_frame_indices(f"{self.name}/{self.video_ids[index]}", len(self._frames[index]), frame_indices)
