"""DavisSource on the real DAVIS sample, on broken copies of it, and on the generated synthetic layout."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from munet_jax.data.davis import DatasetLayoutError, DavisSource
from munet_jax.data.synthetic import generate_davis_layout, synthetic_video
from munet_jax.palette import NotIndexedMaskError, read_indexed_png, write_indexed_png

SEQUENCES = {"blackswan": 50, "car-shadow": 40}


def _link_tree(src: Path, dst: Path) -> None:
    """dst mirrors src with one symlink per file, so a test can delete/replace files without touching src."""
    for dirpath, _, files in os.walk(src):
        out = dst / Path(dirpath).relative_to(src)
        out.mkdir(parents=True, exist_ok=True)
        for f in files:
            (out / f).symlink_to(Path(dirpath) / f)


def _replace(path: Path, data: bytes) -> None:
    path.unlink()  # drop the symlink first: never write through it into the shared sample
    path.write_bytes(data)


@pytest.fixture()
def davis_copy(davis_sample_root, tmp_path) -> Path:
    root = tmp_path / "DAVIS"
    for part in ("JPEGImages", "Annotations", "ImageSets"):
        _link_tree(davis_sample_root / part, root / part)
    return root


def _orig_binary(root: Path, seq: str, name: str) -> np.ndarray:
    """The DAVIS 2016 {0, 255} mask of a frame, read independently with PIL."""
    return np.array(Image.open(root / "orig_davis2016_binary" / "Annotations" / "480p" / seq / f"{name}.png"))


def test_reads_the_real_sample(davis_sample_root):
    source = DavisSource(davis_sample_root, "val")
    assert len(source) == 2 and source.sequences == ("blackswan", "car-shadow")
    for index, seq in enumerate(source.sequences):
        info = source.info(index)
        jpgs = sorted(p.stem for p in (davis_sample_root / "JPEGImages" / "480p" / seq).glob("*.jpg"))
        assert info.video_id == seq
        assert info.num_frames == SEQUENCES[seq] == len(jpgs)
        assert (info.height, info.width) == (480, 854)
        assert info.frame_names == tuple(jpgs)
        assert all(info.annotated) and info.object_ids == (1,)
        # Frames and masks pair up by name: masks equal the DAVIS 2016 originals of the same frame names.
        picks = [0, 7, info.num_frames - 1]
        frames, masks = source.load(index, picks)
        assert frames.shape == (3, 480, 854, 3) and frames.dtype == np.uint8
        assert masks.shape == (3, 480, 854) and masks.dtype == np.uint8
        for k, t in enumerate(picks):
            name = info.frame_names[t]
            np.testing.assert_array_equal(masks[k], (_orig_binary(davis_sample_root, seq, name) == 255).astype(np.uint8))
            reference = np.asarray(Image.open(davis_sample_root / "JPEGImages" / "480p" / seq / f"{name}.jpg").convert("RGB"))
            # PIL and OpenCV may use different libjpeg builds: allow rounding differences only.
            assert np.abs(frames[k].astype(int) - reference).mean() < 1.0
        np.testing.assert_array_equal(source.first_frame_mask(index), masks[0])
        assert source.frame_names(index) == info.frame_names
    assert source.index_of("car-shadow") == 1


def test_davis2016_binary_masks_give_the_not_indexed_error(davis_sample_root, tmp_path):
    root = tmp_path / "DAVIS"
    _link_tree(davis_sample_root / "JPEGImages", root / "JPEGImages")
    _link_tree(davis_sample_root / "ImageSets", root / "ImageSets")
    _link_tree(davis_sample_root / "orig_davis2016_binary" / "Annotations", root / "Annotations")
    with pytest.raises(NotIndexedMaskError) as error:
        DavisSource(root, "val")
    message = str(error.value)
    assert str(root / "Annotations" / "480p" / "blackswan" / "00000.png") in message
    assert "palette" in message and "DAVIS 2016" in message and "object id 1" in message


def test_missing_mask(davis_copy):
    mask = davis_copy / "Annotations" / "480p" / "car-shadow" / "00012.png"
    mask.unlink()
    with pytest.raises(DatasetLayoutError, match=f"{mask}: mask missing for frame"):
        DavisSource(davis_copy, "val")
    # A split annotated on the first frame only (test-dev style) accepts it and reports it.
    source = DavisSource(davis_copy, "val", require_all_masks=False)
    info = source.info(1)
    assert info.annotated[12] is False and sum(info.annotated) == 39
    _, masks = source.load(1, [11, 12])
    assert masks[0].any() and not masks[1].any()


def test_first_frame_mask_is_required_even_for_test_splits(davis_copy):
    mask = davis_copy / "Annotations" / "480p" / "blackswan" / "00000.png"
    mask.unlink()
    with pytest.raises(DatasetLayoutError, match="first frame must be annotated"):
        DavisSource(davis_copy, "val", require_all_masks=False)


def test_mask_without_frame(davis_copy):
    frame = davis_copy / "JPEGImages" / "480p" / "blackswan" / "00049.jpg"
    frame.unlink()
    with pytest.raises(DatasetLayoutError, match="00049.png: mask without a frame"):
        DavisSource(davis_copy, "val")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_jpeg(davis_copy, damage):
    frame = davis_copy / "JPEGImages" / "480p" / "car-shadow" / "00005.jpg"
    data = frame.read_bytes()
    _replace(frame, data[: len(data) // 2] if damage == "truncated" else b"\xff\xd8" + bytes(range(256)) * 4)
    source = DavisSource(davis_copy, "val")  # construction reads no pixels of frame 5
    source.load(1, [4])
    with pytest.raises(DatasetLayoutError, match=f"{frame}: .*re-extract"):
        source.load(1, [5])


def test_rgb_png_mask(davis_copy):
    mask = davis_copy / "Annotations" / "480p" / "car-shadow" / "00003.png"
    rgb = np.zeros((480, 854, 3), np.uint8)
    mask.unlink()
    Image.fromarray(rgb, mode="RGB").save(mask)
    source = DavisSource(davis_copy, "val")
    with pytest.raises(NotIndexedMaskError, match=str(mask)):
        source.load(1, [3])
    first = davis_copy / "Annotations" / "480p" / "car-shadow" / "00000.png"
    first.unlink()
    Image.fromarray(rgb, mode="RGB").save(first)
    with pytest.raises(NotIndexedMaskError, match=str(first)):
        DavisSource(davis_copy, "val")  # the first-frame mask's header is checked at construction


def test_split_file_errors(davis_copy):
    split = davis_copy / "ImageSets" / "2017" / "val.txt"
    with pytest.raises(DatasetLayoutError, match=f"{davis_copy / 'ImageSets' / '2017' / 'train.txt'}: split file not found"):
        DavisSource(davis_copy, "train")
    _replace(split, b"\n  \n")
    with pytest.raises(DatasetLayoutError, match=f"{split}: split file is empty"):
        DavisSource(davis_copy, "val")
    split.write_text("blackswan\nbear\ncar-shadow\n")
    with pytest.raises(DatasetLayoutError, match="sequence 'bear' is listed in .*val.txt but its frame folder is missing") as error:
        DavisSource(davis_copy, "val")
    assert str(davis_copy / "JPEGImages" / "480p" / "bear") in str(error.value)
    with pytest.raises(DatasetLayoutError, match="Full-Resolution: folder not found .*480p"):
        DavisSource(davis_copy, "val", resolution="Full-Resolution")


def test_mask_of_another_size(davis_copy):
    mask = davis_copy / "Annotations" / "480p" / "blackswan" / "00002.png"
    mask.unlink()
    write_indexed_png(mask, np.ones((240, 427), np.uint8))
    with pytest.raises(DatasetLayoutError, match=f"{mask}: mask is 240x427 but its frame is 480x854"):
        DavisSource(davis_copy, "val").load(0, [2])


def test_out_of_range_frames(davis_sample_root):
    with pytest.raises(IndexError, match="outside 0..39"):
        DavisSource(davis_sample_root, "val").load(1, [40])


def test_palette_png_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 256, size=(17, 23)).astype(np.uint8)
    path = tmp_path / "m.png"
    write_indexed_png(path, ids)
    with Image.open(path) as image:
        assert image.mode == "P"
        np.testing.assert_array_equal(np.array(image), ids)
    np.testing.assert_array_equal(read_indexed_png(path), ids)


def test_generated_layout_matches_the_rendered_videos(tmp_path):
    params = dict(num_frames=4, height=40, width=56, twins_fraction=0.5, max_objects=3)
    root = generate_davis_layout(tmp_path / "synth", num_train=3, num_val=2, seed=7, **params)
    for split, count in (("train", 3), ("val", 2)):
        source = DavisSource(root, split)
        assert len(source) == count
        for i in range(count):
            _, frames, masks = synthetic_video(7, split, i, **params)  # the generator's pixels, before JPEG
            info = source.info(i)
            assert info.video_id == f"{split}-{i:04d}" and info.num_frames == 4 and (info.height, info.width) == (40, 56)
            assert info.object_ids == tuple(int(v) for v in np.unique(masks[0]) if v)
            got_frames, got_masks = source.load(i, [3, 0])
            np.testing.assert_array_equal(got_masks, masks[[3, 0]])
            assert np.abs(got_frames.astype(int) - frames[[3, 0]]).mean() < 8  # JPEG q90 of noisy textures: ~4
