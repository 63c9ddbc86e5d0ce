"""The README's main job, `python -m munet_jax.demo`, end to end at a toy size.

Two training steps on two tiny synthetic videos are enough to check the wiring:
training writes a checkpoint, the evaluation writes a palette PNG per val frame and
the official-format CSVs, the baseline folder holds the copied first masks, the
pictures exist, and the printed J&F is the one in the CSV.
"""

import csv

import numpy as np
import pytest

from munet_jax import demo
from munet_jax.palette import read_indexed_png

TOY = ["--config.data.synthetic.num_train=2", "--config.data.synthetic.num_val=1",
       "--config.data.synthetic.num_frames=4", "--config.data.synthetic.height=48",
       "--config.data.synthetic.width=64", "--config.data.crop_size=(48,64)",
       "--config.train.num_steps=2", "--config.train.global_batch_size=8",  # 8 simulated devices
       "--config.train.eval_every=0", "--config.train.image_every=0", "--config.train.checkpoint_every=2"]


@pytest.mark.slow  # trains (compiles the train step), evaluates and draws: about a minute on 2 cores
def test_demo_trains_evaluates_and_draws(tmp_path, capsys):
    workdir = tmp_path / "demo"
    assert demo.main(["--workdir", str(workdir), "--pictures", "1", "--no_progress", *TOY]) == 0
    printed = capsys.readouterr().out

    data = workdir / "data" / "synthetic_davis"
    (seq,) = (data / "ImageSets" / "2017" / "val.txt").read_text().split()
    truth = sorted((data / "Annotations" / "480p" / seq).glob("*.png"))
    predicted = sorted((workdir / "results" / seq).glob("*.png"))
    assert [p.name for p in predicted] == [t.name for t in truth]
    first = read_indexed_png(truth[0])
    assert np.array_equal(read_indexed_png(predicted[0]), first)  # frame 1 is the given mask
    copied = sorted((workdir / "results-copy-first-mask" / seq).glob("*.png"))
    assert all(np.array_equal(read_indexed_png(p), first) for p in copied) and len(copied) == len(truth)

    with open(workdir / "results" / "global_results-val.csv") as f:
        jf = float(next(csv.DictReader(f))["J&F-Mean"])
    assert f"J&F-Mean on 1 synthetic val videos: {jf:.3f}" in printed
    pictures = workdir / "pictures" / seq
    assert (pictures / "panels.mp4").stat().st_size > 0 and (pictures / "iou_over_time.png").is_file()
    assert list((pictures / "panels").glob("*.png"))


def test_demo_rejects_unknown_flags(capsys):
    assert demo.main(["--steps", "3"]) == 2
    assert "--steps" in capsys.readouterr().err
