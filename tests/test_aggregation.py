"""Soft aggregation (STM) against a NumPy loop reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from munet_jax.models.aggregation import aggregate_probs, soft_aggregate

# STM's clamp bounds as float32 holds them: 1 - 1e-7 rounds to 1 - 2^-23 in float32.
LO, HI = float(np.float32(1e-7)), float(np.float32(1 - 1e-7))


def _numpy_soft_aggregation(fg, valid):
    """fg [B, K, H, W], valid [B, K] -> (logits of the kept channels, probs [B, H, W, K+1]).

    Per frame: keep only the valid objects, build STM's em = [prod(1 - p), p...],
    clamp, log-odds, softmax over the kept channels; dropped objects get prob 0.
    """
    b, k, h, w = fg.shape
    probs = np.zeros((b, h, w, k + 1))
    logits = {}
    for i in range(b):
        kept = [j for j in range(k) if valid[i, j]]
        bg = np.ones((h, w), np.float64)
        for j in kept:
            bg = bg * (1.0 - fg[i, j].astype(np.float64))
        em = np.stack([bg] + [fg[i, j].astype(np.float64) for j in kept])
        em = np.clip(em, LO, HI)
        logit = np.log(em / (1 - em))
        e = np.exp(logit - logit.max(axis=0))
        sm = e / e.sum(axis=0)
        probs[i, ..., 0] = sm[0]
        for n, j in enumerate(kept):
            probs[i, ..., j + 1] = sm[n + 1]
        logits[i] = (kept, logit)
    return logits, probs


def test_matches_numpy_reference_on_random_inputs():
    rng = np.random.default_rng(0)
    fg = rng.uniform(size=(3, 4, 5, 6)).astype(np.float32)
    fg[0, 0, 0, :3] = [0.0, 1.0, 0.5]  # the clamp matters at the extremes
    valid = np.array([[True, True, False, True], [True, False, False, False], [False, True, True, True]])
    got_logits = np.asarray(soft_aggregate(fg, valid))
    got = np.asarray(aggregate_probs(fg, valid))
    ref_logits, ref = _numpy_soft_aggregation(fg, valid)
    assert got_logits.shape == (3, 5, 6, 5)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)
    for i, (kept, logit) in ref_logits.items():
        channels = [0] + [j + 1 for j in kept]
        np.testing.assert_allclose(np.moveaxis(got_logits[i][..., channels], -1, 0), logit, rtol=1e-4, atol=1e-4)


def test_sums_to_one_and_invalid_objects_get_zero():
    rng = np.random.default_rng(1)
    fg = rng.uniform(size=(2, 3, 4, 4)).astype(np.float32)
    fg[0, 1] = 1.0  # a padded slot claiming every pixel must not matter
    valid = np.array([[True, False, True], [False, False, True]])
    probs = np.asarray(aggregate_probs(fg, valid))
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
    assert probs[0, ..., 2].max() < 1e-20 and probs[1, ..., 1:3].max() < 1e-20
    # Changing a padded slot's probabilities changes nothing.
    fg2 = fg.copy()
    fg2[0, 1] = 0.0
    np.testing.assert_array_equal(np.asarray(aggregate_probs(fg2, valid)), probs)


def test_one_object_background_is_one_minus_p():
    p = np.linspace(0.0, 1.0, 12, dtype=np.float32).reshape(1, 1, 3, 4)
    logits = np.asarray(soft_aggregate(p, np.ones((1, 1), bool)))
    q = np.clip(p[0, 0].astype(np.float64), LO, HI)
    # bg probability is 1 - p (then clamped on its own): its log-odds are minus the object's.
    bg = np.clip(1.0 - p[0, 0].astype(np.float64), LO, HI)
    np.testing.assert_allclose(logits[0, ..., 0], np.log(bg / (1 - bg)), rtol=1e-4, atol=2e-4)
    np.testing.assert_allclose(logits[0, 1:-1, 1:-1, 0], -logits[0, 1:-1, 1:-1, 1], rtol=1e-4, atol=2e-4)
    np.testing.assert_allclose(logits[0, ..., 1], np.log(q / (1 - q)), rtol=1e-4, atol=2e-4)
    # Softmax of [-l, l] with l = logit(p): p^2 / (p^2 + (1-p)^2), STM's behaviour for one object.
    probs = np.asarray(aggregate_probs(p, np.ones((1, 1), bool)))
    np.testing.assert_allclose(probs[0, ..., 1], q**2 / (q**2 + bg**2), rtol=1e-4, atol=1e-6)


def test_gradient_is_finite_and_zero_for_padded_slots():
    rng = np.random.default_rng(2)
    fg = rng.uniform(size=(1, 2, 3, 3)).astype(np.float32)
    fg[0, 0, 0, 0] = 1.0
    valid = np.array([[True, False]])
    g = np.asarray(jax.grad(lambda f: jnp.sum(aggregate_probs(f, valid)[..., 1] ** 2))(fg))
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(g[0, 1], 0.0)
    assert np.abs(g[0, 0]).sum() > 0


def test_rejects_bad_object_valid():
    fg = np.zeros((1, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="object_valid"):
        soft_aggregate(fg, np.ones((1, 3), bool))
    with pytest.raises(ValueError, match="bool"):
        soft_aggregate(fg, np.ones((1, 2), np.int32))
