"""An independent DAVIS 2017 semi-supervised scorer, used only to check munet_jax.metrics.

Written differently from the code under test on purpose, so that a shared mistake is
unlikely:
- boundaries: the mask is padded by repeating its last row and column, and a pixel is a
  boundary pixel when it differs from any of its padded east / south / south-east
  neighbours (the padding reproduces the official special cases at the border without
  special-casing them);
- matching: a boundary pixel is matched when the exact Euclidean distance transform
  (scipy.ndimage.distance_transform_edt) to the other boundary is <= the tolerance, the
  same set as a dilation by skimage's disk but computed without any structuring element;
- J via dot products of 0/1 vectors; Decay bins by integer arithmetic;
- folders read with PIL directly.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage


def ref_jaccard(gt: np.ndarray, pred: np.ndarray) -> float:
    a = np.asarray(gt, dtype=bool).ravel().astype(np.int64)
    b = np.asarray(pred, dtype=bool).ravel().astype(np.int64)
    inter = int(a @ b)
    union = int(a.sum()) + int(b.sum()) - inter
    return 1.0 if union == 0 else inter / union


def ref_boundary_map(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask, dtype=bool)
    padded = np.pad(m, ((0, 1), (0, 1)), mode="edge")  # [H+1, W+1]
    east = padded[:-1, 1:]
    south = padded[1:, :-1]
    south_east = padded[1:, 1:]
    return (m != east) | (m != south) | (m != south_east)


def ref_tolerance(shape, bound_th: float = 0.008) -> int:
    if bound_th >= 1:
        return int(bound_th)
    return math.ceil(bound_th * math.hypot(shape[0], shape[1]))


def _count_within(points: np.ndarray, others: np.ndarray, radius: int) -> int:
    """How many True pixels of `points` have a True pixel of `others` at distance <= radius."""
    distance = ndimage.distance_transform_edt(~others)  # 0 on `others`, Euclidean elsewhere
    squared = np.rint(distance[points] ** 2)  # integers d^2, exact after rounding
    return int(np.count_nonzero(squared <= radius * radius))


def ref_boundary_f(gt: np.ndarray, pred: np.ndarray, bound_th: float = 0.008) -> float:
    gt_b = ref_boundary_map(gt)
    pred_b = ref_boundary_map(pred)
    n_gt, n_pred = int(gt_b.sum()), int(pred_b.sum())
    if n_gt == 0 and n_pred == 0:
        return 1.0
    if n_gt == 0 or n_pred == 0:
        return 0.0  # one side has precision or recall 0 and the other 1: F = 0
    radius = ref_tolerance(np.shape(gt), bound_th)
    precision = _count_within(pred_b, gt_b, radius) / n_pred
    recall = _count_within(gt_b, pred_b, radius) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def ref_decay_edges(n: int) -> list[int]:
    # round-half-up of 1 + k (n - 1) / 4, minus 1, in integers.
    return [(k * (n - 1) + 2) // 4 for k in range(5)]


def ref_statistics(values) -> tuple[float, float, float]:
    values = [float(v) for v in values]
    n = len(values)
    mean = sum(values) / n
    recall = sum(1 for v in values if v > 0.5) / n
    e = ref_decay_edges(n)
    first = values[e[0] : e[1] + 1]
    last = values[e[3] : e[4] + 1]
    decay = sum(first) / len(first) - sum(last) / len(last)
    return mean, recall, decay


def _read_ids(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "P", path
        return np.array(image)


def ref_evaluate_sequence(gt_frames, pred_frames, num_objects: int):
    """Per-object lists of per-frame J and F: ([N][T], [N][T])."""
    js, fs = [], []
    for k in range(1, num_objects + 1):
        js.append([ref_jaccard(g == k, p == k) for g, p in zip(gt_frames, pred_frames)])
        fs.append([ref_boundary_f(g == k, p == k) for g, p in zip(gt_frames, pred_frames)])
    return js, fs


def ref_evaluate_folder(davis_root, results_dir, sequences, resolution: str = "480p"):
    """{"objects": {"<seq>_<k>": (JM, JR, JD, FM, FR, FD)}, "global": {column: value}}."""
    objects = {}
    for seq in sequences:
        gt_dir = Path(davis_root) / "Annotations" / resolution / seq
        names = sorted(p.name for p in gt_dir.iterdir() if p.suffix == ".png" and not p.name.startswith("."))
        first = _read_ids(gt_dir / names[0])
        num_objects = int(np.where(first == 255, 0, first).max())
        gt_frames = [_read_ids(gt_dir / n) for n in names[1:-1]]
        gt_frames = [np.where(g == 255, 0, g) for g in gt_frames]
        pred_frames = [_read_ids(Path(results_dir) / seq / n) for n in names[1:-1]]
        js, fs = ref_evaluate_sequence(gt_frames, pred_frames, num_objects)
        for k in range(num_objects):
            objects[f"{seq}_{k + 1}"] = (*ref_statistics(js[k]), *ref_statistics(fs[k]))
    columns = list(zip(*objects.values()))  # 6 tuples over objects
    means = [sum(c) / len(c) for c in columns]
    global_ = {
        "J&F-Mean": (means[0] + means[3]) / 2,
        "J-Mean": means[0],
        "J-Recall": means[1],
        "J-Decay": means[2],
        "F-Mean": means[3],
        "F-Recall": means[4],
        "F-Decay": means[5],
    }
    return {"objects": objects, "global": global_}
