"""A one-minute end-to-end check of the whole network on CPU.

    python -m munet_jax.smoke [--steps 60] [--height 64] [--width 96] [--objects 2]

Renders one synthetic clip (first frame + 5 to predict, moving textured
objects), initialises the tiny MUNet, and fits it to that clip with the
paper's loss (BsCE 40% + mask IoU) through the training unroll: frame 1 with its
ground truth in memory, frames 2..6 segmented in order and written back with
their predicted soft masks. Prints the loss and the per-frame IoU of the
predicted masks; both must improve, or the network is broken.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from munet_jax.data.synthetic import render_video
from munet_jax.losses import segmentation_loss
from munet_jax.models.clip import unroll_clip
from munet_jax.models.config import tiny_munet_config
from munet_jax.models.munet import build_model, init_variables


def mean_iou(logits: np.ndarray, labels: np.ndarray, num_objects: int) -> np.ndarray:
    """Per-frame IoU averaged over objects. logits [L, H, W, K+1], labels [L, H, W]."""
    pred = logits.argmax(-1)
    ious = []
    for obj in range(1, num_objects + 1):
        inter = ((pred == obj) & (labels == obj)).sum(axis=(1, 2))
        union = ((pred == obj) | (labels == obj)).sum(axis=(1, 2))
        ious.append(np.where(union > 0, inter / np.maximum(union, 1), 1.0))
    return np.mean(ious, axis=0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--objects", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    frames, labels = render_video(args.seed, 6, args.height, args.width, args.objects)
    k = int(labels[0].max())
    print(f"clip: 6 frames of {args.height}x{args.width}, {k} objects; backend {jax.default_backend()}")
    frames = jnp.asarray(frames[None])
    labels = jnp.asarray(labels[None].astype(np.int32))
    valid = jnp.ones((1, k), bool)

    model = build_model(tiny_munet_config())
    variables = init_variables(model, args.seed, (args.height, args.width), k)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(variables["params"]))
    print(f"tiny MUNet: {n_params:,} parameters")
    optimizer = optax.adamw(args.lr)
    opt_state = optimizer.init(variables["params"])

    def loss_fn(params):
        out = unroll_clip(model, {**variables, "params": params}, frames, labels[:, 0], valid)
        logits = out["logits"].reshape((-1,) + out["logits"].shape[2:])
        loss, terms = segmentation_loss(logits, labels[:, 1:].reshape((-1,) + labels.shape[2:]),
                                        jnp.repeat(valid, 5, axis=0))
        return loss, (terms, out["logits"][0])

    @jax.jit
    def train_step(params, opt_state):
        (loss, (terms, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, terms, logits

    params = variables["params"]
    start = time.perf_counter()
    first_iou = None
    for step in range(args.steps + 1):
        params, opt_state, loss, terms, logits = train_step(params, opt_state)
        if step == 0:
            compile_s = time.perf_counter() - start
            first_iou = mean_iou(np.asarray(logits), np.asarray(labels[0, 1:]), k)
            start = time.perf_counter()
        if step % 20 == 0 or step == args.steps:
            terms = {name: float(v) for name, v in terms.items()}
            print(f"step {step:4d}  loss {float(loss):.4f}  " + "  ".join(f"{n} {v:.4f}" for n, v in terms.items()))
    step_s = (time.perf_counter() - start) / max(args.steps, 1)
    last_iou = mean_iou(np.asarray(logits), np.asarray(labels[0, 1:]), k)
    print(f"compile {compile_s:.1f} s, then {step_s * 1000:.0f} ms per step")
    print("IoU of frames 2..6 before:", " ".join(f"{v:.2f}" for v in first_iou))
    print("IoU of frames 2..6 after: ", " ".join(f"{v:.2f}" for v in last_iou))


if __name__ == "__main__":
    main()
