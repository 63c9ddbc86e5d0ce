"""Defaults of the `data` config subtree: clip shape, sampling, augmentation, dataset mix.

The paper (Sec. 3.5) fixes: 6 consecutive frames per training clip (1 reference +
5 queries), random resize and crop to 400x400, flip, colour jitter and affine
augmentation. It gives no augmentation strengths; the values below follow
STM-style trainers (STM, XMem) and are marked as such. Dataset names used as keys
of `weights` are the keys of the `sources` dict passed to the pipeline:

    'davis2017'        DAVIS 2017 train (60 videos)
    'youtube_vos2018'  YouTube-VOS 2018 train (3471 videos, annotated every 5th frame)
    'static_images'    image + mask datasets (one-frame "videos"; protocol 3 pretraining)
"""

from __future__ import annotations

import ml_collections

DAVIS17_TRAIN_VIDEOS = 60
YOUTUBE_VOS18_TRAIN_VIDEOS = 3471
# Fig. 4, protocol (2): "5:1 to mix-up". As in STM's released practice (and XMem's
# `ConcatDataset([davis] * 5 + [youtube])`), DAVIS is repeated 5 times against
# YouTube-VOS: every DAVIS video is drawn 5 times as often as every YouTube-VOS video.
DAVIS_REPEAT = 5

PROTOCOLS = ("1", "2", "3-pretrain", "3-1", "3-2")


def _mix_5_to_1() -> dict[str, float]:
    # Per-example dataset choice with probability proportional to weight, then a
    # uniform video within the dataset, gives each video probability
    #   weight_d / (sum_weights * num_videos_d).
    # Weights 5 * 60 (DAVIS) : 1 * 3471 (YouTube-VOS) make that per-video probability
    # exactly 5:1 - the same distribution as sampling uniformly from the
    # concatenation [DAVIS x5, YouTube-VOS] (about 8% of clips come from DAVIS).
    # With other dataset sizes use `pipeline.weights_from_repeats`.
    return {
        "davis2017": float(DAVIS_REPEAT * DAVIS17_TRAIN_VIDEOS),
        "youtube_vos2018": float(YOUTUBE_VOS18_TRAIN_VIDEOS),
    }


def protocol_datasets(name: str) -> dict[str, float]:
    """Mixing weights {dataset name: weight} of a training protocol of Fig. 4.

    '1'           DAVIS17 train only.
    '2'           DAVIS17 + YouTube-VOS18 train, 5:1 per video (see `_mix_5_to_1`).
    '3-pretrain'  static image datasets, clips synthesised by affine warps (STM).
    '3-1'         DAVIS17 only, starting from the '3-pretrain' weights.
    '3-2'         DAVIS17 + YouTube-VOS18 (5:1), starting from the '3-pretrain' weights.
    (Which checkpoint a stage starts from belongs to the train config, not here.)
    """
    if name in ("1", "3-1"):
        return {"davis2017": 1.0}
    if name in ("2", "3-2"):
        return _mix_5_to_1()
    if name == "3-pretrain":
        return {"static_images": 1.0}
    raise ValueError(f"unknown training protocol {name!r}; expected one of {PROTOCOLS}")


def augment_config() -> ml_collections.ConfigDict:
    a = ml_collections.ConfigDict()
    # Random resize: the frame is scaled by s0 * u, u ~ U(scale_range), where s0 is the
    # smallest scale at which a crop_size window still fits inside the frame; then a
    # uniformly placed crop_size window is cut out. u = 1 keeps the most context.
    a.scale_range = (1.0, 1.5)
    a.hflip_prob = 0.5
    # Colour jitter (per clip, STM/XMem-like strengths): brightness adds U(-b, b) on [0, 1]
    # intensities; contrast / saturation scale by U(1 - c, 1 + c); hue shifts by U(-h, h) turns.
    a.brightness = 0.1
    a.contrast = 0.1
    a.saturation = 0.1
    a.hue = 0.02
    # Affine about the crop centre: rotation U(-r, r) degrees, x-shear U(-s, s) degrees,
    # zoom U(scale), translation U(-t, t) * crop side. XMem uses 15 deg / 10 deg shear.
    a.rotation_deg = 15.0
    a.shear_deg = 10.0
    a.scale = (0.95, 1.05)
    a.translate = 0.05
    # False: one geometric transform (and one colour jitter) for the whole clip.
    # True: the affine part and the colour jitter are drawn per frame (resize, crop and
    # flip stay shared), as XMem's per-frame "pair" transforms.
    a.per_frame_jitter = False
    # Static-image clips (protocol 3-pretrain): every frame is an independent affine warp
    # of the one image, with stronger ranges so the synthetic clip has real motion.
    a.static = ml_collections.ConfigDict()
    a.static.rotation_deg = 20.0
    a.static.shear_deg = 10.0
    a.static.scale = (0.9, 1.1)
    a.static.translate = 0.1
    # Geometric re-draws (new key) when no object is left in the augmented first frame.
    a.max_attempts = 5
    return a


def data_config(protocol: str = "1") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.protocol = protocol
    c.crop_size = (400, 400)  # (height, width), Sec. 3.5
    c.clip_length = 6  # frame 1 with ground truth + 5 frames to predict
    # Gap between consecutive clip frames drawn from 1..max_skip (in annotated frames;
    # YouTube-VOS train is already every 5th frame). Paper: consecutive frames -> 1.
    c.max_skip = 1
    c.max_objects = 3  # K object slots per clip
    # An object counts as present in the augmented first frame from this many pixels.
    c.min_object_pixels = 1
    c.shuffle_seed = 0
    c.weights = protocol_datasets(protocol)
    c.augment = augment_config()
    # tf.data: parallel calls for loading and augmentation (None -> AUTOTUNE), prefetch depth.
    c.num_parallel_calls = None
    c.prefetch = 2
    return c
