"""What a run shows while it trains: a progress line, TensorBoard event files, metrics.jsonl.

TensorBoard files are written with the `tensorboard` package's own event writer
and protos: no TensorFlow in the process (the accelerator machines have none).
Where `tensorboard` is not installed, scalars still go to <workdir>/metrics.jsonl.
Only process 0 writes.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import time
import types
from pathlib import Path

import numpy as np

from munet_jax.palette import DAVIS_PALETTE


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """Throughput and ETA from the steps done since this process started (so a resumed
    run's rate does not count the restore or the first compile: measured from the first logged step)."""

    def __init__(self, num_steps: int, global_batch_size: int):
        self.num_steps = num_steps
        self.batch = global_batch_size
        self.mark_step = None
        self.mark_time = None

    def line(self, step: int, metrics: dict[str, float]) -> str:
        now = time.perf_counter()
        rate = ""
        eta = ""
        if self.mark_step is not None and step > self.mark_step:
            steps_per_s = (step - self.mark_step) / (now - self.mark_time)
            rate = f" | {steps_per_s * self.batch:.2f} clips/s"
            eta = f" | ETA {format_duration((self.num_steps - step) / steps_per_s)}"
        else:
            self.mark_step, self.mark_time = step, now
        terms = " ".join(f"{k} {metrics[k]:.4f}" for k in ("loss", "bsce", "iou", "ce") if k in metrics)
        extra = f" | grad {metrics['grad_norm']:.3g} lr {metrics['lr']:.3g}" if "grad_norm" in metrics else ""
        return f"step {step}/{self.num_steps} | {terms}{extra}{rate}{eta}"


def overlay(frame: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """frame uint8 [H, W, 3], labels ids [H, W] -> frame with objects tinted in DAVIS colours."""
    colours = DAVIS_PALETTE[np.asarray(labels, np.int64) % 256].astype(np.float32)
    mix = np.where((labels > 0)[..., None], (1 - alpha) * frame + alpha * colours, frame)
    return np.clip(mix, 0, 255).astype(np.uint8)


def heatmap(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A map [h, w] scaled to 0..255 (its own min..max) and upsampled (nearest) to size -> [H, W, 3]."""
    v = np.asarray(values, np.float32)
    lo, hi = float(v.min()), float(v.max())
    v = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
    rows = np.minimum((np.arange(size[0]) * v.shape[0]) // size[0], v.shape[0] - 1)
    cols = np.minimum((np.arange(size[1]) * v.shape[1]) // size[1], v.shape[1] - 1)
    grey = (v[rows][:, cols] * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def clip_panel(frames: np.ndarray, labels: np.ndarray, outputs: dict[str, np.ndarray]) -> np.ndarray:
    """One clip as an image: a row per predicted frame of
    [prediction overlaid | ground truth overlaid | uncertainty | MSAM attention].

    frames uint8 [L, H, W, 3], labels [L, H, W]; outputs of `unroll_clip` for this clip:
    logits [L-1, H, W, K+1], uncertainty / attention [L-1, h, w, 1].
    """
    size = frames.shape[1:3]
    rows = []
    for t in range(outputs["logits"].shape[0]):
        pred = outputs["logits"][t].argmax(-1)
        rows.append(np.concatenate([
            overlay(frames[t + 1], pred),
            overlay(frames[t + 1], labels[t + 1]),
            heatmap(outputs["uncertainty"][t, ..., 0], size),
            heatmap(outputs["attention"][t, ..., 0], size),
        ], axis=1))
    return np.concatenate(rows, axis=0)


class SummaryWriter:
    """Scalars and images to TensorBoard event files (if `tensorboard` imports) and
    scalars to metrics.jsonl; a no-op on processes other than 0."""

    def __init__(self, workdir: str | Path, enabled: bool = True):
        self.enabled = enabled
        self._events = None
        self._jsonl = None
        if not enabled:
            return
        workdir = Path(workdir)
        self._jsonl = open(workdir / "metrics.jsonl", "a", buffering=1)
        try:
            # TensorBoard's writer reaches files through `tensorboard.compat.tf`, which imports
            # TensorFlow when it is installed (seconds, and GBs of memory) unless the module
            # `tensorboard.compat.notf` exists - its documented switch to the pure-Python stub.
            sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
            from tensorboard.compat.proto import event_pb2, summary_pb2
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ImportError:
            logging.warning("tensorboard is not installed: scalars go to metrics.jsonl only")
            return
        self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
        self._events = EventFileWriter(str(workdir / "tensorboard"))

    def _write(self, step: int, values: list) -> None:
        summary = self._summary_pb2.Summary(value=values)
        self._events.add_event(self._event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

    def scalars(self, step: int, metrics: dict[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": int(step), **{f"{prefix}/{k}": float(v) for k, v in metrics.items()}}) + "\n")
        if self._events is not None:
            value = self._summary_pb2.Summary.Value
            self._write(step, [value(tag=f"{prefix}/{k}", simple_value=float(v)) for k, v in metrics.items()])

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        """image uint8 [H, W, 3], PNG-encoded into the event file."""
        if not self.enabled or self._events is None:
            return
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
        proto = self._summary_pb2.Summary.Image(
            height=image.shape[0], width=image.shape[1], colorspace=3, encoded_image_string=buffer.getvalue()
        )
        self._write(step, [self._summary_pb2.Summary.Value(tag=tag, image=proto)])

    def flush(self) -> None:
        if self._events is not None:
            self._events.flush()
        if self._jsonl is not None:
            self._jsonl.flush()

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
