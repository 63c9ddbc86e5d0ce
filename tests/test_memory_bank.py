"""The memory bank policy against a hand-traced table and a plain Python simulation.

No model here: keys/values are filled with the frame index, so where an entry
went can be read back from the data as well as from `frame_index`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from munet_jax.inference.memory_bank import EMPTY, empty_bank, pad_objects, write

H, W, CK, CV = 2, 3, 4, 5


def simulate(num_frames, capacity, permanent_flags):
    """Plain-Python policy: first frame kept; permanent frames in a list of at most
    capacity - 2 from which the smallest frame index is dropped when full; the previous
    frame in a temporary place unless it went to the permanent list. Returns, per
    frame, the sorted list of frame indices in memory."""
    first, permanent, temporary, held = None, [], None, []
    for t in range(num_frames):
        if first is None:
            first = t
        elif permanent_flags[t]:
            if len(permanent) == capacity - 2:
                permanent.remove(min(permanent))
            permanent.append(t)
            temporary = None
        else:
            temporary = t
        held.append(sorted([first] + permanent + ([] if temporary is None else [temporary])))
    return held


def make_writer(mem_every):
    """A jitted write whose `permanent` is a traced value computed from the frame index."""
    traces = []

    @jax.jit
    def write_frame(bank, t, object_valid, force):
        traces.append(1)
        k = bank.num_objects
        key = jnp.full((k, H, W, CK), t, jnp.float32)
        value = jnp.full((k, H, W, CV), -t, jnp.float32)
        permanent = jnp.logical_or(t % mem_every == 0, force)
        return write(bank, key, value, object_valid, t, permanent)

    return write_frame, traces


def check_contents(bank):
    """Each non-empty slot's key/value data is the frame it claims to hold."""
    frames = np.asarray(bank.frame_index)
    for s, f in enumerate(frames):
        if f != EMPTY:
            np.testing.assert_array_equal(np.asarray(bank.keys[:, s]), f)
            np.testing.assert_array_equal(np.asarray(bank.values[:, s]), -f)


def test_hand_traced_capacity4_mem_every2():
    # Slots [first, ring 1, ring 2, temporary] after each of 12 frames, traced by hand:
    # even frames are permanent and go to the ring (oldest replaced), odd frames to the
    # temporary slot, which a permanent write empties.
    expected = [
        [0, -1, -1, -1],
        [0, -1, -1, 1],
        [0, 2, -1, -1],
        [0, 2, -1, 3],
        [0, 2, 4, -1],
        [0, 2, 4, 5],
        [0, 6, 4, -1],
        [0, 6, 4, 7],
        [0, 6, 8, -1],
        [0, 6, 8, 9],
        [0, 10, 8, -1],
        [0, 10, 8, 11],
    ]
    write_frame, traces = make_writer(mem_every=2)
    bank = empty_bank(1, 4, (H, W), CK, CV)
    valid = jnp.ones((1,), bool)
    for t in range(12):
        bank = write_frame(bank, jnp.int32(t), valid, jnp.bool_(False))
        assert np.asarray(bank.frame_index).tolist() == expected[t], f"after frame {t}"
        assert np.asarray(bank.valid[0]).tolist() == [f != -1 for f in expected[t]]
        check_contents(bank)
    assert len(traces) == 1  # one program for every frame, permanent or not


@pytest.mark.parametrize("capacity,mem_every", [(3, 1), (5, 3), (7, 4)])
def test_policy_matches_simulation(capacity, mem_every):
    rng = np.random.default_rng(capacity)
    num_frames = 40
    force = rng.random(num_frames) < 0.15  # frames where a new object forces a permanent write
    flags = [(t % mem_every == 0) or bool(force[t]) for t in range(num_frames)]
    expected = simulate(num_frames, capacity, flags)
    write_frame, _ = make_writer(mem_every)
    bank = empty_bank(2, capacity, (H, W), CK, CV)
    valid = jnp.ones((2,), bool)
    for t in range(num_frames):
        bank = write_frame(bank, jnp.int32(t), valid, jnp.bool_(force[t]))
        frames = np.asarray(bank.frame_index)
        assert sorted(frames[frames != EMPTY].tolist()) == expected[t], f"after frame {t}"
        assert frames[0] == 0  # the first frame is never evicted
        check_contents(bank)


def test_validity_per_object():
    # Object 0 from frame 0, object 1 enters at frame 5, object 2 is a padded slot.
    entry = {0: 0, 1: 5}
    write_frame, _ = make_writer(mem_every=2)
    bank = empty_bank(3, 5, (H, W), CK, CV)
    for t in range(14):
        object_valid = jnp.asarray([t >= entry[0], t >= entry[1], False])
        bank = write_frame(bank, jnp.int32(t), object_valid, jnp.bool_(t == entry[1]))
        frames = np.asarray(bank.frame_index)
        valid = np.asarray(bank.valid)
        for k in range(3):
            for s, f in enumerate(frames):
                want = f != EMPTY and k in entry and f >= entry[k]
                assert valid[k, s] == want, f"frame {t}, object {k}, slot {s} (holds frame {f})"
        if t < entry[1]:
            assert not valid[1].any()
    # Frame 5 (object 1's annotation) was forced permanent; the ring of 3 then takes
    # 6, 8, 10, 12, so 5 is evicted at frame 10, like any other old entry.
    expected = simulate(14, 5, [(t % 2 == 0) or t == 5 for t in range(14)])[-1]
    assert sorted(frames[frames != EMPTY].tolist()) == expected


def test_state_size_is_fixed():
    write_frame, _ = make_writer(mem_every=3)
    bank = empty_bank(2, 6, (H, W), CK, CV)
    shapes = jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), bank)
    size = bank.nbytes()
    for t in range(30):
        bank = write_frame(bank, jnp.int32(t), jnp.ones((2,), bool), jnp.bool_(False))
        assert bank.nbytes() == size
    assert jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), bank) == shapes


def test_pad_objects_keeps_entries_and_adds_invalid_slots():
    write_frame, _ = make_writer(mem_every=2)
    bank = empty_bank(1, 4, (H, W), CK, CV)
    for t in range(3):
        bank = write_frame(bank, jnp.int32(t), jnp.ones((1,), bool), jnp.bool_(False))
    grown = pad_objects(bank, 4)
    assert grown.keys.shape[0] == 4 and grown.valid.shape == (4, 4)
    np.testing.assert_array_equal(np.asarray(grown.keys[:1]), np.asarray(bank.keys))
    np.testing.assert_array_equal(np.asarray(grown.valid[:1]), np.asarray(bank.valid))
    assert not np.asarray(grown.valid[1:]).any()
    np.testing.assert_array_equal(np.asarray(grown.frame_index), np.asarray(bank.frame_index))


def test_bad_arguments():
    with pytest.raises(ValueError, match="capacity=2"):
        empty_bank(1, 2, (H, W), CK, CV)
    bank = empty_bank(2, 4, (H, W), CK, CV)
    with pytest.raises(ValueError, match="key has shape"):
        write(bank, jnp.zeros((2, H + 1, W, CK)), jnp.zeros((2, H, W, CV)), jnp.ones(2, bool), 0, True)
    with pytest.raises(ValueError, match="object_valid has shape"):
        write(bank, jnp.zeros((2, H, W, CK)), jnp.zeros((2, H, W, CV)), jnp.ones(3, bool), 0, True)
