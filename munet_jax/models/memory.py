"""Key/value embedding and the space-time memory read (STM, Oh et al. 2019).

Every memory frame and the query frame are embedded into a key (for matching,
`key_dim` = 128 channels) and a value (for decoding, `value_dim` = 512). The read
attends from each query pixel j over ALL memory positions i (every valid frame x
every pixel):

    w_ij = exp(k_i . q_j / sqrt(Ck)) / sum_i' exp(k_i' . q_j / sqrt(Ck))
    read_j = sum_i w_ij v_i

and the decoder gets concat(read, query value), 2 * Cv channels.

The memory has a fixed capacity T (so one compiled program serves a whole
video); `mem_valid [B, T]` marks the filled slots. Invalid slots are removed
from the softmax with `where` (not an additive -1e9, which would still give
them weight in a row with no valid slot) and their values are zeroed, so
whatever an empty slot holds - zeros, stale frames, NaN - has no effect.

Three ways to compute the same read (`algorithm`):
  'dense'    the [B, THW, HW] affinity at once: one GEMM, the softmax, one GEMM.
  'blocked'  a loop over blocks of memory frames with an online softmax (a
             running max, sum and weighted sum per query pixel, rescaled when
             the max grows; Milakov & Gimelshein 2018, as in FlashAttention).
             Each block's logits ([g*Hm*Wm, HW], <= `BLOCK_BYTES`) stay in the
             CPU's cache between the GEMMs and the softmax passes instead of
             going through memory several times.
  'query_blocked'
             a loop over the batch elements (objects) and, in each, over blocks
             of query pixels: each block's logits [rows, THW] (<=
             `QUERY_BLOCK_BYTES`) go through the masking, max, exp and sum while
             they are in the cache. No online rescaling: a query's
             softmax is over the memory, and every block sees all of it. The
             values GEMM runs per block where the values are small enough to be
             read again per block (<= `VALUES_PER_BLOCK_MAX_BYTES`); otherwise
             the blocks' exp (in the values' dtype) are gathered and one GEMM
             reads the values once.
  'auto'     on XLA:CPU: 'query_blocked' for bfloat16 keys and values (its
             query-major layout alone halves the read, blocks or not); for
             float32, 'blocked' where the memory spans more than one block and the
             keys + values are narrow (<= `BLOCKED_MAX_CHANNELS` channels, where the
             softmax's passes, not the GEMMs, dominate), else 'dense'. 'dense' on
             GPU/TPU (one large GEMM per step suits them better than a loop of
             small ones). Measured on a 2-core EPYC at 480p with 20 memory frames,
             float32: the tiny model's frame (16 + 32 channels) 385 -> 303 ms; the
             read of the demo model (32 + 64) alone 342-373 -> 209-221 ms. The full
             model's (128 + 512) read at 480p on a 2-core Xeon (AMX), bfloat16,
             alone: 5 memory frames 106-110 -> 33-37 ms, 20 frames 420-432 ->
             195-203 ms (dense -> query_blocked; 'blocked' 72 and 292-300 ms).
All give the same values up to float rounding, and the same gradients.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from munet_jax.models import winograd


class KeyValue(nn.Module):
    """[..., H, W, C] -> key [..., H, W, key_dim], value [..., H, W, value_dim].

    Two independent 3x3 convs with bias and explicit symmetric padding 1 (as
    STM's `KeyValue`, PyTorch `Conv2d(C, n, 3, padding=1)`), so H, W are kept.
    Parameters stay float32; `dtype` is the compute dtype.
    """

    key_dim: int = 128
    value_dim: int = 512
    dtype: Any = jnp.float32
    conv_algorithm: str = "direct"  # how the 3x3 convs run, see munet_jax.models.winograd.Conv3x3

    def setup(self):
        for name, dim in (("key_dim", self.key_dim), ("value_dim", self.value_dim)):
            if not isinstance(dim, int) or dim <= 0:
                raise ValueError(f"KeyValue.{name}={dim!r}: must be a positive integer (STM uses 128 / 512)")

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        if x.ndim < 3:
            raise ValueError(f"KeyValue expects [..., H, W, C] input, got shape {x.shape}")

        def conv(features, name):  # flax nn.Conv(features, (3, 3), padding=1)'s parameters
            return winograd.Conv3x3(features, dtype=self.dtype, algorithm=self.conv_algorithm, name=name)

        # One Winograd conv for both where the kernels are prepared (the input transformed once).
        key, value = winograd.conv3x3_group(self, x, [conv(self.key_dim, "key"), conv(self.value_dim, "value")])
        return key, value


def _check_shapes(mem_keys, mem_values, mem_valid, q_key, q_value) -> None:
    if mem_keys.ndim != 5 or mem_values.ndim != 5:
        raise ValueError(
            f"mem_keys {mem_keys.shape} and mem_values {mem_values.shape} must be [B, T, H, W, C]; "
            "fold any object axis into B first"
        )
    if q_key.ndim != 4 or q_value.ndim != 4:
        raise ValueError(f"q_key {q_key.shape} and q_value {q_value.shape} must be [B, H, W, C]")
    b, t = mem_keys.shape[:2]
    if mem_values.shape[:4] != mem_keys.shape[:4]:
        raise ValueError(f"mem_values {mem_values.shape} and mem_keys {mem_keys.shape} differ in [B, T, H, W]")
    if mem_valid.shape != (b, t):
        raise ValueError(f"mem_valid has shape {mem_valid.shape}; expected [B, T] = {(b, t)} (one flag per slot)")
    if mem_valid.dtype != jnp.bool_:
        raise ValueError(f"mem_valid has dtype {mem_valid.dtype}; pass a bool array (slot filled or not)")
    if q_key.shape[0] != b or q_value.shape[:3] != q_key.shape[:3]:
        raise ValueError(
            f"q_key {q_key.shape} / q_value {q_value.shape} must share [B, H, W] with batch {b} of the memory"
        )
    if q_key.shape[-1] != mem_keys.shape[-1]:
        raise ValueError(f"key channels differ: memory {mem_keys.shape[-1]}, query {q_key.shape[-1]}")
    if q_value.shape[-1] != mem_values.shape[-1]:
        raise ValueError(f"value channels differ: memory {mem_values.shape[-1]}, query {q_value.shape[-1]}")


READ_ALGORITHMS = ("auto", "dense", "blocked", "query_blocked")
BLOCK_BYTES = 4 * 2**20  # float32 logits of one block: well inside a CPU's L3 (and near its L2 on many)
BLOCKED_MAX_CHANNELS = 256  # 'auto' blocks memory frames only for Ck + Cv up to this (see the module doc)
QUERY_BLOCK_BYTES = 8 * 2**20  # float32 logits of one block of query rows: two cores' L2 on a 2-core Xeon
VALUES_PER_BLOCK_MAX_BYTES = 16 * 2**20  # 'query_blocked' reads values this large again in every block
QUERY_ROWS_MULTIPLE = 16  # rows per query block rounded up to this (the GEMMs' row tiles)
SKIP_EMPTY_MIN_SLOTS = 8  # memory_read skips empty slots on CPU from this many slots (the engine's bank)


def query_rows_per_block(queries: int, positions: int, block_bytes: int = QUERY_BLOCK_BYTES) -> int:
    """Query pixels per block of the 'query_blocked' read: the HW queries split into the
    fewest blocks whose float32 logits [rows, THW positions] fit `block_bytes`, rows
    rounded up to a multiple of `QUERY_ROWS_MULTIPLE` (the last block is padded) and
    never more than HW."""
    blocks = max(1, -(-queries * positions * 4 // block_bytes))
    rows = -(-queries // blocks)
    return min(queries, -(-rows // QUERY_ROWS_MULTIPLE) * QUERY_ROWS_MULTIPLE)


def frames_per_block(t: int, positions_per_frame: int, queries: int, block_bytes: int = BLOCK_BYTES) -> int:
    """The largest divisor g of T whose block of logits, g * Hm*Wm * HW float32, fits
    `block_bytes`; 1 if even one frame does not (then the block is one frame)."""
    per_frame = positions_per_frame * queries * 4
    return max([g for g in range(1, t + 1) if t % g == 0 and g * per_frame <= block_bytes], default=1)


def resolved_algorithm(algorithm: str, t: int, positions_per_frame: int, queries: int, channels: int,
                       block_bytes: int = BLOCK_BYTES, dtype: Any = jnp.float32) -> str:
    """What `memory_read(algorithm=...)` runs ('dense', 'blocked' or 'query_blocked') for T
    memory frames of Hm*Wm positions, HW query pixels, Ck + Cv key + value `channels` and
    keys/values of `dtype` (see the module doc)."""
    if algorithm not in READ_ALGORITHMS:
        raise ValueError(f"memory read algorithm {algorithm!r}: choose one of {READ_ALGORITHMS}")
    if algorithm != "auto":
        return algorithm
    if jax.default_backend() != "cpu":
        return "dense"
    if jnp.dtype(dtype).itemsize < 4:
        # bfloat16: the query-major loop, even for one block (its layout alone halves the read).
        return "query_blocked"
    several_blocks = t // frames_per_block(t, positions_per_frame, queries, block_bytes) > 1
    return "blocked" if several_blocks and channels <= BLOCKED_MAX_CHANNELS else "dense"


def _read_blocked(mem_keys, mem_values, mem_valid, q_key, g: int):
    """`_read`'s read [B, HW, Cv] float32 by an online softmax over blocks of g memory frames."""
    b, t, h_m, w_m, ck = mem_keys.shape
    cv = mem_values.shape[-1]
    m = g * h_m * w_m  # memory positions per block
    hw = q_key.shape[1] * q_key.shape[2]
    # [B, THW] slot-major, as the reshapes below.
    pos_valid = jnp.broadcast_to(mem_valid[:, :, None], (b, t, h_m * w_m)).reshape(b, t * h_m * w_m)
    # Empty slots' keys zeroed: NaN garbage there would reach the query key's gradient (0 * NaN).
    mk = jnp.where(pos_valid[:, :, None], mem_keys.reshape(b, t * h_m * w_m, ck), 0)
    mv = mem_values.reshape(b, t * h_m * w_m, cv)
    qk = q_key.reshape(b, hw, ck)
    scale = 1.0 / jnp.sqrt(jnp.float32(ck))

    def block(carry, i):
        run_max, run_sum, acc = carry  # [B, HW], [B, HW], [B, HW, Cv] float32
        k = jax.lax.dynamic_slice_in_dim(mk, i * m, m, axis=1)  # [B, m, Ck]
        v = jax.lax.dynamic_slice_in_dim(mv, i * m, m, axis=1)  # [B, m, Cv]
        ok = jax.lax.dynamic_slice_in_dim(pos_valid, i * m, m, axis=1)  # [B, m]
        logits = jnp.einsum("bmc,bqc->bmq", k, qk, preferred_element_type=jnp.float32).astype(jnp.float32) * scale
        logits = jnp.where(ok[:, :, None], logits, -jnp.inf)  # [B, m, HW]
        # The shift only keeps exp in range: its value cancels in sum(e v) / sum(e), so
        # it carries no gradient. -inf while no valid position has been seen: shift by 0.
        new_max = jax.lax.stop_gradient(jnp.maximum(run_max, jnp.max(logits, axis=1)))
        shift = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
        rescale = jnp.exp(jnp.where(jnp.isfinite(run_max), run_max, shift) - shift)  # <= 1; 1 before any valid
        e = jnp.exp(logits - shift[:, None, :])  # [B, m, HW]; 0 at invalid positions
        v = jnp.where(ok[:, :, None], v, 0)  # no 0 * NaN from an empty slot's garbage
        read = jnp.einsum("bmq,bmv->bqv", e.astype(v.dtype), v, preferred_element_type=jnp.float32)
        run_sum = run_sum * rescale + jnp.sum(e, axis=1)
        acc = acc * rescale[..., None] + read.astype(jnp.float32)
        return (new_max, run_sum, acc), None

    init = (jnp.full((b, hw), -jnp.inf, jnp.float32), jnp.zeros((b, hw), jnp.float32),
            jnp.zeros((b, hw, cv), jnp.float32))
    (_, total, acc), _ = jax.lax.scan(block, init, jnp.arange(t // g))
    # A row without any valid position has total 0 and acc 0: it reads zeros.
    return acc / jnp.where(total > 0, total, 1.0)[..., None]


def _read_query_blocked(mem_keys, mem_values, mem_valid, q_key, rows: int):
    """`_read`'s read [B, HW, Cv] float32 by a loop over the B batch elements (objects) and,
    in each, over blocks of `rows` query pixels: a block's logits are one element's
    [rows, THW] (all B in each block take B times the cache: 3 objects at 480p, 5 memory
    frames, bfloat16, 2-core Xeon: 145-183 ms with blocks of 128-240 rows against 113-116 ms
    a batch element at a time; the dense read 343 ms)."""
    def one(args):  # one batch element, with a batch axis of 1
        return _read_query_blocked_batch(*(a[None] for a in args), rows)[0]

    return jax.lax.map(one, (mem_keys, mem_values, mem_valid, q_key))


def _read_query_blocked_batch(mem_keys, mem_values, mem_valid, q_key, rows: int):
    """`_read_query_blocked` on all B batch elements at once in each block."""
    b, t, h_m, w_m, ck = mem_keys.shape
    cv = mem_values.shape[-1]
    n_mem = t * h_m * w_m
    hw = q_key.shape[1] * q_key.shape[2]
    blocks = -(-hw // rows)
    pos_valid = jnp.broadcast_to(mem_valid[:, :, None], (b, t, h_m * w_m)).reshape(b, n_mem)  # [B, THW]
    # Empty slots' keys and values zeroed once ([B, THW, C], small): no NaN garbage in a GEMM.
    mk = jnp.where(pos_valid[:, :, None], mem_keys.reshape(b, n_mem, ck), 0)
    mv = jnp.where(pos_valid[:, :, None], mem_values.reshape(b, n_mem, cv), 0)
    # Queries padded to blocks * rows (zero rows, sliced off below): [blocks, B, rows, Ck].
    qk = jnp.pad(q_key.reshape(b, hw, ck), ((0, 0), (0, blocks * rows - hw), (0, 0)))
    qk = qk.reshape(b, blocks, rows, ck).transpose(1, 0, 2, 3)
    scale = 1.0 / jnp.sqrt(jnp.float32(ck))
    values_per_block = n_mem * cv * mv.dtype.itemsize <= VALUES_PER_BLOCK_MAX_BYTES

    def block(q):  # [B, rows, Ck]
        # Query-major logits [B, rows, THW]: the softmax reduces the contiguous axis.
        logits = jnp.einsum("bqc,bmc->bqm", q, mk, preferred_element_type=jnp.float32).astype(jnp.float32)
        logits = jnp.where(pos_valid[:, None, :], logits, -jnp.inf)
        # As `_read`: the shift carries no gradient, and a row with no valid slot shifts by 0.
        row_max = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))  # [B, rows, 1]
        row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
        # The scale applied inside exp (max(scale * l) = scale * max(l) as scale > 0).
        e = jnp.exp((logits - row_max) * scale)  # [B, rows, THW]; 0 at empty slots
        denom = jnp.sum(e, axis=-1, keepdims=True)  # [B, rows, 1]
        e = e.astype(mv.dtype)
        if not values_per_block:
            return e, denom
        read = jnp.einsum("bqm,bmv->bqv", e, mv, preferred_element_type=jnp.float32).astype(jnp.float32)
        return read / jnp.where(denom > 0, denom, 1.0), denom

    out, denom = jax.lax.map(block, qk)  # [blocks, B, rows, Cv or THW], [blocks, B, rows, 1]
    out = out.transpose(1, 0, 2, 3).reshape(b, blocks * rows, -1)[:, :hw]
    if values_per_block:
        return out
    # One GEMM [B, HW, THW] x [B, THW, Cv]: the values are read once.
    denom = denom.transpose(1, 0, 2, 3).reshape(b, blocks * rows, 1)[:, :hw]
    read = jnp.einsum("bqm,bmv->bqv", out, mv, preferred_element_type=jnp.float32).astype(jnp.float32)
    return read / jnp.where(denom > 0, denom, 1.0)


def _read(mem_keys, mem_values, mem_valid, q_key):
    """Shared core: (read [B, HW, Cv] float32, weights [B, THW, HW] float32)."""
    b, t, h_m, w_m, ck = mem_keys.shape
    cv = mem_values.shape[-1]
    n_mem = t * h_m * w_m
    h, w = q_key.shape[1:3]

    # Per memory position validity [B, THW] (slot-major, as the reshape below).
    pos_valid = jnp.broadcast_to(mem_valid[:, :, None], (b, t, h_m * w_m)).reshape(b, n_mem)

    # Empty slots' keys zeroed: NaN garbage there would reach the query key's gradient
    # (0 * NaN in the logits' GEMM), though the masking below keeps it out of the values.
    mk = jnp.where(pos_valid[:, :, None], mem_keys.reshape(b, n_mem, ck), 0)
    qk = q_key.reshape(b, h * w, ck)
    # One GEMM [B, THW, Ck] x [B, Ck, HW] -> [B, THW, HW]; accumulate in float32
    # even for bfloat16 operands, and scale after the matmul so the 1/sqrt(Ck)
    # factor is not rounded to bfloat16.
    logits = jnp.einsum("bmc,bqc->bmq", mk, qk, preferred_element_type=jnp.float32)
    logits = logits.astype(jnp.float32) * (1.0 / jnp.sqrt(jnp.float32(ck)))

    # Softmax over the memory axis (1), restricted to valid positions. A row with
    # no valid position has max -inf: shift by 0 instead, so every exp is
    # exp(-inf) = 0 and the weights (and the read) are zeros, not NaN.
    logits = jnp.where(pos_valid[:, :, None], logits, -jnp.inf)
    row_max = jax.lax.stop_gradient(jnp.max(logits, axis=1, keepdims=True))  # [B, 1, HW]
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    e = jnp.exp(logits - row_max)
    denom = jnp.sum(e, axis=1, keepdims=True)
    weights = e / jnp.where(denom > 0, denom, 1.0)  # [B, THW, HW]

    # Zero invalid values so that non-finite garbage in an empty slot cannot
    # leak through 0 * NaN. Second GEMM: [B, HW, THW] x [B, THW, Cv]; the weights
    # go to the values' dtype (bfloat16 under mixed precision), accumulation is float32.
    mv = jnp.where(pos_valid[:, :, None], mem_values.reshape(b, n_mem, cv), 0)
    read = jnp.einsum("bmq,bmv->bqv", weights.astype(mv.dtype), mv, preferred_element_type=jnp.float32)
    return read, weights


def memory_read_with_weights(
    mem_keys: jax.Array,
    mem_values: jax.Array,
    mem_valid: jax.Array,
    q_key: jax.Array,
    q_value: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """`memory_read` plus the attention weights.

    Returns (out [B, H, W, 2 * Cv] in q_value's dtype,
             weights [B, T, Hm, Wm, H, W] float32), where weights[b, t, y, x, qy, qx]
    is the weight of memory position (t, y, x) for query pixel (qy, qx); it sums
    to 1 over (t, y, x) where the row has a valid slot and is 0 elsewhere.
    """
    _check_shapes(mem_keys, mem_values, mem_valid, q_key, q_value)
    b, t, h_m, w_m = mem_keys.shape[:4]
    h, w = q_key.shape[1:3]
    read, weights = _read(mem_keys, mem_values, mem_valid, q_key)
    read = read.reshape(b, h, w, -1).astype(q_value.dtype)
    out = jnp.concatenate([read, q_value], axis=-1)
    return out, weights.reshape(b, t, h_m, w_m, h, w)


def memory_read(
    mem_keys: jax.Array,
    mem_values: jax.Array,
    mem_valid: jax.Array,
    q_key: jax.Array,
    q_value: jax.Array,
    algorithm: str = "auto",
    block_bytes: int = BLOCK_BYTES,
    query_block_bytes: int = QUERY_BLOCK_BYTES,
    skip_empty_slots: bool | None = None,
) -> jax.Array:
    """Space-time memory read, concatenated with the query value.

    mem_keys [B, T, Hm, Wm, Ck], mem_values [B, T, Hm, Wm, Cv], mem_valid [B, T]
    bool, q_key [B, H, W, Ck], q_value [B, H, W, Cv] -> [B, H, W, 2 * Cv] =
    concat(read, q_value) in q_value's dtype. (Hm, Wm is the query's H, W in
    MUNet; any memory resolution works.) The similarity and the softmax are
    float32 whatever the input dtype. A row without any valid slot reads zeros.
    `algorithm` ('auto', 'dense', 'blocked', 'query_blocked': see the module
    doc), `block_bytes` (the blocked read's logits per block) and
    `query_block_bytes` (the query-blocked read's) change only the speed, as
    does `skip_empty_slots`: read only the filled slots (gathered to the front;
    a read compiled for each quarter of T, `lax.switch` picks the smallest that
    holds them). None = with `algorithm='auto'` on XLA:CPU for T >=
    `SKIP_EMPTY_MIN_SLOTS` (the inference engine's 20-slot bank, most of it
    empty in a video's first 50 frames; on GPU a switch would wait on the host).
    """
    _check_shapes(mem_keys, mem_values, mem_valid, q_key, q_value)
    b, h, w = q_key.shape[:3]

    def read_slots(keys, values, valid):  # [B, T', ...] -> read [B, HW, Cv] float32
        t, h_m, w_m = keys.shape[1:4]
        channels = keys.shape[-1] + values.shape[-1]
        chosen = resolved_algorithm(algorithm, t, h_m * w_m, h * w, channels, block_bytes, values.dtype)
        if chosen == "blocked":
            return _read_blocked(keys, values, valid, q_key, frames_per_block(t, h_m * w_m, h * w, block_bytes))
        if chosen == "query_blocked":
            return _read_query_blocked(keys, values, valid, q_key,
                                       query_rows_per_block(h * w, t * h_m * w_m, query_block_bytes))
        return _read(keys, values, valid, q_key)[0]

    if skip_empty_slots is None:
        skip_empty_slots = skips_empty_slots(algorithm, mem_valid.shape[1])
    if skip_empty_slots:
        read = _read_filled_slots(read_slots, mem_keys, mem_values, mem_valid)
    else:
        read = read_slots(mem_keys, mem_values, mem_valid)
    read = read.reshape(b, h, w, -1).astype(q_value.dtype)
    return jnp.concatenate([read, q_value], axis=-1)


def skips_empty_slots(algorithm: str, t: int) -> bool:
    """Whether `memory_read(algorithm=..., skip_empty_slots=None)` reads only the filled
    slots of a T-slot memory: 'auto' on XLA:CPU from `SKIP_EMPTY_MIN_SLOTS` slots (a named
    algorithm computes exactly that: FLOP counts, A/B runs)."""
    return algorithm == "auto" and jax.default_backend() == "cpu" and t >= SKIP_EMPTY_MIN_SLOTS


def filled_slot_counts(t: int) -> list[int]:
    """The slot counts `_read_filled_slots` compiles a read for: quarters of T, rounded up
    (T = 20: 5, 10, 15, 20)."""
    return sorted({-(-t * i // 4) for i in range(1, 5)})


def _read_filled_slots(read_slots, mem_keys, mem_values, mem_valid):
    """`read_slots` over the filled slots only: the filled slots gathered to the front (in
    slot order) and a `lax.switch` to the read of the smallest `filled_slot_counts(T)` that
    holds the most filled slots of any batch element. Empty slots add exactly nothing to a
    read, so this changes only which positions are computed (and float rounding)."""
    t = mem_valid.shape[1]
    counts = filled_slot_counts(t)
    order = jnp.argsort(~mem_valid, axis=1, stable=True)  # [B, T]: filled slots first
    filled = jnp.max(jnp.sum(mem_valid, axis=1))

    def branch(m):
        def run(operands):
            keys, values, valid, order = operands
            if m == t:  # all slots: read them where they are (no copy of the bank)
                return read_slots(keys, values, valid)
            idx = order[:, :m]  # [B, m]
            pick = idx[:, :, None, None, None]
            return read_slots(jnp.take_along_axis(keys, pick, axis=1), jnp.take_along_axis(values, pick, axis=1),
                              jnp.take_along_axis(valid, idx, axis=1))
        return run

    which = jnp.searchsorted(jnp.asarray(counts), filled)  # the first count >= filled
    return jax.lax.switch(which, [branch(m) for m in counts], (mem_keys, mem_values, mem_valid, order))
