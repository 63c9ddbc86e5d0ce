"""Shared plumbing of the benchmark suite: timing, XLA cost / memory analysis, device facts.

Every measurement follows one recipe:

    lowered = jitted.lower(*args)        timed: tracing + lowering to StableHLO
    compiled = lowered.compile()         timed: XLA compilation (the compile time we report)
    jitted(*args) once                   warm-up (reuses the compiled program: JAX caches it)
    jitted(*args) `repeats` times        each call timed up to `jax.block_until_ready`

and reports the median and the minimum (steadier on a shared machine) of the
timed calls, the jit cache size before and after the timed loop (equal: no
recompilation after warm-up), XLA's FLOP count of the program and the peak
memory the backend reports.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import os
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

# Dense peak throughput of accelerators in TFLOP/s by compute dtype (vendor datasheets).
PEAK_TFLOPS = {
    "H100": {"bfloat16": 989.0, "float32": 67.0},  # H100 SXM, dense (no sparsity)
    "H200": {"bfloat16": 989.0, "float32": 67.0},  # same compute as H100 SXM
}
# CPUs: no datasheet figure fits every (virtual) machine these runs land on, so the
# peak is measured: the best of a few large matmuls in the compute dtype on all cores
# (XLA's own GEMM ceiling here; bfloat16's differs from float32's: 5x above it where
# XLA:CPU reaches AMX, below it on CPUs without bfloat16 units), overridable with --peak_gflops.
CPU_PEAK_MATMUL = 2048


@functools.lru_cache(maxsize=None)
def measured_cpu_gemm_gflops(dtype: str = "float32") -> float:
    """Best GFLOP/s of a 2048^3 `dtype` matmul on the default (CPU) device, after warm-up."""
    n = CPU_PEAK_MATMUL
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    matmul = jax.jit(jnp.matmul)
    jax.block_until_ready(matmul(a, a))
    best = float("inf")
    for _ in range(10):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a, a))
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def peak_gflops(dtype: str, override: float | None = None) -> tuple[float | None, str]:
    """(peak GFLOP/s for `dtype` on device 0, where the figure comes from)."""
    if override:
        return float(override), "--peak_gflops"
    kind = jax.devices()[0].device_kind
    for name, table in PEAK_TFLOPS.items():
        if name in kind:
            return table[dtype] * 1e3, f"{name} datasheet, dense {dtype}"
    if jax.default_backend() == "cpu":
        return measured_cpu_gemm_gflops(dtype), (
            f"measured: best {dtype} {CPU_PEAK_MATMUL}^3 matmul on all cores (XLA's GEMM ceiling here)")
    return None, f"no peak known for {kind!r}: pass --peak_gflops"


def cpu_description() -> str:
    """The host CPU's model name and its wide-vector / matrix extensions (Linux), e.g.
    'AMD EPYC (avx2, fma)': the runs land on different machines from day to day."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    have = set(flags.group(1).split()) if flags else set()
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    name = model.group(1).strip() if model else platform.machine()
    return f"{name} ({', '.join(f for f in wanted if f in have) or 'no AVX2'})"


def device_info() -> dict[str, Any]:
    import flax
    import jaxlib

    dev = jax.devices()[0]
    return {
        "device_kind": dev.device_kind,
        "platform": dev.platform,
        "num_devices": jax.device_count(),
        "cpu_cores": os.cpu_count(),
        "host": cpu_description(),
        "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "date": datetime.date.today().isoformat(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def result_stem(info: dict) -> str:
    """`<device-kind>-<date>`, file-name safe."""
    kind = re.sub(r"[^A-Za-z0-9]+", "-", info["device_kind"]).strip("-").lower() or info["platform"]
    return f"{kind}-{info['date']}"


def flops_of(compiled) -> float | None:
    """XLA's FLOP count of a compiled program; cost_analysis() is a dict in recent jax,
    a list of dicts (one per program) in older ones; None where the backend gives none."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # backends without cost analysis
        return None
    if analysis is None:
        return None
    if isinstance(analysis, dict):
        analysis = [analysis]
    total = sum(float(a.get("flops", 0.0)) for a in analysis if a)
    return total if total > 0 else None


def model_flops(jitted: Callable, args: tuple) -> float | None:
    """FLOPs of a program from XLA's cost analysis before compilation (no compile, no run).

    Used for model FLOPs: the benchmarks count the FLOPs of the model with direct
    convolutions, whatever algorithm the timed program uses (the Winograd decoder
    does a quarter of the multiplications, and loops are counted once per body).
    """
    return flops_of(jitted.lower(*args))


def compiled_memory(compiled) -> dict[str, int] | None:
    """Arguments / outputs / temporaries of a compiled program (`memory_analysis()`), bytes."""
    try:
        m = compiled.memory_analysis()
    except Exception:
        return None
    if m is None:
        return None
    out = {name: int(getattr(m, f"{name}_size_in_bytes", 0)) for name in ("argument", "output", "alias", "temp")}
    # Donated (aliased) outputs share the arguments' buffers.
    out["peak_estimate"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def _memory_stats() -> dict | None:
    """Device 0's allocator statistics (GPU / TPU); None where the backend keeps none (CPU)."""
    try:
        return jax.devices()[0].memory_stats() or None
    except Exception:
        return None


def device_peak_bytes() -> int | None:
    """The allocator's peak so far (GPU / TPU); None where the backend keeps no statistics (CPU)."""
    stats = _memory_stats()
    if not stats:
        return None
    return int(stats.get("peak_bytes_in_use", stats.get("bytes_in_use", 0))) or None


def device_memory_limit() -> int | None:
    """Bytes the allocator of device 0 may hand out (GPU / TPU); None on CPU."""
    stats = _memory_stats()
    return int(stats["bytes_limit"]) if stats and stats.get("bytes_limit") else None


def cache_size(jitted) -> int | None:
    size = getattr(jitted, "_cache_size", None)
    return size() if callable(size) else None


@dataclasses.dataclass
class Timing:
    median_ms: float
    min_ms: float
    repeats: int
    lower_s: float
    compile_s: float
    flops: float | None
    memory: dict | None
    device_peak_bytes: int | None
    cache_before: int | None
    cache_after: int | None
    warmup_calls: int = 1
    xla_flops: float | None = None  # the timed program's own cost analysis (flops: model FLOPs if given)

    @property
    def recompiled(self) -> bool | None:
        if self.cache_before is None or self.cache_after is None:
            return None
        return self.cache_after != self.cache_before

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["recompiled_after_warmup"] = self.recompiled
        d["gflops"] = None if self.flops is None else self.flops / 1e9
        d["achieved_gflops_per_s"] = (
            None if self.flops is None else self.flops / 1e9 / (self.median_ms / 1e3)
        )
        return d


@dataclasses.dataclass
class Program:
    """One thing to time: a jitted function, its args, and how the args carry over (see `measure`)."""

    jitted: Callable
    args: tuple
    carry: Callable | None = None
    flops: float | None = None


def measure(jitted: Callable, args: tuple, repeats: int, carry: Callable | None = None,
            flops: float | None = None) -> Timing:
    """Compile `jitted` for `args`, warm up, time `repeats` calls.

    carry(args, result) -> the next call's args, for programs that donate their state
    (the donated input is consumed, the returned state feeds the next call); by
    default every call gets the same args. flops: the model FLOPs to report (see
    `model_flops`); by default the compiled program's own count.
    """
    return measure_many([Program(jitted, args, carry, flops)], repeats)[0]


def measure_many(programs: list[Program], repeats: int) -> list[Timing]:
    """`measure` for several programs, their timed calls interleaved (A B A B ...).

    On a shared machine the speed drifts by 10-20% over minutes; alternating the
    calls exposes every program to the same drift, so their ratio is what a
    before/after comparison should read.
    """
    states = []
    for p in programs:
        t0 = time.perf_counter()
        lowered = p.jitted.lower(*p.args)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
        xla_flops, memory = flops_of(compiled), compiled_memory(compiled)
        del compiled, lowered
        # Warm-up: the cached program, no new compile. A stateful program gets a second
        # warm-up call on its own output state when the first grew the cache (an output
        # whose sharding or type differs from the input's compiles a second program).
        args, warmup_calls = p.args, 0
        while True:
            size = cache_size(p.jitted)
            result = jax.block_until_ready(p.jitted(*args))
            warmup_calls += 1
            if p.carry is not None:
                args = p.carry(args, result)
            if p.carry is None or warmup_calls >= 3 or size is None or cache_size(p.jitted) == size:
                break
        states.append({"args": args, "times": [], "lower_s": t1 - t0, "compile_s": t2 - t1, "xla_flops": xla_flops,
                       "memory": memory, "warmup_calls": warmup_calls, "before": cache_size(p.jitted)})
    for _ in range(repeats):
        for p, st in zip(programs, states):
            start = time.perf_counter()
            result = jax.block_until_ready(p.jitted(*st["args"]))
            st["times"].append(time.perf_counter() - start)
            if p.carry is not None:
                st["args"] = p.carry(st["args"], result)
    return [
        Timing(
            median_ms=statistics.median(st["times"]) * 1e3,
            min_ms=min(st["times"]) * 1e3,
            repeats=repeats,
            lower_s=st["lower_s"],
            compile_s=st["compile_s"],
            flops=st["xla_flops"] if p.flops is None else p.flops,
            memory=st["memory"],
            device_peak_bytes=device_peak_bytes(),
            cache_before=st["before"],
            cache_after=cache_size(p.jitted),
            warmup_calls=st["warmup_calls"],
            xla_flops=st["xla_flops"],
        )
        for p, st in zip(programs, states)
    ]


def utilisation(timing: Timing, dtype: str, peak_override: float | None) -> dict:
    """Achieved GFLOP/s and model FLOPs utilisation against the stated peak."""
    peak, source = peak_gflops(dtype, peak_override)
    achieved = None if timing.flops is None else timing.flops / 1e9 / (timing.median_ms / 1e3)
    return {
        "achieved_gflops_per_s": achieved,
        "peak_gflops_per_s": peak,
        "peak_source": source,
        "mfu": None if achieved is None or not peak else achieved / peak,
    }


def parse_size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in str(text).split(",") if x.strip()]


def parse_strs(text: str) -> list[str]:
    return [x.strip() for x in str(text).split(",") if x.strip()]


def conv_label(row: dict) -> str:
    """How a result row ran its 3x3 convs, for the tables (rows before `conv3x3`: decoder only)."""
    if "conv3x3" not in row:
        return f"{row.get('decoder_conv', 'direct')} (decoder only)"
    return row["conv3x3"] + (", prepared" if row.get("prepared_kernels") else "")


def memory_read_setting(row: dict) -> str:
    """A result row's `model.memory_read`; rows of runs before the setting existed ran the dense read."""
    return row.get("memory_read", "dense")


def read_label(row: dict) -> str:
    """How a result row ran its memory read: the setting, with what 'auto' chose in
    brackets ('auto (blocked)')."""
    setting, ran = memory_read_setting(row), row.get("memory_read_ran")
    return setting if ran is None or ran == setting else f"{setting} ({ran})"

