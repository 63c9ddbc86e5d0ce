"""YouTubeVOSSource on generated YouTube-VOS 2018 layouts, checked against the files read directly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from munet_jax.data.davis import DatasetLayoutError
from munet_jax.data.synthetic import generate_youtube_layout
from munet_jax.data.youtube_vos import YouTubeVOSSource

NUM_FRAMES = 6


@pytest.fixture(scope="module")
def youtube_root(tmp_path_factory) -> Path:
    # enter_fraction=1: every multi-object video has objects that first appear after frame 0.
    return generate_youtube_layout(
        tmp_path_factory.mktemp("ytvos") / "yt", num_train=2, num_valid=4, num_frames=NUM_FRAMES,
        height=36, width=48, seed=3, max_objects=3, twins_fraction=0.0, enter_fraction=1.0,
    )


@pytest.fixture()
def youtube_copy(youtube_root, tmp_path) -> Path:
    root = tmp_path / "yt"
    shutil.copytree(youtube_root, root)
    return root


def _meta(root: Path, split: str) -> dict:
    return json.loads((root / split / "meta.json").read_text())["videos"]


def test_train_split(youtube_root):
    source = YouTubeVOSSource(youtube_root, "train")
    meta = _meta(youtube_root, "train")
    assert source.videos == tuple(sorted(meta)) and len(source) == 2
    for i, video in enumerate(source.videos):
        info = source.info(i)
        assert info.video_id == video
        assert info.frame_names == tuple(f"{5 * t:05d}" for t in range(NUM_FRAMES))  # real names, every 5th
        assert all(info.annotated) and (info.height, info.width) == (36, 48)
        assert info.object_ids == tuple(sorted(int(k) for k in meta[video]["objects"]))
        frames, masks = source.load(i, [NUM_FRAMES - 1, 1])
        for k, t in enumerate([NUM_FRAMES - 1, 1]):
            name = info.frame_names[t]
            expected = np.array(Image.open(youtube_root / "train" / "Annotations" / video / f"{name}.png"))
            np.testing.assert_array_equal(masks[k], expected)
            rgb = np.asarray(Image.open(youtube_root / "train" / "JPEGImages" / video / f"{name}.jpg").convert("RGB"))
            assert np.abs(frames[k].astype(int) - rgb).mean() < 1.0
        # train meta "frames" = the frames where the object is visible
        for oid, obj in meta[video]["objects"].items():
            visible = [info.frame_names[t] for t in range(NUM_FRAMES)
                       if (source.load_masks(i, [t])[0] == int(oid)).any()]
            assert visible == obj["frames"]


def test_valid_split_first_appearance(youtube_root):
    source = YouTubeVOSSource(youtube_root, "valid")
    meta = _meta(youtube_root, "valid")
    late = 0
    for i, video in enumerate(source.videos):
        info = source.info(i)
        pngs = {p.stem for p in (youtube_root / "valid" / "Annotations" / video).glob("*.png")}
        assert info.annotated == tuple(name in pngs for name in info.frame_names)
        first = source.first_appearance(i)
        assert set(first) == set(info.object_ids) == {int(k) for k in meta[video]["objects"]}
        _, masks = source.load(i, range(NUM_FRAMES))
        for oid, t in first.items():
            assert info.frame_names[t] == meta[video]["objects"][str(oid)]["frames"][0]
            assert info.annotated[t] and (masks[t] == oid).any()  # the object is given on that frame
            assert not (masks[:t] == oid).any()  # and on no earlier one
            late += t > 0
        for t in range(NUM_FRAMES):
            if not info.annotated[t]:
                assert not masks[t].any()
        assert set(source.categories(i)) == set(first)
    assert late > 0, "the fixture should contain objects that appear mid-video"


def test_missing_meta(youtube_copy):
    (youtube_copy / "valid" / "meta.json").unlink()
    with pytest.raises(DatasetLayoutError, match=f"{youtube_copy / 'valid' / 'meta.json'}: meta.json not found"):
        YouTubeVOSSource(youtube_copy, "valid")


def test_bad_meta(youtube_copy):
    (youtube_copy / "train" / "meta.json").write_text(json.dumps({"videos": {"x": {"objects": {"one": {}}}}}))
    with pytest.raises(DatasetLayoutError, match="meta.json: not a YouTube-VOS meta.json"):
        YouTubeVOSSource(youtube_copy, "train")


def test_listed_video_absent(youtube_copy):
    video = sorted(_meta(youtube_copy, "train"))[0]
    shutil.rmtree(youtube_copy / "train" / "JPEGImages" / video)
    with pytest.raises(DatasetLayoutError, match=f"video '{video}' is listed in .*meta.json but its frame folder is missing"):
        YouTubeVOSSource(youtube_copy, "train")


def test_missing_train_mask(youtube_copy):
    video = sorted(_meta(youtube_copy, "train"))[1]
    mask = youtube_copy / "train" / "Annotations" / video / "00010.png"
    mask.unlink()
    with pytest.raises(DatasetLayoutError, match=f"{mask}: mask missing for frame"):
        YouTubeVOSSource(youtube_copy, "train")
    assert not YouTubeVOSSource(youtube_copy, "train", require_all_masks=False).info(1).annotated[2]


def test_missing_first_appearance_mask(youtube_copy):
    meta = _meta(youtube_copy, "valid")
    video = sorted(meta)[0]
    first = meta[video]["objects"]["1"]["frames"][0]
    mask = youtube_copy / "valid" / "Annotations" / video / f"{first}.png"
    mask.unlink()
    with pytest.raises(DatasetLayoutError, match=f"{mask}: missing; object 1 of video {video} first appears"):
        YouTubeVOSSource(youtube_copy, "valid")


def test_corrupt_jpeg(youtube_copy):
    video = sorted(_meta(youtube_copy, "valid"))[2]
    frame = youtube_copy / "valid" / "JPEGImages" / video / "00015.jpg"
    frame.write_bytes(frame.read_bytes()[:200])
    source = YouTubeVOSSource(youtube_copy, "valid")
    with pytest.raises(DatasetLayoutError, match=f"{frame}: JPEG has no end-of-image marker"):
        source.load(2, [3])
