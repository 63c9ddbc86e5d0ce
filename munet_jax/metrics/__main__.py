"""Command line: DAVIS 2017 semi-supervised J&F of a results folder.

    python -m munet_jax.metrics --davis_root DAVIS --results RESULTS [--set val]
        [--output_dir DIR] [--sequences a,b] [--resolution 480p] [--workers N]

Always recomputes (the official script silently reuses CSVs left by an earlier run),
writes global_results-<set>.csv and per-sequence_results-<set>.csv into the results folder
(or --output_dir), prints both tables. Exit status 0 on success, 2 on bad input.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from munet_jax.metrics.davis_eval import evaluate_davis


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m munet_jax.metrics",
        description="DAVIS 2017 semi-supervised evaluation (J, F, J&F) matching the official tool.",
    )
    parser.add_argument("--davis_root", required=True, help="DAVIS 2017 folder (JPEGImages/, Annotations/, ImageSets/)")
    parser.add_argument("--results", required=True, help="folder with <sequence>/<frame>.png indexed masks")
    parser.add_argument("--set", default="val", help="ImageSets/2017/<set>.txt lists the sequences (default val)")
    parser.add_argument("--output_dir", default=None, help="where the CSVs go (default: the results folder)")
    parser.add_argument("--sequences", default=None, help="comma-separated sequence names instead of the set's list")
    parser.add_argument("--resolution", default="480p", help="Annotations/<resolution>/ (default 480p)")
    parser.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="processes scoring sequences in parallel"
    )
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sequences = [s.strip() for s in args.sequences.split(",") if s.strip()] if args.sequences else None
    start = time.perf_counter()
    try:
        result = evaluate_davis(
            args.davis_root,
            args.results,
            split=args.set,
            resolution=args.resolution,
            sequences=sequences,
            progress=not args.no_progress,
            num_workers=args.workers,
        )
        global_path, per_sequence_path = result.write_csvs(args.output_dir or args.results)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"--------------------------- Global results for {args.set} ---------------------------")
    print(result.format_global_table())
    print(f"\n---------- Per sequence results for {args.set} ----------")
    print(result.format_per_sequence_table())
    print(f"\nGlobal results saved in {global_path}")
    print(f"Per-sequence results saved in {per_sequence_path}")
    print(f"Total time: {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
