"""Which frames and which objects make a training clip.

Every random choice here comes from an explicit generator / key, so the clip at
(seed, step, example index) is a pure function of those numbers (see pipeline.py).

Frames (numpy, before loading): `clip_length` indices in temporal order with gaps
drawn from 1..max_skip, among the video's annotated frames only (YouTube-VOS train
annotates every 5th frame, and its frame folder holds exactly those).

Objects (TensorFlow, after augmentation): up to K ids among those visible in the
augmented FIRST frame, in random order, relabelled 1..K; every other id becomes
background. Objects may leave later frames (the model must then predict empty).
Choosing after augmentation, as XMem does, guarantees that the reference frame
shows every chosen object even when the crop or warp cut others away.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

# SeedSequence entropy words that separate the streams of one example.
STREAM_SAMPLING = 0  # dataset, video and frame choice (numpy)
STREAM_AUGMENT = 1  # key of the TF augmentation / object choice


def example_rng(seed: int, step: int, index: int, stream: int = STREAM_SAMPLING) -> np.random.Generator:
    """The generator of example `index` of the global batch of step `step`."""
    if min(seed, step, index) < 0:
        raise ValueError(f"seed, step and index must be >= 0, got {(seed, step, index)}")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, step, index, stream])))


def example_key(seed: int, step: int, index: int) -> np.ndarray:
    """Stateless TF key (int64 [2]) of the augmentation of one example."""
    words = np.random.SeedSequence([seed, step, index, STREAM_AUGMENT]).generate_state(2, dtype=np.uint32)
    return (words.astype(np.int64) & 0x7FFFFFFF).astype(np.int64)


def sample_frame_positions(rng: np.random.Generator, num_available: int, clip_length: int, max_skip: int) -> np.ndarray:
    """Positions (into the list of usable frames) of one clip: int64 [clip_length], non-decreasing.

    Enough frames: gaps g_1..g_{L-1} ~ U{1..m} with m = min(max_skip, (n - 1) // (L - 1)),
    so the clip always fits, then a uniform start among those that fit. Strictly
    increasing, every gap within 1..max_skip.

    Fewer frames than `clip_length` (n < L): XMem drops such videos and STM-style
    loaders repeat frames; we keep them (the batch shape must stay fixed) and stretch
    the whole video over the clip, position k -> floor(k * n / L): every frame is used,
    in order, some twice in a row (a gap of 0, i.e. a still moment). n = 1 is handled
    by the static-image path instead (pipeline.py).
    """
    if num_available < 1:
        raise ValueError("a video needs at least one usable (annotated) frame")
    if clip_length < 1 or max_skip < 1:
        raise ValueError(f"clip_length and max_skip must be >= 1, got {clip_length}, {max_skip}")
    n, length = num_available, clip_length
    if n < length:
        return (np.arange(length) * n) // length
    if length == 1:
        return np.array([rng.integers(n)])
    m = min(max_skip, (n - 1) // (length - 1))
    gaps = rng.integers(1, m + 1, size=length - 1)
    start = rng.integers(0, n - int(gaps.sum()))  # last position = start + sum(gaps) <= n - 1
    return start + np.concatenate([[0], np.cumsum(gaps)])


def sample_frame_indices(
    rng: np.random.Generator, annotated: Sequence[bool], clip_length: int, max_skip: int
) -> np.ndarray:
    """Frame indices (into the video) of one clip, among annotated frames only: int64 [clip_length]."""
    usable = np.flatnonzero(np.asarray(annotated, dtype=bool))
    return usable[sample_frame_positions(rng, len(usable), clip_length, max_skip)]


def choose_objects(
    mask0: tf.Tensor, key: tf.Tensor, max_objects: int, min_pixels: int = 1
) -> tuple[tf.Tensor, tf.Tensor]:
    """Picks up to K object ids visible in the first frame; returns (lut, num_objects).

    mask0: uint8 [H, W] original ids. key: stateless key [2].
    lut: uint8 [256], lut[id] = new label 1..K for the chosen ids (random order), else 0.
    num_objects: int32 scalar, how many were chosen (0 when the frame is empty).
    """
    counts = tf.math.bincount(tf.cast(tf.reshape(mask0, [-1]), tf.int32), minlength=256, maxlength=256)
    present = tf.logical_and(counts >= min_pixels, tf.range(256) > 0)  # [256], id 0 is background
    # Random order among present ids: uniform scores, absent ids pushed below every present one.
    scores = tf.random.stateless_uniform([256], seed=key) + tf.cast(present, tf.float32) * 2.0
    _, order = tf.math.top_k(scores, k=max_objects)  # [K] ids, present ones first
    num = tf.minimum(tf.reduce_sum(tf.cast(present, tf.int32)), max_objects)
    labels = tf.where(tf.range(max_objects) < num, tf.range(1, max_objects + 1), 0)  # [K]
    lut = tf.scatter_nd(order[:, None], labels, [256])  # absent ids among `order` get label 0
    return tf.cast(lut, tf.uint8), num


def relabel(masks: tf.Tensor, lut: tf.Tensor) -> tf.Tensor:
    """masks uint8 [...] of original ids -> uint8 [...] of labels via lut [256]."""
    return tf.gather(lut, tf.cast(masks, tf.int32))
