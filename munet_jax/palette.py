"""Indexed ("palette") PNG masks as DAVIS and YouTube-VOS store them.

A mask file holds one object id per pixel (0 = background) in an 8-bit indexed
PNG whose palette maps ids to display colours. Reading must return the ids, not
the colours, which is why this uses Pillow: OpenCV and tf.io.decode_png expand a
palette to RGB.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def davis_palette() -> np.ndarray:
    """The DAVIS / PASCAL VOC colour map: uint8 [256, 3] (id 1 is red, 2 green, ...)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):  # bit-interleaving of the VOC colour map
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[index] = (r, g, b)
    return palette


DAVIS_PALETTE = davis_palette()


class NotIndexedMaskError(ValueError):
    """A mask file is not an indexed (palette) PNG."""


def read_indexed_png(path: str | os.PathLike) -> np.ndarray:
    """Object ids of an indexed PNG: uint8 [H, W].

    Raises NotIndexedMaskError for greyscale/RGB files (e.g. DAVIS 2016 binary
    masks with values {0, 255}), naming the file and the fix.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            ids = np.array(image) if mode == "P" else None
    except (OSError, SyntaxError) as error:  # PIL raises these for truncated/corrupt files
        raise ValueError(f"{path}: cannot read mask PNG ({error}); re-extract or re-download this file") from error
    if ids is None:
        raise NotIndexedMaskError(
            f"{path}: mask is a {mode!r} image, not an indexed (palette, mode 'P') PNG of object ids. "
            "DAVIS 2017 / YouTube-VOS masks are palette PNGs; DAVIS 2016 binary masks (values 0/255) "
            "must be converted first (object id 1 where the mask is 255)."
        )
    return ids.astype(np.uint8, copy=False)


def write_indexed_png(path: str | os.PathLike, ids: np.ndarray, palette: np.ndarray = DAVIS_PALETTE) -> None:
    """Writes uint8 object ids [H, W] as an indexed PNG, atomically.

    The file appears complete or not at all: it is written beside its final name
    and renamed, so an interrupted run never leaves a truncated mask behind.
    """
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"{path}: mask must be 2-D [H, W] object ids, got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() > 255):
        raise ValueError(f"{path}: object ids must lie in 0..255, got {ids.min()}..{ids.max()}")
    image = Image.fromarray(ids.astype(np.uint8), mode="P")
    image.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1).tolist())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a results folder is meant to be shared
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
