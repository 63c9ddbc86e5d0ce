"""The whole job on the built-in synthetic videos: train, evaluate, draw.

    python -m munet_jax.demo [--workdir runs/demo] [--config.train.num_steps=500 ...]

1. trains `configs/demo.py` (the tiny MUNet from random weights on synthetic videos in
   the DAVIS 2017 layout, written on first use) into WORKDIR/run; a WORKDIR that holds a
   run resumes it, a finished run is not trained again;
2. evaluates the latest checkpoint on the synthetic `val` videos exactly as
   `python -m munet_jax.evaluate` evaluates DAVIS: palette PNGs and the official-format
   J&F CSVs in WORKDIR/results, and, for scale, the J&F of copying the first frame's
   mask to every frame (WORKDIR/results-copy-first-mask);
3. draws the first `--pictures` val videos with `python -m munet_jax.visualize`
   (predicted masks over the frames, motion field, uncertainty, MSAM attention, IoU
   over time) into WORKDIR/pictures/<video>/.

Any `--config.<field>=VALUE` is passed on to the training command line.
Exit status: that of the first step that fails (2: bad input, 1: training stopped).
"""

from __future__ import annotations

import argparse
import csv
import logging
import shutil
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO_ROOT / "configs" / "demo.py"


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(prog="python -m munet_jax.demo", description=__doc__.split("\n\n")[0],
                                epilog="Other --config.<field>=VALUE flags go to munet_jax.train.")
    p.add_argument("--workdir", default="runs/demo", help="where the run, data, results and pictures go")
    p.add_argument("--pictures", type=int, default=2, help="val videos to draw (0: none)")
    p.add_argument("--no_progress", action="store_true", help="hide the evaluation progress bars")
    return p.parse_known_args(argv)


def copy_first_mask(root: Path, sequences: list[str], out: Path) -> None:
    """The trivial tracker: every frame gets the first frame's annotation (a baseline)."""
    if out.exists():
        shutil.rmtree(out)
    for seq in sequences:
        masks = sorted((root / "Annotations" / "480p" / seq).glob("*.png"))
        (out / seq).mkdir(parents=True)
        for mask in masks:
            shutil.copyfile(masks[0], out / seq / mask.name)


def global_scores(results: Path, split: str = "val") -> dict[str, float]:
    """The row of global_results-<split>.csv that the evaluator wrote into `results`."""
    with open(results / f"global_results-{split}.csv", newline="") as f:
        return {name: float(value) for name, value in next(csv.DictReader(f)).items()}


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    unknown = [a for a in overrides if not a.startswith("--config.")]
    if unknown:
        print(f"munet_jax.demo: unknown arguments {unknown} (only --config.<field>=VALUE pass through)",
              file=sys.stderr)
        return 2
    if not DEMO_CONFIG.is_file():
        print(f"munet_jax.demo: {DEMO_CONFIG} not found: run the demo from a clone of the repository "
              "(pip install -e .), where configs/ sits beside munet_jax/", file=sys.stderr)
        return 2

    from munet_jax import compilation_cache, evaluate, train, visualize

    compilation_cache.enable()

    workdir = Path(args.workdir).expanduser().resolve()
    run_dir, results, pictures = workdir / "run", workdir / "results", workdir / "pictures"
    start = time.perf_counter()

    print(f"== 1/3 training configs/demo.py into {run_dir}", flush=True)
    status = train.main([f"--config={DEMO_CONFIG}", f"--workdir={run_dir}", *overrides])
    if status:
        return status
    train_s = time.perf_counter() - start

    from munet_jax.inference.restore import read_run_config
    from munet_jax.metrics.davis_eval import evaluate_davis
    from munet_jax.training.input import synthetic_root

    data_root = synthetic_root(read_run_config(run_dir), run_dir)
    print(f"\n== 2/3 evaluating on the synthetic val videos of {data_root}", flush=True)
    eval_args = ["--checkpoint", str(run_dir), "--dataset_root", str(data_root), "--split", "val",
                 "--output", str(results)] + (["--no_progress"] if args.no_progress else [])
    status = evaluate.main(eval_args)
    if status:
        return status
    sequences = (data_root / "ImageSets" / "2017" / "val.txt").read_text().split()
    baseline = workdir / "results-copy-first-mask"
    copy_first_mask(data_root, sequences, baseline)
    # The model's results were scored by `evaluate` above; only the baseline needs scoring.
    evaluate_davis(data_root, baseline, "val", progress=False).write_csvs(baseline)
    scores, base = global_scores(results), global_scores(baseline)

    drawn = []
    if args.pictures > 0:
        print(f"\n== 3/3 drawing {min(args.pictures, len(sequences))} val videos into {pictures}", flush=True)
        for seq in sequences[: args.pictures]:
            status = visualize.main(["--checkpoint", str(run_dir), "--davis_root", str(data_root), "--sequence", seq,
                                     "--out", str(pictures / seq), "--overwrite"])
            if status:
                return status
            drawn.append(pictures / seq)

    print("\n== demo done in {:.1f} min (training {:.1f} min)".format((time.perf_counter() - start) / 60, train_s / 60))
    print(f"J&F-Mean on {len(sequences)} synthetic val videos: {scores['J&F-Mean']:.3f} "
          f"(J {scores['J-Mean']:.3f}, F {scores['F-Mean']:.3f}); "
          f"copying the first frame's mask to every frame scores {base['J&F-Mean']:.3f}")
    print(f"masks (DAVIS palette PNGs) and J&F CSVs: {results}")
    for folder in drawn:
        print(f"pictures: {folder}/panels/*.png, {folder}/panels.mp4, {folder}/iou_over_time.png")
    print(f"TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}")
    return 0


if __name__ == "__main__":
    logging.getLogger("absl").setLevel(logging.ERROR)
    sys.exit(main())
