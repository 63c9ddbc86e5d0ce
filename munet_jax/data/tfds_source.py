"""A `VideoSource` over a dataset built by `munet_jax.data.tfds_builders` (array_record, random access).

    source = TfdsVideoSource("davis2017/480p", data_dir="~/tensorflow_datasets", split="train")
    frames, masks = source.load(3, [0, 5, 10])

`info()` is served from the dataset's metadata.json (no record is read); `load()`
reads video `index`'s record and decodes only the frames asked for, with the
folder readers' decoder, so it returns the same pixels and ids as the folder
reader of the same files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import tensorflow_datasets as tfds

from munet_jax.data import tfds_builders  # noqa: F401  (registers the builders with TFDS)
from munet_jax.data.folder_source import DatasetLayoutError, check_frame_indices, decode_image_bytes
from munet_jax.data.source import VideoInfo

__all__ = ["TfdsVideoSource"]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class TfdsVideoSource:
    """One split of a built video dataset as a `VideoSource`.

    name: 'davis2017/480p', 'youtube_vos2018', 'static_images/ecssd', 'synthetic_vos/demo', ...
    """

    def __init__(self, name: str, data_dir: str | os.PathLike | None, split: str):
        self.name = f"{name}:{split}"
        self.split = split
        data_dir = None if data_dir is None else os.fspath(Path(data_dir).expanduser())
        builder = tfds.builder(name, data_dir=data_dir)
        if not builder.is_prepared():
            raise DatasetLayoutError(
                f"{builder.data_dir}: dataset {name} is not built; build it first: "
                f"python -m munet_jax.data.tfds_builders {name} --data_dir {data_dir or '~/tensorflow_datasets'} "
                "--manual_dir <where the archives are unpacked> (see data/README.md)"
            )
        if split not in builder.info.splits:
            raise KeyError(f"{name} has splits {sorted(builder.info.splits)}, not {split!r}")
        self._records = builder.as_data_source(split=split)
        self._meta = builder.info.metadata.get("videos", {}).get(split)
        if self._meta is None or len(self._meta) != len(self._records):
            raise DatasetLayoutError(
                f"{builder.data_dir}/metadata.json: per-video metadata of split {split!r} is missing or does not "
                f"match its {len(self._records)} records; rebuild the dataset with this version of munet_jax"
            )

    def __len__(self) -> int:
        return len(self._records)

    def info(self, index: int) -> VideoInfo:
        m = self._meta[index]
        return VideoInfo(m["video_id"], m["num_frames"], m["height"], m["width"], tuple(m["frame_names"]),
                         tuple(bool(a) for a in m["annotated"]), tuple(int(i) for i in m["object_ids"]))

    def first_appearance(self, index: int) -> dict[int, int]:
        """{object id: index of the frame where it is first annotated}."""
        m = self._meta[index]
        return {int(i): int(t) for i, t in zip(m["object_ids"], m["object_first_frame"])}

    def frame_names(self, index: int) -> tuple[str, ...]:
        return tuple(self._meta[index]["frame_names"])

    def load(self, index: int, frame_indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Frames uint8 [n, H, W, 3] RGB and masks uint8 [n, H, W] (zeros where not annotated)."""
        info = self.info(index)
        indices = check_frame_indices(f"{self.name}/{info.video_id}", info.num_frames, frame_indices)
        record = self._records[index]
        if _text(record["video_id"]) != info.video_id:
            raise DatasetLayoutError(
                f"{self.name}: record {index} holds {_text(record['video_id'])!r}, metadata says {info.video_id!r}; "
                "the dataset folder is inconsistent: rebuild it"
            )
        shape = (info.height, info.width)
        frames = np.empty((len(indices), *shape, 3), np.uint8)
        masks = np.zeros((len(indices), *shape), np.uint8)
        for k, t in enumerate(indices):
            where = f"{self.name}/{info.video_id}/{info.frame_names[t]}"
            frames[k] = decode_image_bytes(record["frames"][t], where)
            if info.annotated[t]:
                ids = cv2.imdecode(np.frombuffer(record["masks"][t], np.uint8), cv2.IMREAD_UNCHANGED)
                if ids is None or ids.shape != shape:
                    raise DatasetLayoutError(f"{where}: stored mask cannot be decoded to {shape}; rebuild the dataset")
                masks[k] = ids
        return frames, masks
