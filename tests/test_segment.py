"""The segment CLI end to end on tiny generated videos (frames folder and MP4) with a tiny saved
model, its input errors, one run on the real DAVIS sample, and the visualize CLI with a model."""

import json
import os
import subprocess
import sys
import time

import cv2
import ml_collections
import numpy as np
import pytest
from PIL import Image

from munet_jax.data.synthetic_scene import render_video
from munet_jax.inference.restore import save_model
from munet_jax.models.config import tiny_munet_config
from munet_jax.models.munet import build_model, init_variables
from munet_jax.palette import DAVIS_PALETTE, read_indexed_png, write_indexed_png
from munet_jax.segment import main as segment_main
from munet_jax.visualize import main as visualize_main

T, H, W = 6, 48, 80
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved tiny model, and a video whose objects carry ids 3 and 7 (not 1..K)."""
    root = tmp_path_factory.mktemp("seg")
    config = ml_collections.ConfigDict({"model": tiny_munet_config().to_dict()})
    save_model(root / "run", config, init_variables(build_model(config.model), 0, (32, 32), 1), 1)
    frames, masks = render_video(0, T, H, W, 2)
    masks = np.array([0, 3, 7], np.uint8)[masks]
    (root / "frames").mkdir()
    names = [f"img{t}" for t in (1, 2, 3, 5, 8, 13)]  # file stems, natural order
    for name, frame in zip(names, frames):
        cv2.imwrite(str(root / "frames" / f"{name}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    write_indexed_png(root / "mask.png", masks[0])
    return root, names, frames, masks


def run_cli(module, *args):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=300)


def decoded_frames(path):
    capture = cv2.VideoCapture(str(path))
    n = 0
    while capture.read()[0]:
        n += 1
    capture.release()
    return n


def check_masks(out, names, shape, allowed_ids, first_mask):
    files = sorted(p.name for p in (out / "masks").iterdir())
    assert files == sorted(f"{n}.png" for n in names)
    for name in names:
        with Image.open(out / "masks" / f"{name}.png") as image:
            assert image.mode == "P" and image.size == (shape[1], shape[0])
            palette = np.array(image.getpalette(), np.uint8).reshape(-1, 3)
            np.testing.assert_array_equal(palette[:len(palette)], DAVIS_PALETTE[:len(palette)])
        ids = read_indexed_png(out / "masks" / f"{name}.png")
        assert set(np.unique(ids)) <= allowed_ids
    np.testing.assert_array_equal(read_indexed_png(out / "masks" / f"{names[0]}.png"), first_mask)


def test_segment_frames_folder(tiny):
    root, names, _, masks = tiny
    out = root / "out_folder"
    result = run_cli("munet_jax.segment", f"--checkpoint={root / 'run'}", f"--video={root / 'frames'}",
                     f"--mask={root / 'mask.png'}", f"--out={out}")
    assert result.returncode == 0, result.stderr
    assert "palette PNG, object ids [3, 7]" in result.stdout and "frames/s" in result.stdout
    check_masks(out, names, (H, W), {0, 3, 7}, masks[0])
    assert decoded_frames(out / "overlay.mp4") == T
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == T and summary["object_ids"] == [3, 7]
    assert sorted(p.name for p in out.iterdir()) == ["masks", "overlay.mp4", "summary.json"]  # no temporaries


def test_segment_mp4_with_binary_mask(tiny):
    root, _, frames, masks = tiny
    video = root / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (W, H))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    binary = np.where(masks[0] == 3, 255, 0).astype(np.uint8)
    Image.fromarray(binary, "L").save(root / "binary.png")
    out = root / "out_mp4"
    result = run_cli("munet_jax.segment", f"--checkpoint={root / 'run'}", f"--video={video}",
                     f"--mask={root / 'binary.png'}", f"--out={out}", "--max_frames=4", "--fps=5")
    assert result.returncode == 0, result.stderr
    assert "binary PNG (0 / 255) -> object id 1" in result.stdout
    check_masks(out, [f"{t:05d}" for t in range(4)], (H, W), {0, 1}, (binary > 0).astype(np.uint8))
    assert decoded_frames(out / "overlay.mp4") == 4
    capture = cv2.VideoCapture(str(out / "overlay.mp4"))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(5)
    capture.release()


def test_input_errors_exit_2_and_write_nothing(tiny, tmp_path, capsys):
    root, _, _, masks = tiny
    good = dict(checkpoint=root / "run", video=root / "frames", mask=root / "mask.png")
    (tmp_path / "empty_frames").mkdir()
    (tmp_path / "broken.mp4").write_bytes(b"\x00junk" * 100)
    write_indexed_png(tmp_path / "small.png", masks[0][:40, :70])
    write_indexed_png(tmp_path / "blank.png", np.zeros((H, W), np.uint8))
    (tmp_path / "not_a_run").mkdir()
    cases = [
        (dict(mask=tmp_path / "small.png"), ["small.png", "40x70", f"{H}x{W}", "nearest-neighbour"]),
        (dict(video=tmp_path / "broken.mp4"), ["broken.mp4", "cannot decode", "re-encode"]),
        (dict(video=tmp_path / "empty_frames"), ["empty_frames", "holds no images"]),
        (dict(mask=tmp_path / "blank.png"), ["blank.png", "no object", "paint at least one object"]),
        (dict(checkpoint=tmp_path / "not_a_run"), ["not_a_run", "expected a training workdir"]),
    ]
    for i, (change, words) in enumerate(cases):
        args = {**good, **change}
        out = tmp_path / f"out{i}"
        code = segment_main([f"--{k}={v}" for k, v in args.items()] + [f"--out={out}"])
        err = capsys.readouterr().err
        assert code == 2, (change, err)
        for word in words:
            assert word in err, (word, err)
        assert not out.exists(), change
    # The exit code of the real process, for one case (fails before JAX is even imported).
    result = run_cli("munet_jax.segment", f"--checkpoint={root / 'run'}", f"--video={root / 'frames'}",
                     f"--mask={tmp_path / 'small.png'}", f"--out={tmp_path / 'out_cli'}")
    assert result.returncode == 2 and "small.png" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out_cli").exists()
    # An earlier run's outputs are not replaced without --overwrite.
    (tmp_path / "used" / "masks").mkdir(parents=True)
    assert segment_main([f"--{k}={v}" for k, v in good.items()] + [f"--out={tmp_path / 'used'}"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_visualize_with_model(tiny, tmp_path):
    root, names, _, masks = tiny
    gt = tmp_path / "gt"
    for name, m in zip(names, masks):
        write_indexed_png(gt / f"{name}.png", m)
    out = tmp_path / "vis"
    code = visualize_main([f"--checkpoint={root / 'run'}", f"--video={root / 'frames'}", f"--mask={root / 'mask.png'}",
                           f"--ground_truth={gt}", f"--out={out}", "--frames=0,2,5"])
    assert code == 0
    panels = {p.name for p in (out / "panels").iterdir()}
    assert panels == {f"{names[t]}.png" for t in (0, 2, 5)}  # stream positions 0, 2, 5 -> their names
    panel = cv2.imread(str(out / "panels" / f"{names[2]}.png"))
    assert panel.shape[0] > 2 * H and panel.shape[1] > 2 * W  # 2x2 tiles with titles
    assert decoded_frames(out / "panels.mp4") == T
    rows = [line.split(",") for line in (out / "iou_over_time.csv").read_text().splitlines()]
    assert rows[0] == ["index", "frame", "object_3", "object_7"] and len(rows) == T + 1
    assert float(rows[1][2]) == 1.0 and float(rows[1][3]) == 1.0  # frame 0 is the given mask
    predicted = [read_indexed_png(root / "out_folder" / "masks" / f"{n}.png") for n in names] \
        if (root / "out_folder" / "masks").is_dir() else None
    if predicted is not None:  # same model, same video: the same masks as the segment CLI
        for t in range(T):
            inter = np.count_nonzero((predicted[t] == 3) & (masks[t] == 3))
            union = np.count_nonzero((predicted[t] == 3) | (masks[t] == 3))
            assert float(rows[t + 1][2]) == pytest.approx(inter / union if union else 1.0, abs=1e-6)


def test_segment_davis_sample(davis_sample_root, tiny, tmp_path):
    root = tiny[0]
    annotations = davis_sample_root / "Annotations" / "480p" / "blackswan"
    out = tmp_path / "blackswan"
    start = time.perf_counter()
    result = run_cli("munet_jax.segment", f"--checkpoint={root / 'run'}",
                     f"--video={davis_sample_root / 'JPEGImages' / '480p' / 'blackswan'}",
                     f"--mask={annotations / '00000.png'}", f"--out={out}", "--max_frames=10")
    wall = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    check_masks(out, [f"{t:05d}" for t in range(10)], (480, 854), {0, 1}, read_indexed_png(annotations / "00000.png"))
    assert decoded_frames(out / "overlay.mp4") == 10
    summary = json.loads((out / "summary.json").read_text())
    print(f"\nDAVIS blackswan, 10 frames 480x854, tiny model on CPU: process {wall:.1f} s, "
          f"loop {summary['seconds_total']:.1f} s, model {summary['model_ms_per_frame_after_compile']} ms/frame "
          "after compilation")
