"""Host-side inference: streaming `VideoSegmenter` and whole-video `segment_video`.

Both take frames as uint8 [H, W, 3] RGB and masks as integer ids [H, W] with the
annotation's own object ids (DAVIS: 1..K, YouTube-VOS: any ids, e.g. {3, 7}),
check them, pad them into a shape bucket, run the compiled programs of an
`InferenceEngine`, and crop and map the result back to the original ids.

    segmenter = VideoSegmenter(model, variables, inference_config())
    ids = segmenter.start(first_frame, first_mask)
    for frame in frames:                    # a generator, a webcam, ...
        ids = segmenter.add(frame)          # uint8 [H, W], original ids
        probs = segmenter.probabilities     # [1 + K, H, W], background first
"""

from __future__ import annotations

import math

import ml_collections
import numpy as np

from munet_jax.inference.engine import InferenceEngine, choose_object_bucket, grow_objects, pad_to
from munet_jax.models.munet import STRIDE, MUNet


def check_frame(frame, name: str = "frame", hw: tuple[int, int] | None = None) -> np.ndarray:
    """A uint8 [H, W, 3] array (of size hw if given), or a ValueError naming the problem."""
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"{name} has shape {frame.shape}; expected an RGB image [H, W, 3]")
    if frame.dtype != np.uint8:
        raise ValueError(f"{name} has dtype {frame.dtype}; pass uint8 RGB in 0..255 (e.g. from cv2/PIL)")
    if hw is not None and frame.shape[:2] != tuple(hw):
        raise ValueError(
            f"{name} is {frame.shape[0]}x{frame.shape[1]} but the video started at {hw[0]}x{hw[1]}: "
            "every frame of a video must have the first frame's size (start a new video otherwise)"
        )
    return frame


def check_mask(mask, hw: tuple[int, int], name: str) -> np.ndarray:
    """Object ids uint8 [H, W] matching the frame size hw, or a ValueError naming the fix."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(f"{name} has shape {mask.shape}; expected object ids [H, W] (an indexed PNG, not RGB)")
    if mask.shape != tuple(hw):
        raise ValueError(
            f"{name} is {mask.shape[0]}x{mask.shape[1]} but the frame is {hw[0]}x{hw[1]}: "
            "masks must be at the frame's resolution (resize with nearest-neighbour interpolation)"
        )
    if not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"{name} has dtype {mask.dtype}; expected integer object ids (0 = background)")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"{name} holds ids in [{mask.min()}, {mask.max()}]; object ids must be in 0..255")
    return mask.astype(np.uint8)


class ObjectIds:
    """Original annotation ids <-> object indices 1..K of the model (in order of arrival)."""

    def __init__(self):
        self.ids: list[int] = []
        self._to_index = np.zeros(256, np.uint8)  # original id -> index (0 = not tracked)

    def add(self, new_ids) -> None:
        for i in new_ids:
            self.ids.append(int(i))
            self._to_index[int(i)] = len(self.ids)

    def indices(self, mask: np.ndarray) -> np.ndarray:
        """uint8 [H, W] original ids -> indices (untracked ids -> 0)."""
        return self._to_index[mask]

    def originals(self, num_slots: int) -> np.ndarray:
        """Lookup table uint8 [num_slots + 1]: index -> original id (padded slots -> 0)."""
        table = np.zeros(num_slots + 1, np.uint8)
        table[1 : len(self.ids) + 1] = self.ids
        return table


def _new_ids(mask: np.ndarray) -> list[int]:
    return [int(i) for i in np.unique(mask) if i != 0]


class VideoSegmenter:
    """Segments a video one frame at a time, keeping only the fixed-size state on device.

    `start` takes the first frame and its annotation; `add` each later frame, with
    the mask of objects that first appear on it (YouTube-VOS) if any. A stream whose
    objects outgrow the object bucket moves to the next bucket (one more compile).
    """

    def __init__(self, model: MUNet, variables, inference_config: ml_collections.ConfigDict | None = None,
                 *, engine: InferenceEngine | None = None):
        self.engine = engine if engine is not None else InferenceEngine(model, inference_config)
        self.variables = self.engine.prepare(variables)  # once per segmenter (a no-op if already prepared)
        self._state = None
        self._out = None

    @property
    def object_ids(self) -> tuple[int, ...]:
        """Original ids of the tracked objects; channel i + 1 of `probabilities` is object_ids[i]."""
        return tuple(self._objects.ids)

    @property
    def frame_index(self) -> int:
        return self._frame_index

    @property
    def probabilities(self) -> np.ndarray:
        """float32 [1 + K, H, W] of the last frame: background, then `object_ids` in order."""
        k = len(self._objects.ids)
        return np.asarray(self._out["probs"][: k + 1, : self._hw[0], : self._hw[1]])

    @property
    def motion(self) -> dict[str, np.ndarray]:
        """The last frame's MU-Layer maps at stride 16, cropped to the image: displacement
        [h, w, 2] (in res4 cells), uncertainty [h, w, 1], attention [h, w, 1] (zeros on frame 0)."""
        h, w = math.ceil(self._hw[0] / STRIDE), math.ceil(self._hw[1] / STRIDE)
        return {name: np.asarray(self._out[name][:h, :w]) for name in ("displacement", "uncertainty", "attention")}

    def start(self, first_frame, first_mask) -> np.ndarray:
        """Begins a video. first_frame uint8 [H, W, 3], first_mask ids [H, W] -> ids uint8 [H, W]."""
        frame = check_frame(first_frame, "first_frame")
        hw = frame.shape[:2]
        mask = check_mask(first_mask, hw, "first_mask")
        ids = _new_ids(mask)
        if not ids:
            raise ValueError("first_mask has no object (all pixels are 0): annotate at least one object "
                             "on the first frame, or start the video on the frame where the first object appears")
        bucket, num_slots = self.engine.buckets_for(hw[0], hw[1], len(ids))
        self._hw, self._bucket = hw, bucket
        self._objects = ObjectIds()
        self._objects.add(ids)
        object_valid = np.arange(num_slots) < len(ids)
        labels = pad_to(self._objects.indices(mask), bucket)
        self._state, self._out = self.engine.init(
            self.variables, pad_to(frame, bucket), labels, hw, object_valid)
        self._frame_index = 0
        return self._ids_of_last_frame()

    def add(self, frame, new_object_mask=None) -> np.ndarray:
        """Segments the next frame -> ids uint8 [H, W] (original annotation ids).

        new_object_mask: ids [H, W] of objects that FIRST appear on this frame (0
        elsewhere); their mask is taken as given on this frame and they are tracked
        from here on. Ids already tracked may not appear in it.
        """
        if self._state is None:
            raise RuntimeError("VideoSegmenter.add called before start(first_frame, first_mask)")
        frame = check_frame(frame, "frame", self._hw)
        new_labels = new_valid = None
        if new_object_mask is not None:
            mask = check_mask(new_object_mask, self._hw, "new_object_mask")
            ids = _new_ids(mask)
            known = sorted(set(ids) & set(self._objects.ids))
            if known:
                raise ValueError(f"new_object_mask holds ids {known} that are already tracked: "
                                 "pass only the objects that first appear on this frame")
            if ids:
                before = len(self._objects.ids)
                num_slots = choose_object_bucket(before + len(ids), self.engine.config.object_buckets)
                if num_slots > self._state.object_valid.shape[0]:
                    self._state = grow_objects(self._state, num_slots)
                self._objects.add(ids)
                new_labels = pad_to(self._objects.indices(mask), self._bucket)
                new_valid = (np.arange(num_slots) >= before) & (np.arange(num_slots) < len(self._objects.ids))
        self._state, self._out = self.engine.step(
            self.variables, self._state, pad_to(frame, self._bucket), new_labels, new_valid)
        self._frame_index += 1
        return self._ids_of_last_frame()

    def _ids_of_last_frame(self) -> np.ndarray:
        num_slots = self._state.object_valid.shape[0]
        index = np.asarray(self._out["ids"])[: self._hw[0], : self._hw[1]]
        return self._objects.originals(num_slots)[index]


def segment_video(engine: InferenceEngine, variables, frames, first_mask, *, new_object_masks=None,
                  return_probs: bool = False) -> dict:
    """A whole video as ONE compiled program (init + `lax.scan` of the step).

    frames uint8 [T, H, W, 3]; first_mask ids [H, W]; new_object_masks: optional
    {frame index: ids [H, W] of objects first appearing there}. Returns {'ids': uint8
    [T, H, W] original ids, 'object_ids': tuple} and, if return_probs, 'probs' float32
    [T, 1 + K, H, W] (background, then object_ids in order). Equal to the
    `VideoSegmenter` loop; holds all T frames on device (use the segmenter for long streams).
    `variables`: best as `engine.prepare(variables)` gives them, prepared once for many
    videos (bare variables are prepared here, once per call).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise ValueError(f"frames has shape {frames.shape}; expected [T, H, W, 3]")
    check_frame(frames[0], "frames[0]")
    hw = frames.shape[1:3]
    mask = check_mask(first_mask, hw, "first_mask")
    objects = ObjectIds()
    objects.add(_new_ids(mask))
    if not objects.ids:
        raise ValueError("first_mask has no object (all pixels are 0): annotate at least one object "
                         "on the first frame, or start the video on the frame where the first object appears")
    later = {}
    for t, m in sorted((new_object_masks or {}).items()):
        if not 0 < t < len(frames):
            raise ValueError(f"new_object_masks has frame index {t}; expected 1..{len(frames) - 1}")
        m = check_mask(m, hw, f"new_object_masks[{t}]")
        ids = _new_ids(m)
        known = sorted(set(ids) & set(objects.ids))
        if known:
            raise ValueError(f"new_object_masks[{t}] holds ids {known} that are already tracked: "
                             "pass only the objects that first appear on that frame")
        later[t] = (m, len(objects.ids), ids)
        objects.add(ids)
    bucket, num_slots = engine.buckets_for(hw[0], hw[1], len(objects.ids))
    first_count = len(objects.ids) - sum(len(v[2]) for v in later.values())
    object_valid = np.arange(num_slots) < first_count
    new_labels = new_valid = None
    if later:
        new_labels = np.zeros((len(frames),) + bucket, np.uint8)
        new_valid = np.zeros((len(frames), num_slots), bool)
        for t, (m, before, ids) in later.items():
            new_labels[t] = pad_to(objects.indices(m), bucket)
            new_valid[t, before : before + len(ids)] = True
    padded = np.pad(frames, [(0, 0), (0, bucket[0] - hw[0]), (0, bucket[1] - hw[1]), (0, 0)])
    labels = pad_to(objects.indices(mask), bucket)
    out = engine.video(engine.prepare(variables), padded, labels, hw, object_valid, new_labels, new_valid, return_probs)
    result = {"ids": objects.originals(num_slots)[np.asarray(out["ids"])[:, : hw[0], : hw[1]]],
              "object_ids": tuple(objects.ids)}
    if return_probs:
        result["probs"] = np.asarray(out["probs"][:, : len(objects.ids) + 1, : hw[0], : hw[1]])
    return result
