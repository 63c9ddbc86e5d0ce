"""Key/value embedding and space-time memory read against loop references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from munet_jax.models import memory
from munet_jax.models.memory import (KeyValue, filled_slot_counts, frames_per_block, memory_read,
                                     memory_read_with_weights, query_rows_per_block, resolved_algorithm)

# The ways to compute the read; block_bytes=1 makes every memory frame its own block,
# query_block_bytes=1 the smallest query blocks (16 rows).
ALGORITHMS = pytest.mark.parametrize("how", [dict(algorithm="dense"), dict(algorithm="blocked", block_bytes=1),
                                             dict(algorithm="query_blocked", query_block_bytes=1)],
                                     ids=["dense", "blocked", "query_blocked"])


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _attention_loops(keys, values, q_key, q_value):
    """One frame, one batch element, written with explicit loops.

    keys [N, Ck], values [N, Cv] (memory pixels), q_key [M, Ck], q_value [M, Cv]
    -> weights [N, M], out [M, 2 Cv].
    """
    n, ck = keys.shape
    m = q_key.shape[0]
    scores = np.zeros((n, m), np.float64)
    for i in range(n):
        for j in range(m):
            scores[i, j] = sum(float(keys[i, c]) * float(q_key[j, c]) for c in range(ck)) / np.sqrt(ck)
    weights = np.zeros_like(scores)
    for j in range(m):
        col = np.exp(scores[:, j] - scores[:, j].max())
        weights[:, j] = col / col.sum()
    read = np.zeros((m, values.shape[1]))
    for j in range(m):
        for i in range(n):
            read[j] += weights[i, j] * values[i]
    return weights, np.concatenate([read, q_value], axis=-1)


def test_one_frame_matches_hand_computed_attention():
    rng = np.random.default_rng(0)
    h, w, ck, cv = 2, 3, 4, 3
    mk, mv = _rand(rng, 1, 1, h, w, ck), _rand(rng, 1, 1, h, w, cv)
    qk, qv = _rand(rng, 1, h, w, ck), _rand(rng, 1, h, w, cv)
    out, weights = memory_read_with_weights(mk, mv, np.ones((1, 1), bool), qk, qv)
    ref_w, ref_out = _attention_loops(
        mk.reshape(h * w, ck), mv.reshape(h * w, cv), qk.reshape(h * w, ck), qv.reshape(h * w, cv)
    )
    assert out.shape == (1, h, w, 2 * cv)
    np.testing.assert_allclose(np.asarray(out).reshape(h * w, 2 * cv), ref_out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(weights).reshape(h * w, h * w), ref_w, rtol=1e-5, atol=1e-7)


@ALGORITHMS
def test_softmax_runs_over_all_frames_and_pixels(how):
    """Two frames: the weights are one softmax over both frames' pixels (not per frame)."""
    rng = np.random.default_rng(1)
    h, w, ck, cv = 2, 2, 3, 2
    mk, mv = _rand(rng, 1, 2, h, w, ck), _rand(rng, 1, 2, h, w, cv)
    qk, qv = _rand(rng, 1, h, w, ck), _rand(rng, 1, h, w, cv)
    out = memory_read(mk, mv, np.ones((1, 2), bool), qk, qv, **how)
    _, ref = _attention_loops(
        mk.reshape(2 * h * w, ck), mv.reshape(2 * h * w, cv), qk.reshape(h * w, ck), qv.reshape(h * w, cv)
    )
    np.testing.assert_allclose(np.asarray(out).reshape(h * w, 2 * cv), ref, rtol=1e-5, atol=1e-6)


@ALGORITHMS
def test_invalid_slots_have_no_effect(how):
    rng = np.random.default_rng(2)
    b, t, h, w, ck, cv = 2, 4, 2, 3, 8, 5
    mk, mv = _rand(rng, b, t, h, w, ck), _rand(rng, b, t, h, w, cv)
    qk, qv = _rand(rng, b, h, w, ck), _rand(rng, b, h, w, cv)
    valid = np.array([[True, False, True, False], [False, True, True, True]])
    # Garbage in the empty slots: huge values, an inf and a NaN.
    mk_bad, mv_bad = mk.copy(), mv.copy()
    mk_bad[~valid] = 1e4 * _rand(rng, int((~valid).sum()), h, w, ck)
    mv_bad[~valid] = 1e6 * _rand(rng, int((~valid).sum()), h, w, cv)
    mk_bad[0, 1, 0, 0, 0] = np.inf
    mv_bad[1, 0, 1, 1, 2] = np.nan
    out = np.asarray(memory_read(mk_bad, mv_bad, valid, qk, qv, **how))
    assert np.all(np.isfinite(out))
    for i in range(b):  # the same read with the empty slots dropped
        keep = valid[i]
        ref = memory_read(
            mk[i : i + 1, keep], mv[i : i + 1, keep], np.ones((1, keep.sum()), bool), qk[i : i + 1], qv[i : i + 1]
        )
        np.testing.assert_allclose(out[i], np.asarray(ref)[0], rtol=1e-6, atol=1e-6)
    # ...and the gradients: the garbage reaches no input's gradient (no 0 * inf or 0 * NaN).
    mk_bad[1, 0, 0, 0, 1] = np.nan
    grads = jax.grad(lambda k, v, q: jnp.sum(memory_read(k, v, valid, q, qv, **how) ** 2),
                     argnums=(0, 1, 2))(mk_bad, mv_bad, qk)
    want = jax.grad(lambda k, v, q: jnp.sum(memory_read(k, v, valid, q, qv, **how) ** 2),
                    argnums=(0, 1, 2))(mk, mv, qk)
    for got, ref in zip(grads, want):
        assert np.all(np.isfinite(np.asarray(got)))
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-6)


@ALGORITHMS
def test_all_invalid_reads_zeros_and_has_finite_gradient(how):
    rng = np.random.default_rng(3)
    mk, mv = _rand(rng, 2, 2, 2, 2, 4), _rand(rng, 2, 2, 2, 2, 3)
    qk, qv = _rand(rng, 2, 2, 2, 4), _rand(rng, 2, 2, 2, 3)
    valid = np.array([[False, False], [True, False]])
    out = np.asarray(memory_read(mk, mv, valid, qk, qv, **how))
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[0, ..., :3], 0.0)  # read part of the empty row
    np.testing.assert_array_equal(out[0, ..., 3:], qv[0])  # query value passed through
    assert np.abs(out[1, ..., :3]).sum() > 0

    grads = jax.grad(lambda k, v, q: jnp.sum(memory_read(k, v, valid, q, qv, **how) ** 2), argnums=(0, 1, 2))(mk, mv, qk)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
    np.testing.assert_array_equal(np.asarray(grads[0])[~valid], 0.0)  # no gradient into empty slots


def test_bfloat16_close_to_float32():
    rng = np.random.default_rng(4)
    b, t, h, w, ck, cv = 1, 3, 4, 4, 16, 8
    args = [_rand(rng, b, t, h, w, ck), _rand(rng, b, t, h, w, cv), np.ones((b, t), bool)]
    q = [_rand(rng, b, h, w, ck), _rand(rng, b, h, w, cv)]
    ref = np.asarray(memory_read(*args, *q))
    bf = [jnp.asarray(x, jnp.bfloat16) for x in (args[0], args[1], q[0], q[1])]
    out, weights = memory_read_with_weights(bf[0], bf[1], args[2], bf[2], bf[3])
    assert out.dtype == jnp.bfloat16 and weights.dtype == jnp.float32
    out = np.asarray(out, np.float32)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, ref, atol=0.08, rtol=0.05)
    np.testing.assert_allclose(np.asarray(weights).sum(axis=(1, 2, 3)), 1.0, rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_blocked_read_equals_dense_read_and_its_gradients(dtype):
    """Several blocks of 1, 2 and 3 frames (block_bytes sized from one frame's logits), a
    slot invalid in one row and a row whose first block is all invalid: values and the
    gradients of a loss through the read agree with the dense read."""
    rng = np.random.default_rng(5)
    b, t, h, w, ck, cv = 3, 6, 3, 4, 8, 5
    per_frame = (h * w) * (h * w) * 4  # bytes of one memory frame's float32 logits
    mk, mv = _rand(rng, b, t, h, w, ck), _rand(rng, b, t, h, w, cv)
    qk, qv = _rand(rng, b, h, w, ck), _rand(rng, b, h, w, cv)
    valid = np.ones((b, t), bool)
    valid[1, 3] = False
    valid[2, :3] = False
    cast = [jnp.asarray(x, dtype) for x in (mk, mv, qk, qv)]
    cotangent = _rand(rng, b, h, w, 2 * cv)

    def loss(how):
        return lambda k, v, q: jnp.sum(memory_read(k, v, valid, q, cast[3], **how).astype(jnp.float32) * cotangent)

    dense_value, dense_grads = jax.value_and_grad(loss(dict(algorithm="dense")), argnums=(0, 1, 2))(*cast[:3])
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=0.05, atol=0.05)
    for g in (1, 2, 3):
        assert frames_per_block(t, h * w, h * w, g * per_frame) == g
        how = dict(algorithm="blocked", block_bytes=g * per_frame)
        out = memory_read(cast[0], cast[1], valid, cast[2], cast[3], **how)
        ref = memory_read(cast[0], cast[1], valid, cast[2], cast[3], algorithm="dense")
        assert out.dtype == dtype
        np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), **tol)
        value, grads = jax.value_and_grad(loss(how), argnums=(0, 1, 2))(*cast[:3])
        np.testing.assert_allclose(float(value), float(dense_value), rtol=1e-4 if dtype == jnp.float32 else 0.02)
        for got, want in zip(grads, dense_grads):
            np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), **tol)


@pytest.mark.parametrize("values_per_block", [True, False], ids=["values_per_block", "one_values_gemm"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_query_blocked_read_equals_dense_read_and_its_gradients(dtype, values_per_block, monkeypatch):
    """35 query pixels in two blocks of 32 rows (the last padded with 29), NaN in an
    empty slot's keys and values, a slot invalid in one row and a row with no valid
    slot: values and gradients agree with the dense read, for both ways of reading
    the values (a GEMM per block, or one GEMM over the gathered blocks)."""
    monkeypatch.setattr(memory, "VALUES_PER_BLOCK_MAX_BYTES", 2**30 if values_per_block else 0)
    rng = np.random.default_rng(9)
    b, t, h, w, ck, cv = 3, 4, 5, 7, 8, 5
    block_bytes = 18 * (t * h * w) * 4  # 18 rows of float32 logits over all 140 positions
    assert query_rows_per_block(h * w, t * h * w, block_bytes) == 32  # 2 blocks of 18 -> 32 rows
    assert query_rows_per_block(h * w, t * h * w, 16 * (t * h * w) * 4) == 16  # 3 blocks of 12 -> 16 rows
    mk, mv = _rand(rng, b, t, h, w, ck), _rand(rng, b, t, h, w, cv)
    qk, qv = _rand(rng, b, h, w, ck), _rand(rng, b, h, w, cv)
    valid = np.ones((b, t), bool)
    valid[0, 2] = False
    mk[0, 2], mv[0, 2] = np.nan, np.nan  # whatever an empty slot holds has no effect
    valid[2, :] = False  # reads zeros
    cast = [jnp.asarray(x, dtype) for x in (mk, mv, qk, qv)]
    cotangent = _rand(rng, b, h, w, 2 * cv)
    how = dict(algorithm="query_blocked", query_block_bytes=block_bytes)

    def loss(how):
        return lambda k, v, q: jnp.sum(memory_read(k, v, valid, q, cast[3], **how).astype(jnp.float32) * cotangent)

    jaxpr = str(jax.make_jaxpr(lambda *a: memory_read(*a, **how))(cast[0], cast[1], valid, cast[2], cast[3]))
    assert "length=3" in jaxpr and "length=2" in jaxpr  # a loop over the 3 batch elements, in each 2 blocks
    out = memory_read(cast[0], cast[1], valid, cast[2], cast[3], **how)
    ref = memory_read(cast[0], cast[1], valid, cast[2], cast[3], algorithm="dense")
    assert out.dtype == dtype
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=0.02, atol=0.02)
    assert np.all(np.isfinite(np.asarray(out, np.float32)))
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), **tol)
    np.testing.assert_array_equal(np.asarray(out, np.float32)[2, ..., :cv], 0.0)
    dense_value, dense_grads = jax.value_and_grad(loss(dict(algorithm="dense")), argnums=(0, 1, 2))(*cast[:3])
    value, grads = jax.value_and_grad(loss(how), argnums=(0, 1, 2))(*cast[:3])
    np.testing.assert_allclose(float(value), float(dense_value), rtol=1e-4 if dtype == jnp.float32 else 0.02)
    for got, want in zip(grads, dense_grads):
        assert np.all(np.isfinite(np.asarray(got, np.float32)))
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), **tol)
    np.testing.assert_array_equal(np.asarray(grads[0], np.float32)[0, 2], 0.0)  # no gradient into an empty slot


@pytest.mark.parametrize("algorithm", ["dense", "blocked", "query_blocked"])
def test_reading_only_the_filled_slots_changes_nothing(algorithm):
    """Slots filled at 0, 3, 5, 7 / at 0, 1 / none of 9 (NaN in the empty ones): reading only
    the filled ones (gathered to the front; the read of 5 of the 9 slots, the smallest count
    that holds the 4 of the fullest element) gives the values and gradients of the read over
    all 9."""
    rng = np.random.default_rng(11)
    b, t, h, w, ck, cv = 3, 9, 3, 4, 8, 5
    mk, mv = _rand(rng, b, t, h, w, ck), _rand(rng, b, t, h, w, cv)
    qk, qv = _rand(rng, b, h, w, ck), _rand(rng, b, h, w, cv)
    valid = np.zeros((b, t), bool)
    valid[0, [0, 3, 5, 7]] = True
    valid[1, [0, 1]] = True
    mk[~valid] = np.nan
    mv[~valid] = np.nan
    assert filled_slot_counts(t) == [3, 5, 7, 9] and filled_slot_counts(20) == [5, 10, 15, 20]
    cotangent = _rand(rng, b, h, w, 2 * cv)
    block = dict(blocked=dict(block_bytes=1), query_blocked=dict(query_block_bytes=1)).get(algorithm, {})

    def loss(skip):
        return lambda k, v, q: jnp.sum(memory_read(k, v, valid, q, qv, algorithm=algorithm, skip_empty_slots=skip,
                                                   **block) * cotangent)

    full_value, full_grads = jax.value_and_grad(loss(False), argnums=(0, 1, 2))(mk, mv, qk)
    value, grads = jax.value_and_grad(loss(True), argnums=(0, 1, 2))(mk, mv, qk)
    np.testing.assert_allclose(float(value), float(full_value), rtol=1e-5)
    for got, want in zip(grads, full_grads):
        got, want = np.asarray(got), np.asarray(want)
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(grads[0])[~valid], 0.0)
    out = np.asarray(memory_read(mk, mv, valid, qk, qv, algorithm=algorithm, skip_empty_slots=True, **block))
    np.testing.assert_array_equal(out[2, ..., :cv], 0.0)  # no filled slot: reads zeros

    # One branch per count, each reading [B, m, h, w, Ck] keys.
    text = str(jax.make_jaxpr(lambda k, v, q: memory_read(k, v, valid, q, qv, algorithm=algorithm,
                                                            skip_empty_slots=True))(mk, mv, qk))
    assert "switch" in text or "cond" in text
    for m in filled_slot_counts(t):
        assert f"{b},{m},{h},{w},{ck}" in text.replace(" ", "")  # a branch reads [B, m, h, w, Ck] keys


def test_skip_empty_slots_default():
    rng = np.random.default_rng(12)
    mk8, mv8 = _rand(rng, 1, 8, 2, 2, 4), _rand(rng, 1, 8, 2, 2, 3)
    qk, qv = _rand(rng, 1, 2, 2, 4), _rand(rng, 1, 2, 2, 3)

    def switches(mk, mv, **how):
        text = str(jax.make_jaxpr(lambda *a: memory_read(*a, **how))(mk, mv, np.ones(mk.shape[:2], bool), qk, qv))
        return "cond" in text or "switch" in text

    cpu = jax.default_backend() == "cpu"
    assert switches(mk8, mv8) == cpu  # 8 slots (the engine's bank has 20), 'auto': skipped on CPU
    assert not switches(mk8[:, :7], mv8[:, :7])  # 7 slots (training clips): always all read
    assert not switches(mk8, mv8, algorithm="dense")  # a named read computes exactly that
    assert switches(mk8[:, :7], mv8[:, :7], algorithm="dense", skip_empty_slots=True)


def test_query_rows_per_block():
    # 480p (1620 queries): 5 memory frames (52.5 MB of logits) -> 7 blocks of 232 -> 240 rows;
    # 20 frames (210 MB) -> 26 blocks of 63 -> 64 rows; one frame (10.5 MB) -> 2 blocks -> 816.
    assert query_rows_per_block(1620, 5 * 1620) == 240
    assert query_rows_per_block(1620, 20 * 1620) == 64
    assert query_rows_per_block(1620, 1620) == 816
    assert query_rows_per_block(405, 5 * 405) == 405  # 240x432, 3.3 MB: one block of all queries
    assert query_rows_per_block(10, 10**9) == 10  # 1 row a block, rounded up to 16, capped at HW: one block


def test_frames_per_block_and_when_auto_loops():
    # 480p (30x54 positions, every frame 10.5 MB of logits): one frame a block, T blocks.
    assert frames_per_block(20, 1620, 1620) == 1
    # 240x432 (15x27, 0.66 MB a frame): the largest divisor of 20 within 4 MiB is 5.
    assert frames_per_block(20, 405, 405) == 5
    assert frames_per_block(7, 405, 405) == 1  # 7 is prime and 7 frames exceed the block
    assert frames_per_block(4, 16, 16) == 4  # small maps: all in one block
    cpu = jax.default_backend() == "cpu"
    # 'auto', float32: blocked on CPU for several blocks of narrow keys + values (the tiny model's 16 + 32)...
    assert resolved_algorithm("auto", 20, 1620, 1620, 48) == ("blocked" if cpu else "dense")
    # ...dense for one block, or for the full model's 128 + 512 channels (no faster in its frame).
    assert resolved_algorithm("auto", 4, 16, 16, 48) == "dense"
    assert resolved_algorithm("auto", 20, 1620, 1620, 640) == "dense"
    assert resolved_algorithm("blocked", 1, 1, 1, 640) == "blocked"
    # bfloat16 keys/values: the query-blocked read on CPU, whatever the size or channels.
    for shape in ((20, 1620, 1620, 640), (4, 16, 16, 48), (1, 1, 1, 640)):
        assert resolved_algorithm("auto", *shape, dtype=jnp.bfloat16) == ("query_blocked" if cpu else "dense")
    assert resolved_algorithm("dense", 20, 1620, 1620, 640, dtype=jnp.bfloat16) == "dense"
    rng = np.random.default_rng(6)
    mk, mv = _rand(rng, 1, 4, 4, 4, 8), _rand(rng, 1, 4, 4, 4, 8)
    qk, qv = _rand(rng, 1, 4, 4, 8), _rand(rng, 1, 4, 4, 8)
    valid = np.ones((1, 4), bool)

    def loops(**how):
        text = str(jax.make_jaxpr(lambda *a: memory_read(*a, **how))(mk, mv, valid, qk, qv))
        return "scan" in text

    assert not loops()  # 4 frames of 16 x 16 logits: one block, the dense read
    assert loops(block_bytes=16 * 16 * 4) == (jax.default_backend() == "cpu")  # four blocks: a loop on CPU
    assert not loops(algorithm="dense", block_bytes=1)
    assert loops(algorithm="blocked")
    assert loops(algorithm="query_blocked")
    bf = [jnp.asarray(x, jnp.bfloat16) for x in (mk, mv, qk, qv)]
    text = str(jax.make_jaxpr(lambda *a: memory_read(*a))(bf[0], bf[1], valid, bf[2], bf[3]))
    assert ("scan" in text) == cpu  # bfloat16 on CPU: the query-blocked read (one block here)
    with pytest.raises(ValueError, match="memory read algorithm 'flash'"):
        memory_read(mk, mv, valid, qk, qv, algorithm="flash")


def test_memory_read_rejects_bad_shapes():
    z = np.zeros
    with pytest.raises(ValueError, match="mem_valid"):
        memory_read(z((1, 2, 2, 2, 4)), z((1, 2, 2, 2, 3)), z((1, 3), bool), z((1, 2, 2, 4)), z((1, 2, 2, 3)))
    with pytest.raises(ValueError, match="bool"):
        memory_read(z((1, 2, 2, 2, 4)), z((1, 2, 2, 2, 3)), z((1, 2)), z((1, 2, 2, 4)), z((1, 2, 2, 3)))
    with pytest.raises(ValueError, match="key channels"):
        memory_read(z((1, 2, 2, 2, 4)), z((1, 2, 2, 2, 3)), z((1, 2), bool), z((1, 2, 2, 5)), z((1, 2, 2, 3)))


def test_key_value_is_two_3x3_convs_with_bias():
    rng = np.random.default_rng(5)
    x = _rand(rng, 2, 3, 4, 5, 6)  # extra leading axis: [B, K, H, W, C]
    mod = KeyValue(key_dim=3, value_dim=2)
    params = mod.init(jax.random.PRNGKey(0), x)["params"]
    assert params["key"]["kernel"].shape == (3, 3, 6, 3) and params["key"]["bias"].shape == (3,)
    assert params["value"]["kernel"].shape == (3, 3, 6, 2)
    params = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params)
    key, value = mod.apply({"params": params}, x)
    assert key.shape == (2, 3, 4, 5, 3) and value.shape == (2, 3, 4, 5, 2)

    # Reference: zero-pad by 1 and correlate (PyTorch Conv2d semantics), NumPy.
    def conv(img, kern, bias):  # img [H, W, C], kern [3, 3, C, O]
        pad = np.pad(img, ((1, 1), (1, 1), (0, 0)))
        out = np.zeros(img.shape[:2] + (kern.shape[-1],))
        for y in range(img.shape[0]):
            for xx in range(img.shape[1]):
                out[y, xx] = np.einsum("ijc,ijco->o", pad[y : y + 3, xx : xx + 3], kern) + bias
        return out

    for name, got in (("key", key), ("value", value)):
        ref = conv(x[1, 2], np.asarray(params[name]["kernel"]), np.asarray(params[name]["bias"]))
        np.testing.assert_allclose(np.asarray(got)[1, 2], ref, rtol=1e-4, atol=1e-4)
