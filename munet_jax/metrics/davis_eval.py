"""DAVIS 2017 semi-supervised evaluation: sequences, per-object statistics, global table, CSVs.

Reproduces what the official package (davisvideochallenge/davis2017-evaluation,
`evaluation_method.py --task semi-supervised`) reports:

- The objects of a sequence are ids 1..N, N the largest id of the FIRST frame's annotation
  (void 255 counts as background). An id missing from the first frame still counts
  (it is an object whose ground truth is empty there). Ground-truth ids above N in later
  frames are background for every object.
- Scored frames are the annotated frames minus the first and the last; predictions are
  read from `<results>/<sequence>/<frame>.png` for those frames only.
- A prediction holding an id above N is refused (the official tool stops on it too); an
  object never predicted is scored against an empty mask.
- Per object: Mean = nanmean of the per-frame values, Recall = fraction of frames > 0.5,
  Decay = mean of the first minus the last of 4 overlapping bins. The official bin edges go
  through a uint8 cast that wraps for sequences of more than 255 scored frames; we keep
  them as int64, which gives the same bins up to 255 frames and the right ones beyond.
- Global numbers average over all objects of all sequences; J&F-Mean = (J-Mean + F-Mean) / 2.
- CSVs `global_results-<set>.csv` and `per-sequence_results-<set>.csv`, floats as "%.3f"
  (the official tool writes them with pandas' float_format="%.3f"; NaN becomes an empty field).

Unlike the official script this always recomputes: it never reads back CSVs left by a
previous run. It imports neither TensorFlow nor JAX.
"""

from __future__ import annotations

import csv
import io
import multiprocessing
import os
import tempfile
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from munet_jax.metrics.region_boundary import boundary_f, jaccard
from munet_jax.palette import read_indexed_png

GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
PER_SEQUENCE_COLUMNS = ("Sequence", "J-Mean", "F-Mean")
VOID_ID = 255


# ----------------------------------------------------------------------------- statistics


def decay_bin_edges(num_frames: int) -> np.ndarray:
    """Edges of the 4 Decay bins over `num_frames` scored frames: int64 [5].

    Bin i is frames edges[i] .. edges[i+1] inclusive (neighbouring bins share a frame).
    Same expression as the official code, round(linspace(1, n, 5) + 1e-10) - 1, where the
    1e-10 turns numpy's round-half-to-even into round-half-up; kept in int64 instead of the
    official uint8, which wraps once an edge passes 255.
    """
    return (np.round(np.linspace(1, num_frames, 5) + 1e-10) - 1).astype(np.int64)


def sequence_statistics(values: np.ndarray) -> tuple[float, float, float]:
    """(mean, recall, decay) of one object's per-frame J or F values [T']."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    edges = decay_bin_edges(len(values))
    bins = [values[edges[i] : edges[i + 1] + 1] for i in range(4)]
    with warnings.catch_warnings():  # empty input gives NaN, as in the official code
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(values)
        recall = np.nanmean(values > 0.5)
        decay = np.nanmean(bins[0]) - np.nanmean(bins[3])
    return float(mean), float(recall), float(decay)


def evaluate_sequence(
    gt_masks: np.ndarray, pred_masks: np.ndarray, num_objects: int, bound_th: float = 0.008
) -> dict[str, np.ndarray]:
    """Per-object, per-frame J and F of every frame given.

    gt_masks, pred_masks: object ids uint8 [T, H, W] of the frames to score (the caller drops
    the first and last frame of a DAVIS sequence). Objects are ids 1..num_objects.
    Returns {"J": float64 [N, T], "F": float64 [N, T]}, row k-1 for object k.
    """
    gt_masks = np.asarray(gt_masks)
    pred_masks = np.asarray(pred_masks)
    if gt_masks.ndim != 3 or gt_masks.shape != pred_masks.shape:
        raise ValueError(
            f"gt_masks and pred_masks must both be [T, H, W] of one shape, got {gt_masks.shape} and {pred_masks.shape}"
        )
    if pred_masks.size and int(pred_masks.max()) > num_objects:
        raise ValueError(
            f"predictions hold object id {int(pred_masks.max())} but the sequence has {num_objects} objects"
        )
    num_frames = gt_masks.shape[0]
    j = np.empty((num_objects, num_frames), dtype=np.float64)
    f = np.empty((num_objects, num_frames), dtype=np.float64)
    for k in range(1, num_objects + 1):
        for t in range(num_frames):
            gt, pred = gt_masks[t] == k, pred_masks[t] == k
            j[k - 1, t] = jaccard(gt, pred)
            f[k - 1, t] = boundary_f(gt, pred, bound_th)
    return {"J": j, "F": f}


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SequenceResult:
    """Scores of one sequence: j, f float64 [N, T'] over the scored frames `frame_ids`."""

    name: str
    frame_ids: tuple[str, ...]
    j: np.ndarray
    f: np.ndarray

    @property
    def object_names(self) -> list[str]:
        return [f"{self.name}_{k}" for k in range(1, self.j.shape[0] + 1)]


@dataclass(frozen=True)
class ObjectScores:
    name: str  # "<sequence>_<object id>"
    j_mean: float
    j_recall: float
    j_decay: float
    f_mean: float
    f_recall: float
    f_decay: float


@dataclass(frozen=True)
class EvaluationResult:
    sequences: tuple[SequenceResult, ...]
    split: str = "val"

    @property
    def objects(self) -> list[ObjectScores]:
        rows = []
        for seq in self.sequences:
            for name, j_values, f_values in zip(seq.object_names, seq.j, seq.f):
                rows.append(ObjectScores(name, *sequence_statistics(j_values), *sequence_statistics(f_values)))
        return rows

    @property
    def global_scores(self) -> dict[str, float]:
        """The official global row, keyed by GLOBAL_COLUMNS: means over all objects."""
        objects = self.objects
        if not objects:
            raise ValueError("no objects were evaluated")
        column = {
            key: float(np.mean([getattr(o, key) for o in objects]))
            for key in ("j_mean", "j_recall", "j_decay", "f_mean", "f_recall", "f_decay")
        }
        values = [(column["j_mean"] + column["f_mean"]) / 2.0, *column.values()]
        return dict(zip(GLOBAL_COLUMNS, values))

    @property
    def per_sequence_rows(self) -> list[tuple[str, float, float]]:
        """(name "<seq>_<id>", J-Mean, F-Mean) per object, in evaluation order."""
        return [(o.name, o.j_mean, o.f_mean) for o in self.objects]

    def global_csv(self) -> str:
        return _csv_text(GLOBAL_COLUMNS, [list(self.global_scores.values())])

    def per_sequence_csv(self) -> str:
        return _csv_text(PER_SEQUENCE_COLUMNS, [list(row) for row in self.per_sequence_rows])

    def write_csvs(self, output_dir: str | os.PathLike) -> tuple[Path, Path]:
        """Writes both CSVs into `output_dir` (atomically; replaces older ones); returns their paths."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        global_path = output_dir / f"global_results-{self.split}.csv"
        per_sequence_path = output_dir / f"per-sequence_results-{self.split}.csv"
        _write_text_atomic(global_path, self.global_csv())
        _write_text_atomic(per_sequence_path, self.per_sequence_csv())
        return global_path, per_sequence_path

    def format_global_table(self) -> str:
        return _text_table(GLOBAL_COLUMNS, [list(self.global_scores.values())])

    def format_per_sequence_table(self) -> str:
        return _text_table(PER_SEQUENCE_COLUMNS, [list(row) for row in self.per_sequence_rows])


def _format_cell(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else "%.3f" % value
    return str(value)


def _csv_text(header, rows) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")  # pandas' to_csv: minimal quoting, "\n"
    writer.writerow(header)
    for row in rows:
        writer.writerow([_format_cell(v) for v in row])
    return buffer.getvalue()


def _text_table(header, rows) -> str:
    cells = [list(header)] + [[_format_cell(v) or "nan" for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells)


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- reading folders


def read_sequence_names(davis_root: str | os.PathLike, split: str = "val") -> list[str]:
    """Sequence names listed in `<davis_root>/ImageSets/2017/<split>.txt`, in file order."""
    list_file = Path(davis_root) / "ImageSets" / "2017" / f"{split}.txt"
    if not list_file.is_file():
        raise FileNotFoundError(
            f"{list_file}: sequence list for set {split!r} not found; check --davis_root points at the "
            "DAVIS 2017 folder (holding JPEGImages/, Annotations/, ImageSets/) or pass --sequences"
        )
    names = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{list_file}: lists no sequences")
    return names


def _png_frames(folder: Path) -> list[Path]:
    # Like the official glob('*.png'): hidden files (e.g. half-written temporaries) are skipped.
    return sorted(p for p in folder.glob("*.png") if not p.name.startswith("."))


def load_sequence(
    davis_root: str | os.PathLike, results_dir: str | os.PathLike, sequence: str, resolution: str = "480p"
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], int]:
    """Ground truth and predictions of the scored frames of one sequence.

    Returns gt uint8 [T-2, H, W] (void 255 mapped to background), pred uint8 [T-2, H, W],
    the scored frame ids (file stems) and the number of objects N. Raises with the file
    name and the fix on any missing, mis-sized, non-indexed or out-of-range mask.
    """
    gt_dir = Path(davis_root) / "Annotations" / resolution / sequence
    if not gt_dir.is_dir():
        raise FileNotFoundError(
            f"{gt_dir}: annotations of sequence {sequence!r} not found; check --davis_root, the resolution "
            f"({resolution!r}) and the sequence name"
        )
    gt_paths = _png_frames(gt_dir)
    if len(gt_paths) < 3:
        raise ValueError(
            f"{gt_dir}: {len(gt_paths)} annotated frames; DAVIS scoring needs at least 3 "
            "(the first and last frames are not scored)"
        )
    first = read_indexed_png(gt_paths[0])
    first = np.where(first == VOID_ID, 0, first)
    num_objects = int(first.max())
    if num_objects == 0:
        raise ValueError(f"{gt_paths[0]}: the first-frame annotation holds no object, nothing to evaluate")

    seq_results = Path(results_dir) / sequence
    if not seq_results.is_dir():
        raise FileNotFoundError(
            f"{seq_results}: no results for sequence {sequence!r}; write one indexed PNG per frame "
            f"there, named like the annotations ({gt_paths[1].name} ... {gt_paths[-2].name})"
        )
    scored = gt_paths[1:-1]
    frame_ids = tuple(p.stem for p in scored)
    gt = np.empty((len(scored), *first.shape), dtype=np.uint8)
    pred = np.empty_like(gt)
    for t, gt_path in enumerate(scored):
        ids = read_indexed_png(gt_path)
        if ids.shape != first.shape:
            raise ValueError(f"{gt_path}: annotation is {ids.shape}, the first frame is {first.shape}")
        gt[t] = np.where(ids == VOID_ID, 0, ids)
        pred_path = seq_results / gt_path.name
        if not pred_path.is_file():
            raise FileNotFoundError(
                f"{pred_path}: result mask missing for frame {gt_path.stem} of {sequence!r}; write one indexed "
                f"PNG per annotated frame ({gt_paths[1].name} ... {gt_paths[-2].name} are scored)"
            )
        ids = read_indexed_png(pred_path)
        if ids.shape != first.shape:
            raise ValueError(
                f"{pred_path}: result mask is {ids.shape[0]}x{ids.shape[1]} (HxW) but the annotation "
                f"{gt_path} is {first.shape[0]}x{first.shape[1]}; write predictions at the annotation's "
                "resolution (upsample with nearest-neighbour)"
            )
        if int(ids.max()) > num_objects:
            extra = sorted(int(v) for v in np.unique(ids[ids > num_objects]))
            raise ValueError(
                f"{pred_path}: holds object ids {extra} but {sequence!r} has {num_objects} objects (ids 1.."
                f"{num_objects} of its first-frame annotation); semi-supervised results may only use those ids "
                "(the official tool refuses such files too)"
            )
        pred[t] = ids
    return gt, pred, frame_ids, num_objects


def _evaluate_named_sequence(job: tuple[str, str, str, str]) -> SequenceResult:
    # Module-level so that a process pool can pickle it.
    davis_root, results_dir, sequence, resolution = job
    gt, pred, frame_ids, num_objects = load_sequence(davis_root, results_dir, sequence, resolution)
    scores = evaluate_sequence(gt, pred, num_objects)
    return SequenceResult(sequence, frame_ids, scores["J"], scores["F"])


def evaluate_davis(
    davis_root: str | os.PathLike,
    results_dir: str | os.PathLike,
    split: str = "val",
    resolution: str = "480p",
    sequences: list[str] | None = None,
    progress: bool = True,
    num_workers: int = 1,
) -> EvaluationResult:
    """Scores `<results_dir>/<seq>/<frame>.png` against DAVIS 2017 annotations.

    sequences: names to evaluate (default: those of ImageSets/2017/<split>.txt).
    num_workers > 1 scores sequences in a process pool; results keep the sequence order.
    """
    davis_root, results_dir = Path(davis_root), Path(results_dir)
    if not davis_root.is_dir():
        raise FileNotFoundError(f"{davis_root}: DAVIS root folder not found (--davis_root)")
    if not results_dir.is_dir():
        raise FileNotFoundError(
            f"{results_dir}: results folder not found; it must hold one sub-folder of indexed PNGs per sequence"
        )
    if isinstance(sequences, str):  # one name, not an iterable of characters
        sequences = [sequences]
    names = list(sequences) if sequences else read_sequence_names(davis_root, split)
    jobs = [(str(davis_root), str(results_dir), name, resolution) for name in names]
    bar = dict(total=len(jobs), desc="DAVIS J&F", unit="seq", disable=not progress)
    if num_workers > 1 and len(jobs) > 1:
        # "spawn": forking a process whose libraries (OpenCV, tqdm) already run threads can deadlock.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(num_workers, len(jobs)), mp_context=context) as pool:
            results = list(tqdm(pool.map(_evaluate_named_sequence, jobs), **bar))
    else:
        results = [_evaluate_named_sequence(job) for job in tqdm(jobs, **bar)]
    return EvaluationResult(tuple(results), split)
