"""STM's soft aggregation of per-object foreground probabilities.

Each object k is segmented on its own and gives p_k = P(pixel is object k). The
merged distribution over {background, object 1..K} is

    q_0 = prod_k (1 - p_k)            (background: no object claims the pixel)
    q_k = p_k
    logit_k = log(q_k / (1 - q_k)),   q clipped to [1e-7, 1 - 1e-7]

and softmax(logit) over the K + 1 channels. Padded object slots (object_valid
False) are left out of the background product and get logit INVALID_LOGIT, so
their merged probability is exactly 0 in float32 (exp(-1e4 - 16) underflows),
and no gradient flows to their fg_probs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

CLIP_EPS = 1e-7  # STM's clamp before the log-odds
# Valid log-odds lie in [-16.2, 16.2]; -1e4 makes exp underflow to 0 in float32
# and bfloat16 without risking inf - inf = NaN in a softmax.
INVALID_LOGIT = -1e4


def soft_aggregate(fg_probs: jax.Array, object_valid: jax.Array) -> jax.Array:
    """fg_probs [B, K, H, W] in [0, 1], object_valid [B, K] bool -> logits [B, H, W, K+1] float32.

    Channel 0 is background; softmax over the last axis is the merged probability.
    """
    if fg_probs.ndim != 4:
        raise ValueError(f"fg_probs has shape {fg_probs.shape}; expected [B, K, H, W]")
    if object_valid.shape != fg_probs.shape[:2]:
        raise ValueError(
            f"object_valid has shape {object_valid.shape}; expected [B, K] = {fg_probs.shape[:2]} "
            "(one flag per object slot of fg_probs)"
        )
    if object_valid.dtype != jnp.bool_:
        raise ValueError(f"object_valid has dtype {object_valid.dtype}; pass a bool array")
    p = fg_probs.astype(jnp.float32)
    valid = object_valid[:, :, None, None]  # [B, K, 1, 1]
    p = jnp.where(valid, p, 0.0)  # padded slots may hold anything
    bg = jnp.prod(jnp.where(valid, 1.0 - p, 1.0), axis=1, keepdims=True)  # [B, 1, H, W]
    q = jnp.clip(jnp.concatenate([bg, p], axis=1), CLIP_EPS, 1.0 - CLIP_EPS)  # [B, K+1, H, W]
    odds = jnp.log(q) - jnp.log1p(-q)
    channel_valid = jnp.concatenate([jnp.ones_like(object_valid[:, :1]), object_valid], axis=1)
    odds = jnp.where(channel_valid[:, :, None, None], odds, INVALID_LOGIT)
    return jnp.moveaxis(odds, 1, -1)  # [B, H, W, K+1]


def aggregate_probs(fg_probs: jax.Array, object_valid: jax.Array) -> jax.Array:
    """softmax of `soft_aggregate`: [B, H, W, K+1] probabilities summing to 1, background first."""
    return jax.nn.softmax(soft_aggregate(fg_probs, object_valid), axis=-1)
