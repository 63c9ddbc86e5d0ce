"""Pictures of the MU-Layer's maps: displacement colour coding, heatmaps, attention.

The model's maps are at stride 16 (one cell per 16x16 image block, cropped to the
image); `upsample` brings them to the image size so they can be laid over it.

Displacement: the usual optical-flow colour wheel in HSV: hue = direction
(right 0 deg red, down 90 deg, left 180 deg cyan, up 270 deg; image y points down),
saturation = magnitude / max_magnitude, value 1, so no motion is white and the
strongest motion the most saturated colour. `colour_wheel` draws the legend.
"""

from __future__ import annotations

import cv2
import numpy as np

STRIDE = 16


def upsample(cells: np.ndarray, hw: tuple[int, int], stride: int = STRIDE) -> np.ndarray:
    """[h, w] or [h, w, C] float map at `stride` -> [H, W] / [H, W, C], bilinear.

    Resizing to exactly (h * stride, w * stride) puts cell i's value at the centre of the
    image block it covers (pixels stride*i .. stride*i + stride - 1); the part beyond the
    image (the last block may be partial) is then cropped off.
    """
    cells = np.asarray(cells, np.float32)
    h, w = cells.shape[:2]
    if h * stride < hw[0] or w * stride < hw[1] or (h - 1) * stride >= hw[0] or (w - 1) * stride >= hw[1]:
        raise ValueError(f"a {h}x{w} map at stride {stride} does not cover a {hw[0]}x{hw[1]} image "
                         f"(expected {-(-hw[0] // stride)}x{-(-hw[1] // stride)} cells)")
    big = cv2.resize(cells, (w * stride, h * stride), interpolation=cv2.INTER_LINEAR)
    if cells.ndim == 3 and cells.shape[-1] == 1:
        big = big[..., None]  # cv2 drops a single channel axis
    return big[: hw[0], : hw[1]]


def flow_to_colour(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """(dx, dy) [H, W, 2] -> uint8 RGB [H, W, 3]. max_magnitude defaults to the field's largest."""
    flow = np.asarray(flow, np.float32)
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f"flow must be [H, W, 2] (dx, dy), got shape {flow.shape}")
    dx, dy = flow[..., 0], flow[..., 1]
    magnitude = np.hypot(dx, dy)
    if max_magnitude is None:
        max_magnitude = float(magnitude.max()) if magnitude.size else 0.0
    hue = np.degrees(np.arctan2(dy, dx)) % 360.0
    saturation = np.clip(magnitude / max(max_magnitude, 1e-12), 0.0, 1.0)
    hsv = np.stack([hue, saturation, np.ones_like(hue)], axis=-1).astype(np.float32)
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)  # float HSV: H in [0, 360), S and V in [0, 1]
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def colour_wheel(size: int = 64) -> np.ndarray:
    """Legend of `flow_to_colour`: uint8 RGB [size, size, 3], a disc whose pixel at offset
    (dx, dy) from the centre has the colour of the vector (dx, dy); white outside the disc."""
    radius = (size - 1) / 2.0
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    flow = np.stack([x - radius, y - radius], axis=-1)
    wheel = flow_to_colour(flow, max_magnitude=radius)
    wheel[np.hypot(flow[..., 0], flow[..., 1]) > radius] = 255
    return wheel


def normalise(values: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """values -> float32 in [0, 1] over [vmin, vmax] (default: the values' own range; a constant map -> 0)."""
    values = np.asarray(values, np.float32)
    lo = float(values.min()) if vmin is None else float(vmin)
    hi = float(values.max()) if vmax is None else float(vmax)
    if hi <= lo:
        return np.zeros_like(values)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def heatmap(values: np.ndarray, vmin: float | None = None, vmax: float | None = None,
            colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """[H, W] values -> uint8 RGB [H, W, 3]: low blue, high red (OpenCV's JET by default)."""
    values = np.asarray(values)
    if values.ndim == 3 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.ndim != 2:
        raise ValueError(f"heatmap values must be [H, W], got shape {values.shape}")
    levels = np.round(normalise(values, vmin, vmax) * 255.0).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(levels, colormap), cv2.COLOR_BGR2RGB)


def heatmap_over_image(image: np.ndarray, values: np.ndarray, alpha: float = 0.5,
                       vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """The paper's Figs. 5/6: the heatmap of `values` [H, W] blended over the frame."""
    colours = heatmap(values, vmin, vmax).astype(np.float32)
    if colours.shape != image.shape:
        raise ValueError(f"heatmap {colours.shape[:2]} and image {image.shape[:2]} differ in size")
    return np.round((1.0 - alpha) * image.astype(np.float32) + alpha * colours).astype(np.uint8)


def greyscale(values: np.ndarray, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """The paper's Fig. 7: a one-channel map [H, W] shown directly as grey, vmin black, vmax white.

    The fixed default range [0, 1] is the sigmoid's, so frames and videos compare directly.
    """
    values = np.asarray(values)
    if values.ndim == 3 and values.shape[-1] == 1:
        values = values[..., 0]
    grey = np.round(normalise(values, vmin, vmax) * 255.0).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
