"""Object masks drawn over frames in the DAVIS palette, with contours.

Inside an object, a pixel becomes (1 - alpha) * image + alpha * colour(id); its
inner boundary (pixels of the object with a 4-neighbour outside it) is drawn in
the plain colour so that touching objects and thin parts stay readable. Pixels
outside every mask are left exactly as they were: the contour is drawn inside
the object, never over the image around it.
"""

from __future__ import annotations

import cv2
import numpy as np

from munet_jax.palette import DAVIS_PALETTE


def colour_ids(ids: np.ndarray, palette: np.ndarray = DAVIS_PALETTE) -> np.ndarray:
    """Object ids uint8 [H, W] -> uint8 RGB [H, W, 3] palette colours (id 0 black)."""
    return np.asarray(palette, np.uint8)[np.asarray(ids, np.uint8)]


def inner_boundary(ids: np.ndarray, thickness: int = 1) -> np.ndarray:
    """bool [H, W]: object pixels (id > 0) with a pixel of another id within `thickness`
    4-steps (|dy| + |dx| <= thickness). Beyond the image border counts as another id, so an
    object touching the frame edge is outlined there too."""
    ids = np.asarray(ids).astype(np.int16)
    t = max(int(thickness), 0)
    h, w = ids.shape
    padded = np.pad(ids, t, mode="constant", constant_values=-1)  # -1: never an object id
    differs = np.zeros((h, w), bool)
    for dy in range(-t, t + 1):
        for dx in range(-t + abs(dy), t - abs(dy) + 1):
            differs |= padded[t + dy : t + dy + h, t + dx : t + dx + w] != ids
    return differs & (ids > 0)


def overlay_masks(image: np.ndarray, ids: np.ndarray, alpha: float = 0.5, contour_thickness: int = 2,
                  palette: np.ndarray = DAVIS_PALETTE) -> np.ndarray:
    """image uint8 RGB [H, W, 3], ids uint8 [H, W] -> uint8 RGB [H, W, 3] with the objects tinted."""
    image = np.asarray(image)
    ids = np.asarray(ids)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB [H, W, 3], got {image.dtype} {image.shape}")
    if ids.shape != image.shape[:2]:
        raise ValueError(f"mask is {ids.shape} but the image is {image.shape[:2]}: they must be the same size")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha}: the mask opacity must lie in [0, 1]")
    colours = colour_ids(ids, palette).astype(np.float32)
    inside = ids > 0
    out = image.copy()
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    out[inside] = np.clip(np.round(blended[inside]), 0, 255).astype(np.uint8)
    if contour_thickness > 0:
        edge = inner_boundary(ids, contour_thickness)
        out[edge] = colours[edge].astype(np.uint8)
    return out


def label_bar(text: str, width: int, height: int = 28, scale: float = 0.6) -> np.ndarray:
    """A white bar uint8 RGB [height, width, 3] with `text` in black, for tile titles."""
    bar = np.full((height, width, 3), 255, np.uint8)
    # Shrink the font until the text fits: tiles of small videos are narrow.
    while scale > 0.3 and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > width - 8:
        scale -= 0.05
    (_, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.putText(bar, text, (4, (height + th) // 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return bar


def titled(tile: np.ndarray, title: str) -> np.ndarray:
    """`tile` with a title bar above it."""
    return np.concatenate([label_bar(title, tile.shape[1]), tile], axis=0)


def grid(tiles: list[np.ndarray], columns: int, gap: int = 4) -> np.ndarray:
    """Tiles of one size in rows of `columns`, separated by `gap` white pixels."""
    h, w = tiles[0].shape[:2]
    if any(t.shape[:2] != (h, w) for t in tiles):
        raise ValueError("grid tiles must share one size")
    rows = -(-len(tiles) // columns)
    out = np.full((rows * h + (rows - 1) * gap, columns * w + (columns - 1) * gap, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tile
    return out
