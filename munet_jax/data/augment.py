"""Clip augmentation inside tf.data: TensorFlow graph ops, and OpenCV for the resampling.

All randomness is stateless, drawn from one key per example, so an augmented clip
is a pure function of (raw clip, key, config).

Geometry. Random resize, crop, horizontal flip and the affine transform are
composed into ONE affine matrix per frame that maps output pixels to raw
pixels (in `ImageProjectiveTransformV3`'s [L, 8] row form); frames are then
resampled once (bilinear, in float32) and masks once (nearest) by OpenCV's
`warpAffine` in a `tf.numpy_function` (`warp`; 3-4x faster than the TF op,
which `warp_tf` keeps as the tests' reference). Composing instead of resizing,
cropping and warping in turn avoids blurring the frames three times and keeps
image and mask geometry identical by construction. Pixels that come from outside the frame are black in
the image and background (0) in the mask. Downscaling is not anti-aliased (the
resize factor for DAVIS 480p to 400x400 is 0.83..1.25, so aliasing is mild).

Coordinates: x = column, y = row, integer coordinates at pixel centres (the
convention of ImageProjectiveTransformV3 and of OpenCV).

Static images (one-frame "videos", protocol 3-pretrain) become a clip of
`clip_length` independent affine warps of the same image, as STM pretrains; the
resize, crop and flip stay shared by the clip.
"""

from __future__ import annotations

import math

import cv2
import ml_collections
import numpy as np
import tensorflow as tf

# Tags folded into the example key: one independent stream per kind of parameter.
_TAG_SCALE, _TAG_CROP_Y, _TAG_CROP_X, _TAG_FLIP = 1, 2, 3, 4
_TAG_ROT, _TAG_SHEAR, _TAG_ZOOM, _TAG_TX, _TAG_TY = 5, 6, 7, 8, 9
_TAG_BRIGHT, _TAG_CONTRAST, _TAG_SAT, _TAG_HUE = 10, 11, 12, 13
TAG_OBJECTS = 14  # object choice (clip_sampling.choose_objects)


def fold(key: tf.Tensor, tag: int) -> tf.Tensor:
    """An independent stateless key [2] for stream `tag` of this example."""
    return tf.random.experimental.stateless_fold_in(tf.cast(key, tf.int64), tag)


def _uniform(key: tf.Tensor, tag: int, shape, low, high) -> tf.Tensor:
    u = tf.random.stateless_uniform(shape, seed=fold(key, tag), dtype=tf.float32)
    return tf.cast(low, tf.float32) + (tf.cast(high, tf.float32) - tf.cast(low, tf.float32)) * u


def _per_frame_or_shared(values: tf.Tensor, per_frame: tf.Tensor) -> tf.Tensor:
    """values [L]: kept per frame, or values[0] for every frame."""
    return tf.where(per_frame, values, tf.broadcast_to(values[:1], tf.shape(values)))


def output_to_input_transforms(
    crop_hw: tuple[int, int],
    resize: tf.Tensor,
    offset_yx: tf.Tensor,
    flip: tf.Tensor,
    rotation: tf.Tensor,
    shear: tf.Tensor,
    zoom: tf.Tensor,
    translate_yx: tf.Tensor,
) -> tf.Tensor:
    """The [L, 8] ImageProjectiveTransformV3 rows mapping output pixels to raw pixels.

    Forward chain (raw -> output): resize by `resize` (scalar), crop the window at
    `offset_yx` ([2], resized pixels), flip (bool scalar) within the crop, then the
    affine about the crop centre c: p_out = c + t + zoom * Rot(rotation) * ShearX(shear) (p - c)
    (rotation, shear: radians [L]; zoom [L]; translate_yx [L, 2] pixels).
    The rows are its inverse, written out in closed form.
    """
    h, w = float(crop_hw[0]), float(crop_hw[1])
    cy, cx = (h - 1.0) / 2.0, (w - 1.0) / 2.0
    cos, sin, tan = tf.cos(rotation), tf.sin(rotation), tf.tan(shear)
    # Inverse of the linear part zoom * R * Sh: (1/zoom) * Sh^-1 * R^T, entries [L].
    i00 = (cos + tan * sin) / zoom
    i01 = (sin - tan * cos) / zoom
    i10 = -sin / zoom
    i11 = cos / zoom
    # Crop coordinates of an output pixel: p_crop = Inv (p_out - c - t) + c.
    ux, uy = cx + translate_yx[:, 1], cy + translate_yx[:, 0]
    b0 = cx - (i00 * ux + i01 * uy)
    b1 = cy - (i10 * ux + i11 * uy)
    # Flip within the crop: x -> (w - 1) - x.
    sign = tf.where(flip, -1.0, 1.0)
    shift = tf.where(flip, w - 1.0, 0.0)
    i00, i01, b0 = sign * i00, sign * i01, sign * b0 + shift
    # Resized -> raw pixel centres: x_raw = (x_resized + 0.5) / resize - 0.5.
    resize = tf.cast(resize, tf.float32)
    a0, a1 = i00 / resize, i01 / resize
    a2 = (b0 + offset_yx[1] + 0.5) / resize - 0.5
    c0, c1 = i10 / resize, i11 / resize
    c2 = (b1 + offset_yx[0] + 0.5) / resize - 0.5
    zeros = tf.zeros_like(a0)
    return tf.stack([a0, a1, a2, c0, c1, c2, zeros, zeros], axis=1)


def _warp_with_opencv(frames: np.ndarray, masks: np.ndarray, transforms: np.ndarray, out_h: int, out_w: int):
    """`warp` in NumPy: OpenCV's affine resampling, one frame at a time (it releases the GIL).

    OpenCV resamples 3-4x faster than `ImageProjectiveTransformV3` (6 frames 480x854 ->
    400x400 on one core: ~12 ms against ~47 ms): it evaluates the coordinates once per
    pixel rather than once per channel, and vectorises. Same convention (integer
    coordinates at pixel centres, the row maps output to input), same constant-0 border.
    """
    n = frames.shape[0]
    out = np.empty((n, out_h, out_w, 3), np.float32)
    out_masks = np.empty((n, out_h, out_w), np.uint8)
    for i in range(n):
        matrix = transforms[i, :6].reshape(2, 3).astype(np.float64)  # the rows' projective part is 0
        out[i] = cv2.warpAffine(frames[i].astype(np.float32), matrix, (out_w, out_h),
                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                                borderValue=0)
        out_masks[i] = cv2.warpAffine(np.ascontiguousarray(masks[i]), matrix, (out_w, out_h),
                                      flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                                      borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out, out_masks


def warp(frames: tf.Tensor, masks: tf.Tensor, transforms: tf.Tensor, out_hw: tuple[int, int]):
    """Resamples frames (bilinear, float32 [L, h, w, 3]) and masks (nearest, uint8 [L, h, w]).

    frames uint8/float [L, H, W, 3], masks uint8 [L, H, W], transforms float32 [L, 8] (affine:
    the last two entries 0). Runs OpenCV in a `tf.numpy_function` (`_warp_with_opencv`);
    `warp_tf` is the same resampling as TensorFlow ops.
    """
    h, w = int(out_hw[0]), int(out_hw[1])
    out, out_masks = tf.numpy_function(
        lambda f, m, t: _warp_with_opencv(f, m, t, h, w), [frames, masks, tf.cast(transforms, tf.float32)],
        [tf.float32, tf.uint8], stateful=False)
    out.set_shape([frames.shape[0], h, w, 3])
    out_masks.set_shape([masks.shape[0], h, w])
    return out, out_masks


def warp_tf(frames: tf.Tensor, masks: tf.Tensor, transforms: tf.Tensor, out_hw: tuple[int, int]):
    """`warp` with `ImageProjectiveTransformV3` (the reference the tests hold OpenCV's to)."""
    shape = tf.constant(out_hw, tf.int32)
    frames = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(frames, tf.float32), transforms=transforms, output_shape=shape,
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
    masks = tf.raw_ops.ImageProjectiveTransformV3(
        images=masks[..., None], transforms=transforms, output_shape=shape,
        fill_value=0.0, interpolation="NEAREST", fill_mode="CONSTANT")
    return frames, masks[..., 0]


def random_transforms(key, raw_hw, cfg: ml_collections.ConfigDict, crop_hw, clip_length: int, static) -> tf.Tensor:
    """Draws the geometry of one clip: float32 [L, 8] output -> raw transforms."""
    n = clip_length
    per_frame = tf.logical_or(tf.cast(static, tf.bool), bool(cfg.per_frame_jitter))
    raw_h, raw_w = tf.cast(raw_hw[0], tf.float32), tf.cast(raw_hw[1], tf.float32)
    # Smallest scale at which the crop fits, times u ~ U(scale_range).
    cover = tf.maximum(crop_hw[0] / raw_h, crop_hw[1] / raw_w)
    resize = cover * _uniform(key, _TAG_SCALE, [], cfg.scale_range[0], cfg.scale_range[1])
    room_y = tf.maximum(raw_h * resize - crop_hw[0], 0.0)
    room_x = tf.maximum(raw_w * resize - crop_hw[1], 0.0)
    offset = tf.stack([_uniform(key, _TAG_CROP_Y, [], 0.0, room_y), _uniform(key, _TAG_CROP_X, [], 0.0, room_x)])
    flip = _uniform(key, _TAG_FLIP, [], 0.0, 1.0) < cfg.hflip_prob

    is_static = tf.cast(static, tf.bool)

    def pick(video_value, static_value):  # the static-image range when `static`, else the video one
        return tf.where(is_static, float(static_value), float(video_value))

    rot_max = pick(cfg.rotation_deg, cfg.static.rotation_deg) * (math.pi / 180.0)
    shear_max = pick(cfg.shear_deg, cfg.static.shear_deg) * (math.pi / 180.0)
    zoom_lo, zoom_hi = pick(cfg.scale[0], cfg.static.scale[0]), pick(cfg.scale[1], cfg.static.scale[1])
    shift = pick(cfg.translate, cfg.static.translate)
    rotation = _per_frame_or_shared(_uniform(key, _TAG_ROT, [n], -rot_max, rot_max), per_frame)
    shear = _per_frame_or_shared(_uniform(key, _TAG_SHEAR, [n], -shear_max, shear_max), per_frame)
    zoom = _per_frame_or_shared(_uniform(key, _TAG_ZOOM, [n], zoom_lo, zoom_hi), per_frame)
    ty = _per_frame_or_shared(_uniform(key, _TAG_TY, [n], -shift, shift), per_frame) * crop_hw[0]
    tx = _per_frame_or_shared(_uniform(key, _TAG_TX, [n], -shift, shift), per_frame) * crop_hw[1]
    return output_to_input_transforms(
        crop_hw, resize, offset, flip, rotation, shear, zoom, tf.stack([ty, tx], axis=1))


# ITU-R 601 luma weights (greyscale for contrast and saturation) and the RGB <-> YIQ
# matrices (a hue shift is a rotation of the IQ chroma plane).
_LUMA = (0.299, 0.587, 0.114)
_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def color_jitter(frames: tf.Tensor, key, cfg: ml_collections.ConfigDict, per_frame) -> tf.Tensor:
    """Brightness, contrast, saturation, hue on float frames [L, h, w, 3] in [0, 255] (same shape out).

    Each step is affine in RGB, so the four compose into one 3x3 matrix and offset per
    frame, applied in a single pass and clipped once at the end (an HSV round trip
    costs about as much as the warp itself):
      brightness  x + 255 b                      b ~ U(-B, B)
      contrast    f x + (1 - f) mean(grey(x))    f ~ U(1 - C, 1 + C)
      saturation  s x + (1 - s) grey(x)          s ~ U(1 - S, 1 + S)
      hue         YIQ^-1 Rot_IQ(2 pi d) YIQ x    d ~ U(-H, H) turns
    """
    n = tf.shape(frames)[0]
    per_frame = tf.logical_or(tf.cast(per_frame, tf.bool), bool(cfg.per_frame_jitter))

    def draw(tag, low, high):  # [L], shared unless per_frame
        return _per_frame_or_shared(_uniform(key, tag, [n], low, high), per_frame)

    b = 255.0 * draw(_TAG_BRIGHT, -cfg.brightness, cfg.brightness)[:, None]  # [L, 1]
    f = draw(_TAG_CONTRAST, 1.0 - cfg.contrast, 1.0 + cfg.contrast)[:, None, None]  # [L, 1, 1]
    s = draw(_TAG_SAT, 1.0 - cfg.saturation, 1.0 + cfg.saturation)[:, None, None]
    angle = draw(_TAG_HUE, -cfg.hue, cfg.hue) * (2.0 * math.pi)  # [L]
    luma = tf.constant(_LUMA, tf.float32)  # [3]
    eye = tf.eye(3, batch_shape=[1])
    saturate = s * eye + (1.0 - s) * tf.ones([1, 3, 1]) * luma[None, None, :]  # [L, 3, 3]
    yiq = tf.constant(_RGB_TO_YIQ, tf.float32)
    cos, sin, one, zero = tf.cos(angle), tf.sin(angle), tf.ones_like(angle), tf.zeros_like(angle)
    rot = tf.reshape(tf.stack([one, zero, zero, zero, cos, -sin, zero, sin, cos], axis=1), [-1, 3, 3])
    hue = tf.linalg.inv(yiq)[None] @ rot @ yiq[None]  # [L, 3, 3]
    colour = hue @ saturate  # [L, 3, 3], applied after brightness and contrast
    grey_mean = tf.reduce_mean(tf.tensordot(frames, luma, axes=1), axis=[1, 2])[:, None] + b  # [L, 1]
    # x' = colour (f (x + b) + (1 - f) grey_mean): matrix f * colour, offset colour @ (...)1.
    matrix = f * colour  # [L, 3, 3]
    offset = tf.linalg.matvec(colour, tf.tile(f[:, :, 0] * b + (1.0 - f[:, :, 0]) * grey_mean, [1, 3]))  # [L, 3]
    out = tf.einsum("lhwc,ldc->lhwd", frames, matrix) + offset[:, None, None, :]
    return tf.clip_by_value(out, 0.0, 255.0)


def augment_clip(frames, masks, key, cfg: ml_collections.ConfigDict, crop_hw, clip_length: int):
    """Augments one raw clip; returns (frames uint8 [L, h, w, 3], masks uint8 [L, h, w]).

    frames uint8 [n, H, W, 3], masks uint8 [n, H, W] with n = clip_length (a video clip)
    or n = 1 (a static image, expanded into `clip_length` independent warps).
    """
    crop_hw = (int(crop_hw[0]), int(crop_hw[1]))
    n = tf.shape(frames)[0]
    static = tf.logical_and(tf.equal(n, 1), clip_length > 1)
    # A static image is repeated to [L, H, W, ...] (ImageProjectiveTransformV3 wants one
    # image per transform); a video clip is used as it is, without a copy.
    frames, masks = tf.cond(
        static, lambda: (tf.repeat(frames, clip_length, axis=0), tf.repeat(masks, clip_length, axis=0)),
        lambda: (frames, masks))
    transforms = random_transforms(key, tf.shape(frames)[1:3], cfg, crop_hw, clip_length, static)
    out, out_masks = warp(frames, masks, transforms, crop_hw)
    jitter = cfg.brightness > 0 or cfg.contrast > 0 or cfg.saturation > 0 or cfg.hue > 0
    if jitter:
        out = color_jitter(out, key, cfg, static)
    out = tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)
    out.set_shape([clip_length, *crop_hw, 3])
    out_masks.set_shape([clip_length, *crop_hw])
    return out, out_masks


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Clear errors for augmentation settings that cannot work."""
    lo, hi = cfg.scale_range
    if not 0 < lo <= hi:
        raise ValueError(f"augment.scale_range must satisfy 0 < low <= high, got {tuple(cfg.scale_range)}")
    if not 0.0 <= cfg.hflip_prob <= 1.0:
        raise ValueError(f"augment.hflip_prob must lie in [0, 1], got {cfg.hflip_prob}")
    for name in ("brightness", "contrast", "saturation", "hue", "rotation_deg", "shear_deg", "translate"):
        if cfg[name] < 0:
            raise ValueError(f"augment.{name} must be >= 0, got {cfg[name]}")
    for scale in (cfg.scale, cfg.static.scale):
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"affine scale range must satisfy 0 < low <= high, got {tuple(scale)}")
    if cfg.shear_deg >= 90 or cfg.static.shear_deg >= 90:
        raise ValueError("augment shear must be below 90 degrees")
    if cfg.max_attempts < 1:
        raise ValueError(f"augment.max_attempts must be >= 1, got {cfg.max_attempts}")
