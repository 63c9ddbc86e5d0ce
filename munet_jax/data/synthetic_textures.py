"""The looks of the synthetic scenes: random colours, procedural textures, shape sprites and the
panning background (used by `synthetic_scene`, which adds motion, occlusion and rendering).

Every function draws from the `numpy.random.Generator` it is given, so a look is
a pure function of that generator's state. Only numpy, OpenCV and the standard
library are used.
"""

from __future__ import annotations

import colorsys
import math
from typing import Sequence

import cv2
import numpy as np

__all__ = [
    "SHAPE_KINDS",
    "TEXTURE_KINDS",
    "panning_background",
    "procedural_texture",
    "random_colour",
    "shape_alpha",
]

SHAPE_KINDS = ("ellipse", "polygon", "blob")
TEXTURE_KINDS = ("stripes", "checker", "noise", "gradient")


def random_colour(rng: np.random.Generator, saturation: tuple[float, float], value: tuple[float, float]) -> np.ndarray:
    """A random RGB colour, float32 [3] in 0..255, drawn in HSV so saturation/brightness are controlled."""
    rgb = colorsys.hsv_to_rgb(rng.uniform(0.0, 1.0), rng.uniform(*saturation), rng.uniform(*value))
    return np.asarray(rgb, dtype=np.float32) * 255.0


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Blend colours a, b [3] by weights t [H, W] -> float32 [H, W, 3]."""
    return a + (b - a) * t[..., None]


def procedural_texture(
    rng: np.random.Generator, height: int, width: int, kind: str, colours: Sequence[np.ndarray], period: float
) -> np.ndarray:
    """A texture of family `kind` in the given colours: float32 [height, width, 3] in 0..255.

    `period` (pixels) sets the pattern's spatial scale.
    """
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0.0, math.pi)
    u = xs * math.cos(angle) + ys * math.sin(angle)  # coordinate along the pattern direction
    c0, c1 = colours[0], colours[1]
    if kind == "stripes":
        wave = np.sin(u * (2 * math.pi / period) + rng.uniform(0, 2 * math.pi))
        sharpness = rng.uniform(1.0, 6.0)  # 1: soft sinusoid, 6: nearly hard-edged bands
        return _mix(c0, c1, 0.5 + 0.5 * np.tanh(sharpness * wave))
    if kind == "checker":
        v = -xs * math.sin(angle) + ys * math.cos(angle)
        parity = (np.floor(u / period) + np.floor(v / period)) % 2
        return _mix(c0, c1, parity.astype(np.float32))
    if kind == "noise":
        # Value noise: a coarse grid of random blend weights, upsampled smoothly.
        gh, gw = max(2, int(height / period) + 2), max(2, int(width / period) + 2)
        grid = rng.uniform(0.0, 1.0, size=(gh, gw)).astype(np.float32)
        t = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
        return _mix(c0, c1, np.clip(t, 0.0, 1.0))
    if kind == "gradient":
        span = max(float(u.max() - u.min()), 1.0)
        base = _mix(c0, c1, (u - u.min()) / span)
        # a faint ripple so a flat gradient still has local structure to match
        return base + 12.0 * np.sin(u * (2 * math.pi / period))[..., None]
    raise ValueError(f"unknown texture kind {kind!r}; expected one of {TEXTURE_KINDS}")


def shape_alpha(rng: np.random.Generator, kind: str, radius: float) -> np.ndarray:
    """A filled shape inside a radius-`radius` disc: uint8 [S, S] (255 inside), S odd, centre at S // 2."""
    size = 2 * math.ceil(radius) + 3
    centre = size // 2
    alpha = np.zeros((size, size), dtype=np.uint8)
    if kind == "ellipse":
        axes = (int(round(radius)), int(round(radius * rng.uniform(0.45, 1.0))))
        cv2.ellipse(alpha, (centre, centre), axes, float(rng.uniform(0, 180)), 0, 360, 255, thickness=-1)
        return alpha
    if kind == "polygon":
        n = int(rng.integers(3, 9))
        thetas = np.sort(rng.uniform(0, 2 * math.pi, size=n))
        thetas = 0.6 * thetas + 0.4 * (np.arange(n) * 2 * math.pi / n + thetas[0])  # avoid slivers
        radii = radius * rng.uniform(0.6, 1.0, size=n)
    elif kind == "blob":
        thetas = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        wobble = sum(
            rng.uniform(0.0, 0.12) * np.cos(k * thetas + rng.uniform(0, 2 * math.pi)) for k in range(2, 5)
        )
        radii = radius * np.clip(0.78 + wobble, 0.4, 1.0)
    else:
        raise ValueError(f"unknown shape kind {kind!r}; expected one of {SHAPE_KINDS}")
    # Fixed-point vertices (shift=4: 1/16 pixel) keep the outline smooth at small sizes.
    pts = np.stack([centre + radii * np.cos(thetas), centre + radii * np.sin(thetas)], axis=-1)
    cv2.fillPoly(alpha, [np.round(pts * 16).astype(np.int32)], 255, lineType=cv2.LINE_8, shift=4)
    return alpha


def panning_background(rng: np.random.Generator, num_frames: int, height: int, width: int, speed: float) -> tuple[np.ndarray, np.ndarray]:
    """A desaturated textured backdrop and a slow, drifting pan over it.

    Returns (image uint8 [H + 2m, W + 2m, 3], offsets float32 [T, 2]) where m
    covers the whole pan, so the view never leaves the image. Objects are drawn
    with stronger colours than the background so a small model can learn
    objectness quickly; the texture still moves, so motion matters everywhere.
    """
    heading = rng.uniform(0, 2 * math.pi)
    drift = 0.002 * (height + width) * speed * rng.uniform(0.3, 1.5)  # pixels per frame
    steps = np.zeros((num_frames, 2))
    for t in range(1, num_frames):
        heading += rng.normal(0.0, 0.1)
        steps[t] = drift * np.array([math.cos(heading), math.sin(heading)])
    path = np.cumsum(steps, axis=0)
    margin = int(math.ceil(np.abs(path).max())) + 2
    offsets = (path + margin).astype(np.float32)
    bh, bw = height + 2 * margin, width + 2 * margin
    scale = min(height, width) / 240.0
    colours = [random_colour(rng, (0.05, 0.45), (0.25, 0.85)) for _ in range(3)]
    image = 0.6 * procedural_texture(rng, bh, bw, "noise", colours[:2], period=rng.uniform(40, 90) * scale)
    detail = str(rng.choice(["stripes", "checker", "gradient", "noise"]))
    image += 0.4 * procedural_texture(rng, bh, bw, detail, [colours[1], colours[2]], period=rng.uniform(10, 30) * scale)
    return np.clip(image, 0, 255).astype(np.uint8), offsets
