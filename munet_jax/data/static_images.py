"""Image + mask folders (saliency and instance sets) as one-frame "videos", for protocol (3) pretraining.

Each image is a video with num_frames == 1; the input pipeline synthesises clips
from it by random affine warps (DESIGN.md). Two kinds of masks:

- binary saliency masks (greyscale, 0..255): pixels >= `binary_threshold` become
  object 1, the rest background 0;
- instance masks (indexed palette PNGs, `binary_threshold=None`): object ids are
  kept. `void_id` names a "don't care" value; it is mapped to background 0 unless
  `keep_void=True` (then it stays, e.g. 255, and the caller must mask it out).

Adapters give the folder names each dataset's own archive unpacks to (the same
ones STM / XMem-style static-image training scripts read):

| adapter            | root is                          | images                     | masks                          |
| ------------------ | -------------------------------- | -------------------------- | ------------------------------ |
| ecssd_source       | folder holding images.zip +      | images/*.jpg               | ground_truth_mask/*.png        |
|                    | ground_truth_mask.zip unpacked   |                            |                                |
| msra10k_source     | MSRA10K_Imgs_GT/                 | Imgs/*.jpg                 | Imgs/*.png (side by side)      |
| pascal_s_source    | salObj.zip unpacked (datasets/)  | datasets/imgs/pascal/*.jpg | datasets/masks/pascal/*.png    |
| duts_source        | DUTS-TR.zip unpacked             | DUTS-TR/DUTS-TR-Image/*.jpg| DUTS-TR/DUTS-TR-Mask/*.png     |
| hrsod_source       | HRSOD_release/                   | HRSOD_train/*.jpg          | HRSOD_train_mask/*.png         |
| voc2012_source     | VOCdevkit/VOC2012/               | JPEGImages/*.jpg           | SegmentationObject/*.png       |
|                    |                                  | (ids from ImageSets/Segmentation/<split>.txt)               |

PASCAL-S masks are soft (averaged over annotators); threshold 128 is the usual 0.5.
PASCAL VOC SegmentationObject marks object boundaries and difficult regions with
255 (void): by default void becomes background.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
from PIL import Image

from munet_jax.data.folder_source import (
    DatasetLayoutError,
    image_size,
    list_stems,
    read_image_bytes,
    read_image_rgb,
    read_split_file,
)
from munet_jax.data.source import VideoInfo
from munet_jax.palette import read_indexed_png

__all__ = [
    "ImageMaskFolderSource",
    "STATIC_DATASETS",
    "StaticDataset",
    "duts_source",
    "ecssd_source",
    "hrsod_source",
    "msra10k_source",
    "pascal_s_source",
    "voc2012_source",
]


class ImageMaskFolderSource:
    """Images and same-stem masks in two folders (possibly the same one), as one-frame videos.

    names: the image stems to use (e.g. from a split list); default: every image
    in `images_dir`, each of which must have its mask.
    """

    def __init__(
        self,
        images_dir: str | os.PathLike,
        masks_dir: str | os.PathLike,
        *,
        image_ext: str = ".jpg",
        mask_ext: str = ".png",
        binary_threshold: int | None = 128,
        void_id: int | None = None,
        keep_void: bool = False,
        names: Sequence[str] | None = None,
        name: str = "static_images",
    ):
        self.images_dir, self.masks_dir = Path(images_dir).expanduser(), Path(masks_dir).expanduser()
        self.image_ext, self.mask_ext = image_ext, mask_ext
        self.binary_threshold, self.void_id, self.keep_void = binary_threshold, void_id, keep_void
        self.name = name
        if binary_threshold is not None and not 1 <= binary_threshold <= 255:
            raise ValueError(f"binary_threshold must lie in 1..255 or be None, got {binary_threshold}")
        for folder in (self.images_dir, self.masks_dir):
            if not folder.is_dir():
                raise DatasetLayoutError(f"{folder}: folder not found; unpack the dataset archive (see data/README.md)")
        if names is None:
            names = list_stems(self.images_dir, image_ext)
            if not names:
                raise DatasetLayoutError(f"{self.images_dir}: no *{image_ext} images; unpack the dataset archive")
        self.names = tuple(names)
        masks = set(list_stems(self.masks_dir, mask_ext))
        for stem in self.names:
            if stem not in masks:
                raise DatasetLayoutError(
                    f"{self.masks_dir / (stem + mask_ext)}: mask missing for image {self.images_dir / (stem + image_ext)}; "
                    "re-extract the masks archive into that folder"
                )
        self._sizes: dict[int, tuple[int, int]] = {}
        self._object_ids: dict[int, tuple[int, ...]] = {}

    def image_path(self, index: int) -> Path:
        return self.images_dir / f"{self.names[index]}{self.image_ext}"

    def mask_path(self, index: int) -> Path:
        return self.masks_dir / f"{self.names[index]}{self.mask_ext}"

    def read_mask(self, index: int) -> np.ndarray:
        """uint8 [H, W] object ids of image `index` (binarised or instance ids, void handled)."""
        path = self.mask_path(index)
        if self.binary_threshold is None:
            ids = read_indexed_png(path)
            if self.void_id is not None and not self.keep_void:
                ids = np.where(ids == self.void_id, 0, ids).astype(np.uint8)
            return ids
        try:
            with Image.open(path) as image:
                mode = image.mode
                # 'P' (palette) masks: index 0 is background by convention, any other index is the object;
                # their display colours (e.g. DAVIS red = grey 38) say nothing about the threshold.
                grey = np.array(image) if mode in ("L", "P", "1") else np.array(image.convert("L"))
        except (OSError, SyntaxError) as error:
            raise DatasetLayoutError(f"{path}: cannot read mask ({error}); re-extract it from the archive") from error
        if mode == "P":
            return (grey != 0).astype(np.uint8)
        if grey.ndim != 2:
            raise DatasetLayoutError(f"{path}: mask has shape {grey.shape}, expected a single-channel image")
        if grey.dtype == bool:  # mode '1'
            grey = grey.astype(np.uint8) * 255
        return (grey >= self.binary_threshold).astype(np.uint8)

    # ------------------------------------------------------------------ VideoSource

    def __len__(self) -> int:
        return len(self.names)

    def info(self, index: int) -> VideoInfo:
        """Metadata; the first call for an image reads its size from the header and decodes its mask (ids)."""
        if index not in self._sizes:
            self._sizes[index] = image_size(self.image_path(index))
            ids = np.unique(self.read_mask(index))
            self._object_ids[index] = tuple(int(i) for i in ids if i != 0)
        height, width = self._sizes[index]
        return VideoInfo(self.names[index], 1, height, width, (self.names[index],), (True,), self._object_ids[index])

    def load(self, index: int, frame_indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Frames uint8 [n, H, W, 3] and masks uint8 [n, H, W]: the image repeated (every index must be 0)."""
        if any(int(t) != 0 for t in frame_indices):
            raise IndexError(f"{self.name}/{self.names[index]}: a static image has only frame 0, got {list(frame_indices)}")
        rgb = read_image_rgb(self.image_path(index))
        ids = self.load_masks(index, [0])[0]
        n = len(frame_indices)
        return np.repeat(rgb[None], n, axis=0), np.repeat(ids[None], n, axis=0)

    # ------------------------------------------------------------------ for builders

    def frame_names(self, index: int) -> tuple[str, ...]:
        return (self.names[index],)

    def frame_path(self, index: int, t: int) -> Path:
        if t != 0:
            raise IndexError(f"{self.name}/{self.names[index]}: a static image has only frame 0")
        return self.image_path(index)

    def frame_bytes(self, index: int, t: int) -> bytes:
        return read_image_bytes(self.frame_path(index, t))

    def load_masks(self, index: int, frame_indices: Sequence[int]) -> np.ndarray:
        ids = self.read_mask(index)
        height, width = image_size(self.image_path(index))
        if ids.shape != (height, width):
            raise DatasetLayoutError(
                f"{self.mask_path(index)}: mask is {ids.shape[0]}x{ids.shape[1]} but its image "
                f"{self.image_path(index)} is {height}x{width}; re-extract both from the same archive"
            )
        return np.repeat(ids[None], len(frame_indices), axis=0)


# ----------------------------------------------------------------------------- adapters


def ecssd_source(root: str | os.PathLike) -> ImageMaskFolderSource:
    """ECSSD (1000 images): images.zip -> images/, ground_truth_mask.zip -> ground_truth_mask/."""
    root = Path(root).expanduser()
    return ImageMaskFolderSource(root / "images", root / "ground_truth_mask", name="ecssd")


def msra10k_source(root: str | os.PathLike) -> ImageMaskFolderSource:
    """MSRA10K (10000 images): MSRA10K_Imgs_GT.zip -> MSRA10K_Imgs_GT/Imgs/{id}.jpg and {id}.png."""
    root = Path(root).expanduser()
    return ImageMaskFolderSource(root / "Imgs", root / "Imgs", name="msra10k")


def pascal_s_source(root: str | os.PathLike) -> ImageMaskFolderSource:
    """PASCAL-S (850 images): salObj.zip -> datasets/imgs/pascal/*.jpg, datasets/masks/pascal/*.png."""
    root = Path(root).expanduser()
    return ImageMaskFolderSource(root / "datasets" / "imgs" / "pascal", root / "datasets" / "masks" / "pascal",
                                 name="pascal_s")


def duts_source(root: str | os.PathLike, split: str = "train") -> ImageMaskFolderSource:
    """DUTS (10553 train / 5019 test): DUTS-TR.zip -> DUTS-TR/DUTS-TR-{Image,Mask}/ (test: DUTS-TE)."""
    tag = {"train": "TR", "test": "TE"}.get(split)
    if tag is None:
        raise ValueError(f"DUTS split must be 'train' or 'test', got {split!r}")
    base = Path(root).expanduser() / f"DUTS-{tag}"
    return ImageMaskFolderSource(base / f"DUTS-{tag}-Image", base / f"DUTS-{tag}-Mask", name=f"duts_{split}")


def hrsod_source(root: str | os.PathLike, split: str = "train") -> ImageMaskFolderSource:
    """HRSOD (1610 train / 400 test): HRSOD_release/HRSOD_{train,test}/*.jpg and HRSOD_{train,test}_mask/*.png."""
    if split not in ("train", "test"):
        raise ValueError(f"HRSOD split must be 'train' or 'test', got {split!r}")
    root = Path(root).expanduser()
    return ImageMaskFolderSource(root / f"HRSOD_{split}", root / f"HRSOD_{split}_mask", name=f"hrsod_{split}")


VOC_VOID_ID = 255


def voc2012_source(root: str | os.PathLike, split: str = "train", *, keep_void: bool = False) -> ImageMaskFolderSource:
    """PASCAL VOC 2012 instance masks (train 1464 / val 1449 / trainval 2913 images).

    root: VOCdevkit/VOC2012 from VOCtrainval_11-May-2012.tar. Void (255) becomes
    background unless keep_void=True.
    """
    root = Path(root).expanduser()
    names = read_split_file(
        root / "ImageSets" / "Segmentation" / f"{split}.txt",
        "it ships in VOCtrainval_11-May-2012.tar (VOCdevkit/VOC2012/ImageSets/Segmentation/): re-extract it",
    )
    return ImageMaskFolderSource(root / "JPEGImages", root / "SegmentationObject", binary_threshold=None,
                                 void_id=VOC_VOID_ID, keep_void=keep_void, names=names, name=f"voc2012_{split}")


class StaticDataset(NamedTuple):
    factory: Callable[[Path], ImageMaskFolderSource]  # root -> source (train split)
    archive: str  # what to download, from where
    subdir: str  # the root's conventional folder name under a datasets folder
    layout: str  # what the root holds


STATIC_DATASETS: dict[str, StaticDataset] = {
    "ecssd": StaticDataset(
        ecssd_source, "images.zip + ground_truth_mask.zip, https://www.cse.cuhk.edu.hk/leojia/projects/hsaliency/dataset.html",
        "ECSSD", "images/*.jpg, ground_truth_mask/*.png"),
    "msra10k": StaticDataset(
        msra10k_source, "MSRA10K_Imgs_GT.zip, https://mmcheng.net/msra10k/", "MSRA10K_Imgs_GT", "Imgs/*.jpg + Imgs/*.png"),
    "pascal_s": StaticDataset(
        pascal_s_source, "salObj.zip, https://cbs.ic.gatech.edu/salobj/", "PASCAL-S",
        "datasets/imgs/pascal/*.jpg, datasets/masks/pascal/*.png"),
    "duts": StaticDataset(
        duts_source, "DUTS-TR.zip, http://saliencydetection.net/duts/", "DUTS",
        "DUTS-TR/DUTS-TR-Image/*.jpg, DUTS-TR/DUTS-TR-Mask/*.png"),
    "hrsod": StaticDataset(
        hrsod_source, "HRSOD_release.zip, https://github.com/yi94code/HRSOD", "HRSOD_release",
        "HRSOD_train/*.jpg, HRSOD_train_mask/*.png"),
    "voc2012": StaticDataset(
        voc2012_source, "VOCtrainval_11-May-2012.tar, http://host.robots.ox.ac.uk/pascal/VOC/voc2012/", "VOCdevkit/VOC2012",
        "JPEGImages/*.jpg, SegmentationObject/*.png, ImageSets/Segmentation/train.txt"),
}
