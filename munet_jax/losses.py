"""Segmentation losses of Sec. 3.4 (Eq. 4) and the Table 4 (b) ablation variants.

All take the soft-aggregated multi-object prediction `logits [B, H, W, K+1]`
(channel 0 = background; B indexes frames, e.g. batch x predicted frames
flattened), integer `labels [B, H, W]` in 0..K and `object_valid [B, K]`.

  L = L_bsce + lambda * L_miou                                    (Eq. 4)

L_bsce: per-pixel cross-entropy over the K+1 classes, averaged over the hardest
`top_fraction` (40%) of the pixels of each frame, then over frames.
L_miou: 1 - sum(min(M, P)) / sum(max(M, P)) per object on probabilities,
background excluded, averaged over the valid (frame, object) pairs.

Labels outside 0..K cannot be checked inside `jit`; the caller's data pipeline
guarantees the range (an out-of-range label picks no logit: its CE is the
log-sum-exp alone).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

LOSS_KINDS = ("bsce_iou", "ce", "bsce", "iou", "ce_iou")


def _check(logits: jax.Array, labels: jax.Array) -> None:
    if logits.ndim != 4:
        raise ValueError(f"logits has shape {logits.shape}; expected [B, H, W, K+1]")
    if labels.shape != logits.shape[:3]:
        raise ValueError(f"labels has shape {labels.shape}; expected [B, H, W] = {logits.shape[:3]}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels has dtype {labels.dtype}; pass integer class indices 0..K (0 = background)")


def _check_valid(object_valid: jax.Array, num_classes: int, batch: int) -> None:
    if object_valid.shape != (batch, num_classes - 1):
        raise ValueError(
            f"object_valid has shape {object_valid.shape}; expected [B, K] = {(batch, num_classes - 1)} "
            "(K = number of non-background channels)"
        )


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """logits [B, H, W, C], labels [B, H, W] -> per-pixel CE [B, H, W] float32."""
    _check(logits, labels)
    logits = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - picked


def num_hardest(num_pixels: int, top_fraction: float) -> int:
    """k of the bootstrapped CE: the smallest k with k >= top_fraction * num_pixels.

    Rounded up so that every frame keeps at least one pixel; a relative slack of
    1e-9 keeps float noise (0.7 * 10 = 7.000000000000001) from adding a pixel.
    """
    if isinstance(top_fraction, bool) or not (isinstance(top_fraction, (int, float)) and 0.0 < top_fraction <= 1.0):
        raise ValueError(f"top_fraction={top_fraction!r}: must be in (0, 1], e.g. 0.4 (the paper's 40%)")
    return max(1, min(num_pixels, math.ceil(top_fraction * num_pixels * (1.0 - 1e-9))))


def bootstrapped_cross_entropy(logits: jax.Array, labels: jax.Array, top_fraction: float = 0.4) -> jax.Array:
    """Mean CE over the hardest ceil(top_fraction * H * W) pixels of each frame, then over frames.

    `top_fraction` is a Python float, so k is static and `lax.top_k` compiles once.
    """
    ce = pixel_cross_entropy(logits, labels)  # [B, H, W]
    b, h, w = ce.shape
    k = num_hardest(h * w, top_fraction)
    hardest, _ = jax.lax.top_k(ce.reshape(b, h * w), k)  # [B, k]
    return jnp.mean(jnp.mean(hardest, axis=-1))


def mask_iou_loss(probs: jax.Array, labels: jax.Array, object_valid: jax.Array) -> jax.Array:
    """Eq. 4's mask-IoU term on probabilities [B, H, W, K+1] (background channel 0 is ignored).

    Per (frame, object): 1 - sum(min(M, P)) / sum(max(M, P)), with M the binary
    ground truth of the object. An object absent from both ground truth and
    prediction (denominator 0) is a perfect match: loss 0. Averaged over the
    valid (frame, object) pairs; 0 when there are none.
    """
    _check(probs, labels)
    b, _, _, c = probs.shape
    _check_valid(object_valid, c, b)
    p = probs[..., 1:].astype(jnp.float32)  # [B, H, W, K]
    m = (labels[..., None] == jnp.arange(1, c, dtype=labels.dtype)).astype(jnp.float32)
    inter = jnp.sum(jnp.minimum(m, p), axis=(1, 2))  # [B, K]
    union = jnp.sum(jnp.maximum(m, p), axis=(1, 2))
    iou = jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 1.0)
    valid = object_valid.astype(jnp.float32)
    return jnp.sum((1.0 - iou) * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def segmentation_loss(
    logits: jax.Array,
    labels: jax.Array,
    object_valid: jax.Array,
    kind: str = "bsce_iou",
    top_fraction: float = 0.4,
    iou_weight: float = 1.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The training loss selected by `kind`, plus every term for logging.

    kind: 'bsce_iou' (the paper's Eq. 4: bsce + iou_weight * iou), 'ce' (plain
    cross-entropy, mean over all pixels and frames), 'bsce', 'iou',
    'ce_iou' (ce + iou_weight * iou). Returns (loss, {'bsce', 'iou', 'ce'}).
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"loss kind={kind!r}: choose one of {LOSS_KINDS}")
    _check(logits, labels)
    _check_valid(object_valid, logits.shape[-1], logits.shape[0])
    ce_map = pixel_cross_entropy(logits, labels)
    b, h, w = ce_map.shape
    k = num_hardest(h * w, top_fraction)
    terms = {
        "ce": jnp.mean(ce_map),
        "bsce": jnp.mean(jax.lax.top_k(ce_map.reshape(b, h * w), k)[0]),
        "iou": mask_iou_loss(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), labels, object_valid),
    }
    loss = {
        "bsce_iou": terms["bsce"] + iou_weight * terms["iou"],
        "ce": terms["ce"],
        "bsce": terms["bsce"],
        "iou": terms["iou"],
        "ce_iou": terms["ce"] + iou_weight * terms["iou"],
    }[kind]
    return loss, terms
