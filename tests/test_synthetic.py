"""The synthetic VOS set: rendering properties and the DAVIS / YouTube-VOS layouts on disk.

Small sizes (8 frames of 64x96) keep the whole file to a few seconds.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from munet_jax.data import synthetic
from munet_jax.data.synthetic_scene import (
    Scene,
    SceneObject,
    object_silhouette,
    render_scene,
    render_video,
    render_video_with_scene,
)
from munet_jax.palette import read_indexed_png

T, H, W = 8, 64, 96
SMALL = dict(num_frames=T, height=H, width=W)


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _siblings(root: Path) -> list[str]:
    return sorted(p.name for p in root.parent.iterdir() if p.name.startswith(root.name))


# ---------------------------------------------------------------- rendering


@pytest.mark.parametrize("seed", range(6))
def test_render_video_shapes_and_ids(seed):
    num_objects = 1 + seed % 4
    frames, masks = render_video(seed, T, H, W, num_objects)
    assert frames.shape == (T, H, W, 3) and frames.dtype == np.uint8
    assert masks.shape == (T, H, W) and masks.dtype == np.uint8
    assert set(np.unique(masks)) - {0} == set(range(1, num_objects + 1))
    assert set(np.unique(masks[0])) - {0} == set(range(1, num_objects + 1)), "every object is visible on frame 0"
    assert not np.array_equal(frames[0], frames[-1]), "the video moves"


def test_render_is_deterministic_and_seed_dependent():
    a, b, c = (render_video(s, T, H, W, 3) for s in (5, 5, 6))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    # A Generator works as well as a seed, and consumes only that generator's stream.
    d = render_video(np.random.default_rng(5), T, H, W, 3)
    assert np.array_equal(a[0], d[0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masks_are_front_most_of_independent_silhouettes(seed):
    scene, _, masks = render_video_with_scene(seed, T, H, W, 4, twins=seed == 1)
    for t in range(T):
        # Composite the per-object silhouettes by depth with an argmax instead of painting.
        sil = np.stack([object_silhouette(o, t, H, W) for o in scene.objects])  # [N, H, W]
        depth = np.array([o.depth for o in scene.objects])[:, None, None] + 1
        best = np.argmax(np.where(sil, depth, 0), axis=0)
        ids = np.array([o.object_id for o in scene.objects])
        assert np.array_equal(masks[t], np.where(sil.any(axis=0), ids[best], 0))


def _square(object_id, colour, size, centres, depth, appear_frame=0):
    """A solid, unrotated, unscaled square sprite at the given centres [T, 2]."""
    sprite = np.empty((size, size, 3), np.uint8)
    sprite[:] = colour
    n = len(centres)
    return SceneObject(object_id, "polygon", "flat", sprite, np.full((size, size), 255, np.uint8),
                       np.asarray(centres, np.float32), np.zeros(n, np.float32), np.ones(n, np.float32),
                       depth, appear_frame)


def _box(cx, cy, size):
    """The pixel box (rows, cols) of a size x size sprite centred at integer (cx, cy)."""
    r = (size - 1) // 2
    return slice(cy - r, cy + r + 1), slice(cx - r, cx + r + 1)


def _flat_scene(objects, n):
    background = np.full((H + 4, W + 4, 3), 40, np.uint8)
    return Scene(H, W, background, np.full((n, 2), 2.0, np.float32), tuple(objects))


@pytest.mark.parametrize("red_in_front", [True, False])
def test_constructed_overlap_belongs_to_the_front_object(red_in_front):
    red = _square(1, (255, 0, 0), 21, [(30, 30)], depth=1 if red_in_front else 0)
    blue = _square(2, (0, 0, 255), 21, [(40, 36)], depth=0 if red_in_front else 1)
    frames, masks = render_scene(_flat_scene([red, blue], 1))
    in_red, in_blue = np.zeros((H, W), bool), np.zeros((H, W), bool)
    in_red[_box(30, 30, 21)] = True
    in_blue[_box(40, 36, 21)] = True
    front, back = (in_red, in_blue) if red_in_front else (in_blue, in_red)
    front_id, front_rgb = (1, (255, 0, 0)) if red_in_front else (2, (0, 0, 255))
    assert (in_red & in_blue).sum() > 50, "the test squares must overlap"
    assert np.all(masks[0][front] == front_id)
    assert np.all(masks[0][back & ~front] == 3 - front_id)
    assert np.all(masks[0][~(in_red | in_blue)] == 0)
    assert np.all(frames[0][in_red & in_blue] == front_rgb)
    assert np.all(frames[0][~(in_red | in_blue)] == 40)


def test_fully_hidden_object_comes_back_and_late_object_pops_in():
    small = _square(1, (0, 255, 0), 7, [(20 + 10 * t, 30) for t in range(6)], depth=0)
    big = _square(2, (255, 255, 0), 27, [(50, 30)] * 6, depth=1)
    late = _square(3, (255, 0, 255), 9, [(85, 10)] * 6, depth=2, appear_frame=4)
    _, masks = render_scene(_flat_scene([small, big, late], 6))
    present = [[i in masks[t] for i in (1, 2, 3)] for t in range(6)]
    # Small square (x +- 3) at x = 20, 30, ..., 70; the big one covers x 37..63, so it hides frames 2-4 fully.
    assert [p[0] for p in present] == [True, True, False, False, False, True]
    assert [p[2] for p in present] == [False] * 4 + [True] * 2


def test_twins_share_appearance_but_not_trajectories():
    for seed in range(4):
        scene, frames, masks = render_video_with_scene(seed, T, H, W, 3, twins=True)
        twins = [o for o in scene.objects if o.twin_of is not None]
        assert twins, "a twins video has at least one object copying another"
        for copy in twins:
            source = next(o for o in scene.objects if o.object_id == copy.twin_of)
            assert np.array_equal(copy.sprite, source.sprite) and np.array_equal(copy.alpha, source.alpha)
            assert np.array_equal(copy.angles, source.angles) and np.array_equal(copy.scales, source.scales)
            assert np.abs(copy.centers - source.centers).max() > 5.0, "twins move differently"
            # Both show on frame 0 and are different ids in the mask.
            assert copy.object_id in masks[0] and source.object_id in masks[0]


@pytest.mark.parametrize(
    "kwargs, word",
    [(dict(num_frames=0), "num_frames"), (dict(height=8), "height"), (dict(num_objects=1, twins=True), "twins"),
     (dict(appear_frames=[1, 2]), "appear_frames")],
)
def test_bad_render_arguments_are_named(kwargs, word):
    args = dict(num_frames=T, height=H, width=W, num_objects=2) | kwargs
    with pytest.raises(ValueError, match=word):
        render_video(0, **args)


# ---------------------------------------------------------------- DAVIS layout


def test_davis_layout_contents_match_the_rendered_videos(tmp_path):
    root = synthetic.generate_davis_layout(tmp_path / "davis", num_train=3, num_val=2, seed=7, twins_fraction=0.5, **SMALL)
    train = (root / "ImageSets/2017/train.txt").read_text().split()
    val = (root / "ImageSets/2017/val.txt").read_text().split()
    assert len(train) == 3 and len(val) == 2
    assert sorted(p.name for p in (root / "JPEGImages/480p").iterdir()) == sorted(train + val)
    info = json.loads((root / "SYNTHETIC.json").read_text())
    assert info["seed"] == 7 and set(info["videos"]) == set(train + val)
    source = synthetic.synthetic_array_source(num_videos=3, seed=7, twins_fraction=0.5, **SMALL)
    for index, name in enumerate(train):
        jpgs = sorted((root / "JPEGImages/480p" / name).glob("*.jpg"))
        pngs = sorted((root / "Annotations/480p" / name).glob("*.png"))
        assert [p.stem for p in jpgs] == [p.stem for p in pngs] == [f"{t:05d}" for t in range(T)]
        frames, masks = source.load(index, range(T))
        assert source.info(index).video_id == name
        stored = np.stack([read_indexed_png(p) for p in pngs])
        assert np.array_equal(stored, masks), "palette PNGs hold exactly the rendered ids"
        decoded = np.stack([cv2.imread(str(p))[..., ::-1] for p in jpgs]).astype(np.float64)
        error = np.abs(decoded - frames)
        assert error.mean() < 4.0 and np.sqrt((error**2).mean()) < 7.0, "JPEG frames match within JPEG loss"
        n = info["videos"][name]["num_objects"]
        assert 1 <= n <= 4 and set(np.unique(stored[0])) - {0} == set(range(1, n + 1))


def test_davis_layout_is_byte_deterministic(tmp_path):
    args = dict(num_train=2, num_val=1, **SMALL)
    a = _tree_digest(synthetic.generate_davis_layout(tmp_path / "a", seed=3, **args))
    b = _tree_digest(synthetic.generate_davis_layout(tmp_path / "b", seed=3, **args))
    c = _tree_digest(synthetic.generate_davis_layout(tmp_path / "c", seed=4, **args))
    assert a == b
    assert a.keys() == c.keys()
    jpgs = [k for k in a if k.endswith(".jpg")]
    assert all(a[k] != c[k] for k in jpgs), "another seed gives other frames"


def test_twins_fraction_one_gives_twins_in_every_video(tmp_path):
    root = synthetic.generate_davis_layout(tmp_path / "d", num_train=3, num_val=0, seed=1, twins_fraction=1.0, **SMALL)
    for video in json.loads((root / "SYNTHETIC.json").read_text())["videos"].values():
        assert any(o["twin_of"] is not None for o in video["objects"].values())


# ---------------------------------------------------------------- YouTube-VOS layout


def test_youtube_layout_matches_the_benchmark_conventions(tmp_path):
    args = dict(num_train=3, num_valid=3, seed=11, enter_fraction=1.0, max_objects=4, **SMALL)
    root = synthetic.generate_youtube_layout(tmp_path / "yt", **args)
    names = [f"{5 * t:05d}" for t in range(T)]
    late_objects = 0
    for split in ("train", "valid"):
        meta = json.loads((root / split / "meta.json").read_text())["videos"]
        assert sorted(meta) == sorted(p.name for p in (root / split / "JPEGImages").iterdir())
        for index in range(3):
            name = synthetic.youtube_video_name(11, split, index)
            assert [p.stem for p in sorted((root / split / "JPEGImages" / name).glob("*.jpg"))] == names
            scene, _, masks = synthetic.synthetic_video(
                11, f"youtube-{split}", index, speed=synthetic.YOUTUBE_SPEED, enter_fraction=1.0, max_objects=4,
                **SMALL)
            ids = sorted(int(i) for i in np.unique(masks) if i)
            assert sorted(int(k) for k in meta[name]["objects"]) == ids
            first = {i: int(np.argmax((masks == i).any(axis=(1, 2)))) for i in ids}
            late_objects += sum(f > 0 for f in first.values())
            pngs = sorted((root / split / "Annotations" / name).glob("*.png"))
            if split == "train":
                assert [p.stem for p in pngs] == names
                assert np.array_equal(np.stack([read_indexed_png(p) for p in pngs]), masks)
                for i in ids:
                    visible = [names[t] for t in range(T) if (masks[t] == i).any()]
                    assert meta[name]["objects"][str(i)]["frames"] == visible
            else:
                assert {p.stem for p in pngs} == {names[f] for f in first.values()}
                for p in pngs:
                    t = names.index(p.stem)
                    new = [i for i in ids if first[i] == t]
                    assert np.array_equal(read_indexed_png(p), np.where(np.isin(masks[t], new), masks[t], 0))
                for i in ids:
                    assert meta[name]["objects"][str(i)]["frames"] == names[first[i]:]
    assert late_objects > 0, "enter_fraction=1 makes objects enter mid-video"
    assert _tree_digest(root) == _tree_digest(synthetic.generate_youtube_layout(tmp_path / "yt2", **args))


# ---------------------------------------------------------------- CLI and failure handling


def _cli(out: Path, *extra: str) -> int:
    return synthetic.main(["--out", str(out), "--num_train", "1", "--num_val", "1", "--frames", "3",
                           "--height", "32", "--width", "48", *extra])


def test_cli_writes_then_refuses_a_non_empty_folder(tmp_path, capsys):
    out = tmp_path / "set"
    assert _cli(out, "--layout", "youtube") == 0
    assert "wrote the youtube layout" in capsys.readouterr().out
    before = _tree_digest(out)
    assert _cli(out) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--overwrite" in err
    assert _tree_digest(out) == before
    assert _cli(out, "--overwrite") == 0
    assert (out / "ImageSets/2017/train.txt").is_file() and not (out / "train").exists()
    assert _siblings(out) == ["set"]


def test_failed_run_leaves_no_partial_dataset(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = synthetic.write_indexed_png

    def failing(path, ids):
        calls["n"] += 1
        if calls["n"] > 4:
            raise OSError("disk full (injected)")
        real(path, ids)

    monkeypatch.setattr(synthetic, "write_indexed_png", failing)
    out = tmp_path / "new"
    with pytest.raises(OSError, match="injected"):
        _cli(out)
    assert not out.exists() and _siblings(out) == []
    # A failed --overwrite keeps the previous dataset intact.
    monkeypatch.setattr(synthetic, "write_indexed_png", real)
    assert _cli(out) == 0
    before = _tree_digest(out)
    monkeypatch.setattr(synthetic, "write_indexed_png", failing)
    calls["n"] = 0
    with pytest.raises(OSError, match="injected"):
        _cli(out, "--seed", "9", "--overwrite")
    assert _tree_digest(out) == before and _siblings(out) == ["new"]


def test_bad_layout_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="twins_fraction"):
        synthetic.generate_davis_layout(tmp_path / "x", num_train=1, num_val=0, twins_fraction=2.0, **SMALL)
    with pytest.raises(ValueError, match="num_train"):
        synthetic.generate_youtube_layout(tmp_path / "x", num_train=0, num_valid=0, **SMALL)
    with pytest.raises(ValueError, match="seed"):
        synthetic.generate_davis_layout(tmp_path / "x", num_train=1, num_val=0, seed=-1, **SMALL)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        synthetic.generate_davis_layout(tmp_path / "file", num_train=1, num_val=0, **SMALL)
    assert not (tmp_path / "x").exists()


def test_youtube_layout_with_an_empty_train_split(tmp_path):
    root = synthetic.generate_youtube_layout(tmp_path / "y", num_train=0, num_valid=1, **SMALL)
    assert json.loads((root / "train" / "meta.json").read_text()) == {"videos": {}}
    assert len(json.loads((root / "valid" / "meta.json").read_text())["videos"]) == 1
