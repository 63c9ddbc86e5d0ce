"""The space-time memory of the inference loop as a fixed-capacity pytree.

Slot layout of a bank of capacity T (same for every object):

    slot 0             the first frame: written once by the first `write`, never evicted
    slots 1 .. T-2     permanent entries, a FIFO ring: when all are taken, the next
                       permanent write replaces the oldest of them
    slot T-1           the temporary slot: the previous frame when it was not written
                       permanently (overwritten by the next frame, emptied by a permanent write,
                       so that a frame is never in memory twice, as in STM's evaluation)

Every array keeps its shape forever, so a jitted step that reads and writes the
bank compiles once and holds a constant amount of memory on any video length.
All functions are pure and jittable: which slot a write goes to is computed with
`jnp.where` from traced values (`permanent` may be a traced bool).

Validity is per object and slot: an object that first appears on frame 5 has no
valid slot before frame 5 (its memory read is empty), and padded object slots
(object_valid False) are never valid.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

EMPTY = -1  # frame_index of a slot that holds nothing


@flax.struct.dataclass
class MemoryBank:
    keys: jax.Array  # [K, T, h, w, Ck]
    values: jax.Array  # [K, T, h, w, Cv]
    valid: jax.Array  # [K, T] bool: slot t holds a memory entry of object k
    frame_index: jax.Array  # [T] int32: frame held by each slot, EMPTY if none
    ring_writes: jax.Array  # [] int32: permanent writes after the first frame (ring position)

    @property
    def capacity(self) -> int:
        return self.frame_index.shape[0]

    @property
    def num_objects(self) -> int:
        return self.valid.shape[0]

    def nbytes(self) -> int:
        return sum(x.nbytes for x in jax.tree_util.tree_leaves(self))


def temporary_slot(capacity: int) -> int:
    return capacity - 1


def empty_bank(
    num_objects: int,
    capacity: int,
    feature_hw: tuple[int, int],
    key_dim: int,
    value_dim: int,
    dtype=jnp.float32,
) -> MemoryBank:
    """A bank with no entries. feature_hw is the res4 size (h, w) = (Hp / 16, Wp / 16)."""
    if capacity < 3:
        raise ValueError(
            f"capacity={capacity}: a bank needs at least 3 slots "
            "(first frame, one permanent slot, temporary slot); raise inference.capacity"
        )
    if num_objects < 1:
        raise ValueError(f"num_objects={num_objects}: a bank needs at least one object slot")
    h, w = feature_hw
    return MemoryBank(
        keys=jnp.zeros((num_objects, capacity, h, w, key_dim), dtype),
        values=jnp.zeros((num_objects, capacity, h, w, value_dim), dtype),
        valid=jnp.zeros((num_objects, capacity), bool),
        frame_index=jnp.full((capacity,), EMPTY, jnp.int32),
        ring_writes=jnp.zeros((), jnp.int32),
    )


def target_slot(bank: MemoryBank, permanent: jax.Array) -> jax.Array:
    """Slot index (int32 scalar) that `write` puts the next entry in.

    Empty bank -> 0 (the first frame, whatever `permanent` says); otherwise a
    permanent entry goes to ring slot 1 + (ring_writes mod (T - 2)) - the
    empty one while the ring fills, then the oldest - and a temporary one to T-1.
    """
    t = bank.capacity
    ring = 1 + jnp.mod(bank.ring_writes, t - 2)
    slot = jnp.where(permanent, ring, temporary_slot(t))
    return jnp.where(bank.frame_index[0] == EMPTY, 0, slot).astype(jnp.int32)


def write(
    bank: MemoryBank,
    key: jax.Array,
    value: jax.Array,
    object_valid: jax.Array,
    frame_index: jax.Array,
    permanent: jax.Array,
) -> MemoryBank:
    """Stores one frame's memory of every object.

    key [K, h, w, Ck], value [K, h, w, Cv] (Enc-R of the frame with each object's
    mask), object_valid [K] bool (objects present so far; the entry is invalid for
    the others), frame_index int32 scalar, permanent bool scalar (traced is fine).
    Returns the new bank; the input is not modified (under jit with donation,
    XLA updates the buffers in place).
    """
    t = bank.capacity
    if key.shape != bank.keys.shape[:1] + bank.keys.shape[2:]:
        raise ValueError(f"key has shape {key.shape}; the bank expects [K, h, w, Ck] = "
                         f"{bank.keys.shape[:1] + bank.keys.shape[2:]}")
    if value.shape != bank.values.shape[:1] + bank.values.shape[2:]:
        raise ValueError(f"value has shape {value.shape}; the bank expects [K, h, w, Cv] = "
                         f"{bank.values.shape[:1] + bank.values.shape[2:]}")
    if object_valid.shape != (bank.num_objects,):
        raise ValueError(f"object_valid has shape {object_valid.shape}; expected [K] = ({bank.num_objects},)")
    permanent = jnp.asarray(permanent, bool)
    is_first = bank.frame_index[0] == EMPTY
    slot = target_slot(bank, permanent)
    went_to_ring = jnp.logical_and(permanent, jnp.logical_not(is_first))

    keys = jax.lax.dynamic_update_index_in_dim(bank.keys, key.astype(bank.keys.dtype), slot, axis=1)
    values = jax.lax.dynamic_update_index_in_dim(bank.values, value.astype(bank.values.dtype), slot, axis=1)
    valid = jax.lax.dynamic_update_index_in_dim(bank.valid, object_valid.astype(bool), slot, axis=1)
    frames = jax.lax.dynamic_update_index_in_dim(
        bank.frame_index, jnp.asarray(frame_index, jnp.int32), slot, axis=0
    )
    # A permanent (or first) entry replaces the temporary one: the frame before it
    # is either already permanent or is dropped, as in STM.
    clear_temp = slot != temporary_slot(t)
    tmp = temporary_slot(t)
    valid = valid.at[:, tmp].set(jnp.where(clear_temp, False, valid[:, tmp]))
    frames = frames.at[tmp].set(jnp.where(clear_temp, EMPTY, frames[tmp]))
    return MemoryBank(
        keys=keys,
        values=values,
        valid=valid,
        frame_index=frames,
        ring_writes=bank.ring_writes + went_to_ring.astype(jnp.int32),
    )


def pad_objects(bank: MemoryBank, num_objects: int) -> MemoryBank:
    """The same bank with K grown to num_objects; the new object slots are invalid.

    Used when a stream meets more objects than its object bucket holds.
    """
    extra = num_objects - bank.num_objects
    if extra < 0:
        raise ValueError(f"pad_objects: num_objects={num_objects} < the bank's {bank.num_objects}")

    def pad(x):
        return jnp.pad(x, [(0, extra)] + [(0, 0)] * (x.ndim - 1))

    return bank.replace(keys=pad(bank.keys), values=pad(bank.values), valid=pad(bank.valid))
