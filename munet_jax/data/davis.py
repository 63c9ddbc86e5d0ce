"""DAVIS 2017 folders as a `VideoSource`.

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

The file helpers all folder readers share live in `folder_source` and are
importable from here too, as before.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from munet_jax.data.folder_source import (  # noqa: F401  (re-exported: the helpers were defined here)
    DatasetLayoutError,
    FolderVideoSource,
    check_indexed_header,
    decode_image_bytes,
    image_size,
    list_stems,
    read_image_bytes,
    read_image_rgb,
    read_mask_checked,
    read_split_file,
)

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


class DavisSource(FolderVideoSource):
    """DAVIS 2017 (or a folder in its layout, like the synthetic set) as a `VideoSource`.

    split: a name with a list file `ImageSets/<year>/<split>.txt` ('train', 'val',
    'test-dev', 'test-challenge').
    require_all_masks: every frame must have its mask (train/val). Default: True
    unless the split starts with 'test' (there only the first frame is annotated,
    and it must be).
    """

    unit = "sequence"
    size_fix = "all frames of a sequence must have one size: re-extract it"

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
        super().__init__(root, split, name or f"davis{year}_{resolution}_{split}")
        self.resolution = resolution
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
        sequences = read_split_file(
            split_file, f"it must list the {split} sequence names one per line, as in the DAVIS-2017 archive"
        )
        self._build_index(sequences, lambda seq: self._scan_sequence(seq, split_file, require_all_masks))
        self._object_ids: dict[int, tuple[int, ...]] = {}

    @property
    def sequences(self) -> tuple[str, ...]:
        return self.video_ids

    def image_dir(self, video_id: str) -> Path:
        return self.root / "JPEGImages" / self.resolution / video_id

    def mask_dir(self, video_id: str) -> Path:
        return self.root / "Annotations" / self.resolution / video_id

    def _scan_sequence(self, seq: str, split_file: Path, require_all_masks: bool) -> tuple[list[str], list[bool]]:
        image_dir, mask_dir = self.image_dir(seq), self.mask_dir(seq)
        frames = self._list_frames(
            seq, split_file, "unpack the complete archive, or remove the name from the split file", "unpack the complete archive"
        )
        if not mask_dir.is_dir():
            raise DatasetLayoutError(
                f"{mask_dir}: sequence {seq!r} has no annotation folder; unpack the Annotations of the archive"
            )
        masks = self._list_masks(image_dir, mask_dir, frames, "re-extract the sequence")
        missing = [f for f in frames if f not in masks]
        if missing and (require_all_masks or missing[0] == frames[0]):
            raise DatasetLayoutError(
                f"{mask_dir / (missing[0] + '.png')}: mask missing for frame {image_dir / (missing[0] + '.jpg')}"
                + ("" if require_all_masks else " (the first frame must be annotated)")
                + "; re-extract the Annotations of the archive"
                + (", or pass require_all_masks=False for a split annotated on the first frame only" if require_all_masks else "")
            )
        check_indexed_header(mask_dir / f"{frames[0]}.png")
        return frames, [f in masks for f in frames]

    def _video_object_ids(self, index: int) -> tuple[int, ...]:
        """The ids of the first-frame mask, decoded once per sequence (on its first `info` call)."""
        if index not in self._object_ids:
            ids = np.unique(self.first_frame_mask(index))
            self._object_ids[index] = tuple(int(i) for i in ids if i != 0)
        return self._object_ids[index]

    def first_frame_mask(self, index: int) -> np.ndarray:
        """uint8 [H, W] object ids of frame 0 (the input of semi-supervised VOS)."""
        return read_mask_checked(self.mask_path(index, 0), self._sizes[index])
