"""Model and variables for the benchmark: the full (paper) or tiny config at a compute dtype.

Parameters do not depend on the image size, the object count or the compute
dtype (always float32), so one initialisation per config serves every setting.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax.numpy as jnp
import ml_collections

from munet_jax.benchmark.common import parse_strs, utilisation
from munet_jax.models.config import munet_config, tiny_munet_config
from munet_jax.models.memory import resolved_algorithm, skips_empty_slots
from munet_jax.models.munet import build_model, init_variables, with_prepared_kernels
from munet_jax.models.winograd import PREPARED


class Variant(NamedTuple):
    """One way of running the same model, timed interleaved with the others of a setting."""

    dtype: str
    conv3x3: str  # model.conv3x3
    prepared: bool  # Winograd kernels transformed once (InferenceEngine.prepare)
    memory_read: str  # model.memory_read

    def label(self) -> str:
        return f"{self.dtype}/{self.conv3x3}{'/prepared' if self.prepared else ''}/read {self.memory_read}"


def model_config(tiny: bool, dtype: str, conv3x3: str | None = None,
                 memory_read: str | None = None) -> ml_collections.ConfigDict:
    cfg = tiny_munet_config() if tiny else munet_config()
    cfg.dtype = dtype
    if conv3x3 is not None:
        cfg.conv3x3 = conv3x3
    if memory_read is not None:
        cfg.memory_read = memory_read
    return cfg


def build(tiny: bool, dtype: str, conv3x3: str | None = None, memory_read: str | None = None):
    """The model; None keeps the config's default ('auto') of conv3x3 / memory_read."""
    return build_model(model_config(tiny, dtype, conv3x3, memory_read))


def without_motion(model):
    """The same model with `mu_layer.enabled=False` (no MU-Layer, no MSAM: STM's frame); it runs
    on the full model's variables (the MU-Layer's parameters are simply not read)."""
    cfg = ml_collections.ConfigDict(model.config.to_dict())
    cfg.mu_layer.enabled = False
    return build_model(cfg)


def counting_model(tiny: bool, dtype: str):
    """The model whose programs XLA's cost analysis counts the model FLOPs of: direct
    convolutions (Winograd does fewer multiplications) and the dense memory read (the
    blocked read is a loop, whose body XLA counts once)."""
    return build(tiny, dtype, "direct", "dense")


def read_ran(tiny: bool, memory_read: str, memory_frames: int, bucket, dtype: str = "float32") -> str:
    """The memory read a frame at `bucket` ([H, W], stride-16 features) with that many
    memory frames runs for the `memory_read` setting and compute `dtype`: 'dense',
    'blocked' or 'query_blocked', '+ filled slots' where only the filled slots are read."""
    cfg = model_config(tiny, dtype)
    positions = (bucket[0] // 16) * (bucket[1] // 16)
    ran = resolved_algorithm(memory_read, memory_frames, positions, positions, cfg.key_dim + cfg.value_dim,
                             dtype=jnp.dtype(dtype))
    return f"{ran} + filled slots" if skips_empty_slots(memory_read, memory_frames) else ran


def inference_variants(args, variables: dict) -> dict:
    """Variant -> (model, its variables) for every --dtype x --conv3x3 x --prepared x --memory_read.

    The variables are `variables`, with the prepared Winograd kernels for 'yes' (what
    `InferenceEngine.prepare` gives). `prepared` is True only where there is something
    to prepare, so a setting without any (e.g. 'direct') is not timed twice.
    """
    variants = {}
    for dtype in parse_strs(args.dtype):
        for conv in parse_strs(args.conv3x3):
            for read in parse_strs(args.memory_read):
                model = build(args.tiny, dtype, conv, read)
                for want in parse_prepared(args.prepared):
                    model_vars = with_prepared_kernels(model, variables) if want else variables
                    variants.setdefault(Variant(dtype, conv, PREPARED in model_vars, read), (model, model_vars))
    return variants


def variant_row(args, variant: Variant, variants, timing) -> dict:
    """The fields of a result row that every timed variant has: the config, the variant,
    the variants it was timed interleaved with, the timing and the utilisation."""
    return {
        "config": "tiny" if args.tiny else "full", "dtype": variant.dtype, "conv3x3": variant.conv3x3,
        "prepared_kernels": variant.prepared, "memory_read": variant.memory_read,
        "timed_with": [v.label() for v in variants],
        **timing.to_dict(), **utilisation(timing, variant.dtype, args.peak_gflops),
    }


def parse_prepared(text: str) -> list[bool]:
    """--prepared 'yes,no' -> [True, False]."""
    values = {"yes": True, "no": False}
    out = []
    for part in text.split(","):
        if part.strip() not in values:
            raise ValueError(f"--prepared={text!r}: comma-separated 'yes' / 'no'")
        out.append(values[part.strip()])
    return out


@functools.lru_cache(maxsize=2)
def variables(tiny: bool, num_objects: int = 1):
    """{'params', 'batch_stats'} of the float32 model (valid for every dtype)."""
    return init_variables(build(tiny, "float32"), 0, image_hw=(64, 64), num_objects=num_objects)
