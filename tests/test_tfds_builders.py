"""TFDS builders (array_record) and TfdsVideoSource, against the folder readers and the generator."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from munet_jax.data.davis import DatasetLayoutError, DavisSource  # noqa: E402
from munet_jax.data.static_images import voc2012_source  # noqa: E402
from munet_jax.data.synthetic import generate_youtube_layout, synthetic_video  # noqa: E402
from munet_jax.data.tfds_builders import Davis2017, StaticImages, YoutubeVos2018, main  # noqa: E402
from munet_jax.data.tfds_source import TfdsVideoSource  # noqa: E402
from munet_jax.data.youtube_vos import YouTubeVOSSource  # noqa: E402
from munet_jax.palette import write_indexed_png  # noqa: E402


def _prepare(builder_cls, data_dir: Path, manual_dir: Path, config: str | None = None) -> None:
    kwargs = {"config": config} if config else {}
    builder = builder_cls(data_dir=os.fspath(data_dir), **kwargs)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))


def _assert_same_videos(tfds_source, folder_source, frames_to_check=None) -> None:
    assert len(tfds_source) == len(folder_source)
    for i in range(len(folder_source)):
        info = folder_source.info(i)
        assert tfds_source.info(i) == info
        picks = frames_to_check or range(info.num_frames)
        got_frames, got_masks = tfds_source.load(i, picks)
        want_frames, want_masks = folder_source.load(i, picks)
        np.testing.assert_array_equal(got_frames, want_frames)  # stored JPEG bytes, same decoder
        np.testing.assert_array_equal(got_masks, want_masks)


def _davis_manual(davis_sample_root: Path, manual: Path) -> Path:
    """manual/DAVIS with per-file links to the sample; train = car-shadow, val = blackswan."""
    root = manual / "DAVIS"
    for kind in ("JPEGImages", "Annotations"):
        for seq in ("blackswan", "car-shadow"):
            src = davis_sample_root / kind / "480p" / seq
            (root / kind / "480p" / seq).mkdir(parents=True)
            for f in src.iterdir():
                (root / kind / "480p" / seq / f.name).symlink_to(f)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "train.txt").write_text("car-shadow\n")
    (root / "ImageSets" / "2017" / "val.txt").write_text("blackswan\n")
    return root


def test_synthetic_vos_via_the_command_line_entry(tmp_path):
    assert main(["synthetic_vos/tiny", "--data_dir", os.fspath(tmp_path)]) == 0
    for split, count in (("train", 3), ("val", 2)):
        source = TfdsVideoSource("synthetic_vos/tiny", tmp_path, split)
        assert len(source) == count
        for i in range(count):
            # The tiny config: seed 0, 5 frames of 48x64; the generator's own pixels, before JPEG.
            _, frames, masks = synthetic_video(0, split, i, num_frames=5, height=48, width=64)
            info = source.info(i)
            assert info.video_id == f"{split}-{i:04d}" and info.num_frames == 5 and (info.height, info.width) == (48, 64)
            assert info.object_ids == tuple(int(v) for v in np.unique(masks[0]) if v) and all(info.annotated)
            got_frames, got_masks = source.load(i, range(5))
            np.testing.assert_array_equal(got_masks, masks)
            assert np.abs(got_frames.astype(int) - frames).mean() < 8


def test_davis2017_matches_the_folder_reader(davis_sample_root, tmp_path):
    root = _davis_manual(davis_sample_root, tmp_path / "manual")
    _prepare(Davis2017, tmp_path / "tfds", tmp_path / "manual", "480p")
    train = TfdsVideoSource("davis2017/480p", tmp_path / "tfds", "train")
    val = TfdsVideoSource("davis2017/480p", tmp_path / "tfds", "val")
    assert [train.info(0).num_frames, val.info(0).num_frames] == [40, 50]
    assert val.first_appearance(0) == {1: 0}
    _assert_same_videos(val, DavisSource(root, "val"), [0, 17, 49])
    _assert_same_videos(train, DavisSource(root, "train"), [0, 39])
    # Masks are stored as greyscale-id PNGs, so TensorFlow's PNG decoder gives ids, not palette colours.
    import tensorflow as tf

    record = tfds.builder("davis2017/480p", data_dir=os.fspath(tmp_path / "tfds")).as_data_source(split="val")[0]
    ids = tf.io.decode_png(record["masks"][3]).numpy()
    assert ids.shape == (480, 854, 1)
    np.testing.assert_array_equal(ids[..., 0], DavisSource(root, "val").load_masks(0, [3])[0])
    assert record["frames"][3] == (root / "JPEGImages" / "480p" / "blackswan" / "00003.jpg").read_bytes()


def test_youtube_vos2018_keeps_first_appearances(tmp_path):
    manual = generate_youtube_layout(tmp_path / "manual", num_train=2, num_valid=3, num_frames=4, height=32,
                                     width=40, seed=5, max_objects=3, enter_fraction=1.0)
    _prepare(YoutubeVos2018, tmp_path / "tfds", manual)
    for split in ("train", "valid"):
        folder = YouTubeVOSSource(manual, split)
        built = TfdsVideoSource("youtube_vos2018", tmp_path / "tfds", split)
        _assert_same_videos(built, folder)
        for i in range(len(folder)):
            assert built.first_appearance(i) == folder.first_appearance(i)
            assert built.frame_names(i) == tuple(f"{5 * t:05d}" for t in range(4))


def test_static_voc2012_void_is_background(tmp_path):
    root = tmp_path / "manual" / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(0)
    for stem in ("a", "b"):
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(os.fspath(root / "JPEGImages" / f"{stem}.jpg"), rng.integers(0, 256, (20, 30, 3)).astype(np.uint8))
        ids = np.zeros((20, 30), np.uint8)
        ids[3:9, 4:14], ids[10:18, 15:28], ids[9, :] = 1, 2, 255
        write_indexed_png(root / "SegmentationObject" / f"{stem}.png", ids)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("a\nb\n")
    _prepare(StaticImages, tmp_path / "tfds", tmp_path / "manual", "voc2012")
    built = TfdsVideoSource("static_images/voc2012", tmp_path / "tfds", "train")
    _assert_same_videos(built, voc2012_source(root))
    assert built.info(1).object_ids == (1, 2) and built.info(1).num_frames == 1
    assert not (built.load(0, [0])[1] == 255).any()


def test_failed_build_leaves_nothing_complete(davis_sample_root, tmp_path):
    root = _davis_manual(davis_sample_root, tmp_path / "manual")
    frame = root / "JPEGImages" / "480p" / "blackswan" / "00030.jpg"
    data = frame.read_bytes()
    frame.unlink()  # a symlink: replace it, never write through it
    frame.write_bytes(data[:3000])
    with pytest.raises(DatasetLayoutError, match=f"{frame}: JPEG has no end-of-image marker"):
        _prepare(Davis2017, tmp_path / "tfds", tmp_path / "manual", "480p")
    config_dir = tmp_path / "tfds" / "davis2017" / "480p"
    assert not config_dir.exists() or os.listdir(config_dir) == []  # no version folder, no incomplete.* left
    assert not tfds.builder("davis2017/480p", data_dir=os.fspath(tmp_path / "tfds")).is_prepared()
    with pytest.raises(DatasetLayoutError, match="is not built; build it first"):
        TfdsVideoSource("davis2017/480p", tmp_path / "tfds", "val")


def test_layout_errors_surface_before_writing(davis_sample_root, tmp_path):
    root = _davis_manual(davis_sample_root, tmp_path / "manual")
    (root / "ImageSets" / "2017" / "train.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="train.txt: split file not found"):
        _prepare(Davis2017, tmp_path / "tfds", tmp_path / "manual", "480p")
    shutil.rmtree(tmp_path / "manual")
    (tmp_path / "manual").mkdir()
    with pytest.raises(AssertionError, match="DAVIS-2017-trainval-480p.zip"):  # TFDS shows our instructions
        _prepare(Davis2017, tmp_path / "tfds", tmp_path / "manual", "480p")
    (tmp_path / "manual" / "davis-2017").mkdir()  # unpacked somewhere else
    with pytest.raises(DatasetLayoutError, match="(?s)DAVIS/JPEGImages.* exists; unpack .*DAVIS-2017-trainval-480p.zip"):
        _prepare(Davis2017, tmp_path / "tfds", tmp_path / "manual", "480p")
