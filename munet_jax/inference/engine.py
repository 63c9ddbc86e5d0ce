"""The jitted inference step with explicit state, and the shape buckets.

    init(variables, frame, labels, image_hw, object_valid) -> (state, out)
    step(variables, state, frame, new_labels, new_valid)    -> (state, out)
    video(variables, frames, labels, image_hw, object_valid, ...) -> outputs of every frame

`InferenceState` carries everything one frame needs from the past: the memory
bank, the Enc-Q res4 features of the previous frame (each frame is encoded by
Enc-Q once and its res4 reused as I_{t-1} by the next MU-Layer), the index of the
last frame, which objects exist so far, and the true image size.

Shape buckets: frames are padded bottom/right to a bucket (Hb, Wb) of
`inference.size_buckets` and the object axis to a bucket of
`inference.object_buckets`, so every video of a bucket reuses one compiled
`init` and one compiled `step`. The true size travels as a traced int32 [2]
(`image_hw`): on device the padding is set to the ImageNet mean colour (zero
after normalisation, what the model's own padding gives) and masks are zero
there. Buckets are multiples of 16, so the model pads nothing more.

`variables` are what `InferenceEngine.prepare` returns: the parameters plus,
on XLA:CPU, the Winograd-transformed kernels of the 3x3 convs, computed once
per set of parameters instead of in every frame.
"""

from __future__ import annotations

import collections
import functools

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from munet_jax.inference.config import check_inference_config, inference_config
from munet_jax.inference.memory_bank import MemoryBank, empty_bank, pad_objects, write
from munet_jax.models.aggregation import soft_aggregate
from munet_jax.models.munet import IMAGENET_MEAN, MUNet, with_prepared_kernels
from munet_jax.models.winograd import PREPARED

MEAN_COLOUR = tuple(255.0 * m for m in IMAGENET_MEAN)  # in 0..255, normalises to exactly 0


@flax.struct.dataclass
class InferenceState:
    bank: MemoryBank
    prev_res4: jax.Array  # [1, h, w, D]: Enc-Q res4 of the last frame (I_{t-1} of the next step)
    frame_index: jax.Array  # [] int32: index of the last frame processed (0 after init)
    object_valid: jax.Array  # [K] bool: objects annotated so far (False for padded slots)
    image_hw: jax.Array  # [2] int32: the true frame size inside the bucket

    def nbytes(self) -> int:
        return sum(x.nbytes for x in jax.tree_util.tree_leaves(self))


# ---------------------------------------------------------------- host side: buckets


SMALL_FRAME_GRID = 64  # frames far smaller than every bucket are padded to this grid instead


def choose_size_bucket(height: int, width: int, buckets) -> tuple[int, int]:
    """The smallest-area bucket (Hb, Wb) with Hb >= height and Wb >= width.

    A frame that would fill less than half of that bucket (e.g. a 96x128 video
    against 480x864: 3% of the area, 30x the work) is padded to the next
    multiple of SMALL_FRAME_GRID instead, which small videos of similar sizes
    still share.
    """
    fits = [tuple(b) for b in buckets if b[0] >= height and b[1] >= width]
    if not fits:
        raise ValueError(
            f"frame size {height}x{width} is larger than every inference.size_buckets entry "
            f"{[tuple(b) for b in buckets]}: add a bucket (H, W), multiples of 16, that holds it "
            "(e.g. --config.inference.size_buckets), or resize the video"
        )
    best = min(fits, key=lambda b: (b[0] * b[1], b))
    grid = (-(-height // SMALL_FRAME_GRID) * SMALL_FRAME_GRID, -(-width // SMALL_FRAME_GRID) * SMALL_FRAME_GRID)
    if 2 * grid[0] * grid[1] <= best[0] * best[1]:
        return grid
    return best


def choose_object_bucket(num_objects: int, buckets) -> int:
    """The smallest object bucket >= num_objects."""
    fits = [k for k in buckets if k >= num_objects]
    if not fits:
        raise ValueError(
            f"{num_objects} objects are more than the largest inference.object_buckets entry "
            f"({max(buckets)}): add a larger bucket to inference.object_buckets"
        )
    return min(fits)


def pad_to(array: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Zero-pads axes 0, 1 of [H, W, ...] at the bottom/right up to hw."""
    pads = [(0, hw[0] - array.shape[0]), (0, hw[1] - array.shape[1])] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pads)


# ---------------------------------------------------------------- device side: pure functions


def prepare_frame(frame: jax.Array, image_hw: jax.Array) -> tuple[jax.Array, jax.Array]:
    """frame [Hb, Wb, 3] uint8 (zero padded) -> (float32 [Hb, Wb, 3] in 0..255 with the
    ImageNet mean colour outside the true image, inside [Hb, Wb] bool)."""
    hb, wb = frame.shape[:2]
    rows = jnp.arange(hb)[:, None] < image_hw[0]
    cols = jnp.arange(wb)[None, :] < image_hw[1]
    inside = jnp.logical_and(rows, cols)
    image = jnp.where(inside[..., None], frame.astype(jnp.float32), jnp.asarray(MEAN_COLOUR, jnp.float32))
    return image, inside


def labels_to_masks(labels: jax.Array, num_objects: int) -> jax.Array:
    """Object indices [Hb, Wb] in 0..K (0 = none) -> float32 masks [K, Hb, Wb]."""
    ids = jnp.arange(1, num_objects + 1, dtype=jnp.int32)[:, None, None]
    return (labels.astype(jnp.int32)[None] == ids).astype(jnp.float32)


def _outputs(probs: jax.Array, motion: dict) -> dict:
    """probs [K+1, Hb, Wb] -> the per-frame outputs (ids are indices 0..K, uint8)."""
    return {"probs": probs, "ids": jnp.argmax(probs, axis=0).astype(jnp.uint8), **motion}


def init_state(model: MUNet, capacity: int, variables, frame, labels, image_hw, object_valid):
    """First frame: Enc-Q once (its res4 is I_{t-1} of frame 1), Enc-R with the given masks
    into memory slot 0. frame [Hb, Wb, 3] uint8, labels [Hb, Wb] uint8 indices 0..K,
    image_hw [2] int32, object_valid [K] bool. Returns (state, outputs) with the given
    mask as probabilities [K+1, Hb, Wb]."""
    apply = functools.partial(model.apply, variables)
    k = object_valid.shape[0]
    image, inside = prepare_frame(frame, image_hw)
    res4 = apply(image[None], method=MUNet.encode_query)["res4"]  # [1, h, w, D]
    masks = labels_to_masks(labels, k) * object_valid[:, None, None] * inside[None]  # [K, Hb, Wb]
    key, value = apply(image[None], masks[None], method=MUNet.encode_memory)  # [1, K, h, w, C]
    bank = empty_bank(k, capacity, key.shape[2:4], key.shape[-1], value.shape[-1], key.dtype)
    bank = write(bank, key[0], value[0], object_valid, jnp.int32(0), jnp.bool_(True))
    probs = jnp.concatenate([1.0 - jnp.sum(masks, axis=0, keepdims=True), masks], axis=0)
    h, w = res4.shape[1:3]
    zeros = jnp.zeros((h, w, 1), jnp.float32)
    motion = {"displacement": jnp.zeros((h, w, 2), jnp.float32), "uncertainty": zeros, "attention": zeros}
    state = InferenceState(bank, res4, jnp.int32(0), object_valid.astype(bool), image_hw.astype(jnp.int32))
    return state, _outputs(probs, motion)


def step_state(model: MUNet, mem_every: int, variables, state: InferenceState, frame, new_labels, new_valid):
    """One frame t = state.frame_index + 1.

    frame [Hb, Wb, 3] uint8; new_labels [Hb, Wb] uint8 indices of objects whose first
    mask is on this frame (0 elsewhere), new_valid [K] bool marks those objects. Their
    mask replaces the prediction (for them, and for older objects inside it), they
    become valid, and the frame is then a permanent memory frame (as XMem does), so
    their annotation stays in memory. Returns (state, outputs).
    """
    apply = functools.partial(model.apply, variables)
    hb, wb = frame.shape[:2]
    k = state.object_valid.shape[0]
    bank = state.bank
    image, inside = prepare_frame(frame, state.image_hw)

    query = apply(image[None], method=MUNet.encode_query)
    seg = apply(
        query, state.prev_res4, bank.keys[None], bank.values[None], bank.valid[None],
        state.object_valid[None], (hb, wb), method=MUNet.segment,
    )
    fg = seg["fg_probs"][0]  # [K, Hb, Wb]; exactly what `segment` aggregated when nothing is new
    claimed = (new_labels > 0)[None]  # [1, Hb, Wb]
    fg = jnp.where(claimed, 0.0, fg)
    fg = jnp.where(new_valid[:, None, None], labels_to_masks(new_labels, k), fg)
    object_valid = jnp.logical_or(state.object_valid, new_valid)
    logits = soft_aggregate(fg[None], object_valid[None])[0]  # [Hb, Wb, K+1]
    probs = jnp.moveaxis(jax.nn.softmax(logits, axis=-1), -1, 0)  # [K+1, Hb, Wb]

    # The frame enters memory with its soft masks (zero in the padding, as the model pads).
    t = state.frame_index + 1
    key, value = apply(image[None], (probs[1:] * inside[None])[None], method=MUNet.encode_memory)
    permanent = jnp.logical_or(jnp.mod(t, mem_every) == 0, jnp.any(new_valid))
    bank = write(bank, key[0], value[0], object_valid, t, permanent)

    motion = {name: seg[name][0] for name in ("displacement", "uncertainty", "attention")}
    new_state = InferenceState(bank, query["res4"], t, object_valid, state.image_hw)
    return new_state, _outputs(probs, motion)


def video_program(model, capacity, mem_every, return_probs, variables, frames, labels, image_hw,
                  object_valid, new_labels=None, new_valid=None):
    """A whole video in one program: init on frames[0], `lax.scan` of the step over the rest.

    frames [T, Hb, Wb, 3] uint8; labels [Hb, Wb] indices of frame 0; new_labels
    [T, Hb, Wb] / new_valid [T, K] (or None: no object enters later). Returns
    {'ids': [T, Hb, Wb] uint8} plus 'probs' [T, K+1, Hb, Wb] if return_probs.
    """
    hb, wb = frames.shape[1:3]
    k = object_valid.shape[0]
    state, first = init_state(model, capacity, variables, frames[0], labels, image_hw, object_valid)
    keep = ("ids", "probs") if return_probs else ("ids",)

    def body(state, xs):
        if new_labels is None:
            frame, nl, nv = xs, jnp.zeros((hb, wb), jnp.uint8), jnp.zeros((k,), bool)
        else:
            frame, nl, nv = xs
        state, out = step_state(model, mem_every, variables, state, frame, nl, nv)
        return state, {name: out[name] for name in keep}

    xs = frames[1:] if new_labels is None else (frames[1:], new_labels[1:], new_valid[1:])
    _, rest = jax.lax.scan(body, state, xs)
    return {name: jnp.concatenate([first[name][None], rest[name]], axis=0) for name in keep}


def grow_objects(state: InferenceState, num_objects: int) -> InferenceState:
    """The state with the object axis padded to num_objects (new slots invalid)."""
    extra = num_objects - state.object_valid.shape[0]
    return state.replace(bank=pad_objects(state.bank, num_objects),
                         object_valid=jnp.pad(state.object_valid, (0, extra)))


# ---------------------------------------------------------------- compiled entry points


class InferenceEngine:
    """The jitted init / step / video programs of one model and inference config.

    `traces[(name, (Hb, Wb), K)]` counts how often `name` ('init', 'step',
    'video') was traced, i.e. compiled, for a shape bucket: 1 once it has run.
    The step donates the state, so the bank is updated in place and device
    memory stays constant.
    """

    def __init__(self, model: MUNet, config: ml_collections.ConfigDict | None = None):
        self.model = model
        self.config = inference_config() if config is None else config
        check_inference_config(self.config)
        self.traces = collections.Counter()
        self._no_new = {}  # (Hb, Wb, K) -> device zeros for steps without new objects
        capacity, mem_every = self.config.capacity, self.config.mem_every

        def init_fn(variables, frame, labels, image_hw, object_valid):
            self.traces[("init", frame.shape[:2], object_valid.shape[0])] += 1
            return init_state(model, capacity, variables, frame, labels, image_hw, object_valid)

        def step_fn(variables, state, frame, new_labels, new_valid):
            self.traces[("step", frame.shape[:2], new_valid.shape[0])] += 1
            return step_state(model, mem_every, variables, state, frame, new_labels, new_valid)

        def video_fn(variables, frames, labels, image_hw, object_valid, new_labels, new_valid, return_probs):
            self.traces[("video", frames.shape[1:3], object_valid.shape[0])] += 1
            return video_program(model, capacity, mem_every, return_probs, variables, frames, labels,
                                 image_hw, object_valid, new_labels, new_valid)

        self._init = jax.jit(init_fn)
        self._step = jax.jit(step_fn, donate_argnums=(1,))
        self._video = jax.jit(video_fn, static_argnames=("return_probs",))

    def prepare(self, variables: dict) -> dict:
        """{'params', 'batch_stats'} -> the same plus the prepared Winograd kernels (if any conv uses them),
        with the conv kernels in the model's compute dtype (bfloat16 models; outputs unchanged).

        Pass what this returns to init / step / video: the 3x3 convs' kernel
        transforms and the kernels' casts then run once here, not in every frame
        (`munet.with_prepared_kernels`; 480p on a 2-core CPU: see benchmarks/results).
        Variables that already hold prepared kernels are returned as they are, so
        preparing twice costs nothing; after changing the parameters, prepare from the new bare variables.
        Raw variables work too (the transforms then run inside every step).
        """
        return variables if PREPARED in variables else with_prepared_kernels(self.model, variables)

    def compilations(self, name: str) -> int:
        """How many programs `name` ('init', 'step', 'video') has compiled over all buckets."""
        return sum(n for key, n in self.traces.items() if key[0] == name)

    def buckets_for(self, height: int, width: int, num_objects: int) -> tuple[tuple[int, int], int]:
        return (choose_size_bucket(height, width, self.config.size_buckets),
                choose_object_bucket(num_objects, self.config.object_buckets))

    def init(self, variables, frame, labels, image_hw, object_valid):
        """Padded inputs (see `init_state`) -> (state, outputs on device)."""
        return self._init(variables, frame, labels, np.asarray(image_hw, np.int32), object_valid)

    def step(self, variables, state, frame, new_labels=None, new_valid=None):
        """(state, frame [Hb, Wb, 3]) -> (state, outputs). The state passed in is consumed
        (donated): use only the returned one."""
        if new_labels is None:
            hb, wb = frame.shape[:2]
            k = state.object_valid.shape[0]
            if (hb, wb, k) not in self._no_new:
                self._no_new[(hb, wb, k)] = (jnp.zeros((hb, wb), jnp.uint8), jnp.zeros((k,), bool))
            new_labels, new_valid = self._no_new[(hb, wb, k)]
        return self._step(variables, state, frame, new_labels, new_valid)

    def video(self, variables, frames, labels, image_hw, object_valid, new_labels=None, new_valid=None,
              return_probs=False):
        """Padded whole-video inputs (see `video_program`) -> stacked outputs on device."""
        return self._video(variables, frames, labels, np.asarray(image_hw, np.int32), object_valid,
                           new_labels, new_valid, return_probs=return_probs)
