"""Overlays, motion colour coding, heatmaps and the IoU-over-time plot (pure numpy/OpenCV)."""

import colorsys

import numpy as np
import pytest

from munet_jax.palette import DAVIS_PALETTE
from munet_jax.visualization import (Series, colour_wheel, flow_to_colour, greyscale, heatmap, inner_boundary,
                                     iou_over_time_plot, overlay_masks, upsample)


def test_overlay_blends_inside_only():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (20, 30, 3)).astype(np.uint8)
    ids = np.zeros((20, 30), np.uint8)
    ids[2:12, 3:15], ids[8:18, 18:28] = 1, 3
    out = overlay_masks(image, ids, alpha=0.4, contour_thickness=0)
    outside = ids == 0
    np.testing.assert_array_equal(out[outside], image[outside])
    for k, colour in ((1, (128, 0, 0)), (3, (128, 128, 0))):  # DAVIS colours written out by hand
        inside = ids == k
        expected = np.round(0.6 * image[inside] + 0.4 * np.array(colour)).astype(np.uint8)
        np.testing.assert_array_equal(out[inside], expected)
    # With contours: still nothing outside changes; the outline is the plain colour, inside the object.
    out = overlay_masks(image, ids, alpha=0.4, contour_thickness=1)
    np.testing.assert_array_equal(out[outside], image[outside])
    edge = inner_boundary(ids, 1)
    assert edge[2, 5] and edge[11, 5] and edge[5, 3] and not edge[5, 5] and not edge[1, 5]
    np.testing.assert_array_equal(out[2, 5], [128, 0, 0])
    np.testing.assert_array_equal(out[5, 5], np.round(0.6 * image[5, 5] + 0.4 * np.array([128, 0, 0])))


def hue_of(rgb):
    return 360.0 * colorsys.rgb_to_hsv(*(np.asarray(rgb, float) / 255.0))[0]


def test_flow_direction_hues():
    vectors = {"right": (1, 0), "down": (0, 1), "left": (-1, 0), "up": (0, -1)}
    flow = np.array([[vectors[k] for k in vectors] + [(0, 0)]], np.float32)  # [1, 5, 2]
    rgb = flow_to_colour(flow, max_magnitude=1.0)[0]
    hues = [hue_of(c) for c in rgb[:4]]
    for (a, b) in zip(hues, hues[1:] + hues[:1]):
        assert ((b - a) % 360) == pytest.approx(90, abs=2)  # four hues a quarter turn apart
    assert hues[0] == pytest.approx(0, abs=2) or hues[0] == pytest.approx(360, abs=2)  # right is red
    np.testing.assert_array_equal(rgb[4], [255, 255, 255])  # no motion: white
    half = flow_to_colour(np.array([[[0.5, 0.0]]], np.float32), max_magnitude=1.0)[0, 0]
    assert 255 > half[1] > rgb[0][1]  # half the speed: a paler red
    wheel = colour_wheel(33)
    assert hue_of(wheel[16, 32]) == pytest.approx(hues[0] % 360, abs=3) and hue_of(wheel[32, 16]) == pytest.approx(90, abs=3)


def test_heatmap_monotone_and_greyscale():
    values = np.linspace(-1, 1, 256, dtype=np.float32)[None]
    rgb = heatmap(values)[0]
    hues = np.array([hue_of(c) for c in rgb])
    assert hues[0] == pytest.approx(240, abs=1) and hues[-1] == pytest.approx(0, abs=1)  # blue -> red
    assert np.all(np.diff(hues) <= 1e-6)  # hue falls monotonically as the value rises
    assert len(np.unique(rgb, axis=0)) > 200
    grey = greyscale(np.array([[0.0, 0.25, 1.0]]))[0]
    np.testing.assert_array_equal(grey, [[0, 0, 0], [64, 64, 64], [255, 255, 255]])


def test_upsample_aligns_cells():
    cells = np.arange(6, dtype=np.float32).reshape(2, 3)
    big = upsample(cells, (20, 40))
    assert big.shape == (20, 40)
    # cells[i, j] = 3 i + j is linear, so bilinear interpolation with cell (i, j) centred on
    # pixel (16 i + 7.5, 16 j + 7.5), clamped at the outer centres, is exactly:
    y, x = np.mgrid[0:20, 0:40] + 0.5
    expected = 3 * np.clip(y / 16 - 0.5, 0, 1) + np.clip(x / 16 - 0.5, 0, 2)
    np.testing.assert_allclose(big, expected, atol=1e-2)
    with pytest.raises(ValueError, match="does not cover"):
        upsample(cells, (40, 40))


def test_iou_plot_rows():
    frames = np.arange(20)
    ones_then_zeros = np.where(frames < 10, 1.0, 0.0)
    half = np.full(20, 0.5)
    red, green = tuple(int(c) for c in DAVIS_PALETTE[1]), tuple(int(c) for c in DAVIS_PALETTE[2])
    image, area = iou_over_time_plot([Series("a", frames, ones_then_zeros, red), Series("b", frames, half, green)],
                                     title="t", size=(600, 300))
    assert image.shape == (300, 600, 3)
    # The axes box is black lines; find them in the image independently of `area`.
    black = np.all(image == 0, axis=-1)
    long_rows = np.flatnonzero(black.sum(axis=1) > 0.3 * (area.right - area.left))
    top, bottom = long_rows.min(), long_rows.max()
    assert (top, bottom) == (area.top, area.bottom)
    def rows_of(colour, columns):
        mask = np.all(image[:, columns] == colour, axis=-1)
        return np.flatnonzero(mask.any(axis=1))
    left_cols = slice(int(area.column(1)), int(area.column(8)))
    right_cols = slice(int(area.column(11)), int(area.column(18)))
    assert np.all(np.abs(rows_of(red, left_cols) - top) <= 1)  # IoU 1 on the top line
    assert np.all(np.abs(rows_of(red, right_cols) - bottom) <= 1)  # IoU 0 on the bottom line
    assert np.all(np.abs(rows_of(green, right_cols) - (top + bottom) / 2) <= 1.5)  # 0.5 halfway
    # The legend (right of the axes) shows both colours.
    legend = image[:, area.right + 5 :]
    assert np.all(legend == red, axis=-1).any() and np.all(legend == green, axis=-1).any()


def test_visualize_results_mode(tmp_path, capsys):
    """--results: the IoU plot of saved predictions against DAVIS-layout ground truth, no model."""
    from munet_jax.palette import write_indexed_png
    from munet_jax.visualize import main

    rng = np.random.default_rng(3)
    gt_dir = tmp_path / "davis" / "Annotations" / "480p" / "seq"
    pred_dir = tmp_path / "results" / "seq"
    expected = {1: [], 2: []}
    for t in range(5):
        gt = np.zeros((24, 32), np.uint8)
        gt[2:12, 2:14], gt[14:22, 16:30] = 1, 2
        pred = gt.copy()
        pred[rng.random(gt.shape) < 0.1 * t] = 0  # predictions degrade over time
        write_indexed_png(gt_dir / f"{t:05d}.png", gt)
        if t != 3:  # one frame without prediction: skipped
            write_indexed_png(pred_dir / f"{t:05d}.png", pred)
            for k in expected:
                expected[k].append(np.count_nonzero((gt == k) & (pred == k)) / np.count_nonzero((gt == k) | (pred == k)))
    out = tmp_path / "out"
    assert main([f"--results={tmp_path / 'results'}", f"--davis_root={tmp_path / 'davis'}", "--sequence=seq",
                 f"--out={out}"]) == 0
    assert "1 without prediction skipped" in capsys.readouterr().out
    rows = [line.split(",") for line in (out / "iou_over_time.csv").read_text().splitlines()]
    assert [r[1] for r in rows[1:]] == ["00000", "00001", "00002", "00004"]
    for k in (1, 2):
        np.testing.assert_allclose([float(r[1 + k]) for r in rows[1:]], expected[k], atol=1e-6)
    import cv2
    plot = cv2.imread(str(out / "iou_over_time.png"))
    assert plot is not None and plot.shape[0] > 200
    assert not (out / "panels").exists()
    # A wrong sequence name: exit 2, the folder named, nothing written.
    assert main([f"--results={tmp_path / 'results'}", f"--davis_root={tmp_path / 'davis'}", "--sequence=nope",
                 f"--out={tmp_path / 'out2'}"]) == 2
    assert "nope" in capsys.readouterr().err and not (tmp_path / "out2").exists()

