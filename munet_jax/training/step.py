"""The jitted train step: one clip unroll per example, Eq. 4's loss, one AdamW update.

The step is written for the global batch; `jax.jit` with the batch sharded over
the mesh's `data` axis and the state replicated makes it data parallel (XLA
inserts the gradient all-reduce). The loss is a mean over the global batch, so
the result does not depend on how many devices share it.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from munet_jax.losses import segmentation_loss
from munet_jax.models.clip import unroll_clip
from munet_jax.models.munet import MUNet
from munet_jax.training.mesh import batch_sharded, replicated
from munet_jax.training.state import TrainState

BATCH_FIELDS = ("frames", "masks", "object_valid")


def clip_loss(
    model: MUNet, variables: dict, batch: dict[str, jax.Array], loss_cfg: ml_collections.ConfigDict
) -> tuple[jax.Array, dict[str, jax.Array], dict[str, jax.Array]]:
    """Loss of a batch of clips, averaged over the L - 1 predicted frames of every clip.

    batch: frames uint8 [B, L, H, W, 3], masks [B, L, H, W] ids 0..K,
    object_valid bool [B, K]. Returns (loss, terms, unroll outputs).
    """
    frames, valid = batch["frames"], batch["object_valid"]
    labels = batch["masks"].astype(jnp.int32)
    out = unroll_clip(model, variables, frames, labels[:, 0], valid)
    logits = out["logits"]  # [B, L-1, H, W, K+1]
    b, n = logits.shape[:2]
    # Fold (clip, frame) into one axis: row i * n + t is frame t + 1 of clip i.
    loss, terms = segmentation_loss(
        logits.reshape((b * n,) + logits.shape[2:]),
        labels[:, 1:].reshape((b * n,) + labels.shape[2:]),
        jnp.repeat(valid, n, axis=0),
        kind=loss_cfg.kind,
        top_fraction=loss_cfg.top_fraction,
        iou_weight=loss_cfg.iou_weight,
    )
    return loss, terms, out


def global_norm(tree) -> jax.Array:
    """sqrt of the sum of squares of every leaf, in float32 (optax renamed its helper across versions)."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree_util.tree_leaves(tree)))


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: MUNet,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    loss_cfg: ml_collections.ConfigDict,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """(state, batch) -> (state after one update, scalar metrics).

    Metrics: loss and its terms, the global gradient norm (before clipping), the
    parameter norm after the update (non-finite as soon as one parameter is: the
    loop's check for a broken update) and the learning rate used.
    """

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        loss, terms, _ = clip_loss(model, variables, batch, loss_cfg)
        return loss, terms

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss,
        **terms,
        "grad_norm": global_norm(grads),
        "param_norm": global_norm(params),
        "lr": jnp.asarray(schedule(state.step), jnp.float32),
    }
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def jit_train_step(
    model: MUNet,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    loss_cfg: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    donate: bool = True,
) -> Callable:
    """`train_step` compiled for `mesh`: state replicated, batch split over `data`.

    With `donate`, the input state's buffers are reused for the output (halves the
    memory of params + Adam moments); the caller must not touch the old state.
    """
    repl, data = replicated(mesh), batch_sharded(mesh)
    fn = functools.partial(train_step, model=model, optimizer=optimizer, schedule=schedule, loss_cfg=loss_cfg)
    return jax.jit(fn, in_shardings=(repl, data), out_shardings=(repl, repl), donate_argnums=(0,) if donate else ())


def jit_predict(model: MUNet, mesh: jax.sharding.Mesh) -> Callable:
    """(variables, sharded batch) -> unroll outputs of the batch's first clip, replicated
    (leading axis 1), for image summaries. No gradient."""

    def predict(variables, batch):
        first = {name: batch[name][:1] for name in BATCH_FIELDS}
        labels = first["masks"].astype(jnp.int32)
        return unroll_clip(model, variables, first["frames"], labels[:, 0], first["object_valid"])

    return jax.jit(predict, in_shardings=(replicated(mesh), batch_sharded(mesh)), out_shardings=replicated(mesh))
