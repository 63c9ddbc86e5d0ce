"""DAVIS 2017 folders as a `VideoSource`, and the file helpers all folder readers share.

Layout (as the official archives unpack, e.g. DAVIS-2017-trainval-480p.zip -> DAVIS/):

    <root>/JPEGImages/<resolution>/<sequence>/00000.jpg ...
    <root>/Annotations/<resolution>/<sequence>/00000.png ...   indexed (palette) PNGs of object ids
    <root>/ImageSets/2017/<split>.txt                          sequence names, one per line

Construction only lists folders and reads file headers (PIL reads the size and the
colour mode without decoding pixels), so building a source over the 90 train+val
sequences takes well under a second. Pixels are decoded in `load`: JPEGs with
OpenCV (-> RGB), masks with `read_indexed_png` (ids, not palette colours).

Object ids of a sequence are those of its first-frame mask: in the DAVIS
semi-supervised protocol every object is given in the first frame (the official
evaluation counts objects the same way).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

from munet_jax.data.source import VideoInfo
from munet_jax.palette import NotIndexedMaskError, read_indexed_png

__all__ = [
    "DatasetLayoutError",
    "DavisSource",
    "decode_image_bytes",
    "image_size",
    "list_stems",
    "read_image_bytes",
    "read_image_rgb",
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


# ----------------------------------------------------------------------------- DAVIS 2017


class DavisSource:
    """DAVIS 2017 (or a folder in its layout, like the synthetic set) as a `VideoSource`.

    split: a name with a list file `ImageSets/<year>/<split>.txt` ('train', 'val',
    'test-dev', 'test-challenge').
    require_all_masks: every frame must have its mask (train/val). Default: True
    unless the split starts with 'test' (there only the first frame is annotated,
    and it must be).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        resolution: str = "480p",
        year: int = 2017,
        *,
        require_all_masks: bool | None = None,
        name: str | None = None,
    ):
        self.root = Path(root).expanduser()
        self.split = split
        self.resolution = resolution
        self.name = name or f"davis{year}_{resolution}_{split}"
        if require_all_masks is None:
            require_all_masks = not split.startswith("test")
        if not self.root.is_dir():
            raise DatasetLayoutError(f"{self.root}: DAVIS root folder not found; unpack the DAVIS archive there (see data/README.md)")
        for kind in ("JPEGImages", "Annotations"):
            folder = self.root / kind / resolution
            if not folder.is_dir():
                have = sorted(p.name for p in (self.root / kind).iterdir()) if (self.root / kind).is_dir() else []
                raise DatasetLayoutError(
                    f"{folder}: folder not found (resolutions present: {have or 'none'}); pass one of them as "
                    f"resolution=, or unpack the DAVIS-2017 {resolution} archive into {self.root}"
                )
        split_file = self.root / "ImageSets" / str(year) / f"{split}.txt"
        self.sequences = tuple(read_split_file(
            split_file, f"it must list the {split} sequence names one per line, as in the DAVIS-2017 archive"
        ))
        self._frames: list[tuple[str, ...]] = []
        self._annotated: list[tuple[bool, ...]] = []
        self._sizes: list[tuple[int, int]] = []
        for seq in self.sequences:
            frames, annotated = self._scan_sequence(seq, split_file, require_all_masks)
            self._frames.append(frames)
            self._annotated.append(annotated)
            self._sizes.append(image_size(self.frame_path(len(self._frames) - 1, 0)))
        self._object_ids: dict[int, tuple[int, ...]] = {}

    def _scan_sequence(self, seq: str, split_file: Path, require_all_masks: bool) -> tuple[tuple[str, ...], tuple[bool, ...]]:
        image_dir = self.root / "JPEGImages" / self.resolution / seq
        mask_dir = self.root / "Annotations" / self.resolution / seq
        if not image_dir.is_dir():
            raise DatasetLayoutError(
                f"{image_dir}: sequence {seq!r} is listed in {split_file} but its frame folder is missing; "
                "unpack the complete archive, or remove the name from the split file"
            )
        frames = list_stems(image_dir, ".jpg")
        if not frames:
            raise DatasetLayoutError(f"{image_dir}: no .jpg frames; unpack the complete archive")
        if not mask_dir.is_dir():
            raise DatasetLayoutError(
                f"{mask_dir}: sequence {seq!r} has no annotation folder; unpack the Annotations of the archive"
            )
        masks = set(list_stems(mask_dir, ".png"))
        orphans = sorted(masks.difference(frames))
        if orphans:
            raise DatasetLayoutError(
                f"{mask_dir / (orphans[0] + '.png')}: mask without a frame {image_dir / (orphans[0] + '.jpg')}; "
                "frames and masks must pair up by name: re-extract the sequence"
            )
        missing = [f for f in frames if f not in masks]
        if missing and (require_all_masks or missing[0] == frames[0]):
            raise DatasetLayoutError(
                f"{mask_dir / (missing[0] + '.png')}: mask missing for frame {image_dir / (missing[0] + '.jpg')}"
                + ("" if require_all_masks else " (the first frame must be annotated)")
                + "; re-extract the Annotations of the archive"
                + (", or pass require_all_masks=False for a split annotated on the first frame only" if require_all_masks else "")
            )
        check_indexed_header(mask_dir / f"{frames[0]}.png")
        return tuple(frames), tuple(f in masks for f in frames)

    # ------------------------------------------------------------------ VideoSource

    def __len__(self) -> int:
        return len(self.sequences)

    def info(self, index: int) -> VideoInfo:
        """Metadata; the first call for a sequence decodes its first-frame mask once (for object ids)."""
        frames = self._frames[index]
        height, width = self._sizes[index]
        if index not in self._object_ids:
            ids = np.unique(self.first_frame_mask(index))
            self._object_ids[index] = tuple(int(i) for i in ids if i != 0)
        return VideoInfo(self.sequences[index], len(frames), height, width, frames,
                         self._annotated[index], self._object_ids[index])

    def load(self, index: int, frame_indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Frames uint8 [n, H, W, 3] RGB and masks uint8 [n, H, W] (zeros where not annotated)."""
        shape = self._sizes[index]
        frames = np.empty((len(frame_indices), *shape, 3), np.uint8)
        masks = np.zeros((len(frame_indices), *shape), np.uint8)
        for k, t in enumerate(self._check_indices(index, frame_indices)):
            path = self.frame_path(index, t)
            rgb = read_image_rgb(path)
            if rgb.shape[:2] != shape:
                raise DatasetLayoutError(
                    f"{path}: frame is {rgb.shape[0]}x{rgb.shape[1]}, the sequence's first frame "
                    f"{shape[0]}x{shape[1]}; all frames of a sequence must have one size: re-extract it"
                )
            frames[k] = rgb
            if self._annotated[index][t]:
                masks[k] = read_mask_checked(self.mask_path(index, t), shape)
        return frames, masks

    # ------------------------------------------------------------------ for builders and evaluation

    def frame_names(self, index: int) -> tuple[str, ...]:
        return self._frames[index]

    def frame_path(self, index: int, t: int) -> Path:
        return self.root / "JPEGImages" / self.resolution / self.sequences[index] / f"{self._frames[index][t]}.jpg"

    def mask_path(self, index: int, t: int) -> Path:
        return self.root / "Annotations" / self.resolution / self.sequences[index] / f"{self._frames[index][t]}.png"

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

    def first_frame_mask(self, index: int) -> np.ndarray:
        """uint8 [H, W] object ids of frame 0 (the input of semi-supervised VOS)."""
        return read_mask_checked(self.mask_path(index, 0), self._sizes[index])

    def index_of(self, video_id: str) -> int:
        try:
            return self.sequences.index(video_id)
        except ValueError:
            raise KeyError(f"{video_id!r} is not in {self.name} ({len(self)} sequences)") from None

    def _check_indices(self, index: int, frame_indices: Sequence[int]) -> list[int]:
        n = len(self._frames[index])
        out = [int(t) for t in frame_indices]
        bad = [t for t in out if not 0 <= t < n]
        if bad:
            raise IndexError(f"{self.name}/{self.sequences[index]}: frame indices {bad} outside 0..{n - 1}")
        return out
