"""The random-access view of a video dataset that the input pipeline samples from.

Every dataset (DAVIS folders, YouTube-VOS folders, static images, the synthetic
set, a TFDS-built dataset) is exposed as a `VideoSource`: a fixed, ordered list
of videos whose frames can be loaded by index. Because access is by index, the
training pipeline can make the clip at global step s a pure function of
(seed, s), and each host can read a disjoint slice.

Object ids in masks are the dataset's own (0 = background; DAVIS 255 = void is
not used in DAVIS 2017 semi-supervised annotations).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class VideoInfo:
    video_id: str
    num_frames: int
    height: int
    width: int
    frame_names: tuple[str, ...]  # e.g. ('00000', '00001', ...), file stems without extension
    annotated: tuple[bool, ...]  # per frame: a mask file exists for it
    object_ids: tuple[int, ...]  # ids present anywhere in the video's annotations, sorted, no 0


class VideoSource(Protocol):
    """A dataset of videos with random access by (video index, frame indices)."""

    name: str

    def __len__(self) -> int:
        """Number of videos."""

    def info(self, index: int) -> VideoInfo:
        """Metadata of video `index` (cheap: no pixel decoding)."""

    def load(self, index: int, frame_indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Frames uint8 [n, H, W, 3] (RGB) and masks uint8 [n, H, W] (object ids).

        A frame without an annotation gets an all-zero mask; use `info().annotated`
        to tell the two apart.
        """


class ArrayVideoSource:
    """An in-memory `VideoSource` over numpy videos (for tests and generated data)."""

    def __init__(self, name: str, videos: Sequence[tuple[str, np.ndarray, np.ndarray]]):
        """videos: (video_id, frames uint8 [T, H, W, 3], masks uint8 [T, H, W]) triples."""
        self.name = name
        self._videos = list(videos)
        for video_id, frames, masks in self._videos:
            if frames.shape[:3] != masks.shape[:3] or frames.ndim != 4 or frames.shape[-1] != 3:
                raise ValueError(f"{name}/{video_id}: frames {frames.shape} and masks {masks.shape} do not match")

    def __len__(self) -> int:
        return len(self._videos)

    def info(self, index: int) -> VideoInfo:
        video_id, frames, masks = self._videos[index]
        t, h, w = masks.shape
        ids = tuple(int(i) for i in np.unique(masks) if i != 0)
        return VideoInfo(video_id, t, h, w, tuple(f"{i:05d}" for i in range(t)), (True,) * t, ids)

    def load(self, index: int, frame_indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        _, frames, masks = self._videos[index]
        idx = np.asarray(frame_indices, dtype=np.int64)
        return frames[idx], masks[idx]
