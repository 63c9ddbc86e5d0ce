"""Per-frame IoU over time (the paper's Fig. 9), drawn with OpenCV on a white canvas.

    image, area = iou_over_time_plot([Series("object 1", frames, iou, (128, 0, 0))], title="blackswan")

The y axis runs from IoU 0 (the bottom line of the axes box, `area.bottom`) to 1
(its top line, `area.top`); x from the first to the last frame. Gaps (NaN) break
a curve. Lines are drawn without anti-aliasing so that every curve pixel has
exactly its series' colour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
BLACK, GRID, WHITE = (0, 0, 0), (215, 215, 215), (255, 255, 255)


@dataclass(frozen=True)
class Series:
    label: str
    frames: np.ndarray  # [T] frame indices (x)
    values: np.ndarray  # [T] IoU in [0, 1] (y); NaN = no value
    colour: tuple[int, int, int]  # RGB


@dataclass(frozen=True)
class PlotArea:
    """The axes box in pixels (the lines themselves) and the x range it shows."""

    left: int
    top: int
    right: int
    bottom: int
    x_min: float
    x_max: float

    def row(self, value: float) -> float:
        return self.bottom - float(value) * (self.bottom - self.top)

    def column(self, x: float) -> float:
        span = self.x_max - self.x_min
        return self.left + (float(x) - self.x_min) / span * (self.right - self.left)


def nice_step(span: float, max_ticks: int = 10) -> float:
    """The smallest 1/2/5 x 10^k step that shows `span` with at most `max_ticks` intervals."""
    if span <= 0:
        return 1.0
    raw = span / max_ticks
    base = 10.0 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * base >= raw:
            return max(m * base, 1.0)  # frames are whole numbers
    return 10 * base


def _text(img, text, org, scale=0.45, colour=BLACK, align="left"):
    (w, h), _ = cv2.getTextSize(text, FONT, scale, 1)
    x, y = org
    if align == "center":
        x -= w // 2
    elif align == "right":
        x -= w
    cv2.putText(img, text, (int(x), int(y)), FONT, scale, colour, 1, cv2.LINE_AA)
    return w, h


def iou_over_time_plot(series: list[Series], title: str = "", size: tuple[int, int] = (900, 420),
                       x_label: str = "frame", y_label: str = "IoU") -> tuple[np.ndarray, PlotArea]:
    """Draws the series -> (uint8 RGB [H, W, 3] image, PlotArea of the axes)."""
    if not series:
        raise ValueError("iou_over_time_plot needs at least one series")
    for s in series:
        if len(s.frames) != len(s.values) or len(s.frames) == 0:
            raise ValueError(f"series {s.label!r}: frames and values must be non-empty and of one length")
    width, height = size
    legend_width = max(cv2.getTextSize(s.label, FONT, 0.45, 1)[0][0] for s in series) + 50
    area_x = (62, width - legend_width - 16)
    area_y = (40 if title else 16, height - 50)
    if area_x[1] - area_x[0] < 100 or area_y[1] - area_y[0] < 60:
        raise ValueError(f"plot size {size} is too small for its labels; make it larger")
    x_min = float(min(np.min(s.frames) for s in series))
    x_max = float(max(np.max(s.frames) for s in series))
    if x_max == x_min:
        x_max = x_min + 1.0  # one frame: still a non-degenerate axis
    area = PlotArea(area_x[0], area_y[0], area_x[1], area_y[1], x_min, x_max)
    img = np.full((height, width, 3), 255, np.uint8)

    # Grid and ticks first, so the axes box and the curves draw over them.
    for k in range(6):
        v = k / 5
        r = int(round(area.row(v)))
        cv2.line(img, (area.left, r), (area.right, r), GRID, 1)
        cv2.line(img, (area.left - 5, r), (area.left, r), BLACK, 1)
        _text(img, f"{v:.1f}", (area.left - 8, r + 5), align="right")
    step = nice_step(x_max - x_min)
    tick = math.ceil(x_min / step) * step
    while tick <= x_max + 1e-9:
        c = int(round(area.column(tick)))
        cv2.line(img, (c, area.top), (c, area.bottom), GRID, 1)
        cv2.line(img, (c, area.bottom), (c, area.bottom + 5), BLACK, 1)
        _text(img, f"{tick:g}", (c, area.bottom + 20), align="center")
        tick += step
    cv2.rectangle(img, (area.left, area.top), (area.right, area.bottom), BLACK, 1)
    _text(img, x_label, ((area.left + area.right) // 2, height - 10), scale=0.5, align="center")
    label = np.full((20, 60, 3), 255, np.uint8)  # y label, rotated to run up the axis
    _text(label, y_label, (30, 15), scale=0.5, align="center")
    label = np.rot90(label)
    top = (area.top + area.bottom) // 2 - label.shape[0] // 2
    img[top : top + label.shape[0], 2 : 2 + label.shape[1]] = np.minimum(img[top : top + label.shape[0], 2 : 2 + label.shape[1]], label)
    if title:
        _text(img, title, (width // 2, 26), scale=0.6, align="center")

    for s in series:
        colour = tuple(int(c) for c in s.colour)
        x = np.asarray(s.frames, np.float64)
        y = np.clip(np.asarray(s.values, np.float64), 0.0, 1.0)
        points = [(int(round(area.column(a))), int(round(area.row(b)))) if np.isfinite(b) else None
                  for a, b in zip(x, y)]
        run: list[tuple[int, int]] = []
        for p in points + [None]:  # a NaN (or the end) closes the current run of points
            if p is not None:
                run.append(p)
                continue
            if len(run) == 1:
                cv2.circle(img, run[0], 2, colour, -1, cv2.LINE_8)
            elif run:
                cv2.polylines(img, [np.asarray(run, np.int32)], False, colour, 2, cv2.LINE_8)
            run = []

    # Legend to the right of the axes: a line of the series' colour, then its label.
    for i, s in enumerate(series):
        y = area.top + 12 + 22 * i
        x = area.right + 14
        cv2.line(img, (x, y), (x + 24, y), tuple(int(c) for c in s.colour), 3, cv2.LINE_8)
        _text(img, s.label, (x + 32, y + 5))
    return img, area
