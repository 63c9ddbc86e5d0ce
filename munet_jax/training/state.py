"""The train state pytree, the optimizer and the model built from a config.

`TrainState` holds everything a resumed run needs besides the data position,
which is the step itself (the input is a pure function of (seed, step)).
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from munet_jax.models.munet import MUNet, build_model, init_variables

SCHEDULES = ("constant", "cosine", "warmup_cosine")


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates applied so far
    params: Any
    batch_stats: Any  # frozen BatchNorm statistics of the encoders (DESIGN.md): carried, never updated
    opt_state: Any


def model_config(config: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
    """`config.model` with the compute dtype that `train.mixed_precision` asks for.

    Mixed precision = bfloat16 activations and convolutions; parameters, optimizer
    state and the loss stay float32 (the model casts its outputs to float32).
    """
    model_cfg = ml_collections.ConfigDict(config.model.to_dict())
    if config.train.mixed_precision:
        model_cfg.dtype = "bfloat16"
    return ml_collections.FrozenConfigDict(model_cfg)


def make_model(config: ml_collections.ConfigDict) -> MUNet:
    return build_model(ml_collections.ConfigDict(model_config(config).as_configdict()))


def learning_rate_schedule(optim: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """'constant' (the paper: 2e-5 throughout), 'cosine' to lr * end_lr_fraction, or
    'warmup_cosine' (linear warm-up over optim.warmup_steps, then cosine)."""
    lr = optim.lr
    if optim.schedule == "constant":
        return optax.constant_schedule(lr)
    if optim.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, max(num_steps, 1), alpha=optim.end_lr_fraction)
    if optim.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, optim.warmup_steps, max(num_steps, optim.warmup_steps + 1), end_value=lr * optim.end_lr_fraction
        )
    raise ValueError(f"optim.schedule={optim.schedule!r}: choose one of {SCHEDULES}")


def make_optimizer(optim: ml_collections.ConfigDict, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """optax.chain([clip_by_global_norm], adamw); AdamW's decay is decoupled and
    scaled by the learning rate, as PyTorch's `torch.optim.AdamW` that the paper used."""
    if optim.name != "adamw":
        raise ValueError(f"optim.name={optim.name!r}: only 'adamw' (the paper's optimizer) is implemented")
    schedule = learning_rate_schedule(optim, num_steps)
    parts = []
    if optim.grad_clip_norm is not None:
        if not optim.grad_clip_norm > 0:
            raise ValueError(f"optim.grad_clip_norm={optim.grad_clip_norm!r}: must be > 0 or None")
        parts.append(optax.clip_by_global_norm(optim.grad_clip_norm))
    parts.append(optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay))
    return optax.chain(*parts), schedule


@functools.lru_cache(maxsize=4)
def _jitted_init(model: MUNet, image_hw: tuple[int, int], num_objects: int, sharding) -> Any:
    # Cached so that repeated runs in one process (tests, notebooks) compile once.
    return jax.jit(
        lambda key: init_variables(model, key, image_hw, num_objects), out_shardings=sharding
    )


def init_variables_on(model: MUNet, seed: int, image_hw, num_objects: int, sharding) -> dict:
    """{'params', 'batch_stats'} placed with `sharding`, identical on every process.

    The key is an 'rbg' key: XLA compiles the ~200 initialisers of the network in
    seconds with it, against minutes with the default threefry on CPU. The values
    are a pure function of the seed, so every host computes the same replica.
    """
    key = jax.random.key(seed, impl="rbg")
    return _jitted_init(model, tuple(image_hw), int(num_objects), sharding)(key)


def create_train_state(variables: dict, optimizer: optax.GradientTransformation, sharding) -> TrainState:
    """Step 0 state around `variables`; the optimizer state lives where the params do."""
    init = jax.jit(optimizer.init, out_shardings=sharding)
    return TrainState(
        step=jax.jit(lambda: jnp.zeros((), jnp.int32), out_shardings=sharding)(),
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        opt_state=init(variables["params"]),
    )
