"""The training input pipeline (munet_jax.data.pipeline): shapes, labels, determinism, mixing, hosts."""

import itertools

import numpy as np
import pytest

from munet_jax.data import pipeline
from munet_jax.data.config import data_config, protocol_datasets
from munet_jax.data.source import ArrayVideoSource

H, W = 24, 32


def _video(v, num_frames, ids=(1, 2, 3), empty_until=0, h=H, w=W):
    """Frame t of video v: red channel 10 t, green 20 v (so a clip reveals its source),
    objects as boxes moving one pixel a frame, id `o` drawn with blue 25 o."""
    size = min(6, h // 3)
    frames = np.zeros((num_frames, h, w, 3), np.uint8)
    masks = np.zeros((num_frames, h, w), np.uint8)
    for t in range(num_frames):
        frames[t, ..., 0] = 10 * t
        frames[t, ..., 1] = 20 * v
        if t < empty_until:
            continue
        for k, o in enumerate(ids):
            y, x = (2 + 7 * k) % (h - size), (3 + 9 * k + t) % (w - size)
            frames[t, y:y + size, x:x + size, 2] = 25 * o
            masks[t, y:y + size, x:x + size] = o
    return frames, masks


def _source(name, num_videos, num_frames=8, **kwargs):
    return ArrayVideoSource(name, [(f"{name}{v}", *_video(v, num_frames, **kwargs)) for v in range(num_videos)])


def _cfg(augment=True, **overrides):
    c = data_config()
    c.crop_size, c.clip_length, c.max_objects = (16, 20), 3, 2
    if not augment:  # identity: crop = frame size, no flip, no affine, no colour change
        c.crop_size = (H, W)
        a = c.augment
        a.scale_range, a.hflip_prob, a.scale = (1.0, 1.0), 0.0, (1.0, 1.0)
        a.brightness = a.contrast = a.saturation = a.hue = a.rotation_deg = a.shear_deg = a.translate = 0.0
    for k, v in overrides.items():
        c[k] = v
    return c


def _batches(sources, weights, cfg, steps, **kwargs):
    kwargs.setdefault("global_batch_size", 4)
    kwargs.setdefault("seed", 0)
    return list(pipeline.make_train_iterator(sources, weights, cfg, num_steps=steps, **kwargs))


@pytest.fixture(scope="module")
def sources():
    return {"a": _source("a", 3), "b": _source("b", 2, num_frames=12, ids=(4, 9))}


def _assert_equal_batches(x, y):
    assert len(x) == len(y)
    for bx, by in zip(x, y):
        assert bx.keys() == by.keys()
        for k in bx:
            np.testing.assert_array_equal(bx[k], by[k], err_msg=k)


def test_shapes_dtypes_and_labels(sources):
    cfg = _cfg()
    (batch,) = _batches(sources, {"a": 1.0, "b": 1.0}, cfg, 1, global_batch_size=6)
    assert batch["frames"].shape == (6, 3, 16, 20, 3) and batch["frames"].dtype == np.uint8
    assert batch["masks"].shape == (6, 3, 16, 20) and batch["masks"].dtype == np.uint8
    assert batch["object_valid"].shape == (6, 2) and batch["object_valid"].dtype == bool
    assert batch["num_objects"].shape == (6,) and batch["num_objects"].dtype == np.int32
    for i in range(6):
        num = int(batch["num_objects"][i])
        assert 1 <= num <= 2
        np.testing.assert_array_equal(batch["object_valid"][i], np.arange(2) < num)
        assert set(np.unique(batch["masks"][i]).tolist()) <= set(range(num + 1))
        assert set(np.unique(batch["masks"][i, 0]).tolist()) == set(range(num + 1))  # all chosen in frame 1


def test_clip_is_relabelled_consecutive_frames_of_its_video(sources):
    cfg = _cfg(augment=False)
    batches = _batches(sources, {"a": 1.0, "b": 1.0}, cfg, 2)
    names = sorted(sources)
    for batch in batches:
        for i in range(4):
            src = sources[names[batch["dataset_index"][i]]]
            v = int(batch["video_index"][i])
            frames = batch["frames"][i]
            t = frames[:, 0, 0, 0].astype(int) // 10  # frame number written in the red channel
            np.testing.assert_array_equal(np.diff(t), 1)  # max_skip = 1: consecutive
            raw_frames, raw_masks = src.load(v, t)
            np.testing.assert_array_equal(frames, raw_frames)  # identity augmentation
            out = batch["masks"][i]
            pairs = set(zip(raw_masks.ravel().tolist(), out.ravel().tolist()))
            mapping = dict(pairs)
            assert len(mapping) == len(pairs), "one original id went to two labels"
            labels = [mapping[o] for o in mapping if mapping[o] > 0]
            assert sorted(labels) == list(range(1, batch["num_objects"][i] + 1))
            assert mapping.get(0, 0) == 0
            chosen = [o for o in mapping if mapping[o] > 0]
            assert set(chosen) <= set(np.unique(raw_masks[0]).tolist()) - {0}
            assert len(chosen) == min(2, len(np.unique(raw_masks[0])) - 1)


def test_same_seed_same_batches_resume_and_other_seed(sources):
    cfg = _cfg()
    weights = {"a": 1.0, "b": 2.0}
    full = _batches(sources, weights, cfg, 4, seed=7)
    _assert_equal_batches(full, _batches(sources, weights, cfg, 4, seed=7))
    _assert_equal_batches(full[2:], _batches(sources, weights, cfg, 2, seed=7, start_step=2))
    other = _batches(sources, weights, cfg, 1, seed=8)
    assert not np.array_equal(other[0]["frames"], full[0]["frames"])


def test_processes_produce_disjoint_halves_of_the_global_batch(sources):
    cfg = _cfg()
    weights = {"a": 1.0, "b": 1.0}
    whole = _batches(sources, weights, cfg, 2, seed=3, start_step=5)
    halves = [_batches(sources, weights, cfg, 2, seed=3, start_step=5, process_index=p, process_count=2)
              for p in range(2)]
    for step in range(2):
        assert halves[0][step]["frames"].shape[0] == 2
        for k in whole[step]:
            joined = np.concatenate([halves[0][step][k], halves[1][step][k]])
            np.testing.assert_array_equal(joined, whole[step][k], err_msg=k)
        assert not np.array_equal(halves[0][step]["frames"], halves[1][step]["frames"])


def test_mixing_weights_are_honoured():
    # Tiny clips: 2000 draws cost little. P(b) = 3 / 4.
    srcs = {"a": _source("a", 2, num_frames=3, h=8, w=8), "b": _source("b", 3, num_frames=3, h=8, w=8)}
    cfg = _cfg(clip_length=2)
    cfg.crop_size = (8, 8)
    batches = _batches(srcs, {"a": 1.0, "b": 3.0}, cfg, 10, global_batch_size=200)
    chosen = np.concatenate([b["dataset_index"] for b in batches])
    video = np.concatenate([b["video_index"] for b in batches])
    n, p = chosen.size, 0.75
    assert n == 2000
    assert abs((chosen == 1).sum() - n * p) <= 4 * np.sqrt(n * p * (1 - p))
    # Within a dataset videos are uniform: each of b's 3 videos gets 1/3 of b's draws.
    nb = int((chosen == 1).sum())
    for v in range(3):
        assert abs((video[chosen == 1] == v).sum() - nb / 3) <= 4 * np.sqrt(nb * (1 / 3) * (2 / 3))


def test_protocol_presets_and_five_to_one():
    assert protocol_datasets("1") == {"davis2017": 1.0} == protocol_datasets("3-1")
    assert set(protocol_datasets("3-pretrain")) == {"static_images"}
    w = protocol_datasets("2")
    assert w == protocol_datasets("3-2")
    # Per-video probability weight / num_videos: a DAVIS video (60) 5x a YouTube-VOS one (3471).
    assert w["davis2017"] / 60 == pytest.approx(5 * w["youtube_vos2018"] / 3471)
    with pytest.raises(ValueError, match="unknown training protocol"):
        protocol_datasets("4")
    srcs = {"davis2017": _source("d", 2), "youtube_vos2018": _source("y", 6)}
    assert pipeline.weights_from_repeats({"davis2017": 5, "youtube_vos2018": 1}, srcs) == {
        "davis2017": 10.0, "youtube_vos2018": 6.0}


def test_static_images_become_moving_clips():
    images = {"s": _source("s", 3, num_frames=1)}  # one-frame "videos" (ImageMaskFolderSource)
    cfg = _cfg(clip_length=4)
    cfg.augment.static.rotation_deg, cfg.augment.static.translate = 20.0, 0.1
    (batch,) = _batches(images, {"s": 1.0}, cfg, 1)
    assert batch["frames"].shape == (4, 4, 16, 20, 3)
    for i in range(4):
        assert batch["num_objects"][i] >= 1
        for t, u in itertools.combinations(range(4), 2):
            assert not np.array_equal(batch["masks"][i, t], batch["masks"][i, u])


def test_empty_first_frames_are_redrawn_and_short_videos_stretched():
    # Objects appear only from frame 4 of 6: with consecutive frames every clip starts at 4 or later.
    late = {"late": _source("late", 2, num_frames=6, empty_until=4), "short": _source("short", 1, num_frames=2)}
    cfg = _cfg(augment=False, clip_length=2)
    batches = _batches(late, {"late": 1.0, "short": 1.0}, cfg, 3, global_batch_size=8)
    for batch in batches:
        t0 = batch["frames"][:, 0, 0, 0, 0].astype(int) // 10
        assert np.all(batch["num_objects"] >= 1)
        assert np.all(t0[batch["dataset_index"] == 0] >= 4)
    cfg = _cfg(augment=False, clip_length=5)  # 2-frame video into 5-frame clips
    (batch,) = _batches({"short": _source("short", 1, num_frames=2)}, {"short": 1.0}, cfg, 1)
    t = batch["frames"][:, :, 0, 0, 0].astype(int) // 10
    assert np.all(np.diff(t, axis=1) >= 0) and np.all(t[:, 0] == 0) and np.all(t[:, -1] == 1)


def test_bad_inputs_raise_clear_errors(sources):
    cfg = _cfg()
    with pytest.raises(ValueError, match="unknown dataset"):
        pipeline.make_train_iterator(sources, {"a": 1.0, "b": 1.0, "c": 1.0}, cfg, global_batch_size=4, seed=0)
    with pytest.raises(ValueError, match="> 0"):
        pipeline.make_train_iterator(sources, {"a": 1.0, "b": 0.0}, cfg, global_batch_size=4, seed=0)
    with pytest.raises(ValueError, match="no mixing weight"):
        pipeline.make_train_iterator(sources, {"a": 1.0}, cfg, global_batch_size=4, seed=0)
    empty = {"e": ArrayVideoSource("e", [("v", np.zeros((3, 8, 8, 3), np.uint8), np.zeros((3, 8, 8), np.uint8))])}
    with pytest.raises(ValueError, match="no usable video"):
        pipeline.make_train_iterator(empty, {"e": 1.0}, cfg, global_batch_size=4, seed=0)
    with pytest.raises(ValueError, match="multiple of process_count"):
        pipeline.make_train_iterator(sources, {"a": 1.0, "b": 1.0}, cfg, global_batch_size=5, seed=0,
                                     process_count=2)
    with pytest.raises(ValueError, match="seed"):
        pipeline.make_train_iterator(sources, {"a": 1.0, "b": 1.0}, cfg, global_batch_size=4, seed=-1)
