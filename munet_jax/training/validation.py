"""Periodic DAVIS validation during training: segment the val videos with the current
weights (`munet_jax.inference`), write DAVIS-style PNGs, score J&F (`munet_jax.metrics`).

Runs on process 0 only, on its first local device, with a host copy of the weights; other
processes carry on and wait for it at their next collective.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from munet_jax.data.davis import DavisSource
from munet_jax.inference import InferenceEngine, inference_config, segment_video
from munet_jax.metrics import evaluate_davis
from munet_jax.palette import write_indexed_png


def validate_davis(config, model, variables: dict, results_dir: Path) -> dict[str, float]:
    """J&F-Mean, J-Mean, F-Mean of `variables` on `config.eval` (davis_root, split, resolution,
    max_sequences); {} on processes other than 0."""
    if jax.process_index() != 0:
        return {}
    ev = config.eval
    source = DavisSource(ev.davis_root, ev.split, ev.resolution)
    count = len(source) if ev.max_sequences is None else min(len(source), ev.max_sequences)
    host = jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), variables)
    # One compiled program per frame size: add the val videos' own sizes (rounded up to 16)
    # to the default buckets so that small videos (the synthetic set) are not padded to 480p.
    icfg = inference_config()
    sizes = {(-(-source.info(i).height // 16) * 16, -(-source.info(i).width // 16) * 16) for i in range(count)}
    icfg.size_buckets = tuple(sorted(set(map(tuple, icfg.size_buckets)) | sizes))
    engine = InferenceEngine(model, icfg)
    host = engine.prepare(host)  # these parameters' Winograd kernels, once for all val videos
    names = []
    for index in range(count):
        info = source.info(index)
        frames, masks = source.load(index, list(range(info.num_frames)))
        out = segment_video(engine, host, frames, masks[0])
        for name, ids in zip(info.frame_names, out["ids"]):
            write_indexed_png(Path(results_dir) / info.video_id / f"{name}.png", ids)
        names.append(info.video_id)
    scores = evaluate_davis(ev.davis_root, results_dir, ev.split, ev.resolution, sequences=names, progress=False)
    row = scores.global_scores
    return {"J&F": row["J&F-Mean"], "J": row["J-Mean"], "F": row["F-Mean"]}
