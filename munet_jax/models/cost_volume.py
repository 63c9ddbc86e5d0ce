"""Local cost volume of the MU-Layer (Eq. 1), its soft-argmin and its max (Eq. 2).

cost[b, y, x, k] = cosine(F_t(y, x), F_{t-1}(y + dy, x + dx)) for the candidate
k = (dy + r) * window + (dx + r), r = window // 2. Candidates outside the
feature map are marked False in `valid` and excluded from the softmax and the
max (DESIGN.md), so their `cost` entries are never read.

Two exact formulations (no window-sized Python loop, no patch extraction):

  'allpairs'  one matmul of all query positions against all reference
              positions ([HW, C] x [C, HW] per image), then a gather of each
              query's window with a constant index table. Work (HW)^2 * C,
              memory O(B * (HW)^2); the backward is a scatter-add plus matmuls.
              Fastest for training crops and DAVIS 480p.
  'rows'      a `lax.scan` over the `window` row offsets dy; per step one
              batched matmul of each query row against the shifted reference
              row ([W, C] x [C, W] for every (b, y)) and a gather-free band
              extraction over x (pads, reshapes, slices). Work
              window * H * W^2 * C, memory O(B * H * W^2) per step; the step
              is rematerialised in the backward pass. Wins for large maps.

'auto' picks 'allpairs' up to ALLPAIRS_MAX_POSITIONS positions and 'rows'
above; `benchmarks/cost_volume.py` prints the figures behind the threshold.

All of the similarity, softmax and max math is float32 whatever the compute
dtype of the surrounding convolutions: cosines of bfloat16 features and a
softmax at a small temperature lose too much precision in 8 mantissa bits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# 'auto' uses the all-pairs matmul while H*W is at most this many positions
# (a [B, 2048, 2048] float32 matrix, 16 MB per image). On this CPU it is ~2x
# faster than the row scan at 25x25 (training) and 30x54 (DAVIS 480p), and the
# row scan wins from 45x80 (720p) up: at 68x120 (1080p) 2.5x faster forward with
# a fifth of the memory. Figures in the report of benchmarks/cost_volume.py.
ALLPAIRS_MAX_POSITIONS = 2048

_EPS = 1e-6  # features with a norm below this count as zero vectors (cosine 0)
_METHODS = ("auto", "rows", "allpairs")


def check_window(window) -> int:
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window <= 0 or window % 2 == 0:
        raise ValueError(
            f"window={window!r}: the cost-volume window must be a positive odd integer "
            "(the candidate grid is centred on the query pixel), e.g. 25 as in the paper"
        )
    return int(window)


def _normalize(f: jax.Array) -> jax.Array:
    """[..., C] -> unit vectors in float32, so that a dot product is the cosine of Eq. 1."""
    f = f.astype(jnp.float32)
    sq = jnp.sum(f * f, axis=-1, keepdims=True)
    return f * jax.lax.rsqrt(jnp.maximum(sq, _EPS * _EPS))


def _band(m: jax.Array, r: int) -> jax.Array:
    """Diagonal band of the last two axes: [..., N, N] -> [..., N, 2r+1].

    out[..., i, j] = m[..., i, i + j - r], zero where i + j - r is outside 0..N-1.
    Gather-free: pad the columns by r to N + 2r, so the wanted entry sits at flat
    index i * (N + 2r) + i + j = i * (N + 2r + 1) + j; pad the flattened matrix by
    N so it reshapes to [N, N + 2r + 1], and keep the first 2r + 1 columns.
    """
    n = m.shape[-1]
    lead = m.shape[:-2]
    m = jnp.pad(m, [(0, 0)] * len(lead) + [(0, 0), (r, r)])  # [..., N, N + 2r]
    flat = m.reshape(lead + (n * (n + 2 * r),))
    flat = jnp.pad(flat, [(0, 0)] * len(lead) + [(0, n)])  # [..., N * (N + 2r + 1)]
    return flat.reshape(lead + (n, n + 2 * r + 1))[..., : 2 * r + 1]


def _cost_rows(q: jax.Array, ref: jax.Array, r: int) -> jax.Array:
    """q, ref: unit features [B, H, W, C] -> [B, H, W, (2r+1)^2]."""
    b, h, w, _ = q.shape
    ref_pad = jnp.pad(ref, [(0, 0), (r, r), (0, 0), (0, 0)])  # rows y - r .. y + r reachable

    def one_offset(_, i):
        # i = dy + r; rows[b, y] = F_{t-1}(y + dy) (zeros outside, masked later).
        rows = jax.lax.dynamic_slice_in_dim(ref_pad, i, h, axis=1)  # [B, H, W, C]
        pairs = jnp.einsum("byxc,byzc->byxz", q, rows)  # [B, H, W, W]: all x' of the row
        return None, _band(pairs, r)  # [B, H, W, 2r+1] over dx

    # Rematerialise each step in the backward pass instead of saving its [B, H, W, C]
    # slice of the reference: the slice is free to recompute and saving all `window`
    # of them dominated the backward's memory (figures in benchmarks/cost_volume.py).
    one_offset = jax.checkpoint(one_offset)
    _, per_dy = jax.lax.scan(one_offset, None, jnp.arange(2 * r + 1))  # [2r+1, B, H, W, 2r+1]
    return jnp.moveaxis(per_dy, 0, 3).reshape(b, h, w, (2 * r + 1) ** 2)


def _cost_allpairs(q: jax.Array, ref: jax.Array, r: int) -> jax.Array:
    """q, ref: unit features [B, H, W, C] -> [B, H, W, (2r+1)^2]."""
    b, h, w, c = q.shape
    n = 2 * r + 1
    pairs = jnp.einsum("bpc,bqc->bpq", q.reshape(b, h * w, c), ref.reshape(b, h * w, c))  # [B, HW, HW]
    # Flat reference index of every (query, candidate), clamped into the map: the
    # clamped entries are finite junk that `valid` masks out. [HW, n^2], a constant.
    d = displacements(n).astype(np.int64)  # [n^2, (dx, dy)]
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    ty = np.clip(ys.reshape(-1, 1) + d[None, :, 1], 0, h - 1)
    tx = np.clip(xs.reshape(-1, 1) + d[None, :, 0], 0, w - 1)
    index = jnp.asarray(ty * w + tx, jnp.int32)
    cost = jnp.take_along_axis(pairs, index[None], axis=2)  # [B, HW, n^2]
    return cost.reshape(b, h, w, n * n)


def valid_candidates(height: int, width: int, window: int) -> np.ndarray:
    """[H, W, window^2] bool: candidate (y + dy, x + dx) lies inside the map."""
    r = check_window(window) // 2
    d = np.arange(-r, r + 1)
    ok_y = (np.arange(height)[:, None] + d[None, :] >= 0) & (np.arange(height)[:, None] + d[None, :] < height)
    ok_x = (np.arange(width)[:, None] + d[None, :] >= 0) & (np.arange(width)[:, None] + d[None, :] < width)
    # [H, 1, n(dy), 1] & [1, W, 1, n(dx)] -> [H, W, n, n] -> flat k = (dy + r) * n + (dx + r)
    ok = ok_y[:, None, :, None] & ok_x[None, :, None, :]
    return ok.reshape(height, width, window * window)


def cost_volume(f_query: jax.Array, f_ref: jax.Array, window: int, method: str = "auto"):
    """Cosine cost volume of Eq. 1.

    f_query: F_t [B, H, W, C]; f_ref: F_{t-1} [B, H, W, C].
    Returns cost [B, H, W, window^2] float32 and valid [H, W, window^2] bool.
    `cost` is finite everywhere; entries of invalid candidates hold junk (0 for
    'rows', the cosine of a clamped neighbour for 'allpairs') that consumers
    must mask with `valid`. method: 'auto' | 'rows' | 'allpairs' (module docstring).
    """
    window = check_window(window)
    if f_query.ndim != 4 or f_query.shape != f_ref.shape:
        raise ValueError(
            f"cost_volume needs f_query and f_ref of one shape [B, H, W, C]; got {f_query.shape} and "
            f"{f_ref.shape}: pass the same-level features of frames t and t-1"
        )
    if method not in _METHODS:
        raise ValueError(f"method={method!r}: choose one of {_METHODS}")
    _, h, w, _ = f_query.shape
    if method == "auto":
        method = "allpairs" if h * w <= ALLPAIRS_MAX_POSITIONS else "rows"
    q, ref = _normalize(f_query), _normalize(f_ref)
    r = window // 2
    cost = _cost_allpairs(q, ref, r) if method == "allpairs" else _cost_rows(q, ref, r)
    return cost, jnp.asarray(valid_candidates(h, w, window))


def displacements(window: int) -> np.ndarray:
    """[window^2, 2] float32: the (dx, dy) of each candidate k, in feature-map pixels."""
    r = check_window(window) // 2
    dy, dx = np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1), indexing="ij")
    return np.stack([dx.ravel(), dy.ravel()], axis=-1).astype(np.float32)


def soft_argmin(cost: jax.Array, valid: jax.Array, window: int, tau: float) -> jax.Array:
    """Expected displacement under softmax(cost / tau) over the valid candidates.

    cost [B, H, W, window^2], valid [H, W, window^2] -> (dx, dy) [B, H, W, 2]
    float32. The softmax of the similarity (the soft-argmin of -C) puts most
    weight on the best match (DESIGN.md). The centre candidate is always valid,
    so every softmax has at least one term.
    """
    window = check_window(window)
    if not tau > 0:
        raise ValueError(f"tau={tau!r}: the softmax temperature must be positive (the paper's softmax is tau = 1.0)")
    logits = jnp.where(valid, cost.astype(jnp.float32) / tau, -1e30)  # invalid -> weight exp(-huge) = 0
    probs = jax.nn.softmax(logits, axis=-1)  # [B, H, W, window^2]
    return probs @ jnp.asarray(displacements(window))  # [B, H, W, 2]


def uncertainty_map(cost: jax.Array, valid: jax.Array) -> jax.Array:
    """Eq. 2: max over the valid candidates of the cosine cost. [B, H, W, K] -> [B, H, W, 1] float32."""
    # Cosines are >= -1, so -2 never wins against a valid candidate (and keeps the max finite).
    return jnp.max(jnp.where(valid, cost.astype(jnp.float32), -2.0), axis=-1, keepdims=True)
