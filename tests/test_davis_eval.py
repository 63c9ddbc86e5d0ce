"""Sequence statistics, folder evaluation, CSVs and the CLI of munet_jax.metrics."""

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from munet_jax.metrics import (
    GLOBAL_COLUMNS,
    PER_SEQUENCE_COLUMNS,
    decay_bin_edges,
    evaluate_davis,
    evaluate_sequence,
    sequence_statistics,
)
from munet_jax.palette import NotIndexedMaskError, read_indexed_png, write_indexed_png
from reference_davis_metrics import ref_evaluate_folder, ref_evaluate_sequence, ref_statistics

REPO_ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- statistics


def test_statistics_worked_by_hand_five_frames():
    # n = 5: linspace(1, 5, 5) = 1..5 -> bin edges 0, 1, 2, 3, 4; bins share their end frames.
    values = [1.0, 0.2, 0.6, 0.9, 0.4]
    mean, recall, decay = sequence_statistics(values)
    assert mean == pytest.approx(3.1 / 5)
    assert recall == pytest.approx(3 / 5)  # 1.0, 0.6, 0.9
    assert decay == pytest.approx((1.0 + 0.2) / 2 - (0.9 + 0.4) / 2)  # bins [0:2] and [3:5]


def test_statistics_length_not_divisible_by_four():
    # n = 6: linspace(1, 6, 5) = 1, 2.25, 3.5, 4.75, 6 -> rounded half up 1, 2, 4, 5, 6 -> edges 0, 1, 3, 4, 5.
    assert decay_bin_edges(6).tolist() == [0, 1, 3, 4, 5]
    values = [0.9, 0.7, 0.5, 0.3, 0.2, 0.1]
    mean, recall, decay = sequence_statistics(values)
    assert recall == pytest.approx(2 / 6)  # exactly 0.5 is not a success
    assert decay == pytest.approx((0.9 + 0.7) / 2 - (0.2 + 0.1) / 2)
    # n = 7: 1, 2.5, 4, 5.5, 7 -> 1, 3, 4, 6, 7 (the 1e-10 makes .5 round up) -> edges 0, 2, 3, 5, 6.
    assert decay_bin_edges(7).tolist() == [0, 2, 3, 5, 6]


def _official_uint8_edges(n):
    """The official bin edges, uint8 included. The float -> uint8 cast of values above 255 is
    undefined in C (it wraps on the usual platforms), so the wrap is written out as % 256."""
    edges = np.round(np.linspace(1, n, 5) + 1e-10) - 1
    return (edges.astype(np.int64) % 256).astype(np.uint8)


def test_bins_equal_the_official_ones_up_to_255_frames():
    for n in range(1, 256):
        assert decay_bin_edges(n).tolist() == _official_uint8_edges(n).tolist() == [
            (k * (n - 1) + 2) // 4 for k in range(5)
        ]


def test_300_frames_get_four_real_quarters_where_the_official_bins_wrap():
    values = np.linspace(1.0, 0.0, 300)  # a steady decline
    assert decay_bin_edges(300).tolist() == [0, 75, 150, 224, 299]
    official = _official_uint8_edges(300)
    assert official.tolist() == [0, 75, 150, 224, 43]  # 299 wraps to 43: last bin values[224:44] is empty
    assert values[official[3] : official[4] + 1].size == 0  # official Decay would be NaN
    _, _, decay = sequence_statistics(values)
    expected = values[0:76].mean() - values[224:300].mean()  # first and last quarter
    assert decay == pytest.approx(expected, abs=1e-12)
    assert decay == pytest.approx(0.74916, abs=1e-4)
    assert np.allclose(sequence_statistics(values), ref_statistics(values), atol=1e-12)


def test_statistics_agree_with_reference_on_random_sequences():
    rng = np.random.default_rng(3)
    for n in [1, 2, 3, 4, 5, 17, 38, 48, 101, 256, 300, 1000]:
        values = rng.random(n)
        assert np.allclose(sequence_statistics(values), ref_statistics(values), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- a synthetic DAVIS


def _blob(shape, cy, cx, ry, rx):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def _make_toy_davis(root: Path, results: Path) -> list[str]:
    """Two small sequences in the DAVIS layout and imperfect results for them.

    toy-a (9 frames, 40x56): first frame holds ids 1 and 3 only (N = 3; object 2 enters at
    frame 3), void 255 stripes, an id 4 (> N, background) in a later ground truth; object 3
    is never predicted. toy-b (6 frames, 33x47): one object, shifted and eroded predictions.
    """
    rng = np.random.default_rng(11)
    specs = {"toy-a": (9, (40, 56)), "toy-b": (6, (33, 47))}
    for name, (num_frames, shape) in specs.items():
        for t in range(num_frames):
            gt = np.zeros(shape, np.uint8)
            gt[_blob(shape, 12 + t, 15 + 2 * t, 7, 9)] = 1
            if name == "toy-a":
                gt[_blob(shape, 30, 40 - t, 5, 6)] = 3
                if t >= 3:
                    gt[_blob(shape, 8, 45, 4, 4)] = 2
                if t == 6:
                    gt[_blob(shape, 35, 8, 3, 3)] = 4
                if t % 2 == 0:  # void in the first frame too: it must not count as object 255
                    gt[:, 27] = 255
            write_indexed_png(root / "Annotations" / "480p" / name / f"{t:05d}.png", gt)
            pred = np.where(gt == 255, 0, gt).astype(np.uint8)
            pred[pred > 3] = 0
            if name == "toy-a":
                pred[pred == 3] = 0  # never predicted
                pred = np.roll(pred, (int(rng.integers(-2, 3)), int(rng.integers(-3, 4))), axis=(0, 1))
            elif t % 2:
                pred = cv2.erode(pred, np.ones((3, 3), np.uint8))
            write_indexed_png(results / name / f"{t:05d}.png", pred)
    (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("toy-a\ntoy-b\n")
    return list(specs)


@pytest.fixture()
def toy(tmp_path):
    root, results = tmp_path / "DAVIS", tmp_path / "results"
    names = _make_toy_davis(root, results)
    return root, results, names


def test_toy_dataset_matches_reference(toy):
    root, results, names = toy
    result = evaluate_davis(root, results, progress=False)
    reference = ref_evaluate_folder(root, results, names)
    names = ["toy-a_1", "toy-a_2", "toy-a_3", "toy-b_1"]  # object 2 counts though absent from frame 0
    assert [o.name for o in result.objects] == list(reference["objects"]) == names
    for obj in result.objects:
        ours = (obj.j_mean, obj.j_recall, obj.j_decay, obj.f_mean, obj.f_recall, obj.f_decay)
        assert np.allclose(ours, reference["objects"][obj.name], rtol=0, atol=1e-12), obj.name
    for column in GLOBAL_COLUMNS:
        assert abs(result.global_scores[column] - reference["global"][column]) <= 1e-12, column
    toy_a = result.sequences[0]
    assert toy_a.frame_ids == tuple(f"{t:05d}" for t in range(1, 8))  # first and last not scored
    assert toy_a.j[2].tolist() == [0.0] * 7  # the unpredicted object
    assert 0 < result.global_scores["J&F-Mean"] < 1


def test_evaluate_sequence_matches_reference_per_frame(toy):
    root, results, _ = toy
    names = [f"{t:05d}.png" for t in range(1, 8)]
    gt = np.stack([read_indexed_png(root / "Annotations/480p/toy-a" / n) for n in names])
    gt[gt == 255] = 0
    pred = np.stack([read_indexed_png(results / "toy-a" / n) for n in names])
    ours = evaluate_sequence(gt, pred, 3)
    ref_j, ref_f = ref_evaluate_sequence(list(gt), list(pred), 3)
    np.testing.assert_allclose(ours["J"], ref_j, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours["F"], ref_f, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="object id 3"):
        evaluate_sequence(gt, pred + (pred > 0).astype(np.uint8), 2)


def test_process_pool_gives_identical_results(toy):
    root, results, _ = toy
    serial = evaluate_davis(root, results, progress=False)
    pooled = evaluate_davis(root, results, progress=False, num_workers=2)
    for a, b in zip(serial.sequences, pooled.sequences):
        assert a.name == b.name
        np.testing.assert_array_equal(a.j, b.j)
        np.testing.assert_array_equal(a.f, b.f)


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_csvs_have_official_columns_rows_and_format(toy, tmp_path):
    root, results, names = toy
    result = evaluate_davis(root, results, progress=False)
    reference = ref_evaluate_folder(root, results, names)
    global_path, per_sequence_path = result.write_csvs(tmp_path / "out")
    assert global_path.name == "global_results-val.csv"
    assert per_sequence_path.name == "per-sequence_results-val.csv"
    rows = _read_csv(global_path)
    assert rows[0] == ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
    assert rows[1] == ["%.3f" % reference["global"][c] for c in GLOBAL_COLUMNS]
    rows = _read_csv(per_sequence_path)
    assert rows[0] == list(PER_SEQUENCE_COLUMNS) == ["Sequence", "J-Mean", "F-Mean"]
    expected = [[n, "%.3f" % v[0], "%.3f" % v[3]] for n, v in reference["objects"].items()]
    assert rows[1:] == expected
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporaries left


# ----------------------------------------------------------------------------- bad input


def test_first_and_last_result_frames_are_not_needed(toy):
    root, results, _ = toy
    (results / "toy-b" / "00000.png").unlink()
    (results / "toy-b" / "00005.png").unlink()
    result = evaluate_davis(root, results, sequences="toy-b", progress=False)  # a single name works too
    assert [o.name for o in result.objects] == ["toy-b_1"]


def test_bad_inputs_name_the_file_and_the_fix(toy, tmp_path):
    root, results, _ = toy
    with pytest.raises(FileNotFoundError, match="results folder not found"):
        evaluate_davis(root, tmp_path / "nowhere", progress=False)
    with pytest.raises(FileNotFoundError, match="Annotations"):
        evaluate_davis(root, results, sequences=["no-such-seq"], progress=False)

    missing = results / "toy-b" / "00003.png"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=r"00003\.png.*missing.*00001\.png \.\.\. 00004\.png"):
        evaluate_davis(root, results, sequences=["toy-b"], progress=False)

    write_indexed_png(missing, np.zeros((33, 46), np.uint8))
    with pytest.raises(ValueError, match=r"00003\.png.*33x46.*annotation's resolution"):
        evaluate_davis(root, results, sequences=["toy-b"], progress=False)

    Image.fromarray(np.zeros((33, 47, 3), np.uint8)).save(missing)
    with pytest.raises(NotIndexedMaskError, match=r"00003\.png"):
        evaluate_davis(root, results, sequences=["toy-b"], progress=False)

    for bad_id in (2, 255):  # toy-b has one object; 255 is no object id in results either
        ids = np.zeros((33, 47), np.uint8)
        ids[5:9, 5:9] = bad_id
        write_indexed_png(missing, ids)
        with pytest.raises(ValueError, match=rf"00003\.png: holds object ids \[{bad_id}\] but 'toy-b' has 1 objects"):
            evaluate_davis(root, results, sequences=["toy-b"], progress=False)

    shutil.rmtree(results / "toy-b")
    with pytest.raises(FileNotFoundError, match="no results for sequence 'toy-b'"):
        evaluate_davis(root, results, progress=False)


# ----------------------------------------------------------------------------- real DAVIS frames


SAMPLE_SEQUENCES = ["blackswan", "car-shadow"]


@pytest.fixture(scope="module")
def degraded_results(davis_sample_root, tmp_path_factory):
    """Sample ground truth eroded, shifted or dropped frame by frame, written as palette PNGs."""
    out = tmp_path_factory.mktemp("degraded")
    for seq in SAMPLE_SEQUENCES:
        for t, path in enumerate(sorted((davis_sample_root / "Annotations/480p" / seq).glob("*.png"))):
            ids = read_indexed_png(path)
            if t % 3 == 0:
                ids = cv2.erode(ids, np.ones((7, 7), np.uint8))
            elif t % 3 == 1:
                ids = np.roll(ids, (3 + t % 5, -4), axis=(0, 1))
            if t == 20:
                ids = np.zeros_like(ids)  # a lost frame
            write_indexed_png(out / seq / path.name, ids)
    return out


def test_ground_truth_scores_one_on_real_sample(davis_sample_root):
    result = evaluate_davis(davis_sample_root, davis_sample_root / "Annotations" / "480p", progress=False)
    assert [o.name for o in result.objects] == ["blackswan_1", "car-shadow_1"]
    for seq in result.sequences:
        assert seq.j.shape == seq.f.shape == (1, {"blackswan": 48, "car-shadow": 38}[seq.name])
        assert (seq.j == 1).all() and (seq.f == 1).all()
    assert result.global_scores == dict(zip(GLOBAL_COLUMNS, [1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0]))


def test_degraded_real_sample_matches_reference(davis_sample_root, degraded_results):
    result = evaluate_davis(davis_sample_root, degraded_results, progress=False)
    reference = ref_evaluate_folder(davis_sample_root, degraded_results, SAMPLE_SEQUENCES)
    for obj in result.objects:
        ours = (obj.j_mean, obj.j_recall, obj.j_decay, obj.f_mean, obj.f_recall, obj.f_decay)
        assert np.allclose(ours, reference["objects"][obj.name], rtol=0, atol=1e-12), obj.name
    for column in GLOBAL_COLUMNS:
        assert abs(result.global_scores[column] - reference["global"][column]) <= 1e-12, column
    assert 0.3 < result.global_scores["J-Mean"] < 0.99


def _run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "munet_jax.metrics", "--workers", "1", "--no_progress", *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_writes_csvs_recomputes_and_reports_errors(davis_sample_root, degraded_results, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(degraded_results, results)
    stale = results / "global_results-val.csv"
    stale.write_text("J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay\n0.111,0.111,0,0,0.111,0,0\n")
    run = _run_cli("--davis_root", davis_sample_root, "--results", results)
    assert run.returncode == 0, run.stderr
    expected = evaluate_davis(davis_sample_root, degraded_results, progress=False)
    assert stale.read_text() == expected.global_csv()  # stale CSV recomputed, not reused
    assert (results / "per-sequence_results-val.csv").read_text() == expected.per_sequence_csv()
    assert "J&F-Mean" in run.stdout and "car-shadow_1" in run.stdout

    out_dir = tmp_path / "elsewhere"
    run = _run_cli("--davis_root", davis_sample_root, "--results", results, "--sequences", "car-shadow",
                   "--output_dir", out_dir)
    assert run.returncode == 0, run.stderr
    rows = _read_csv(out_dir / "per-sequence_results-val.csv")
    assert [r[0] for r in rows[1:]] == ["car-shadow_1"]

    (results / "blackswan" / "00017.png").unlink()
    run = _run_cli("--davis_root", davis_sample_root, "--results", results, "--sequences", "blackswan")
    assert run.returncode != 0
    assert "blackswan/00017.png" in run.stderr and "missing" in run.stderr
    assert "Traceback" not in run.stderr


def test_evaluator_imports_neither_jax_nor_tensorflow():
    # It must run on machines with neither installed (and fast, without their start-up).
    code = "import sys, munet_jax.metrics.__main__; print(sorted({'jax', 'tensorflow', 'flax'} & set(sys.modules)))"
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
