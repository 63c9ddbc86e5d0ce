"""Frame and object choice of training clips (munet_jax.data.clip_sampling)."""

import numpy as np
import pytest
import tensorflow as tf

from munet_jax.data import clip_sampling


def _rngs(count, seed=0):
    return [clip_sampling.example_rng(seed, step, 0) for step in range(count)]


@pytest.mark.parametrize("num_frames,length,max_skip", [(50, 6, 1), (50, 6, 3), (12, 6, 5), (6, 6, 4), (40, 1, 3)])
def test_positions_ordered_within_video_and_skip(num_frames, length, max_skip):
    gaps_seen, starts = set(), set()
    for rng in _rngs(300):
        pos = clip_sampling.sample_frame_positions(rng, num_frames, length, max_skip)
        assert pos.shape == (length,)
        assert pos.min() >= 0 and pos.max() < num_frames
        gaps = np.diff(pos)
        assert np.all(gaps >= 1) and np.all(gaps <= max_skip)
        gaps_seen.update(gaps.tolist())
        starts.add(int(pos[0]))
    # Gaps use the whole allowed range when the video is long enough for it.
    feasible = min(max_skip, (num_frames - 1) // max(length - 1, 1))
    if length > 1:
        assert gaps_seen == set(range(1, feasible + 1))
    # Starts vary; with consecutive frames both ends of the video are reachable.
    if max_skip == 1 and num_frames > length:
        assert 0 in starts and num_frames - length in starts


@pytest.mark.parametrize("num_frames,length", [(1, 6), (2, 6), (3, 6), (5, 6)])
def test_short_video_is_stretched_in_order(num_frames, length):
    pos = clip_sampling.sample_frame_positions(np.random.default_rng(0), num_frames, length, 3)
    assert pos.shape == (length,)
    assert np.all(np.diff(pos) >= 0) and np.all(np.diff(pos) <= 1)  # in order, nothing skipped
    assert set(pos.tolist()) == set(range(num_frames))  # every frame used


def test_only_annotated_frames_are_sampled():
    annotated = np.zeros(60, bool)
    annotated[::5] = True  # YouTube-VOS-like: every 5th frame annotated
    usable = np.flatnonzero(annotated)
    for rng in _rngs(200):
        idx = clip_sampling.sample_frame_indices(rng, annotated, 4, 2)
        assert annotated[idx].all()
        steps = np.diff(np.searchsorted(usable, idx))  # gaps counted in annotated frames
        assert np.all((steps >= 1) & (steps <= 2))


def test_bad_arguments():
    with pytest.raises(ValueError):
        clip_sampling.sample_frame_positions(np.random.default_rng(0), 0, 6, 1)
    with pytest.raises(ValueError):
        clip_sampling.sample_frame_positions(np.random.default_rng(0), 10, 6, 0)
    with pytest.raises(ValueError):
        clip_sampling.example_rng(-1, 0, 0)


def test_example_streams_are_keyed_by_seed_step_index():
    draw = lambda *a: clip_sampling.example_rng(*a).integers(1 << 30, size=4).tolist()  # noqa: E731
    assert draw(3, 7, 2) == draw(3, 7, 2)
    assert len({tuple(draw(*a)) for a in [(3, 7, 2), (4, 7, 2), (3, 8, 2), (3, 7, 3)]}) == 4
    assert not np.array_equal(clip_sampling.example_key(1, 2, 3), clip_sampling.example_key(1, 2, 4))


def _mask_with(ids_and_sizes, shape=(20, 20)):
    mask = np.zeros(shape, np.uint8).reshape(-1)
    start = 0
    for obj, size in ids_and_sizes:
        mask[start:start + size] = obj
        start += size
    return mask.reshape(shape)


def test_choose_objects_picks_present_ids_and_relabels():
    mask = _mask_with([(2, 30), (5, 40), (9, 25), (200, 10)])
    present = {2, 5, 9, 200}
    chosen_sets = set()
    for seed in range(40):
        lut, num = clip_sampling.choose_objects(tf.constant(mask), tf.constant([seed, 1], tf.int64), 2)
        lut = lut.numpy()
        assert int(num) == 2
        chosen = {i for i in range(256) if lut[i] > 0}
        assert chosen <= present and len(chosen) == 2
        assert sorted(lut[list(chosen)].tolist()) == [1, 2]
        chosen_sets.add(frozenset(chosen))
        relabelled = clip_sampling.relabel(tf.constant(mask), tf.constant(lut)).numpy()
        for obj in present:  # the relabelled mask is the independent per-id lookup
            expected = lut[obj] if obj in chosen else 0
            assert np.all(relabelled[mask == obj] == expected)
        assert np.all(relabelled[mask == 0] == 0)
    assert len(chosen_sets) >= 4  # the choice is random, not always the same pair


def test_choose_objects_all_when_fewer_than_k_and_min_pixels():
    mask = _mask_with([(3, 50), (7, 2)])
    lut, num = clip_sampling.choose_objects(tf.constant(mask), tf.constant([0, 0], tf.int64), 3)
    assert int(num) == 2 and sorted(lut.numpy()[[3, 7]].tolist()) == [1, 2]
    lut, num = clip_sampling.choose_objects(tf.constant(mask), tf.constant([0, 0], tf.int64), 3, min_pixels=5)
    assert int(num) == 1 and lut.numpy()[3] == 1 and lut.numpy()[7] == 0
    lut, num = clip_sampling.choose_objects(tf.zeros([8, 8], tf.uint8), tf.constant([0, 0], tf.int64), 3)
    assert int(num) == 0 and not lut.numpy().any()
