"""The deterministic, protocol-mixed, multi-host training input pipeline.

Example i of the global batch of step s is a pure function of (seed, s, i) and the
sources: every choice - dataset (by the mixing weights), video, frames, objects
and every augmentation parameter - comes from generators / stateless keys derived
from SeedSequence([seed, s, i, stream]). Hence

* resumption: `start_step=s` reproduces exactly the batches an uninterrupted run
  would give from step s on (the dataset is a range over example numbers, no
  shuffle buffer, no iterator state to checkpoint - the step is the state);
* multi-host: process p of P computes examples [p*b, (p+1)*b) of every global batch
  (b = global_batch_size / P). The processes' parts are disjoint and their
  concatenation in process order is the global batch; this is what "each host reads
  its own disjoint slice" means here (a slice of each batch, not of the files).
  `jax.make_array_from_process_local_data` puts the parts together.

Mixing: each example draws its dataset with probability weight / sum(weights), then
a uniform usable video of it. This is stateless per example, unlike
`tf.data.Dataset.sample_from_datasets`, whose choice depends on how many elements
were drawn before, which would break the (seed, s) property on resumption.

Stages: loading pixels from a Python `VideoSource` runs in `tf.numpy_function`
(sources must allow concurrent `load` calls); augmentation and object choice run as
TF ops, but for the resampling (OpenCV in a `tf.numpy_function`: it releases the
GIL); both maps are parallel with deterministic order, then batch and prefetch.
Frames stay uint8; normalisation happens on device.
"""

from __future__ import annotations

import math
from typing import Iterator, Mapping

import ml_collections
import numpy as np
import tensorflow as tf

from munet_jax.data import augment as augment_lib
from munet_jax.data import clip_sampling
from munet_jax.data.source import VideoSource

# Frame re-draws within one video whose first clip frame shows no object, then a new
# video of the same dataset (so the mixing weights hold exactly), at most this many videos.
_FRAME_REDRAWS = 5
_VIDEO_REDRAWS = 20
_NO_END = 2**62  # "infinite" range of example numbers


def usable_videos(source: VideoSource) -> list[int]:
    """Indices of videos with at least one annotated frame and at least one object."""
    usable = []
    for index in range(len(source)):
        info = source.info(index)
        if info.num_frames >= 1 and any(info.annotated) and info.object_ids:
            usable.append(index)
    return usable


def weights_from_repeats(repeats: Mapping[str, float], sources: Mapping[str, VideoSource]) -> dict[str, float]:
    """Dataset weights that draw every video of dataset d `repeats[d]` times as often.

    Equivalent to sampling uniformly from the concatenation of each dataset repeated
    repeats[d] times: weight_d = repeats[d] * (number of usable videos of d). E.g.
    {'davis2017': 5, 'youtube_vos2018': 1} is the paper's 5:1 for any dataset sizes.
    """
    missing = sorted(set(repeats) - set(sources))
    if missing:
        raise ValueError(f"unknown dataset name(s) {missing}; sources are {sorted(sources)}")
    return {name: float(r) * len(usable_videos(sources[name])) for name, r in repeats.items()}


class ClipLoader:
    """The numpy side of the pipeline: chooses and loads the raw clip of one example."""

    def __init__(self, sources: Mapping[str, VideoSource], weights: Mapping[str, float], data_cfg, seed: int):
        weights = {str(k): float(v) for k, v in weights.items()}
        unknown = sorted(set(weights) - set(sources))
        if unknown:
            raise ValueError(f"unknown dataset name(s) in weights: {unknown}; sources are {sorted(sources)}")
        unweighted = sorted(set(sources) - set(weights))
        if unweighted:
            raise ValueError(f"source(s) {unweighted} have no mixing weight; give one or leave them out")
        if not weights:
            raise ValueError("no datasets to sample from: weights is empty")
        for name, w in weights.items():
            if not (math.isfinite(w) and w > 0):
                raise ValueError(f"mixing weight of {name!r} must be a finite number > 0, got {w}")
        if not (isinstance(seed, (int, np.integer)) and seed >= 0):
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        # Sorted names: the dataset index an example draws does not depend on dict order.
        self.names = sorted(weights)
        self.sources = [sources[n] for n in self.names]
        total = sum(weights.values())
        self.probs = np.array([weights[n] / total for n in self.names])
        self.videos = []
        for name, source in zip(self.names, self.sources):
            usable = usable_videos(source)
            if not usable:
                raise ValueError(
                    f"source {name!r} ({len(source)} videos) has no usable video: each needs an annotated "
                    "frame and at least one object id")
            self.videos.append(np.array(usable))
        self.infos = [{int(v): s.info(int(v)) for v in vids} for s, vids in zip(self.sources, self.videos)]
        self.seed = int(seed)
        self.clip_length = int(data_cfg.clip_length)
        self.max_skip = int(data_cfg.max_skip)

    def choose(self, rng: np.random.Generator) -> tuple[int, int]:
        """(dataset index into self.names, video index into that source)."""
        d = int(rng.choice(len(self.names), p=self.probs))
        return d, int(self.videos[d][rng.integers(len(self.videos[d]))])

    def load(self, step: int, index: int):
        """Raw clip of example `index` of step `step`.

        Returns frames uint8 [n, H, W, 3], masks uint8 [n, H, W] (original ids), the
        dataset index, the video index and the augmentation key int64 [2]; n =
        clip_length, or 1 for a video with a single annotated frame (a static image).
        A clip whose first frame has no object is re-drawn from the same generator, as
        STM-style loaders do (XMem: up to 5 frame re-draws, then another video).
        """
        step, index = int(step), int(index)
        rng = clip_sampling.example_rng(self.seed, step, index)
        d, video = self.choose(rng)
        for _ in range(_VIDEO_REDRAWS):
            info = self.infos[d][video]
            single = sum(info.annotated) == 1
            for _ in range(_FRAME_REDRAWS):
                length = 1 if single else self.clip_length
                frame_idx = clip_sampling.sample_frame_indices(rng, info.annotated, length, self.max_skip)
                frames, masks = self.sources[d].load(video, [int(f) for f in frame_idx])
                if masks[0].any():
                    key = clip_sampling.example_key(self.seed, step, index)
                    return (np.ascontiguousarray(frames, np.uint8), np.ascontiguousarray(masks, np.uint8),
                            np.int32(d), np.int32(video), key)
                if single:
                    break  # the same frame again would not help
            video = int(self.videos[d][rng.integers(len(self.videos[d]))])
        raise RuntimeError(
            f"dataset {self.names[d]!r}: no clip with an object in its first frame after "
            f"{_VIDEO_REDRAWS} videos x {_FRAME_REDRAWS} frame draws (seed {self.seed}, step {step}, "
            f"example {index}); are its masks empty?")


def _validate(data_cfg, global_batch_size: int, process_index: int, process_count: int, start_step: int) -> None:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} must lie in [0, process_count={process_count})")
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size {global_batch_size} must be a positive multiple of process_count {process_count}")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    if data_cfg.clip_length < 1 or data_cfg.max_skip < 1:
        raise ValueError(f"clip_length and max_skip must be >= 1, got {data_cfg.clip_length}, {data_cfg.max_skip}")
    if not 1 <= data_cfg.max_objects <= 255:
        raise ValueError(f"max_objects must lie in 1..255, got {data_cfg.max_objects}")
    if len(data_cfg.crop_size) != 2 or min(data_cfg.crop_size) < 1:
        raise ValueError(f"crop_size must be (height, width) >= 1, got {data_cfg.crop_size}")
    augment_lib.validate(data_cfg.augment)


def _augment_and_select(frames, masks, key, data_cfg):
    """Augments and picks objects; re-draws the geometry while the first frame is empty.

    Returns frames uint8 [L, h, w, 3], masks uint8 [L, h, w] (labels 0..K), num_objects
    int32. After `augment.max_attempts` empty draws the last one is kept with
    num_objects = 0 (all slots invalid); the loss weighs objects by `object_valid`.
    """
    crop = tuple(int(v) for v in data_cfg.crop_size)
    length, k = int(data_cfg.clip_length), int(data_cfg.max_objects)

    def attempt(a):
        akey = augment_lib.fold(key, 1000 + a)  # one independent key per attempt
        f, m = augment_lib.augment_clip(frames, masks, akey, data_cfg.augment, crop, length)
        lut, num = clip_sampling.choose_objects(
            m[0], augment_lib.fold(akey, augment_lib.TAG_OBJECTS), k, int(data_cfg.min_object_pixels))
        return f, clip_sampling.relabel(m, lut), num

    f0, m0, n0 = attempt(tf.constant(0))
    _, f, m, num = tf.while_loop(
        lambda a, f, m, n: tf.logical_and(tf.equal(n, 0), a + 1 < int(data_cfg.augment.max_attempts)),
        lambda a, f, m, n: (a + 1, *attempt(a + 1)),
        (tf.constant(0), f0, m0, n0))
    return f, m, num


def make_train_dataset(
    sources: Mapping[str, VideoSource],
    weights: Mapping[str, float],
    data_cfg: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    num_steps: int | None = None,
) -> tf.data.Dataset:
    """The tf.data.Dataset behind `make_train_iterator` (one element = this process's batch)."""
    _validate(data_cfg, global_batch_size, process_index, process_count, start_step)
    loader = ClipLoader(sources, weights, data_cfg, seed)
    b = global_batch_size // process_count
    k = int(data_cfg.max_objects)
    parallel = data_cfg.num_parallel_calls or tf.data.AUTOTUNE
    end = _NO_END if num_steps is None else (start_step + int(num_steps)) * b

    def load(number):
        # Local example number -> (step, index in the global batch).
        step, index = number // b, process_index * b + number % b
        frames, masks, d, v, key = tf.numpy_function(
            loader.load, [step, index], [tf.uint8, tf.uint8, tf.int32, tf.int32, tf.int64], stateful=False)
        frames.set_shape([None, None, None, 3])
        masks.set_shape([None, None, None])
        key.set_shape([2])
        return frames, masks, d, v, key

    def augment(frames, masks, d, v, key):
        frames, masks, num = _augment_and_select(frames, masks, key, data_cfg)
        d.set_shape([])
        v.set_shape([])
        return {
            "frames": frames,  # uint8 [L, h, w, 3]
            "masks": masks,  # uint8 [L, h, w], 0 = background, 1..K the chosen objects
            "object_valid": tf.range(k) < num,  # bool [K]
            "num_objects": tf.cast(num, tf.int32),
            "dataset_index": d,  # int32, into sorted(weights)
            "video_index": v,  # int32, into that source
        }

    ds = tf.data.Dataset.range(start_step * b, end)
    ds = ds.map(load, num_parallel_calls=parallel, deterministic=True)
    ds = ds.map(augment, num_parallel_calls=parallel, deterministic=True)
    ds = ds.batch(b, drop_remainder=True)
    ds = ds.prefetch(int(data_cfg.prefetch))
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)


def make_train_iterator(
    sources: Mapping[str, VideoSource],
    weights: Mapping[str, float],
    data_cfg: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    num_steps: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's part of every global batch from `start_step` on, as numpy dicts.

    Keys (b = global_batch_size // process_count, L = clip_length, K = max_objects):
      frames uint8 [b, L, h, w, 3], masks uint8 [b, L, h, w] (0..K), object_valid bool [b, K],
      num_objects int32 [b], dataset_index int32 [b] (into sorted(weights)), video_index int32 [b].
    `num_steps` None: endless. Weights are keyed like `sources`.
    """
    ds = make_train_dataset(
        sources, weights, data_cfg, global_batch_size=global_batch_size, seed=seed, start_step=start_step,
        process_index=process_index, process_count=process_count, num_steps=num_steps)
    return iter(ds.as_numpy_iterator())
