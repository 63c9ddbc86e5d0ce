"""`python -m munet_jax.evaluate`: DAVIS results layout, J&F CSVs, timing, YouTube-VOS submission, errors.

A tiny untrained model on generated data (6 frames of 48x64): the checks are about the
benchmark plumbing (files, ids, palettes, scores, compile counts), not accuracy.
"""

import csv
import functools
import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import cv2
import ml_collections
import numpy as np
import pytest
from PIL import Image

from munet_jax.data.synthetic import generate_davis_layout, generate_youtube_layout
from munet_jax.evaluate import main
from munet_jax.inference.restore import save_model
from munet_jax.metrics import GLOBAL_COLUMNS, PER_SEQUENCE_COLUMNS, evaluate_davis
from munet_jax.models.config import tiny_munet_config
from munet_jax.models.munet import build_model, init_variables
from munet_jax.palette import DAVIS_PALETTE, read_indexed_png, write_indexed_png

REPO_ROOT = Path(__file__).resolve().parents[1]
BUCKET = "48x64"


@functools.lru_cache(maxsize=1)
def _tiny_variables():
    # Initialising the network takes seconds on CPU: once for every run this module saves.
    return init_variables(build_model(tiny_munet_config()), 0, (32, 32), 1)


def _save_run(workdir: Path, davis_root: str = "") -> Path:
    config = ml_collections.ConfigDict({"model": tiny_munet_config().to_dict(),
                                        "eval": {"davis_root": davis_root}})
    return save_model(workdir, config, _tiny_variables(), 7)


def _crop_sequence(root: Path, name: str, height: int, width: int) -> None:
    """Rewrites one generated sequence at a smaller size (same bucket, other shape)."""
    for jpg in (root / "JPEGImages" / "480p" / name).glob("*.jpg"):
        cv2.imwrite(str(jpg), cv2.imread(str(jpg))[:height, :width], [cv2.IMWRITE_JPEG_QUALITY, 95])
    for png in (root / "Annotations" / "480p" / name).glob("*.png"):
        write_indexed_png(png, read_indexed_png(png)[:height, :width])


@pytest.fixture(scope="module")
def davis(tmp_path_factory):
    """A 3-video generated DAVIS val split (two frame sizes) and one CLI run on it, with the
    dataset root taken from the run config (no --dataset_root)."""
    base = tmp_path_factory.mktemp("davis_eval")
    root = generate_davis_layout(base / "DAVIS", num_train=0, num_val=3, num_frames=6, height=48, width=64, seed=1)
    _crop_sequence(root, "val-0001", 40, 56)
    workdir = _save_run(base / "run", davis_root=str(root))
    output = base / "results"
    argv = ["--checkpoint", str(workdir), "--output", str(output), "--size_buckets", BUCKET,
            "--object_buckets", "4", "--workers", "1", "--no_progress"]
    return root, workdir, output, argv


@pytest.fixture(scope="module")
def davis_run(davis):
    root, workdir, output, argv = davis
    code = main(argv)
    assert code == 0
    return root, output


def _sequence_names(root: Path) -> list[str]:
    return (root / "ImageSets" / "2017" / "val.txt").read_text().split()


def test_davis_results_layout_palette_and_ids(davis_run):
    root, output = davis_run
    names = _sequence_names(root)
    assert sorted(p.name for p in output.iterdir()) == sorted(
        names + ["global_results-val.csv", "per-sequence_results-val.csv", "timing-val.json"])
    for name in names:
        jpgs = sorted(p.stem for p in (root / "JPEGImages" / "480p" / name).glob("*.jpg"))
        pngs = sorted(p.name for p in (output / name).iterdir())
        assert pngs == [f"{stem}.png" for stem in jpgs]  # one PNG per frame, nothing else (no temporaries)
        given = read_indexed_png(root / "Annotations" / "480p" / name / "00000.png")
        first_ids = set(np.unique(given)) - {0}
        for png in pngs:
            with Image.open(output / name / png) as image:
                assert image.mode == "P"
                assert image.getpalette() == DAVIS_PALETTE.reshape(-1).tolist()
            ids = read_indexed_png(output / name / png)
            assert ids.shape == given.shape
            assert set(np.unique(ids)) - {0} <= first_ids
        np.testing.assert_array_equal(read_indexed_png(output / name / "00000.png"), given)


def test_davis_csvs_match_the_evaluator_and_a_direct_jaccard(davis_run, capsys):
    root, output = davis_run
    global_text = (output / "global_results-val.csv").read_text()
    per_sequence_text = (output / "per-sequence_results-val.csv").read_text()
    assert global_text.splitlines()[0].split(",") == list(GLOBAL_COLUMNS)
    assert per_sequence_text.splitlines()[0].split(",") == list(PER_SEQUENCE_COLUMNS)
    again = evaluate_davis(root, output, "val", progress=False)
    assert global_text == again.global_csv()
    assert per_sequence_text == again.per_sequence_csv()

    # J-Mean of every object straight from the PNGs: frames 1..T-2, |A & B| / |A | B| (1 if both empty).
    rows = {row["Sequence"]: float(row["J-Mean"]) for row in csv.DictReader(io.StringIO(per_sequence_text))}
    for name in _sequence_names(root):
        stems = sorted(p.stem for p in (root / "Annotations" / "480p" / name).glob("*.png"))[1:-1]
        gt = np.stack([read_indexed_png(root / "Annotations" / "480p" / name / f"{s}.png") for s in stems])
        pred = np.stack([read_indexed_png(output / name / f"{s}.png") for s in stems])
        for k in range(1, int(read_indexed_png(root / "Annotations" / "480p" / name / "00000.png").max()) + 1):
            inter = ((gt == k) & (pred == k)).sum(axis=(1, 2))
            union = ((gt == k) | (pred == k)).sum(axis=(1, 2))
            j = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
            assert rows[f"{name}_{k}"] == pytest.approx(j.mean(), abs=6e-4)


def test_davis_timing_one_program_for_two_sizes(davis_run):
    root, output = davis_run
    timing = json.loads((output / "timing-val.json").read_text())
    videos = {v["name"]: v for v in timing["videos"]}
    assert set(videos) == set(_sequence_names(root))
    assert (videos["val-0001"]["height"], videos["val-0001"]["width"]) == (40, 56)
    assert (videos["val-0000"]["height"], videos["val-0000"]["width"]) == (48, 64)
    # Two frame sizes, one bucket: one init and one step program for all three videos.
    assert timing["compilations"] == {"init": 1, "step": 1, "video": 0}
    assert timing["compilations_per_bucket"] == {"init 48x64 K=4": 1, "step 48x64 K=4": 1}
    # Warm-up took the compile: every frame is timed, none excluded.
    assert timing["frames_timed"] == 18 and timing["frames_excluded"] == 0
    for v in videos.values():
        assert v["frames"] == 6 and v["seconds"] > 0
        assert v["fps"] == pytest.approx(v["frames"] / v["seconds"])
    assert timing["fps"] == pytest.approx(np.mean([v["fps"] for v in videos.values()]))
    assert timing["compile_seconds"] > 0 and np.isfinite(timing["fps"]) and timing["fps"] > 0
    assert timing["step"] == 7 and timing["mode"] == "per_frame"


def test_scan_mode_gives_the_per_frame_masks(davis_run, davis, tmp_path, capsys):
    root, output = davis_run
    _, workdir, _, argv = davis
    scan_out = tmp_path / "scan"
    argv = [a if a != str(output) else str(scan_out) for a in argv]
    assert main(argv + ["--use_scan", "--no_score", "--sequences", "val-0002"]) == 0
    assert sorted(p.name for p in scan_out.iterdir()) == ["timing-val.json", "val-0002"]  # no CSVs: --no_score
    for png in sorted((output / "val-0002").iterdir()):
        np.testing.assert_array_equal(read_indexed_png(scan_out / "val-0002" / png.name), read_indexed_png(png))
    timing = json.loads((scan_out / "timing-val.json").read_text())
    assert timing["mode"] == "scan" and timing["compilations"]["video"] == 1 and timing["frames_timed"] == 6


# ----------------------------------------------------------------------------- YouTube-VOS


@pytest.fixture(scope="module")
def youtube_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("youtube_eval")
    root = generate_youtube_layout(base / "ytvos", num_train=1, num_valid=3, num_frames=6, height=48, width=64,
                                   seed=1, enter_fraction=1.0)
    valid = root / "valid"
    meta = json.loads((valid / "meta.json").read_text())
    # One video whose objects all enter on its third frame: nothing is segmented before it.
    late = next(v for v in sorted(meta["videos"]) if len(list((valid / "Annotations" / v).iterdir())) == 1)
    frames = sorted(p.stem for p in (valid / "JPEGImages" / late).glob("*.jpg"))
    os.replace(valid / "Annotations" / late / f"{frames[0]}.png", valid / "Annotations" / late / f"{frames[2]}.png")
    for obj in meta["videos"][late]["objects"].values():
        obj["frames"] = frames[2:]
    (valid / "meta.json").write_text(json.dumps(meta))
    workdir = _save_run(base / "run")
    output = base / "out"
    assert main(["--checkpoint", str(workdir), "--dataset", "youtube_vos", "--split", "val", "--dataset_root",
                 str(valid), "--output", str(output), "--size_buckets", BUCKET, "--object_buckets", "2,4", "--no_progress"]) == 0
    return valid, output, late


def test_youtube_zip_holds_every_frame_under_annotations(youtube_run):
    valid, output, _ = youtube_run
    assert sorted(p.name for p in output.iterdir()) == ["Annotations", "submission.zip", "timing-valid.json"]
    expected = sorted(f"Annotations/{jpg.parent.name}/{jpg.stem}.png" for jpg in (valid / "JPEGImages").glob("*/*.jpg"))
    with zipfile.ZipFile(output / "submission.zip") as archive:
        assert archive.testzip() is None
        assert sorted(archive.namelist()) == expected
        for name in expected:
            assert archive.read(name) == (output / name).read_bytes()


def test_youtube_objects_enter_on_their_first_frame(youtube_run):
    valid, output, late = youtube_run
    meta = json.loads((valid / "meta.json").read_text())["videos"]
    entering_later = 0
    for video, entry in meta.items():
        frames = sorted(p.stem for p in (valid / "JPEGImages" / video).glob("*.jpg"))
        pred = {f: read_indexed_png(output / "Annotations" / video / f"{f}.png") for f in frames}
        ids = {int(k) for k in entry["objects"]}
        assert all(set(np.unique(p)) - {0} <= ids for p in pred.values())
        for oid, obj in entry["objects"].items():
            oid, first = int(oid), obj["frames"][0]
            entering_later += first != frames[0]
            for f in frames[: frames.index(first)]:
                assert not (pred[f] == oid).any(), f"{video}: object {oid} predicted on {f}, before {first}"
            given = read_indexed_png(valid / "Annotations" / video / f"{first}.png")
            np.testing.assert_array_equal(pred[first] == oid, given == oid)
    assert entering_later >= 2  # the test data does have objects entering mid-video
    late_frames = sorted(p.stem for p in (valid / "JPEGImages" / late).glob("*.jpg"))
    for f in late_frames[:2]:
        assert not read_indexed_png(output / "Annotations" / late / f"{f}.png").any()


def test_youtube_timing_counts_the_object_bucket_growth(youtube_run):
    _, output, _ = youtube_run
    timing = json.loads((output / "timing-valid.json").read_text())
    assert timing["frames_timed"] + timing["frames_excluded"] == sum(
        6 - (2 if v["name"] == youtube_run[2] else 0) for v in timing["videos"])
    assert timing["compilations"]["step"] >= 2  # objects outgrew their first object bucket
    assert timing["fps"] > 0 and timing["dataset"] == "YouTube-VOS 2018 valid"


# ----------------------------------------------------------------------------- errors


def test_cli_errors_name_the_problem(davis, tmp_path, capsys):
    root, workdir, _, _ = davis
    out = tmp_path / "out"
    common = ["--output", str(out), "--no_progress"]
    assert main(["--checkpoint", str(tmp_path / "missing"), "--davis_root", str(root)] + common) == 2
    assert "expected a training workdir" in capsys.readouterr().err
    assert main(["--checkpoint", str(workdir), "--davis_root", str(tmp_path / "nowhere")] + common) == 2
    assert "--dataset_root=" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["--checkpoint", str(workdir), "--davis_root", str(tmp_path / "empty")] + common) == 2
    assert "JPEGImages" in capsys.readouterr().err
    assert main(["--checkpoint", str(workdir), "--davis_root", str(root), "--sequences", "val-0001,bogus"] + common) == 2
    err = capsys.readouterr().err
    assert "bogus" in err and "val-0000" in err
    bare = _save_run(tmp_path / "bare_run")  # its config names no DAVIS root
    assert main(["--checkpoint", str(bare)] + common) == 2
    assert "--dataset_root is required" in capsys.readouterr().err
    assert main(["--checkpoint", str(workdir), "--size_buckets", "50x64"] + common) == 2
    assert "multiples of 16" in capsys.readouterr().err
    assert not out.exists()  # nothing written by a failed run


# ----------------------------------------------------------------------------- real DAVIS sample


def test_cli_end_to_end_on_real_davis_frames(davis_sample_root, tmp_path):
    """The two real 480p sequences, cut to their first 5 frames (symlinks), through the CLI
    in a fresh process with the default buckets: both videos run on one compiled step."""
    root = tmp_path / "DAVIS"
    names = (davis_sample_root / "ImageSets" / "2017" / "val.txt").read_text().split()
    for kind, ext in (("JPEGImages", "jpg"), ("Annotations", "png")):
        for name in names:
            (root / kind / "480p" / name).mkdir(parents=True)
            for src in sorted((davis_sample_root / kind / "480p" / name).glob(f"*.{ext}"))[:5]:
                (root / kind / "480p" / name / src.name).symlink_to(src)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    shutil.copy(davis_sample_root / "ImageSets" / "2017" / "val.txt", root / "ImageSets" / "2017" / "val.txt")
    workdir = _save_run(tmp_path / "run")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "munet_jax.evaluate", f"--checkpoint={workdir}", "--split=val",
                           f"--davis_root={root}", f"--output={tmp_path / 'out'}", "--workers=1", "--no_progress"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert "J&F-Mean" in proc.stdout and "FPS" in proc.stdout
    timing = json.loads((tmp_path / "out" / "timing-val.json").read_text())
    assert timing["compilations"] == {"init": 1, "step": 1, "video": 0}
    assert timing["size_buckets_used"] == ["480x864"] and timing["frames_timed"] == 10
    for name in names:
        assert len(list((tmp_path / "out" / name).glob("*.png"))) == 5
    assert (tmp_path / "out" / "global_results-val.csv").is_file()
    print(f"real-sample CLI run: {seconds:.1f} s, {timing['fps']:.2f} FPS, compile {timing['compile_seconds']:.1f} s")
