"""Losses of Eq. 4 and the Table 4 (b) variants against NumPy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from munet_jax.losses import (
    LOSS_KINDS,
    bootstrapped_cross_entropy,
    mask_iou_loss,
    num_hardest,
    segmentation_loss,
)
from munet_jax.models.aggregation import soft_aggregate


def _np_ce(logits, labels):
    """Per-pixel -log softmax[label], float64, via explicit normalisation."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    b, h, w = labels.shape
    out = np.zeros((b, h, w))
    for i in range(b):
        for y in range(h):
            for x in range(w):
                out[i, y, x] = -np.log(p[i, y, x, labels[i, y, x]])
    return out, p


def _np_bsce(logits, labels, fraction):
    ce, _ = _np_ce(logits, labels)
    per_frame = []
    for frame in ce:
        flat = np.sort(frame.ravel())[::-1]  # descending: hardest first
        k = math.ceil(round(fraction * flat.size, 6))
        per_frame.append(flat[:k].mean())
    return float(np.mean(per_frame))


def _np_iou(probs, labels, valid):
    losses = []
    b, _, _, c = probs.shape
    for i in range(b):
        for k in range(1, c):
            if not valid[i, k - 1]:
                continue
            m = (labels[i] == k).astype(np.float64)
            p = probs[i, ..., k].astype(np.float64)
            inter, union = np.minimum(m, p).sum(), np.maximum(m, p).sum()
            losses.append(0.0 if union == 0 else 1.0 - inter / union)
    return float(np.mean(losses)) if losses else 0.0


def _random_case(seed, b=2, h=5, w=6, k=3):
    rng = np.random.default_rng(seed)
    logits = (2.0 * rng.standard_normal((b, h, w, k + 1))).astype(np.float32)
    labels = rng.integers(0, k + 1, size=(b, h, w)).astype(np.int32)
    valid = np.ones((b, k), bool)
    valid[1, 2] = False
    labels[1][labels[1] == 3] = 0  # a padded object is never labelled
    return logits, labels, valid


def test_num_hardest_rounds_up():
    assert num_hardest(10, 0.4) == 4
    assert num_hardest(9, 0.4) == 4  # 3.6 -> 4
    assert num_hardest(10, 0.7) == 7  # 0.7 * 10 = 7.000000000000001 in floats
    assert num_hardest(3, 0.01) == 1
    assert num_hardest(7, 1.0) == 7
    for bad in (0.0, 1.5, -0.1, True):
        with pytest.raises(ValueError, match="top_fraction"):
            num_hardest(10, bad)


def test_bsce_hand_made_frame():
    """10 pixels, 2 classes, all labelled background; logit of the wrong class a -> CE log(1 + e^a)."""
    a = np.array([3.0, -2.0, 5.0, 0.0, -1.0, 2.0, -3.0, 4.0, 1.0, -4.0], np.float32)
    logits = np.stack([np.zeros_like(a), a], axis=-1).reshape(1, 2, 5, 2)
    labels = np.zeros((1, 2, 5), np.int32)
    hardest = [5.0, 4.0, 3.0, 2.0]  # top 40% = 4 pixels
    want = np.mean([math.log1p(math.exp(v)) for v in hardest])
    got = float(bootstrapped_cross_entropy(logits, labels, 0.4))
    assert got == pytest.approx(want, rel=1e-5)
    # Per frame, then over frames: a second, easy frame halves the mean.
    easy = np.stack([np.zeros_like(a), np.full_like(a, -30.0)], -1).reshape(1, 2, 5, 2)
    got2 = float(bootstrapped_cross_entropy(np.concatenate([logits, easy]), np.zeros((2, 2, 5), np.int32), 0.4))
    assert got2 == pytest.approx(want / 2, rel=1e-4)


@pytest.mark.parametrize("fraction", [0.4, 0.25, 1.0])
def test_bsce_matches_sorting_reference(fraction):
    logits, labels, _ = _random_case(0)
    got = float(bootstrapped_cross_entropy(logits, labels, fraction))
    assert got == pytest.approx(_np_bsce(logits, labels, fraction), rel=1e-5)


def test_iou_perfect_prediction_and_hand_value():
    labels = np.array([[[1, 1], [0, 0]]], np.int32)  # [1, 2, 2]
    one_hot = np.eye(3, dtype=np.float32)[labels]  # object 2 valid but absent everywhere
    assert float(mask_iou_loss(one_hot, labels, np.ones((1, 2), bool))) == pytest.approx(0.0, abs=1e-7)

    # M = [1, 1, 0, 0], P = [0.5, 1, 0.5, 0]: min-sum 1.5, max-sum 2.5 -> loss 1 - 0.6 = 0.4.
    probs = np.zeros((1, 2, 2, 3), np.float32)
    probs[0, ..., 1] = [[0.5, 1.0], [0.5, 0.0]]
    probs[0, ..., 2] = 0.9  # object 2 is padded: ignored
    probs[0, ..., 0] = 1.0 - probs[0, ..., 1]
    got = float(mask_iou_loss(probs, labels, np.array([[True, False]])))
    assert got == pytest.approx(0.4, rel=1e-6)
    # Valid but absent object 2 predicted at 0.9 everywhere: IoU 0 -> loss 1; mean (0.4 + 1) / 2.
    got = float(mask_iou_loss(probs, labels, np.array([[True, True]])))
    assert got == pytest.approx(0.7, rel=1e-6)


def test_iou_empty_denominator_and_no_valid_objects_are_finite():
    labels = np.zeros((1, 2, 2), np.int32)
    probs = np.zeros((1, 2, 2, 2), np.float32)
    probs[..., 0] = 1.0
    assert float(mask_iou_loss(probs, labels, np.ones((1, 1), bool))) == 0.0
    assert float(mask_iou_loss(probs, labels, np.zeros((1, 1), bool))) == 0.0
    g = jax.grad(lambda p: mask_iou_loss(p, labels, np.ones((1, 1), bool)))(jnp.asarray(probs))
    assert np.all(np.isfinite(np.asarray(g)))


def test_iou_matches_reference_on_random_inputs():
    logits, labels, valid = _random_case(1)
    _, probs = _np_ce(logits, labels)
    got = float(mask_iou_loss(probs.astype(np.float32), labels, valid))
    assert got == pytest.approx(_np_iou(probs, labels, valid), rel=1e-5)


def test_each_kind_selects_what_it_names():
    logits, labels, valid = _random_case(2)
    ce_map, probs = _np_ce(logits, labels)
    ce = ce_map.mean()
    bsce = _np_bsce(logits, labels, 0.4)
    iou = _np_iou(probs, labels, valid)
    want = {"bsce_iou": bsce + 0.5 * iou, "ce": ce, "bsce": bsce, "iou": iou, "ce_iou": ce + 0.5 * iou}
    assert set(LOSS_KINDS) == set(want)
    for kind, value in want.items():
        loss, terms = segmentation_loss(logits, labels, valid, kind=kind, iou_weight=0.5)
        assert float(loss) == pytest.approx(value, rel=1e-5), kind
        assert float(terms["ce"]) == pytest.approx(ce, rel=1e-5)
        assert float(terms["bsce"]) == pytest.approx(bsce, rel=1e-5)
        assert float(terms["iou"]) == pytest.approx(iou, rel=1e-5)
    default, _ = segmentation_loss(logits, labels, valid)
    assert float(default) == pytest.approx(bsce + iou, rel=1e-5)  # the paper's lambda = 1


def test_unknown_kind_and_bad_inputs_raise():
    logits, labels, valid = _random_case(3)
    with pytest.raises(ValueError, match="bsce_iou"):
        segmentation_loss(logits, labels, valid, kind="dice")
    with pytest.raises(ValueError, match="integer"):
        segmentation_loss(logits, labels.astype(np.float32), valid)
    with pytest.raises(ValueError, match="object_valid"):
        segmentation_loss(logits, labels, valid[:, :2])


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_gradients_through_soft_aggregation_are_finite(kind):
    rng = np.random.default_rng(4)
    fg = rng.uniform(size=(2, 3, 4, 4)).astype(np.float32)
    fg[0, 0, 0, 0] = 1.0  # saturated pixel: clamp region
    valid = np.array([[True, True, False], [True, False, False]])
    labels = rng.integers(0, 2, size=(2, 4, 4)).astype(np.int32)

    def f(p):
        return segmentation_loss(soft_aggregate(p, valid), labels, valid, kind=kind)[0]

    loss, g = jax.jit(jax.value_and_grad(f))(fg)
    assert np.isfinite(float(loss))
    g = np.asarray(g)
    assert np.all(np.isfinite(g)) and np.abs(g).sum() > 0
    np.testing.assert_array_equal(g[~valid], 0.0)
