"""J and F of single mask pairs: hand-worked cases, the disk element, agreement with the reference."""

import cv2
import numpy as np
import pytest

from munet_jax.metrics import boundary_f, boundary_precision_recall, boundary_tolerance, disk, jaccard, seg2bmap
from reference_davis_metrics import ref_boundary_f, ref_boundary_map, ref_jaccard


def _rect(shape, rows, cols):
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


def _pixel(shape, y, x):
    mask = np.zeros(shape, dtype=bool)
    mask[y, x] = True
    return mask


# ----------------------------------------------------------------------------- J


def test_jaccard_of_two_rectangles_worked_by_hand():
    # gt: rows 0..3, cols 0..4 (20 px); pred: rows 2..5, cols 1..6 (24 px);
    # overlap rows 2..3, cols 1..4 (8 px); union 20 + 24 - 8 = 36.
    gt = _rect((8, 9), (0, 4), (0, 5))
    pred = _rect((8, 9), (2, 6), (1, 7))
    assert jaccard(gt, pred) == pytest.approx(8 / 36, abs=1e-15)
    assert jaccard(pred, gt) == pytest.approx(8 / 36, abs=1e-15)


def test_jaccard_edge_cases():
    empty = np.zeros((5, 6), dtype=bool)
    assert jaccard(empty, empty) == 1.0  # official: union 0 -> 1
    assert jaccard(empty, _pixel((5, 6), 2, 3)) == 0.0
    assert jaccard(_pixel((5, 6), 2, 3), empty) == 0.0
    assert jaccard(_pixel((5, 6), 2, 3), _pixel((5, 6), 2, 3)) == 1.0
    assert jaccard(_pixel((5, 6), 2, 3), _pixel((5, 6), 2, 4)) == 0.0


def test_jaccard_refuses_different_sizes():
    with pytest.raises(ValueError, match="differ in size"):
        jaccard(np.zeros((4, 5), bool), np.zeros((5, 4), bool))


# ----------------------------------------------------------------------------- boundaries


def test_seg2bmap_of_a_square_is_the_ring_half_a_pixel_towards_the_origin():
    mask = _rect((10, 10), (2, 6), (2, 6))  # rows/cols 2..5
    expected = np.zeros((10, 10), dtype=bool)
    for c in range(1, 6):
        expected[1, c] = expected[5, c] = True  # top and bottom of the ring
    for r in range(2, 5):
        expected[r, 1] = expected[r, 5] = True  # its sides
    np.testing.assert_array_equal(seg2bmap(mask), expected)
    assert expected.sum() == 16


def test_seg2bmap_border_rules():
    # The image border is not an edge: a full mask has no boundary.
    assert not seg2bmap(np.ones((6, 7), bool)).any()
    # A pixel in the bottom-right corner: its own cell is never a boundary, the three cells
    # above/left of it are (last row: east only; last column: south only).
    bmap = seg2bmap(_pixel((6, 7), 5, 6))
    assert {tuple(p) for p in np.argwhere(bmap)} == {(4, 5), (4, 6), (5, 5)}
    # An interior pixel: the 2x2 block ending at it.
    bmap = seg2bmap(_pixel((6, 7), 3, 3))
    assert {tuple(p) for p in np.argwhere(bmap)} == {(2, 2), (2, 3), (3, 2), (3, 3)}


def test_boundary_tolerance():
    assert boundary_tolerance((480, 854)) == 8  # ceil(0.008 * 979.6)
    assert boundary_tolerance((10, 10)) == 1  # ceil(0.113)
    assert boundary_tolerance((100, 100)) == 2  # ceil(1.13)
    assert boundary_tolerance((100, 100), bound_th=3) == 3  # >= 1 means pixels


# ----------------------------------------------------------------------------- the disk


@pytest.mark.parametrize("radius", range(0, 13))
def test_disk_is_the_set_within_euclidean_radius(radius):
    expected = np.zeros((2 * radius + 1, 2 * radius + 1), dtype=np.uint8)
    for i in range(2 * radius + 1):
        for j in range(2 * radius + 1):
            if (i - radius) ** 2 + (j - radius) ** 2 <= radius**2:
                expected[i, j] = 1
    np.testing.assert_array_equal(disk(radius), expected)


def test_disk_differs_from_opencv_ellipse_which_would_change_f():
    # Why the disk is built by hand: OpenCV's MORPH_ELLIPSE is another set for most radii,
    # including 8, the tolerance of every 480p DAVIS frame.
    for radius in (2, 8):
        ellipse = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        assert (ellipse != disk(radius)).any()
    # The ellipse of radius 2 contains the offset (1, 2) (distance sqrt 5 > 2), the disk not.
    ellipse2 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    assert ellipse2[2 + 1, 2 + 2] == 1 and disk(2)[2 + 1, 2 + 2] == 0
    # Boundaries: gt pixel (10, 10) -> block rows 9..10, cols 9..10; pred pixel (12, 13) ->
    # block rows 11..12, cols 12..13. The closest pair, (11, 12) and (10, 10), is sqrt 5 apart:
    # nothing matches within 2 pixels, F = 0. With the ellipse one pixel on each side would
    # match: P = R = 1/4, F = 1/4.
    gt, pred = _pixel((24, 24), 10, 10), _pixel((24, 24), 12, 13)
    assert boundary_f(gt, pred, bound_th=2) == 0.0
    gt_b, pred_b = seg2bmap(gt).astype(np.uint8), seg2bmap(pred).astype(np.uint8)
    p = (pred_b & cv2.dilate(gt_b, ellipse2)).sum() / pred_b.sum()
    r = (gt_b & cv2.dilate(pred_b, ellipse2)).sum() / gt_b.sum()
    assert (p, r) == (0.25, 0.25)


# ----------------------------------------------------------------------------- F, by hand


def test_f_identical_masks():
    mask = _rect((10, 10), (2, 6), (2, 6))
    assert boundary_f(mask, mask) == 1.0


def test_f_of_shifted_squares_worked_by_hand():
    # 10x10 image: tolerance 1 pixel (disk(1) is the 4-neighbourhood plus the centre).
    gt = _rect((10, 10), (2, 6), (2, 6))  # ring: rows 1 and 5, cols 1 and 5
    down1 = _rect((10, 10), (3, 7), (2, 6))  # ring rows 2..6: every pixel 0 or 1 away
    assert boundary_precision_recall(gt, down1) == (1.0, 1.0)
    assert boundary_f(gt, down1) == 1.0
    assert jaccard(gt, down1) == pytest.approx(12 / 20)
    # Shifted by 2: pred ring rows 3..7. Unmatched pred pixels: (3, 3) and the 5 of row 7 ->
    # P = 10/16. Unmatched gt pixels: the 5 of row 1 and (5, 3) -> R = 10/16. F = 10/16.
    down2 = _rect((10, 10), (4, 8), (2, 6))
    assert boundary_precision_recall(gt, down2) == (10 / 16, 10 / 16)
    assert boundary_f(gt, down2) == pytest.approx(10 / 16, abs=1e-15)
    assert jaccard(gt, down2) == pytest.approx(8 / 24)


def test_f_single_pixels_worked_by_hand():
    shape = (10, 10)
    # Pixels 2 apart: blocks cols 3..4 and 5..6; the facing columns are 1 apart -> P = R = 1/2.
    assert boundary_f(_pixel(shape, 4, 4), _pixel(shape, 4, 6)) == pytest.approx(0.5)
    # 3 apart: facing columns 2 apart, beyond the 1-pixel tolerance -> F = 0.
    assert boundary_f(_pixel(shape, 4, 4), _pixel(shape, 4, 7)) == 0.0
    assert boundary_f(_pixel(shape, 4, 4), _pixel(shape, 4, 4)) == 1.0


def test_f_empty_cases():
    empty = np.zeros((10, 10), dtype=bool)
    blob = _rect((10, 10), (2, 6), (2, 6))
    assert boundary_f(empty, empty) == 1.0
    assert boundary_precision_recall(blob, empty) == (1.0, 0.0)  # nothing predicted
    assert boundary_precision_recall(empty, blob) == (0.0, 1.0)  # predicted, nothing there
    assert boundary_f(blob, empty) == 0.0
    assert boundary_f(empty, blob) == 0.0
    full = np.ones((10, 10), dtype=bool)  # no boundary at all, like an empty mask
    assert boundary_f(full, full) == 1.0
    assert boundary_f(full, blob) == 0.0


# ----------------------------------------------------------------------------- vs the reference


def _random_blobs(rng, shape):
    """bool [H, W]: a few random ellipses and rectangles, sometimes empty, full or a single pixel."""
    h, w = shape
    kind = rng.integers(0, 10)
    if kind == 0:
        return np.zeros(shape, dtype=bool)
    if kind == 1:
        return _pixel(shape, rng.integers(0, h), rng.integers(0, w))
    if kind == 2:
        return np.ones(shape, dtype=bool)
    yy, xx = np.mgrid[0:h, 0:w]
    mask = np.zeros(shape, dtype=bool)
    for _ in range(rng.integers(1, 5)):
        cy, cx = rng.uniform(-0.1, 1.1) * h, rng.uniform(-0.1, 1.1) * w
        ry, rx = rng.uniform(0.5, 0.4 * h + 1), rng.uniform(0.5, 0.4 * w + 1)
        if rng.random() < 0.5:
            mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            mask |= (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
    if rng.random() < 0.3:
        mask ^= rng.random(shape) < 0.02  # speckle
    return mask


def _perturbed(rng, mask):
    """A prediction near `mask`: shifted by a few pixels, eroded or dilated, or unrelated."""
    choice = rng.integers(0, 4)
    if choice == 0:
        return np.roll(mask, (rng.integers(-4, 5), rng.integers(-4, 5)), axis=(0, 1))
    if choice == 1:
        return cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    if choice == 2:
        return cv2.dilate(mask.astype(np.uint8), np.ones((2, 3), np.uint8)).astype(bool)
    return _random_blobs(rng, mask.shape)


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 1), (7, 5), (31, 47), (64, 64), (121, 97), (160, 284)])
def test_agrees_with_reference_on_random_masks(shape):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    for _ in range(12):
        gt = _random_blobs(rng, shape)
        pred = _perturbed(rng, gt) if rng.random() < 0.7 else _random_blobs(rng, shape)
        np.testing.assert_array_equal(seg2bmap(gt), ref_boundary_map(gt))
        assert abs(jaccard(gt, pred) - ref_jaccard(gt, pred)) <= 1e-12
        for bound_th in (0.008, 0.03, 3):
            assert abs(boundary_f(gt, pred, bound_th) - ref_boundary_f(gt, pred, bound_th)) <= 1e-12


def test_agrees_with_reference_at_480p():
    rng = np.random.default_rng(7)
    for _ in range(3):
        gt = _random_blobs(rng, (480, 854))
        pred = _perturbed(rng, gt)
        assert abs(jaccard(gt, pred) - ref_jaccard(gt, pred)) <= 1e-12
        assert abs(boundary_f(gt, pred) - ref_boundary_f(gt, pred)) <= 1e-12
