"""Model and variables for the benchmark: the full (paper) or tiny config at a compute dtype.

Parameters do not depend on the image size, the object count or the compute
dtype (always float32), so one initialisation per config serves every setting.
"""

from __future__ import annotations

import functools

import ml_collections

from munet_jax.models.config import munet_config, tiny_munet_config
from munet_jax.models.munet import build_model, init_variables


def model_config(tiny: bool, dtype: str, decoder_conv: str | None = None) -> ml_collections.ConfigDict:
    cfg = tiny_munet_config() if tiny else munet_config()
    cfg.dtype = dtype
    if decoder_conv is not None:
        cfg.decoder_conv = decoder_conv
    return cfg


def build(tiny: bool, dtype: str, decoder_conv: str | None = None):
    """The model; decoder_conv None keeps the config's default ('auto')."""
    return build_model(model_config(tiny, dtype, decoder_conv))


@functools.lru_cache(maxsize=2)
def variables(tiny: bool, num_objects: int = 1):
    """{'params', 'batch_stats'} of the float32 model (valid for every dtype)."""
    return init_variables(build(tiny, "float32"), 0, image_hw=(64, 64), num_objects=num_objects)
