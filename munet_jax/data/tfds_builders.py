"""TFDS builders: davis2017, youtube_vos2018, static_images and synthetic_vos, one example per video.

Each builder reads its dataset with the folder reader (`DavisSource`,
`YouTubeVOSSource`, the static adapters), so a bad layout fails the build with
the reader's error, before anything is written. TFDS writes into
`<data_dir>/<name>/<config>/incomplete.*` and renames it to `<version>/` only on
success (and deletes it on failure), so a failed build leaves nothing that looks
complete.

Example features (one per video):
    video_id            str
    frames              [T] bytes: each frame's JPEG file exactly as shipped (never re-encoded)
    masks               [T] bytes: single-channel 8-bit PNG of object ids (b'' where not annotated).
                        Palette PNGs are rewritten as greyscale ids because tf.io.decode_png
                        (and OpenCV) expand a palette to colours.
    annotated           [T] bool
    frame_names         [T] str ('00000', or '00005' ... for YouTube-VOS)
    object_ids          [N] int32, sorted
    object_first_frame  [N] int32: index of the frame where each object is first annotated
    height, width       int32

Why raw bytes and not `tfds.features.Image`: random access reads a 6-frame clip of a
100-frame video, and an Image sequence would decode every frame of the record; the
bytes are decoded only for the frames asked for (tf.io.decode_jpeg in tf.data, or
`decode_image_bytes` in `TfdsVideoSource`, the folder readers' own decoder, so both
give the same pixels). Files are `array_record` (the default here) for
`builder.as_data_source()`; shuffling is disabled so record i is video i of the
folder reader and of `info.metadata['videos'][split]` (per-video `VideoInfo` fields,
which `TfdsVideoSource` serves without reading records).

Build (see data/README.md):
    python -m munet_jax.data.tfds_builders davis2017/480p --manual_dir ~/datasets --data_dir ~/tensorflow_datasets
    tfds build --imports munet_jax.data.tfds_builders davis2017/480p --manual_dir ~/datasets   # needs apache-beam
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

from munet_jax.data.davis import DatasetLayoutError, DavisSource, decode_image_bytes
from munet_jax.data.static_images import STATIC_DATASETS
from munet_jax.data.youtube_vos import YouTubeVOSSource

__all__ = ["Davis2017", "StaticImages", "SyntheticVos", "SyntheticVosConfig", "YoutubeVos2018", "video_example", "main"]


def video_features() -> tfds.features.FeaturesDict:
    encoded = tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_))  # [T] bytes
    return tfds.features.FeaturesDict({
        "video_id": tfds.features.Text(),
        "frames": encoded,
        "masks": encoded,
        "annotated": tfds.features.Sequence(np.bool_),
        "frame_names": tfds.features.Sequence(tfds.features.Text()),
        "object_ids": tfds.features.Sequence(np.int32),
        "object_first_frame": tfds.features.Sequence(np.int32),
        "height": np.int32,
        "width": np.int32,
    })


def encode_mask_png(ids: np.ndarray) -> bytes:
    """uint8 ids [H, W] -> single-channel PNG bytes (decodes to the same ids with any PNG reader)."""
    ok, data = cv2.imencode(".png", np.ascontiguousarray(ids, dtype=np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise RuntimeError("PNG encoding of a mask failed")
    return data.tobytes()


def video_example(source, index: int) -> dict:
    """The example of video `index` of a folder source (with frame_bytes/frame_path/load_masks).

    Every frame is decoded once to check it is whole and of the video's size, so a
    damaged file fails the build, naming the file, instead of failing in training.
    """
    info = source.info(index)
    frames = []
    for t in range(info.num_frames):
        data = source.frame_bytes(index, t)
        path = source.frame_path(index, t)
        shape = decode_image_bytes(data, path).shape[:2]
        if shape != (info.height, info.width):
            raise DatasetLayoutError(
                f"{path}: frame is {shape[0]}x{shape[1]}, the video's first frame {info.height}x{info.width}; "
                "all frames of a video must have one size: re-extract it"
            )
        frames.append(data)
    masks = source.load_masks(index, range(info.num_frames))  # uint8 [T, H, W], checked against the frame size
    first = first_frames(source, index, info, masks)
    return {
        "video_id": info.video_id,
        "frames": frames,
        "masks": [encode_mask_png(m) if a else b"" for m, a in zip(masks, info.annotated)],
        "annotated": list(info.annotated),
        "frame_names": list(info.frame_names),
        "object_ids": list(info.object_ids),
        "object_first_frame": [first[i] for i in info.object_ids],
        "height": info.height,
        "width": info.width,
    }


def first_frames(source, index: int, info, masks: np.ndarray) -> dict[int, int]:
    """{object id: first frame}: from meta.json where the source knows it, else the first mask showing it."""
    if hasattr(source, "first_appearance"):
        return source.first_appearance(index)
    shown = {}
    for oid in info.object_ids:
        hits = np.flatnonzero((masks == oid).any(axis=(1, 2)))
        shown[oid] = int(hits[0]) if hits.size else 0
    return shown


def video_metadata(example: dict) -> dict:
    """The JSON-ready `VideoInfo` fields of an example, kept in the dataset's metadata.json."""
    keys = ("video_id", "frame_names", "annotated", "object_ids", "object_first_frame", "height", "width")
    meta = {k: example[k] for k in keys}
    meta["num_frames"] = len(example["frames"])
    return meta


class _VideoBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared parts: features, array_record by default, one example per video of each split's source."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: encoded frames, greyscale-id PNG masks, per-video metadata."}
    DESCRIPTION = ""
    HOMEPAGE = ""

    def __init__(self, *, file_format=None, **kwargs):
        super().__init__(file_format=file_format or "array_record", **kwargs)

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS 4.9.10's own lookup, for a builder inside a package, touches the `importlib_resources`
        # backport, which it only requires on Python < 3.9; the module's file is what it looks for.
        return epath.Path(sys.modules[cls.__module__].__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=self.DESCRIPTION, features=video_features(), homepage=self.HOMEPAGE,
            metadata=tfds.core.MetadataDict(), disable_shuffling=True,
        )

    def _sources(self, dl_manager) -> dict:
        """{split name: folder source}, built (and so layout-checked) before anything is written."""
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        self.info.metadata["videos"] = {}
        return {split: self._generate_examples(split, source) for split, source in self._sources(dl_manager).items()}

    def _generate_examples(self, split: str, source) -> Iterator[tuple[int, dict]]:
        records = self.info.metadata["videos"].setdefault(split, [])
        for index in range(len(source)):
            example = video_example(source, index)
            records.append(video_metadata(example))
            yield index, example  # int keys + disabled shuffling: record order = source order

    def _manual_root(self, dl_manager, candidates: tuple[str, ...], marker: str) -> Path:
        """The first manual_dir/<candidate> holding `marker` ('' = manual_dir itself)."""
        manual = Path(dl_manager.manual_dir)  # TFDS raises with MANUAL_DOWNLOAD_INSTRUCTIONS if absent or empty
        for candidate in candidates:
            if (manual / candidate / marker).exists():
                return manual / candidate
        raise DatasetLayoutError(
            f"{manual}: none of {[os.fspath(manual / c / marker) for c in candidates]} exists; unpack the archive "
            f"as follows.\n{textwrap.dedent(self.MANUAL_DOWNLOAD_INSTRUCTIONS)}"
        )


class Davis2017(_VideoBuilder):
    """DAVIS 2017 semi-supervised train (60) and val (30) sequences."""

    DESCRIPTION = "DAVIS 2017 video object segmentation, train and val, one example per sequence."
    HOMEPAGE = "https://davischallenge.org/davis2017/code.html"
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="480p", description="frames 854x480 (DAVIS-2017-trainval-480p.zip)"),
        tfds.core.BuilderConfig(name="Full-Resolution",
                                description="full-size frames (DAVIS-2017-trainval-Full-Resolution.zip)"),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download DAVIS-2017-trainval-480p.zip (config 480p) or DAVIS-2017-trainval-Full-Resolution.zip
    (config Full-Resolution) from https://davischallenge.org/davis2017/code.html and unzip it in
    --manual_dir, giving <manual_dir>/DAVIS/{JPEGImages,Annotations}/<480p|Full-Resolution>/ and
    <manual_dir>/DAVIS/ImageSets/2017/{train,val}.txt.
    """

    def _sources(self, dl_manager) -> dict:
        root = self._manual_root(dl_manager, ("DAVIS", ""), "JPEGImages")
        return {split: DavisSource(root, split, self.builder_config.name) for split in ("train", "val")}


class YoutubeVos2018(_VideoBuilder):
    """YouTube-VOS 2018 train (3471 videos, all stored frames annotated) and valid (474, first appearances)."""

    DESCRIPTION = "YouTube-VOS 2018 video object segmentation, train and valid, one example per video."
    HOMEPAGE = "https://youtube-vos.org/dataset/vos/"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download train.zip and valid.zip of YouTube-VOS 2018 (https://youtube-vos.org/dataset/vos/, from the
    CodaLab competition page after registering) and unzip both in --manual_dir, giving
    <manual_dir>/train/{JPEGImages,Annotations,meta.json} and <manual_dir>/valid/{JPEGImages,Annotations,meta.json}.
    (valid_all_frames.zip is not needed.)
    """

    def _sources(self, dl_manager) -> dict:
        root = self._manual_root(dl_manager, ("",), "train")
        return {split: YouTubeVOSSource(root, split) for split in ("train", "valid")}


def _static_instructions() -> str:
    lines = ["Download the archive of the chosen config and unpack it under --manual_dir:"]
    for name, entry in STATIC_DATASETS.items():
        lines.append(f"  {name}: {entry.archive} -> <manual_dir>/{entry.subdir}/ ({entry.layout})")
    return "\n".join(lines) + "\n"


class StaticImages(_VideoBuilder):
    """Saliency / instance image sets as one-frame videos (protocol (3) pretraining), one config per set."""

    DESCRIPTION = "Static images with object masks (ECSSD, MSRA10K, PASCAL-S, DUTS-TR, HRSOD, VOC 2012), split train."
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name, description=entry.archive)
                       for name, entry in STATIC_DATASETS.items()]
    MANUAL_DOWNLOAD_INSTRUCTIONS = _static_instructions()

    def _sources(self, dl_manager) -> dict:
        entry = STATIC_DATASETS[self.builder_config.name]
        return {"train": entry.factory(self._manual_root(dl_manager, (entry.subdir,), ""))}


@dataclasses.dataclass
class SyntheticVosConfig(tfds.core.BuilderConfig):
    num_train: int = 60
    num_val: int = 10
    num_frames: int = 24
    height: int = 240
    width: int = 432
    seed: int = 0


class SyntheticVos(_VideoBuilder):
    """The synthetic set (munet_jax.data.synthetic), written in the DAVIS layout and read by `DavisSource`.

    Nothing to download: each split is generated into a temporary folder and read
    back exactly as DAVIS is, so training and evaluation see it as they see DAVIS.
    """

    DESCRIPTION = "Synthetic moving textured objects (munet_jax.data.synthetic) in the DAVIS 2017 layout."
    BUILDER_CONFIGS = [
        SyntheticVosConfig(name="demo", description="60 train + 10 val videos, 24 frames, 240x432"),
        SyntheticVosConfig(name="tiny", description="3 train + 2 val videos, 5 frames, 48x64 (tests)",
                           num_train=3, num_val=2, num_frames=5, height=48, width=64),
    ]

    def _sources(self, dl_manager) -> dict:
        return {"train": None, "val": None}  # generated lazily, one split at a time

    def _generate_examples(self, split: str, source) -> Iterator[tuple[int, dict]]:
        from munet_jax.data.synthetic import generate_davis_layout  # only this builder needs it

        c = self.builder_config
        with tempfile.TemporaryDirectory(prefix="synthetic_vos_") as tmp:
            # Video content depends on (seed, split, index) only, so generating one split at a time
            # gives the same videos as generating both.
            root = generate_davis_layout(
                Path(tmp) / "davis", num_train=c.num_train if split == "train" else 0,
                num_val=c.num_val if split == "val" else 0, num_frames=c.num_frames,
                height=c.height, width=c.width, seed=c.seed,
            )
            yield from super()._generate_examples(split, DavisSource(root, split))


def main(argv: list[str] | None = None) -> int:
    """`tfds build` without the tfds CLI (which, in tfds 4.9.10, needs apache-beam just to start)."""
    parser = argparse.ArgumentParser(prog="python -m munet_jax.data.tfds_builders", description=__doc__.split("\n")[0])
    parser.add_argument("datasets", nargs="+", help="name/config, e.g. davis2017/480p static_images/ecssd synthetic_vos/demo")
    parser.add_argument("--data_dir", default=None, help="where datasets are written (default ~/tensorflow_datasets)")
    parser.add_argument("--manual_dir", default=None, help="where the downloaded archives were unpacked")
    args = parser.parse_args(argv)
    config = tfds.download.DownloadConfig(manual_dir=args.manual_dir)
    for name in args.datasets:
        builder = tfds.builder(name, data_dir=args.data_dir)
        try:
            builder.download_and_prepare(download_config=config)
        except (DatasetLayoutError, AssertionError, ValueError) as error:  # TFDS raises AssertionError for a missing manual_dir
            print(f"error building {name}: {error}", file=sys.stderr)
            return 2
        print(f"{name}: {builder.data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
