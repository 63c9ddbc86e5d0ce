"""Times the MU-Layer cost volume formulations at the paper's sizes.

    python benchmarks/cost_volume.py [--repeats 7] [--only rows,allpairs] [--sizes train,davis,hd]

For each formulation and setting it prints, after a jit warm-up, the median
wall time (and the minimum, steadier on a shared machine) of the forward pass (cost volume + soft-argmin + uncertainty, i.e.
what the MU-Layer needs) and of forward+backward (gradient w.r.t. both feature
maps), plus XLA's compile-time memory figures (`memory_analysis()`: the temp
buffers the program allocates, besides its arguments and outputs).

Formulations:
  rows           munet_jax: scan over dy, per-row matmul, band slicing over dx,
                 step rematerialised in the backward pass
  allpairs       munet_jax: [HW, C] x [C, HW] matmul, then `take_along_axis`
                 to the window (the backward pass is a scatter-add)
  allpairs_band  the same matmul, then gather-free band slicing over x and y
  rows_no_remat  'rows' without rematerialisation
  shift      a scan over dy with window-many shifted slices over dx and a
             multiply-and-sum over C (no matmul: exact work, memory bound)

Settings (C = 256 after the 1x1 reduction, window 25):
  train  400x400 crops -> 25x25 maps, batch 4
  davis  DAVIS 480p padded to 480x864 -> 30x54 maps, batch 1
  720p   720x1280 -> 45x80 maps, batch 1
  hd     1080p-ish -> 68x120 maps, batch 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from munet_jax.models import cost_volume as cv  # noqa: E402

WINDOW = 25
CHANNELS = 256
SETTINGS = {"train": (4, 25, 25), "davis": (1, 30, 54), "720p": (1, 45, 80), "hd": (1, 68, 120)}


def _allpairs_band(f_query, f_ref, window):
    """All-pairs matmul, then gather-free band extraction over x and then y (pads, reshapes, transposes)."""
    b, h, w, _ = f_query.shape
    r, n = window // 2, window
    q, ref = cv._normalize(f_query), cv._normalize(f_ref)
    pairs = jnp.einsum("byxc,bvuc->byvxu", q, ref)  # [B, H, H', W, W']
    pairs = cv._band(pairs, r)  # [B, H, H', W, n(dx)]
    pairs = cv._band(jnp.transpose(pairs, (0, 3, 4, 1, 2)), r)  # [B, W, n(dx), H, n(dy)]
    cost = jnp.transpose(pairs, (0, 3, 1, 4, 2)).reshape(b, h, w, n * n)
    return cost, jnp.asarray(cv.valid_candidates(h, w, window))


def _rows_no_remat(f_query, f_ref, window):
    """'rows' without jax.checkpoint on the scan step (saves every reference slice for the backward)."""
    b, h, w, _ = f_query.shape
    r = window // 2
    q, ref = cv._normalize(f_query), cv._normalize(f_ref)
    ref_pad = jnp.pad(ref, [(0, 0), (r, r), (0, 0), (0, 0)])

    def step(_, i):
        rows = jax.lax.dynamic_slice_in_dim(ref_pad, i, h, axis=1)
        return None, cv._band(jnp.einsum("byxc,byzc->byxz", q, rows), r)

    _, per_dy = jax.lax.scan(step, None, jnp.arange(window))
    return jnp.moveaxis(per_dy, 0, 3).reshape(b, h, w, window * window), jnp.asarray(
        cv.valid_candidates(h, w, window)
    )


def _shift(f_query, f_ref, window):
    """Scan over dy; per step stack the window shifted slices over dx and contract C."""
    b, h, w, c = f_query.shape
    r = window // 2
    q, ref = cv._normalize(f_query), cv._normalize(f_ref)
    ref_pad = jnp.pad(ref, [(0, 0), (r, r), (r, r), (0, 0)])

    def step(_, i):
        rows = jax.lax.dynamic_slice_in_dim(ref_pad, i, h, axis=1)  # [B, H, W + 2r, C]
        cols = jnp.stack([rows[:, :, j : j + w] for j in range(window)], axis=3)  # [B, H, W, n, C]
        return None, jnp.einsum("byxc,byxkc->byxk", q, cols)

    _, per_dy = jax.lax.scan(step, None, jnp.arange(window))
    return jnp.moveaxis(per_dy, 0, 3).reshape(b, h, w, window * window), jnp.asarray(
        cv.valid_candidates(h, w, window)
    )


FORMULATIONS = {
    "rows": lambda a, b, n: cv.cost_volume(a, b, n, method="rows"),
    "allpairs": lambda a, b, n: cv.cost_volume(a, b, n, method="allpairs"),
    "allpairs_band": _allpairs_band,
    "rows_no_remat": _rows_no_remat,
    "shift": _shift,
}


def _programs(fn):
    def forward(fq, fr):
        cost, valid = fn(fq, fr, WINDOW)
        return cv.soft_argmin(cost, valid, WINDOW, 1.0), cv.uncertainty_map(cost, valid)

    def loss(fq, fr):
        disp, unc = forward(fq, fr)
        return jnp.sum(disp * disp) + jnp.sum(unc)

    return jax.jit(forward), jax.jit(jax.grad(loss, argnums=(0, 1)))


def _measure(program, args, repeats):
    compiled = program.lower(*args).compile()
    try:
        mem = compiled.memory_analysis()
        temp_mb = mem.temp_size_in_bytes / 2**20
    except Exception:  # some backends return None or raise
        temp_mb = float("nan")
    jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, min(times) * 1e3, temp_mb


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", default=",".join(FORMULATIONS))
    parser.add_argument("--sizes", default=",".join(SETTINGS))
    parser.add_argument("--no-backward", action="store_true")
    args = parser.parse_args()
    print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), jax {jax.__version__}, "
          f"C={CHANNELS}, window={WINDOW}, median of {args.repeats}")
    print("times in ms as median (min); temp MB = XLA temp buffers of the compiled program")
    print(f"{'setting':<8}{'formulation':<15}{'fwd ms':>17}{'temp MB':>9}{'fwd+bwd ms':>19}{'temp MB':>9}")
    rng = np.random.default_rng(0)
    for size in args.sizes.split(","):
        b, h, w = SETTINGS[size]
        fq = jnp.asarray(rng.normal(size=(b, h, w, CHANNELS)), jnp.float32)
        fr = jnp.asarray(rng.normal(size=(b, h, w, CHANNELS)), jnp.float32)
        for name in args.only.split(","):
            fwd, grad = _programs(FORMULATIONS[name])
            t_f, lo_f, m_f = _measure(fwd, (fq, fr), args.repeats)
            if args.no_backward:
                t_b, lo_b, m_b = (float("nan"),) * 3
            else:
                t_b, lo_b, m_b = _measure(grad, (fq, fr), args.repeats)
            fwd_s, bwd_s = f"{t_f:.1f} ({lo_f:.1f})", f"{t_b:.1f} ({lo_b:.1f})"
            print(f"{size:<8}{name:<15}{fwd_s:>17}{m_f:>9.1f}{bwd_s:>19}{m_b:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
