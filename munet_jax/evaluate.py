"""Benchmarks a trained MUNet: DAVIS 2017 J&F + FPS, or a YouTube-VOS submission.

    python -m munet_jax.evaluate --checkpoint=WORKDIR [--split=val] [--dataset_root=DAVIS] [--output=DIR]
        [--sequences a,b] [--resolution 480p|Full-Resolution] [--dtype float32|bfloat16]
        [--mem_every 5] [--use_scan] [--no_score] [--size_buckets 480x864,480x912] [--object_buckets 1,2,4,8]
    python -m munet_jax.evaluate --checkpoint=WORKDIR --dataset=youtube_vos --dataset_root=YTVOS [--year 2019]

DAVIS: writes DIR/<sequence>/<frame>.png (DAVIS palette, the first frame's object ids),
DIR/timing-<split>.json, and (unless --no_score, e.g. for test-dev) scores them with the
built-in evaluator into DIR/global_results-<split>.csv and DIR/per-sequence_results-<split>.csv.
YouTube-VOS (split 'valid'; 2018 and 2019 share the layout): writes DIR/Annotations/<video>/
<frame>.png for every frame of valid/JPEGImages and DIR/submission.zip for the CodaLab server.

--dataset_root (alias --davis_root) defaults to the run config's root (eval.davis_root or
data.roots.davis2017; data.roots.youtube_vos2018). DIR defaults to WORKDIR/eval/<dataset>-<split>-step<N>.
FPS = mean over videos of frames / model seconds, compilation excluded (reported separately).
Exit status 0 on success, 2 on bad input (the message names the file or flag and the fix).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from munet_jax import compilation_cache

EXIT_USAGE = 2
CONFIG_ROOTS = {  # where a run's config keeps the dataset roots (configs/common.py), first non-empty wins
    "davis": ("eval.davis_root", "data.roots.davis2017"),
    "youtube_vos": ("data.roots.youtube_vos2019", "data.roots.youtube_vos2018"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m munet_jax.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="training workdir (or its checkpoints/<step> folder)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--dataset", choices=("davis", "youtube_vos"), default="davis")
    p.add_argument("--split", default=None, help="DAVIS ImageSets/2017/<split>.txt (default val); YouTube-VOS: valid")
    p.add_argument("--dataset_root", "--davis_root", dest="dataset_root", default=None,
                   help="dataset folder (default: the run config's)")
    p.add_argument("--output", default=None, help="results folder (default WORKDIR/eval/<dataset>-<split>-step<N>)")
    p.add_argument("--sequences", default=None, help="comma-separated sequence (video) names; default: the whole split")
    p.add_argument("--resolution", default="480p", help="DAVIS resolution folder: 480p or Full-Resolution")
    p.add_argument("--year", type=int, choices=(2018, 2019), default=2018, help="YouTube-VOS release (naming only)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="compute dtype (default: the run's)")
    p.add_argument("--mem_every", type=int, default=None, help="memory write interval (default 5, STM's)")
    p.add_argument("--size_buckets", default=None, help="HxW,... frame sizes to compile for (default: inference config)")
    p.add_argument("--object_buckets", default=None, help="e.g. 1,2,4,8 object counts to compile for; one value = one program")
    p.add_argument("--use_scan", action="store_true", help="one lax.scan program per video (all frames on device)")
    p.add_argument("--no_score", action="store_true", help="DAVIS: only write the PNGs (e.g. test-dev)")
    p.add_argument("--workers", type=int, default=None, help="processes scoring J&F (default: CPUs, at most 8)")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bars")
    return p


def config_root(config, dataset: str) -> str | None:
    """The first non-empty dataset root the run's config names, or None."""
    for dotted in CONFIG_ROOTS[dataset]:
        node = config
        for key in dotted.split("."):
            node = node.get(key) if hasattr(node, "get") else None
            if node is None:
                break
        if isinstance(node, str) and node:
            return node
    return None


def _names(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


def _int_list(text: str | None, flag: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{flag}={text!r}: expected comma-separated integers, e.g. 1,2,4,8") from None
    if not values or min(values) < 1:
        raise ValueError(f"{flag}={text!r}: expected positive integers, e.g. 1,2,4,8")
    return values


def run(args) -> int:
    # Deferred: parsing and --help stay fast, and bad flags fail before JAX starts.
    from munet_jax.evaluation import build_inference_config, format_timing, run_davis, run_youtube_vos
    from munet_jax.evaluation.davis_run import default_workers
    from munet_jax.evaluation.timing import parse_size_buckets
    from munet_jax.inference.restore import load_model

    youtube = args.dataset == "youtube_vos"
    split = args.split or ("valid" if youtube else "val")
    if youtube and split == "val":
        split = "valid"  # YouTube-VOS names its validation folder 'valid'
    size_buckets = parse_size_buckets(args.size_buckets) if args.size_buckets else None
    object_buckets = _int_list(args.object_buckets, "--object_buckets")
    if args.mem_every is not None and args.mem_every < 1:
        raise ValueError(f"--mem_every={args.mem_every}: must be >= 1 (STM uses 5)")

    start = time.perf_counter()
    loaded = load_model(args.checkpoint, step=args.step, dtype=args.dtype)
    root = args.dataset_root or config_root(loaded.config, args.dataset)
    if not root:
        raise ValueError(f"--dataset_root is required: the run config ({loaded.workdir / 'config.json'}) names no "
                         f"{args.dataset} root ({' / '.join(CONFIG_ROOTS[args.dataset])})")
    if not Path(root).expanduser().is_dir():
        raise FileNotFoundError(f"--dataset_root={root}: folder not found; point it at the unpacked "
                                + ("YouTube-VOS folder holding valid/" if youtube else
                                   "DAVIS 2017 folder holding JPEGImages/, Annotations/, ImageSets/"))
    name = f"{'youtube_vos' if youtube else 'davis'}-{split}" + ("" if youtube else f"-{args.resolution}")
    output = Path(args.output) if args.output else loaded.workdir / "eval" / f"{name}-step{loaded.step}"
    icfg = build_inference_config(loaded.config, mem_every=args.mem_every, size_buckets=size_buckets,
                                  object_buckets=object_buckets)
    extra = {"checkpoint": str(loaded.workdir), "step": loaded.step, "dtype": loaded.model.config.dtype}
    progress = not args.no_progress

    if youtube:
        result = run_youtube_vos(loaded.model, loaded.variables, root, output, icfg=icfg, split=split, year=args.year,
                                 videos=_names(args.sequences), use_scan=args.use_scan, progress=progress,
                                 timing_extra=extra)
        print(format_timing(result.timing))
        if result.objects_without_mask:
            print(f"warning: {len(result.objects_without_mask)} objects listed in meta.json have an empty mask on "
                  f"their first frame and were not tracked: {', '.join(result.objects_without_mask[:10])}")
        print(f"YouTube-VOS {args.year} {split}: {len(result.videos)} videos, {result.frames_written} masks, "
              f"{result.timing['fps']:.2f} FPS, {time.perf_counter() - start:.1f} s; submission {result.zip_path}")
        return 0

    result = run_davis(loaded.model, loaded.variables, root, split, output, icfg=icfg, resolution=args.resolution,
                       sequences=_names(args.sequences), use_scan=args.use_scan, score=not args.no_score,
                       workers=args.workers or default_workers(), progress=progress, timing_extra=extra)
    if result.scores is not None:
        print(f"--------------------------- Global results for {split} ---------------------------")
        print(result.scores.format_global_table())
        print(f"\n---------- Per sequence results for {split} ----------")
        print(result.scores.format_per_sequence_table())
        print()
    print(format_timing(result.timing))
    jf = f"J&F {result.scores.global_scores['J&F-Mean']:.3f}, " if result.scores is not None else ""
    print(f"DAVIS {split} {args.resolution}: {len(result.sequences)} sequences, {result.frames_written} masks, {jf}"
          f"{result.timing['fps']:.2f} FPS, {time.perf_counter() - start:.1f} s; results in {output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's read-only checkpoint chatter
    compilation_cache.enable()
    try:
        return run(args)
    except (FileNotFoundError, NotADirectoryError, ValueError) as error:  # bad input; bugs keep their traceback
        print(f"munet_jax.evaluate: error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
