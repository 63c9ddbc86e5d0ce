"""The training input behind one function, `make_input`.

Every mode yields this process's rows of the global batch as numpy dicts:
  frames uint8 [b, L, h, w, 3], masks uint8 [b, L, h, w] (ids 0..K),
  object_valid bool [b, K], num_objects int32 [b],
with b = global_batch_size / process_count and process i holding global rows
[i * b, (i + 1) * b). The batch of global step s is a pure function of (seed, s),
so a resumed run restarts the stream at its restored step and sees the same data.

config.data.source:
  'datasets'          the real datasets of `data.roots` through the tf.data pipeline
                      (`munet_jax.data.pipeline`; TensorFlow is imported only there).
  'synthetic'         the built-in synthetic set, written once in the DAVIS layout into
                      `data.synthetic.root` (default <workdir>/../data/synthetic_davis),
                      read through the same pipeline. Without the pipeline module it
                      falls back to 'synthetic_memory'.
  'synthetic_memory'  the same synthetic videos rendered in memory, clips cut by
                      `ClipSampler` below (no TensorFlow, no augmentation): tests and
                      machines without TensorFlow.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Iterator

import ml_collections
import numpy as np

from munet_jax.data.source import VideoSource

SOURCES = ("datasets", "synthetic", "synthetic_memory")


def pipeline_available() -> bool:
    return importlib.util.find_spec("munet_jax.data.pipeline") is not None


class ClipSampler:
    """Clips cut from in-memory `VideoSource`s, a pure function of (seed, step, row).

    Row g of global step s: a dataset drawn with probability proportional to its
    weight, a uniform video, L consecutive frames (`max_skip` 1), a uniform crop of
    `crop_size` (the whole frame where smaller), and up to K objects of the first
    frame relabelled 1..k in order of id.
    """

    def __init__(self, sources: dict[str, VideoSource], weights: dict[str, float], data_cfg, seed: int):
        self.sources = sources
        self.names = sorted(sources)
        missing = [n for n in self.names if n not in weights]
        if missing:
            raise ValueError(f"data.weights has no weight for source(s) {missing}")
        w = np.asarray([float(weights[n]) for n in self.names])
        self.probs = w / w.sum()
        self.length = int(data_cfg.clip_length)
        self.crop = tuple(int(x) for x in data_cfg.crop_size)
        self.max_objects = int(data_cfg.max_objects)
        self.seed = int(seed)

    def example(self, step: int, row: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, int(step), int(row), 0x5EED])
        source = self.sources[self.names[rng.choice(len(self.names), p=self.probs)]]
        for _ in range(10):  # re-draw clips whose first frame shows no object
            index = int(rng.integers(len(source)))
            info = source.info(index)
            if info.num_frames < self.length:
                continue
            start = int(rng.integers(info.num_frames - self.length + 1))
            frames, masks = source.load(index, list(range(start, start + self.length)))
            ch, cw = min(self.crop[0], info.height), min(self.crop[1], info.width)
            top = int(rng.integers(info.height - ch + 1))
            left = int(rng.integers(info.width - cw + 1))
            frames = frames[:, top : top + ch, left : left + cw]
            masks = masks[:, top : top + ch, left : left + cw]
            ids = [i for i in np.unique(masks[0]) if i != 0][: self.max_objects]
            if ids:
                break
        else:
            raise ValueError(f"no clip of {self.length} frames with a visible object found in {source.name}")
        lut = np.zeros(256, np.uint8)
        lut[np.asarray(ids, np.int64)] = np.arange(1, len(ids) + 1)
        valid = np.arange(self.max_objects) < len(ids)
        return {"frames": frames, "masks": lut[masks], "object_valid": valid, "num_objects": np.int32(len(ids))}

    def batches(self, global_batch_size: int, start_step: int, process_index: int, process_count: int):
        local = global_batch_size // process_count
        step = start_step
        while True:
            rows = [self.example(step, process_index * local + r) for r in range(local)]
            yield {name: np.stack([r[name] for r in rows]) for name in rows[0]}
            step += 1


def synthetic_root(config: ml_collections.ConfigDict, workdir: str | Path) -> Path:
    root = config.data.synthetic.root
    return Path(root) if root else Path(workdir).resolve().parent / "data" / "synthetic_davis"


def ensure_synthetic_dataset(config: ml_collections.ConfigDict, workdir: str | Path, process_index: int) -> Path:
    """Writes the synthetic DAVIS-layout set on first use (process 0 only; the
    writer renames a complete temporary folder into place, so others never see half)."""
    from munet_jax.data.synthetic import generate_davis_layout

    root = synthetic_root(config, workdir)
    s = config.data.synthetic
    if not (root / "SYNTHETIC.json").is_file() and process_index == 0:
        logging.info("writing the synthetic dataset to %s", root)
        generate_davis_layout(root, num_train=s.num_train, num_val=s.num_val, num_frames=s.num_frames,
                              height=s.height, width=s.width, seed=s.seed)
    return root


def _memory_sources(config: ml_collections.ConfigDict) -> dict[str, VideoSource]:
    from munet_jax.data.synthetic import synthetic_array_source

    s = config.data.synthetic
    return {"synthetic": synthetic_array_source("synthetic", num_videos=s.num_train, num_frames=s.num_frames,
                                                height=s.height, width=s.width, seed=s.seed)}


def _dataset_sources(config: ml_collections.ConfigDict) -> dict[str, VideoSource]:
    """The train splits of the datasets with a non-zero weight in data.weights."""
    roots = config.data.roots
    sources = {}
    for name, weight in config.data.weights.items():
        if not weight:
            continue
        root = roots.get(name) if name in roots else None
        if not root or not Path(root).is_dir():
            raise FileNotFoundError(
                f"dataset {name!r} (weight {weight}) needs --config.data.roots.{name}=PATH; got {root!r}, not a directory"
            )
        if name == "davis2017":
            from munet_jax.data.davis import DavisSource

            sources[name] = DavisSource(root, "train", config.data.davis_resolution)
        elif name == "youtube_vos2018":
            from munet_jax.data.youtube_vos import YouTubeVOSSource

            sources[name] = YouTubeVOSSource(root, "train")
        elif name == "static_images":
            sources.update(_static_sources(Path(root)))
        else:
            raise ValueError(f"data.weights names an unknown dataset {name!r}")
    return sources


def _static_sources(root: Path) -> dict[str, VideoSource]:
    """Every static image dataset found under `root` in its conventional sub-folder
    (ECSSD, MSRA10K, PASCAL-S, DUTS, HRSOD, VOC2012: see `data.static_images`)."""
    from munet_jax.data.static_images import STATIC_DATASETS

    found = {f"static_{key}": ds.factory(root / ds.subdir) for key, ds in STATIC_DATASETS.items()
             if (root / ds.subdir).is_dir()}
    if not found:
        raise FileNotFoundError(
            f"data.roots.static_images={str(root)!r} holds none of " + ", ".join(ds.subdir for ds in STATIC_DATASETS.values())
        )
    return found


def make_input(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    start_step: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's batches from global step `start_step` on (see the module docstring)."""
    source = config.data.source
    if source not in SOURCES:
        raise ValueError(f"data.source={source!r}: choose one of {SOURCES}")
    batch = config.train.global_batch_size
    if batch % process_count:
        raise ValueError(f"train.global_batch_size={batch} is not divisible by the {process_count} processes")
    seed = config.train.seed
    if source == "synthetic" and not pipeline_available():
        logging.warning("munet_jax.data.pipeline is not installed: using in-memory synthetic clips")
        source = "synthetic_memory"
    if source == "synthetic_memory":
        sampler = ClipSampler(_memory_sources(config), {"synthetic": 1.0}, config.data, seed)
        return sampler.batches(batch, start_step, process_index, process_count)
    if not pipeline_available():
        raise ModuleNotFoundError("data.source='datasets' needs munet_jax.data.pipeline (the tf.data input pipeline)")
    if source == "synthetic":
        from munet_jax.data.davis import DavisSource

        root = ensure_synthetic_dataset(config, workdir, process_index)
        _wait_for(root / "SYNTHETIC.json")
        sources, weights = {"davis2017": DavisSource(root, "train", "480p")}, {"davis2017": 1.0}
    else:
        sources = _dataset_sources(config)
        # Static image sets share the one 'static_images' weight in proportion to their sizes
        # (every image equally likely), each video dataset keeps its own weight.
        static_total = sum(len(src) for name, src in sources.items() if name.startswith("static_"))
        weights = {
            name: (float(config.data.weights["static_images"]) * len(src) / static_total
                   if name.startswith("static_") else float(config.data.weights[name]))
            for name, src in sources.items()
        }
    from munet_jax.data.pipeline import make_train_iterator  # imports TensorFlow

    return make_train_iterator(sources, weights, config.data, global_batch_size=batch, seed=seed,
                               start_step=start_step, process_index=process_index, process_count=process_count)


def _wait_for(path: Path, timeout_s: float = 600.0) -> None:
    """Other processes wait for process 0 to finish writing a shared dataset."""
    import time

    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout_s:.0f} s")
        time.sleep(1.0)
