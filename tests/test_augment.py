"""Clip augmentation (munet_jax.data.augment): geometry shared by image and mask, nearest masks."""

import math

import numpy as np
import pytest
import tensorflow as tf

from munet_jax.data import augment
from munet_jax.data.config import augment_config


def _cfg(**overrides):
    """No augmentation at all unless overridden (identity geometry, no colour change)."""
    c = augment_config()
    c.scale_range = (1.0, 1.0)
    c.hflip_prob = 0.0
    c.brightness = c.contrast = c.saturation = c.hue = 0.0
    c.rotation_deg = c.shear_deg = c.translate = 0.0
    c.scale = (1.0, 1.0)
    c.static.rotation_deg = c.static.shear_deg = c.static.translate = 0.0
    c.static.scale = (1.0, 1.0)
    for name, value in overrides.items():
        target = c
        *path, leaf = name.split("__")
        for part in path:
            target = target[part]
        target[leaf] = value
    return c


def _square_clip(length, h=40, w=56, box=(6, 18, 8, 22)):
    """White square on black: frames uint8 [L, h, w, 3], masks uint8 [L, h, w] (id 1 on the square)."""
    y0, y1, x0, x1 = box
    frames = np.zeros((length, h, w, 3), np.uint8)
    masks = np.zeros((length, h, w), np.uint8)
    frames[:, y0:y1, x0:x1] = 255
    masks[:, y0:y1, x0:x1] = 1
    return frames, masks


def _run(frames, masks, cfg, key=(1, 2), crop=None, length=None):
    crop = crop or frames.shape[1:3]
    length = length or frames.shape[0]
    f, m = augment.augment_clip(tf.constant(frames), tf.constant(masks), tf.constant(key, tf.int64), cfg, crop, length)
    return f.numpy(), m.numpy()


def _boundary_band(region):
    """Pixels within one pixel (8-neighbourhood) of the region's boundary: bool [..., h, w]."""
    pad = np.pad(region, [(0, 0)] * (region.ndim - 2) + [(1, 1), (1, 1)])
    h, w = region.shape[-2:]
    shifts = [pad[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    dilated, eroded = np.any(shifts, axis=0), np.all(shifts, axis=0)
    return dilated & ~eroded


def test_identity_settings_leave_clip_unchanged():
    frames, masks = _square_clip(3)
    f, m = _run(frames, masks, _cfg())
    np.testing.assert_array_equal(f, frames)
    np.testing.assert_array_equal(m, masks)


def test_flip_moves_off_centre_square_to_mirrored_place():
    frames, masks = _square_clip(3)
    f, m = _run(frames, masks, _cfg(hflip_prob=1.0))
    np.testing.assert_array_equal(f, frames[:, :, ::-1])
    np.testing.assert_array_equal(m, masks[:, :, ::-1])
    assert not np.array_equal(m, masks)  # the square is off-centre, so the flip is visible


def test_quarter_turn_is_a_clockwise_rot90():
    # Rotation by +90 deg in image coordinates (x right, y down) maps right -> down: clockwise.
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
    masks = rng.integers(0, 4, (1, 16, 16), dtype=np.uint8)
    t = augment.output_to_input_transforms(
        (16, 16), 1.0, tf.zeros([2]), tf.constant(False),
        tf.constant([math.pi / 2]), tf.zeros([1]), tf.ones([1]), tf.zeros([1, 2]))
    f, m = augment.warp(tf.constant(frames), tf.constant(masks), t, (16, 16))
    np.testing.assert_allclose(f.numpy(), np.rot90(frames, k=-1, axes=(1, 2)), atol=1e-3)
    np.testing.assert_array_equal(m.numpy(), np.rot90(masks, k=-1, axes=(1, 2)))


def test_closed_form_inverse_matches_numpy_composition():
    """The [L, 8] rows equal the inverse of the forward chain built and inverted in numpy."""
    h, w = 20, 24
    resize, off, flip = 1.3, np.array([4.5, 9.25]), True
    rot, shear, zoom = np.array([0.3, -0.5]), np.array([0.1, -0.2]), np.array([1.1, 0.9])
    trans = np.array([[1.5, -2.0], [0.0, 3.0]])
    rows = augment.output_to_input_transforms(
        (h, w), resize, tf.constant(off, tf.float32), tf.constant(flip),
        tf.constant(rot, tf.float32), tf.constant(shear, tf.float32), tf.constant(zoom, tf.float32),
        tf.constant(trans, tf.float32)).numpy()
    cx, cy = (w - 1) / 2, (h - 1) / 2
    for i in range(2):
        def mat(a, b, c, d, e, f):
            return np.array([[a, b, c], [d, e, f], [0, 0, 1.0]])
        to_resized = mat(resize, 0, 0.5 * resize - 0.5, 0, resize, 0.5 * resize - 0.5)  # pixel centres
        to_crop = mat(1, 0, -off[1], 0, 1, -off[0])
        flip_m = mat(-1, 0, w - 1, 0, 1, 0)
        c, s = math.cos(rot[i]), math.sin(rot[i])
        linear = zoom[i] * np.array([[c, -s], [s, c]]) @ np.array([[1, math.tan(shear[i])], [0, 1]])
        about_centre = mat(*linear[0], 0, *linear[1], 0) @ mat(1, 0, -cx, 0, 1, -cy)
        affine = mat(1, 0, cx + trans[i, 1], 0, 1, cy + trans[i, 0]) @ about_centre
        inverse = np.linalg.inv(affine @ flip_m @ to_crop @ to_resized)
        np.testing.assert_allclose(rows[i], np.concatenate([inverse[0], inverse[1], [0, 0]]), atol=1e-4)


@pytest.mark.parametrize("per_frame", [False, True])
def test_random_geometry_moves_image_and_mask_together(per_frame):
    frames, masks = _square_clip(4)
    cfg = _cfg(scale_range=(1.0, 1.5), hflip_prob=0.5, rotation_deg=30.0, shear_deg=10.0, scale=(0.8, 1.2),
               translate=0.1, per_frame_jitter=per_frame)
    moved = 0
    for seed in range(6):
        f, m = _run(frames, masks, cfg, key=(seed, 5), crop=(32, 32))
        assert f.shape == (4, 32, 32, 3) and m.shape == (4, 32, 32)
        bright = f.mean(-1) > 127
        region = m == 1
        disagree = bright ^ region
        assert not np.any(disagree & ~_boundary_band(region)), "image and mask geometry differ"
        assert region.any(axis=(1, 2)).sum() >= 1
        moved += int(not np.array_equal(region, masks[:, :32, :32] == 1))
        same_geometry = all(np.array_equal(region[0], region[t]) for t in range(4))
        assert same_geometry != per_frame  # shared unless per_frame_jitter
    assert moved == 6


@pytest.mark.parametrize("seed", range(4))
def test_opencv_warp_matches_tensorflow_op(seed):
    # `warp` (OpenCV) against `warp_tf` (ImageProjectiveTransformV3) on a 480x854 clip with the
    # default augmentation's geometry: resize, crop, flip, rotation, shear, zoom, translation.
    import cv2

    from munet_jax.data.config import data_config

    rng = np.random.default_rng(seed)
    # A smooth image and an object mask of several ids. (Measured: values agree to 0.016 levels,
    # masks exactly; the bounds leave room for where a sample lies half-way between two ids.)
    base = rng.integers(0, 256, (6, 60, 107, 3), dtype=np.uint8)
    frames = np.stack([cv2.resize(f, (854, 480), interpolation=cv2.INTER_CUBIC) for f in base])
    yy, xx = np.mgrid[:480, :854]
    masks = np.zeros((6, 480, 854), np.uint8)
    for object_id in (1, 2, 5):
        cy, cx, r = rng.uniform(80, 400), rng.uniform(80, 770), rng.uniform(30, 90)
        masks[:, (yy - cy) ** 2 + ((xx - cx) * 0.7) ** 2 < r**2] = object_id
    cfg = data_config("1").augment
    cfg.per_frame_jitter = True
    key = tf.constant([seed, 7], tf.int64)
    transforms = augment.random_transforms(key, tf.constant([480, 854]), cfg, (400, 400), 6, False)
    got_f, got_m = [t.numpy() for t in augment.warp(tf.constant(frames), tf.constant(masks), transforms, (400, 400))]
    want_f, want_m = [t.numpy() for t in augment.warp_tf(tf.constant(frames), tf.constant(masks), transforms, (400, 400))]
    assert got_f.shape == want_f.shape == (6, 400, 400, 3) and got_f.dtype == want_f.dtype == np.float32
    assert got_m.shape == want_m.shape == (6, 400, 400) and got_m.dtype == np.uint8
    error = np.abs(got_f - want_f)
    assert error.max() < 0.1, error.max()
    assert set(np.unique(got_m)) <= {0, 1, 2, 5}
    # Nearest neighbours differ only where a sample position lies (within rounding) half-way
    # between two pixels of different ids.
    differ = got_m != want_m
    padded = np.pad(want_m, ((0, 0), (1, 1), (1, 1)), mode="edge")
    on_edge = np.zeros_like(differ)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            on_edge |= padded[:, 1 + dy:401 + dy, 1 + dx:401 + dx] != want_m
    assert differ.mean() < 1e-4 and not np.any(differ & ~on_edge), (differ.mean(), np.sum(differ & ~on_edge))


def test_masks_stay_original_ids_under_warps():
    rng = np.random.default_rng(0)
    masks = np.zeros((3, 40, 40), np.uint8)
    masks[:, 5:25, 5:20] = 3
    masks[:, 15:35, 18:38] = 7
    frames = rng.integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    cfg = _cfg(scale_range=(1.0, 1.4), rotation_deg=25.0, shear_deg=10.0, scale=(0.9, 1.2), translate=0.1,
               per_frame_jitter=True, brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05)
    for seed in range(4):
        _, m = _run(frames, masks, cfg, key=(seed, 0), crop=(32, 32))
        values = set(np.unique(m).tolist())
        assert values <= {0, 3, 7} and len(values) >= 2


def test_static_image_becomes_distinct_warps_with_matching_masks():
    frames, masks = _square_clip(1)
    cfg = _cfg()  # video ranges all zero: any motion must come from the static ranges
    cfg.static.rotation_deg, cfg.static.scale, cfg.static.translate = 20.0, (0.9, 1.1), 0.1
    f, m = _run(frames, masks, cfg, crop=(40, 56), length=5)
    assert f.shape == (5, 40, 56, 3) and m.shape == (5, 40, 56)
    for t in range(5):
        region = m[t] == 1
        assert region.any()
        assert not np.any(((f[t].mean(-1) > 127) ^ region) & ~_boundary_band(region))
        for u in range(t):
            assert not np.array_equal(m[t], m[u]) and not np.array_equal(f[t], f[u])
    # The same settings on a video clip of identical frames give identical (unwarped) frames.
    _, video_masks = _run(*_square_clip(5), cfg, crop=(40, 56), length=5)
    np.testing.assert_array_equal(video_masks, _square_clip(5)[1])


def _luma(x):
    return x @ np.array([0.299, 0.587, 0.114])


def test_colour_jitter_properties():
    rng = np.random.default_rng(0)
    frames = rng.uniform(60, 190, (3, 8, 8, 3)).astype(np.float32)  # away from the clip limits
    key = tf.constant([4, 2], tf.int64)

    def jitter(per_frame=False, images=frames, **strengths):
        cfg = _cfg(**strengths)
        return augment.color_jitter(tf.constant(images), key, cfg, tf.constant(per_frame)).numpy()

    np.testing.assert_allclose(jitter(), frames, atol=1e-3)  # zero strengths: identity
    shifted = jitter(brightness=0.2) - frames  # brightness: one constant per clip
    assert np.ptp(shifted) < 1e-3 and abs(shifted.flat[0]) > 1e-2
    per = jitter(per_frame=True, brightness=0.2) - frames
    assert np.all(np.ptp(per.reshape(3, -1), axis=1) < 1e-3) and np.ptp(per[:, 0, 0, 0]) > 1e-2
    # Hue rotation keeps luma (Y of YIQ) and changes colour.
    hued = jitter(hue=0.2)
    np.testing.assert_allclose(_luma(hued), _luma(frames), atol=0.05)
    assert np.abs(hued - frames).max() > 1.0
    # Grey pixels are fixed points of saturation and hue changes.
    grey = np.repeat(frames[..., :1], 3, axis=-1)
    np.testing.assert_allclose(jitter(images=grey, saturation=0.5, hue=0.3), grey, atol=1e-2)
    # Contrast scales deviations from the mean luma by one factor.
    contrasted = jitter(contrast=0.5)
    dev_in = frames - _luma(frames).mean(axis=(1, 2))[:, None, None, None]
    dev_out = contrasted - _luma(frames).mean(axis=(1, 2))[:, None, None, None]
    ratio = dev_out / dev_in
    assert np.ptp(ratio[np.abs(dev_in) > 5]) < 1e-2 and abs(ratio.flat[0] - 1) > 1e-3


def test_validate_rejects_bad_settings():
    augment.validate(augment_config())
    for name, value in [("scale_range", (0.0, 1.0)), ("hflip_prob", 1.5), ("hue", -0.1), ("max_attempts", 0)]:
        with pytest.raises(ValueError):
            augment.validate(_cfg(**{name: value}))
