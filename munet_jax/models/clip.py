"""The training unroll of one clip (DESIGN.md, "training clip").

Frame 1 enters memory with its ground truth; frames 2..L are segmented in order,
each with the MU-Layer on (I_{t-1}, I_t) and the memory so far, and then written
to memory with its predicted soft mask before the next frame. Pure function of
(variables, arrays): the train step differentiates through it.

The memory has fixed capacity L - 1 with a validity mask, so every frame's
`segment` call has the same shapes (one compiled program, and a later switch to
`lax.scan` changes nothing else).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from munet_jax.models.munet import MUNet


def object_masks(labels: jax.Array, num_objects: int) -> jax.Array:
    """Integer labels [..., H, W] in 0..K -> per-object float masks [..., K, H, W]."""
    ids = jnp.arange(1, num_objects + 1, dtype=labels.dtype)
    return (labels[..., None, :, :] == ids[:, None, None]).astype(jnp.float32)


def unroll_clip(
    model: MUNet, variables: dict, frames: jax.Array, first_labels: jax.Array, object_valid: jax.Array
) -> dict[str, jax.Array]:
    """Segments frames 2..L of a clip given frame 1's labels.

    frames [B, L, H, W, 3] uint8; first_labels [B, H, W] ids 0..K;
    object_valid [B, K] bool. Returns per predicted frame (axis 1 has L - 1
    entries): logits [B, L-1, H, W, K+1] and the motion maps displacement
    [B, L-1, h, w, 2], uncertainty and attention [B, L-1, h, w, 1].
    """
    b, length, height, width, _ = frames.shape
    k = object_valid.shape[1]
    apply = lambda method, *args: model.apply(variables, *args, method=method)

    # Enc-Q once for all frames: each frame is the query once and I_{t-1} once.
    feats = apply(MUNet.encode_query, frames.reshape((b * length, height, width, 3)))
    feats = {name: f.reshape((b, length) + f.shape[1:]) for name, f in feats.items()}

    def memory_entry(t, masks):
        return apply(MUNet.encode_memory, frames[:, t], masks)  # ([B, K, h, w, Ck], [B, K, h, w, Cv])

    key0, value0 = memory_entry(0, object_masks(first_labels, k) * object_valid[:, :, None, None])
    capacity = length - 1
    mem_keys = jnp.zeros(key0.shape[:2] + (capacity,) + key0.shape[2:], key0.dtype).at[:, :, 0].set(key0)
    mem_values = jnp.zeros(value0.shape[:2] + (capacity,) + value0.shape[2:], value0.dtype).at[:, :, 0].set(value0)
    mem_valid = jnp.zeros((b, k, capacity), bool).at[:, :, 0].set(object_valid)

    outputs = []
    for t in range(1, length):
        query = {name: f[:, t] for name, f in feats.items()}
        out = apply(
            MUNet.segment, query, feats["res4"][:, t - 1], mem_keys, mem_values, mem_valid, object_valid,
            (height, width),
        )
        outputs.append(out)
        if t < length - 1:
            soft = jax.nn.softmax(out["logits"], axis=-1)[..., 1:]  # [B, H, W, K]
            key, value = memory_entry(t, jnp.moveaxis(soft, -1, 1))
            mem_keys = mem_keys.at[:, :, t].set(key)
            mem_values = mem_values.at[:, :, t].set(value)
            mem_valid = mem_valid.at[:, :, t].set(object_valid)
    names = ("logits", "displacement", "uncertainty", "attention")
    return {name: jnp.stack([o[name] for o in outputs], axis=1) for name in names}
