"""Procedural videos of textured objects that move, rotate, scale and occlude each other.

A video is described by a `Scene` (sprites, per-frame trajectories, a panning
background) and rendered with OpenCV affine warps, so rendering is a pure
function of the scene and sampling a scene is a pure function of a
`numpy.random.Generator`: the same seed gives the same pixels.

Why these ingredients: a VOS model has to (1) match appearance between the
reference frame and the query frame (each object has its own shape, colour and
texture), (2) follow motion (objects and the background move every frame),
and (3) cope with occlusion and identical-looking objects ("twins": same shape,
texture and colour, different trajectories), where appearance alone is
ambiguous and only motion separates them.

Masks hold object ids 1..N by visibility: painting runs back to front in depth
order, so the front-most object owns each pixel. Only numpy, OpenCV and the
standard library are used (no TensorFlow, no flax). Colours, textures, shape
sprites and the background come from `synthetic_textures` (SHAPE_KINDS,
TEXTURE_KINDS and procedural_texture stay importable from here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import cv2
import numpy as np

from munet_jax.data.synthetic_textures import (  # noqa: F401  (SHAPE_KINDS, TEXTURE_KINDS, procedural_texture: public here too)
    SHAPE_KINDS,
    TEXTURE_KINDS,
    panning_background,
    procedural_texture,
    random_colour,
    shape_alpha,
)


@dataclass(frozen=True)
class SceneObject:
    """One object: a sprite and where it is drawn in every frame."""

    object_id: int  # the id written into masks (1..255)
    kind: str  # shape family, one of SHAPE_KINDS (also used as the YouTube-VOS "category")
    texture: str  # texture family, one of TEXTURE_KINDS
    sprite: np.ndarray  # uint8 [S, S, 3] RGB texture, defined over the whole square
    alpha: np.ndarray  # uint8 [S, S], 255 inside the shape, 0 outside
    centers: np.ndarray  # float32 [T, 2] (x, y) frame position of the sprite centre
    angles: np.ndarray  # float32 [T] rotation in degrees (counter-clockwise)
    scales: np.ndarray  # float32 [T] isotropic scale factor
    depth: int  # painting order: larger is nearer the camera (drawn later, wins overlaps)
    appear_frame: int = 0  # not drawn before this frame (an object entering mid-video)
    twin_of: int | None = None  # id of the object whose appearance this one copies


@dataclass(frozen=True)
class Scene:
    height: int
    width: int
    background: np.ndarray  # uint8 [Hb, Wb, 3] RGB, larger than the frame so it can pan
    background_offsets: np.ndarray  # float32 [T, 2] (x, y) of the view's top-left in `background`
    objects: tuple[SceneObject, ...]
    noise_std: float = 0.0  # per-pixel Gaussian noise added to frames (not to masks)
    blur: bool = False  # a 3x3 Gaussian blur of frames (camera softness)
    noise_seed: int = 0  # seeds the per-frame noise, so rendering stays deterministic

    @property
    def num_frames(self) -> int:
        return int(self.background_offsets.shape[0])


def as_generator(rng_or_seed: np.random.Generator | int) -> np.random.Generator:
    """A Generator from a seed (int) or the Generator itself; no global random state is touched."""
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    if isinstance(rng_or_seed, (int, np.integer)) and not isinstance(rng_or_seed, bool):
        return np.random.default_rng(int(rng_or_seed))
    raise TypeError(f"expected a numpy.random.Generator or an int seed, got {type(rng_or_seed).__name__}")


def _trajectory(
    rng: np.random.Generator,
    num_frames: int,
    height: int,
    width: int,
    speed: float,
    start: np.ndarray | None = None,
    velocity: np.ndarray | None = None,
    wander: float = 0.15,
) -> np.ndarray:
    """Smooth random motion with bounces off the frame edges: float32 [T, 2] (x, y).

    The velocity wanders a little every frame (a random acceleration of
    `wander` x nominal speed, standard deviation) and its
    magnitude stays within [0.5, 1.5] x nominal, so motion never stops or jumps.
    Centres bounce at the frame border, so an object may be up to half outside.
    """
    nominal = 0.012 * (height + width) * speed  # pixels per frame
    pos = np.array([rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height]) if start is None else start
    if velocity is None:
        heading = rng.uniform(0, 2 * math.pi)
        velocity = nominal * rng.uniform(0.5, 1.5) * np.array([math.cos(heading), math.sin(heading)])
    else:  # a prescribed velocity (paths that must meet) sets the speed band
        nominal = float(np.hypot(*velocity)) or nominal
    pos, vel = np.array(pos, dtype=np.float64), np.array(velocity, dtype=np.float64)
    limits = np.array([width - 1.0, height - 1.0])
    out = np.empty((num_frames, 2), dtype=np.float32)
    for t in range(num_frames):
        out[t] = pos
        vel = vel + rng.normal(0.0, wander * nominal, size=2)
        magnitude = float(np.hypot(*vel))
        if magnitude > 0:
            vel *= np.clip(magnitude, 0.5 * nominal, 1.5 * nominal) / magnitude
        pos = pos + vel
        low, high = pos < 0, pos > limits  # reflect position and velocity at the borders
        pos = np.where(low, -pos, np.where(high, 2 * limits - pos, pos))
        vel = np.where(low, np.abs(vel), np.where(high, -np.abs(vel), vel))
    return out


def _spin_and_zoom(rng: np.random.Generator, num_frames: int, speed: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotation (degrees, constant angular velocity) and a slowly oscillating scale: float32 [T] each."""
    t = np.arange(num_frames, dtype=np.float64)
    angles = rng.uniform(0, 360) + rng.uniform(-4.0, 4.0) * speed * t
    period = rng.uniform(0.5, 2.0) * max(num_frames, 2)
    scales = rng.uniform(0.85, 1.1) * (1.0 + rng.uniform(0.0, 0.15) * np.sin(2 * math.pi * t / period + rng.uniform(0, 6.3)))
    return angles.astype(np.float32), scales.astype(np.float32)


def sample_object(
    rng: np.random.Generator,
    object_id: int,
    num_frames: int,
    height: int,
    width: int,
    depth: int,
    speed: float,
    size_range: tuple[float, float] = (0.12, 0.28),
) -> SceneObject:
    """A random object: shape, textured sprite, trajectory, rotation and scale.

    size_range: the shape's radius as a fraction of min(height, width).
    """
    radius = max(4.0, rng.uniform(*size_range) * min(height, width))
    kind = str(rng.choice(SHAPE_KINDS))
    texture = str(rng.choice(TEXTURE_KINDS))
    alpha = shape_alpha(rng, kind, radius)
    size = alpha.shape[0]
    colours = [random_colour(rng, (0.55, 1.0), (0.45, 1.0)) for _ in range(2)]
    period = rng.uniform(0.25, 0.7) * radius
    tex = procedural_texture(rng, size, size, texture, colours, period=max(period, 2.5))
    tex += rng.normal(0.0, 6.0, size=tex.shape)  # fine grain: something for pixel matching to lock onto
    angles, scales = _spin_and_zoom(rng, num_frames, speed)
    centers = _trajectory(rng, num_frames, height, width, speed)
    return SceneObject(object_id, kind, texture, np.clip(tex, 0, 255).astype(np.uint8), alpha, centers, angles, scales, depth)


def _crossing_trajectories(
    rng: np.random.Generator, count: int, num_frames: int, height: int, width: int, speed: float
) -> list[np.ndarray]:
    """Trajectories [T, 2] that start apart and pass near one common point around mid-video."""
    meet = np.array([rng.uniform(0.35, 0.65) * width, rng.uniform(0.35, 0.65) * height])
    t_meet = max(1.0, 0.5 * (num_frames - 1))
    heading = rng.uniform(0, 2 * math.pi)
    paths = []
    for k in range(count):
        direction = heading + 2 * math.pi * k / count + rng.uniform(-0.3, 0.3)  # well-separated headings
        reach = rng.uniform(0.25, 0.4) * min(height, width) * max(speed, 0.5)
        start = meet - reach * np.array([math.cos(direction), math.sin(direction)])
        start = np.clip(start, [0.08 * width, 0.08 * height], [0.92 * width, 0.92 * height])
        # Little wander, so the paths really meet instead of drifting apart on the way.
        velocity = (meet - start) / t_meet
        paths.append(_trajectory(rng, num_frames, height, width, speed, start=start, velocity=velocity, wander=0.03))
    return paths


def sample_scene(
    rng: np.random.Generator,
    num_frames: int,
    height: int,
    width: int,
    num_objects: int,
    *,
    twins: bool = False,
    appear_frames: Sequence[int] | None = None,
    speed: float = 1.0,
    noise_std: float = 2.0,
    blur: bool = False,
    hide_probability: float = 0.3,
) -> Scene:
    """A random scene. Object k (0-based) gets id k + 1 and first draws at appear_frames[k] (default 0).

    twins: 2 (sometimes 3) objects share one sprite, rotation and scale (identical
    appearance) and differ only in their crossing translation paths.
    hide_probability: the chance (without twins, 2+ objects) of a staged full
    occlusion: the front-most object is made large, the back-most small, and
    their paths cross mid-video, so the small one vanishes for a few frames and
    comes back (occlusion happens anyway, but full disappearance rarely does).
    """
    background, offsets = panning_background(rng, num_frames, height, width, speed)
    depths = rng.permutation(num_objects)
    objects = [sample_object(rng, k + 1, num_frames, height, width, int(depths[k]), speed) for k in range(num_objects)]
    if not twins and num_objects >= 2 and rng.random() < hide_probability:
        back, front = int(np.argmin(depths)), int(np.argmax(depths))
        for k, size_range in ((back, (0.07, 0.1)), (front, (0.26, 0.32))):
            objects[k] = sample_object(rng, k + 1, num_frames, height, width, int(depths[k]), speed, size_range)
        paths = _crossing_trajectories(rng, 2, num_frames, height, width, speed)
        objects[back], objects[front] = replace(objects[back], centers=paths[0]), replace(objects[front], centers=paths[1])
    if twins:
        group_size = 3 if num_objects >= 3 and rng.random() < 0.3 else 2
        group = sorted(int(i) for i in rng.choice(num_objects, size=group_size, replace=False))
        paths = _crossing_trajectories(rng, group_size, num_frames, height, width, speed)
        source = objects[group[0]]
        for member, path in zip(group, paths):  # same look, own id, depth and path
            twin_of = None if member == group[0] else source.object_id
            objects[member] = replace(source, object_id=member + 1, centers=path, depth=objects[member].depth, twin_of=twin_of)
    if appear_frames is not None:
        objects = [replace(obj, appear_frame=int(start)) for obj, start in zip(objects, appear_frames)]
    return Scene(height, width, background, offsets, tuple(objects), float(noise_std), bool(blur), int(rng.integers(2**31)))


def warp_object(obj: SceneObject, t: int, height: int, width: int) -> tuple[int, int, np.ndarray, np.ndarray] | None:
    """The object as drawn in frame t, cropped to its bounding box inside the frame.

    Returns (x0, y0, rgb uint8 [h, w, 3], inside bool [h, w]) for the box whose
    top-left is (x0, y0), or None when the object is entirely outside the frame.
    Warping only the box (not the whole frame) is what keeps rendering fast.
    """
    size = obj.alpha.shape[0]
    c = (size - 1) / 2.0
    # Sprite -> frame: rotate/scale about the sprite centre, then move that centre to centers[t].
    matrix = cv2.getRotationMatrix2D((c, c), float(obj.angles[t]), float(obj.scales[t]))
    matrix[:, 2] += obj.centers[t].astype(np.float64) - c
    corners = np.array([[0, 0, 1], [size - 1, 0, 1], [0, size - 1, 1], [size - 1, size - 1, 1]], dtype=np.float64)
    mapped = corners @ matrix.T  # [4, 2]
    x0, y0 = max(0, int(math.floor(mapped[:, 0].min()))), max(0, int(math.floor(mapped[:, 1].min())))
    x1, y1 = min(width, int(math.ceil(mapped[:, 0].max())) + 1), min(height, int(math.ceil(mapped[:, 1].max())) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    matrix[:, 2] -= (x0, y0)
    box = (x1 - x0, y1 - y0)
    rgb = cv2.warpAffine(obj.sprite, matrix, box, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    # Linear interpolation then a 50% threshold gives a cleaner outline than nearest-neighbour.
    alpha = cv2.warpAffine(obj.alpha, matrix, box, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return x0, y0, rgb, alpha > 127


def _drawn(obj: SceneObject, t: int, height: int, width: int) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
    """(region of the frame, rgb, inside) where the object is drawn in frame t, or None if it is not
    (not yet appeared, or entirely outside the frame); see `warp_object`."""
    warped = warp_object(obj, t, height, width) if t >= obj.appear_frame else None
    if warped is None:
        return None
    x0, y0, rgb, inside = warped
    return (slice(y0, y0 + inside.shape[0]), slice(x0, x0 + inside.shape[1])), rgb, inside


def object_silhouette(obj: SceneObject, t: int, height: int, width: int) -> np.ndarray:
    """Where the object would cover frame t if nothing were in front of it: bool [H, W]."""
    out = np.zeros((height, width), dtype=bool)
    drawn = _drawn(obj, t, height, width)
    if drawn is not None:
        region, _, inside = drawn
        out[region] = inside
    return out


def render_scene(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Frames uint8 [T, H, W, 3] (RGB) and masks uint8 [T, H, W] (object ids, 0 = background)."""
    h, w, num_frames = scene.height, scene.width, scene.num_frames
    frames = np.empty((num_frames, h, w, 3), dtype=np.uint8)
    masks = np.zeros((num_frames, h, w), dtype=np.uint8)
    back_to_front = sorted(scene.objects, key=lambda o: o.depth)
    noise_rng = np.random.default_rng(scene.noise_seed)
    if scene.noise_std > 0:
        # One noise bank per video, cropped at a random offset each frame: drawing fresh
        # Gaussian noise per frame would cost more than all the rest of the rendering.
        pad = 32
        noise_bank = np.round(noise_rng.standard_normal((h + pad, w + pad, 3), dtype=np.float32) * scene.noise_std)
        noise_bank = noise_bank.astype(np.int16)  # int16 [H + pad, W + pad, 3]
    for t in range(num_frames):
        ox, oy = (float(v) for v in scene.background_offsets[t])
        pan = np.array([[1.0, 0.0, ox], [0.0, 1.0, oy]])  # frame pixel (x, y) samples background (x + ox, y + oy)
        frame = cv2.warpAffine(
            scene.background, pan, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT_101
        )
        mask = masks[t]
        for obj in back_to_front:
            drawn = _drawn(obj, t, h, w)
            if drawn is None:
                continue
            region, rgb, inside = drawn
            np.copyto(frame[region], rgb, where=inside[..., None])  # views: writes into frame / mask
            np.copyto(mask[region], np.uint8(obj.object_id), where=inside)
        if scene.blur:
            frame = cv2.GaussianBlur(frame, (3, 3), 0.8)
        if scene.noise_std > 0:
            dy, dx = (int(v) for v in noise_rng.integers(0, pad + 1, size=2))
            frame = cv2.add(frame, noise_bank[dy : dy + h, dx : dx + w], dtype=cv2.CV_8U)  # saturating add
        frames[t] = frame
    return frames, masks


def min_visible_pixels(height: int, width: int) -> int:
    """How many pixels an object must show on its first frame to be a usable reference (0.2% of the frame)."""
    return max(12, int(0.002 * height * width))


def render_video_with_scene(
    rng_or_seed: np.random.Generator | int,
    num_frames: int,
    height: int,
    width: int,
    num_objects: int,
    twins: bool = False,
    *,
    appear_frames: Sequence[int] | None = None,
    speed: float = 1.0,
    noise_std: float = 2.0,
    blur: bool = False,
    hide_probability: float = 0.3,
    max_attempts: int = 200,
) -> tuple[Scene, np.ndarray, np.ndarray]:
    """Like `render_video`, also returning the `Scene` (sprites, trajectories) it rendered."""
    for name, value, low in (("num_frames", num_frames, 1), ("height", height, 16), ("width", width, 16), ("num_objects", num_objects, 1)):
        if int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if num_objects > 255:
        raise ValueError(f"num_objects must be at most 255 (uint8 mask ids), got {num_objects}")
    if twins and num_objects < 2:
        raise ValueError(f"twins=True needs num_objects >= 2 (two objects that look the same), got {num_objects}")
    if appear_frames is not None:
        appear_frames = [int(a) for a in appear_frames]
        if len(appear_frames) != num_objects or min(appear_frames) != 0 or max(appear_frames) >= num_frames:
            raise ValueError(
                f"appear_frames must give one frame in 0..{num_frames - 1} per object ({num_objects}) "
                f"with at least one object at frame 0, got {appear_frames}"
            )
    if speed <= 0 or noise_std < 0:
        raise ValueError(f"speed must be > 0 and noise_std >= 0, got speed={speed}, noise_std={noise_std}")
    rng, need = as_generator(rng_or_seed), min_visible_pixels(height, width)
    options = dict(twins=twins, appear_frames=appear_frames, speed=speed, noise_std=noise_std, blur=blur)
    for _ in range(max_attempts):
        scene = sample_scene(rng, num_frames, height, width, num_objects, hide_probability=hide_probability, **options)
        frames, masks = render_scene(scene)
        # Rejection: every object must be clearly visible on the frame where it first appears
        # (the reference annotation a VOS method starts from), else resample the whole scene.
        if all(np.count_nonzero(masks[o.appear_frame] == o.object_id) >= need for o in scene.objects):
            return scene, frames, masks
    raise RuntimeError(
        f"could not place {num_objects} objects visibly in {height}x{width} frames after {max_attempts} "
        "attempts; use fewer objects or larger frames"
    )


def render_video(
    rng_or_seed: np.random.Generator | int,
    num_frames: int,
    height: int,
    width: int,
    num_objects: int,
    twins: bool = False,
    **options,
) -> tuple[np.ndarray, np.ndarray]:
    """A random video: frames uint8 [T, H, W, 3] (RGB) and masks uint8 [T, H, W] (ids 1..num_objects).

    Every object is visible (at least `min_visible_pixels`) on its first frame
    (frame 0 unless `appear_frames` says otherwise), so a video's ids are exactly
    1..num_objects; later an object may be partly or fully hidden. Options:
    appear_frames, speed, noise_std, blur, hide_probability, max_attempts (see `sample_scene`).
    """
    _, frames, masks = render_video_with_scene(rng_or_seed, num_frames, height, width, num_objects, twins, **options)
    return frames, masks
