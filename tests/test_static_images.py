"""Static image sets as one-frame videos: the dataset adapters on tiny folders in each archive's layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from munet_jax.data.davis import DatasetLayoutError
from munet_jax.data.static_images import (
    STATIC_DATASETS,
    ImageMaskFolderSource,
    duts_source,
    ecssd_source,
    hrsod_source,
    msra10k_source,
    pascal_s_source,
    voc2012_source,
)
from munet_jax.palette import write_indexed_png

H, W = 24, 32


def _write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (H, W, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(path, quality=95)


def _saliency_mask(seed: int) -> np.ndarray:
    """Greyscale 0..255 with soft edges (values 0, 60, 127, 128, 200, 255), as saliency sets ship them."""
    return np.random.default_rng(100 + seed).choice(np.array([0, 60, 127, 128, 200, 255], np.uint8), (H, W))


def _write_saliency_set(images: Path, masks: Path, stems: list[str]) -> dict[str, np.ndarray]:
    grey = {}
    for k, stem in enumerate(stems):
        _write_image(images / f"{stem}.jpg", k)
        masks.mkdir(parents=True, exist_ok=True)
        grey[stem] = _saliency_mask(k)
        Image.fromarray(grey[stem], mode="L").save(masks / f"{stem}.png")
    return grey


def _check_saliency(source, images: Path, grey: dict[str, np.ndarray]) -> None:
    assert source.names == tuple(sorted(grey)) and len(source) == len(grey)
    for i, stem in enumerate(source.names):
        info = source.info(i)
        assert (info.video_id, info.num_frames, info.height, info.width) == (stem, 1, H, W)
        assert info.frame_names == (stem,) and info.annotated == (True,) and info.object_ids == (1,)
        frames, masks = source.load(i, [0, 0])
        assert frames.shape == (2, H, W, 3) and masks.shape == (2, H, W)
        np.testing.assert_array_equal(masks[0], (grey[stem] >= 128).astype(np.uint8))
        reference = np.asarray(Image.open(images / f"{stem}.jpg").convert("RGB"))
        assert np.abs(frames[0].astype(int) - reference).mean() < 1.0
        np.testing.assert_array_equal(frames[0], frames[1])


def test_ecssd(tmp_path):
    grey = _write_saliency_set(tmp_path / "images", tmp_path / "ground_truth_mask", ["0001", "0002", "0003"])
    _check_saliency(ecssd_source(tmp_path), tmp_path / "images", grey)


def test_msra10k_side_by_side(tmp_path):
    imgs = tmp_path / "Imgs"
    grey = _write_saliency_set(imgs, imgs, ["12", "75", "1003"])
    _check_saliency(msra10k_source(tmp_path), imgs, grey)


def test_duts_pascal_s_hrsod(tmp_path):
    duts = tmp_path / "DUTS" / "DUTS-TR"
    grey = _write_saliency_set(duts / "DUTS-TR-Image", duts / "DUTS-TR-Mask", ["ILSVRC2012_test_00000004", "sun_a"])
    _check_saliency(duts_source(tmp_path / "DUTS"), duts / "DUTS-TR-Image", grey)
    pascal = tmp_path / "PASCAL-S" / "datasets"
    grey = _write_saliency_set(pascal / "imgs" / "pascal", pascal / "masks" / "pascal", ["1", "2"])
    _check_saliency(pascal_s_source(tmp_path / "PASCAL-S"), pascal / "imgs" / "pascal", grey)
    hrsod = tmp_path / "HRSOD_release"
    grey = _write_saliency_set(hrsod / "HRSOD_train", hrsod / "HRSOD_train_mask", ["10041", "10052"])
    _check_saliency(hrsod_source(hrsod), hrsod / "HRSOD_train", grey)


def _write_voc(root: Path) -> dict[str, np.ndarray]:
    """Three JPEGs; two with SegmentationObject masks (ids 1, 2 and a 255 void border), listed in train.txt."""
    ids = {}
    for k, stem in enumerate(["2007_000032", "2007_000039", "2007_000063"]):
        _write_image(root / "JPEGImages" / f"{stem}.jpg", k)
        if k == 2:
            continue  # like most of VOC: an image without a segmentation
        m = np.zeros((H, W), np.uint8)
        m[2:10, 3:12] = 1
        m[12:20, 15:30] = 2 + k  # ids 2 and 3
        m[1, 2:13] = m[10, 2:13] = 255  # void boundary
        write_indexed_png(root / "SegmentationObject" / f"{stem}.png", m)
        ids[stem] = m
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000032\n2007_000039\n")
    return ids


def test_voc_instances_and_void(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    ids = _write_voc(root)
    source = voc2012_source(root)
    assert source.names == ("2007_000032", "2007_000039")  # the split list, not every JPEG
    for i, stem in enumerate(source.names):
        expected = np.where(ids[stem] == 255, 0, ids[stem])
        assert source.info(i).object_ids == tuple(int(v) for v in np.unique(expected) if v)
        np.testing.assert_array_equal(source.load(i, [0])[1][0], expected)  # void -> background
    kept = voc2012_source(root, keep_void=True)
    np.testing.assert_array_equal(kept.load(1, [0])[1][0], ids["2007_000039"])
    assert 255 in kept.info(1).object_ids  # exposed: the caller must mask it out


def test_voc_missing_split_file(tmp_path):
    root = tmp_path / "VOC2012"
    _write_voc(root)
    with pytest.raises(DatasetLayoutError, match=f"{root / 'ImageSets' / 'Segmentation' / 'val.txt'}: split file not found"):
        voc2012_source(root, "val")


def test_missing_mask_and_size_mismatch(tmp_path):
    _write_saliency_set(tmp_path / "images", tmp_path / "ground_truth_mask", ["a", "b"])
    (tmp_path / "ground_truth_mask" / "b.png").unlink()
    with pytest.raises(DatasetLayoutError, match=f"{tmp_path / 'ground_truth_mask' / 'b.png'}: mask missing for image"):
        ecssd_source(tmp_path)
    Image.fromarray(np.zeros((H + 1, W), np.uint8)).save(tmp_path / "ground_truth_mask" / "b.png")
    with pytest.raises(DatasetLayoutError, match="b.png: mask is 25x32 but its image .* is 24x32"):
        ecssd_source(tmp_path).load(1, [0])
    with pytest.raises(IndexError, match="only frame 0"):
        ecssd_source(tmp_path).load(0, [1])


def test_instance_folder_rejects_non_palette_masks(tmp_path):
    _write_saliency_set(tmp_path / "im", tmp_path / "gt", ["a"])
    source = ImageMaskFolderSource(tmp_path / "im", tmp_path / "gt", binary_threshold=None)
    with pytest.raises(ValueError, match="not an indexed"):
        source.load(0, [0])


def test_palette_saliency_masks_use_indices(tmp_path):
    _write_image(tmp_path / "im" / "a.jpg", 0)
    m = np.zeros((H, W), np.uint8)
    m[4:9, 5:20] = 1  # DAVIS palette: index 1 is dark red (grey 38), still the object
    write_indexed_png(tmp_path / "gt" / "a.png", m)
    np.testing.assert_array_equal(ImageMaskFolderSource(tmp_path / "im", tmp_path / "gt").load(0, [0])[1][0], m)


def test_registry_covers_each_adapter():
    assert set(STATIC_DATASETS) == {"ecssd", "msra10k", "pascal_s", "duts", "hrsod", "voc2012"}
    assert all(entry.archive and entry.subdir and entry.layout for entry in STATIC_DATASETS.values())
