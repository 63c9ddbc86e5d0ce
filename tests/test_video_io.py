"""Reading frames folders and MP4s as streams, MP4 writing, and first-mask reading."""

import cv2
import numpy as np
import pytest
from PIL import Image

from munet_jax.palette import DAVIS_PALETTE, write_indexed_png
from munet_jax.video_io import (MaskReadError, Mp4Writer, VideoReadError, count_video_frames, open_frames,
                                read_first_mask)


def ramp_frames(n, h=48, w=64):
    """Frames that differ strongly from each other (so order is checkable through MP4 loss)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (h // 8, w // 8, 3)).astype(np.uint8)
    out = []
    for t in range(n):
        big = cv2.resize(base, (w, h), interpolation=cv2.INTER_NEAREST)  # smooth-ish blocks survive MPEG-4
        out.append(np.clip(big.astype(int) // 2 + 25 * t, 0, 255).astype(np.uint8))
    return out


def write_folder(folder, frames, names):
    folder.mkdir()
    for name, f in zip(names, frames):
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))


def test_frames_folder_natural_order_exact(tmp_path):
    frames = ramp_frames(4)
    names = ["f1", "f2", "f10", "f3"]  # plain sorting would put f10 before f2
    write_folder(tmp_path / "v", frames, names)
    (tmp_path / "v" / "notes.txt").write_text("not a frame")
    with open_frames(tmp_path / "v") as s:
        assert (s.kind, s.height, s.width, s.expected_frames) == ("folder", 48, 64, 4)
        got = list(s)
    assert [n for n, _ in got] == ["f1", "f2", "f3", "f10"]
    by_name = dict(zip(names, frames))
    for name, frame in got:
        np.testing.assert_array_equal(frame, by_name[name])  # PNG is lossless: exact RGB
    with open_frames(tmp_path / "v", max_frames=2) as s:
        assert [n for n, _ in s] == ["f1", "f2"]


def test_mp4_round_trip_in_order(tmp_path):
    frames = ramp_frames(6)
    path = tmp_path / "clip.mp4"
    with Mp4Writer(path, fps=12) as w:
        for f in frames:
            w.write(f)
    assert path.is_file() and not list(tmp_path.glob(".*"))  # the temporary was renamed away
    assert count_video_frames(path) == 6
    with open_frames(path) as s:
        assert (s.kind, s.height, s.width) == ("video", 48, 64)
        assert s.fps == pytest.approx(12)
        got = list(s)
    assert [n for n, _ in got] == [f"{t:05d}" for t in range(6)]
    for t, (_, frame) in enumerate(got):
        errors = [np.abs(frame.astype(int) - f.astype(int)).mean() for f in frames]
        assert errors[t] < 6, errors  # lossy but close ...
        assert int(np.argmin(errors)) == t  # ... and nearest to its own frame: order kept
    with open_frames(path, max_frames=3) as s:
        assert len(list(s)) == 3


def test_mp4_writer_odd_size_and_abort(tmp_path):
    with Mp4Writer(tmp_path / "odd.mp4", fps=5) as w:
        for _ in range(3):
            w.write(np.full((47, 65, 3), 100, np.uint8))
    with open_frames(tmp_path / "odd.mp4") as s:
        assert (s.height, s.width) == (48, 66)  # padded to even sides, nothing cropped
    with pytest.raises(RuntimeError):
        with Mp4Writer(tmp_path / "broken.mp4", fps=5) as w:
            w.write(np.zeros((16, 16, 3), np.uint8))
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.mp4"]  # no partial file left


def test_unreadable_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoReadError, match="holds no images"):
        open_frames(tmp_path / "empty")
    (tmp_path / "bad.mp4").write_bytes(b"not a video" * 50)
    with pytest.raises(VideoReadError, match="bad.mp4: OpenCV cannot decode"):
        open_frames(tmp_path / "bad.mp4")
    with pytest.raises(VideoReadError, match="no such file"):
        open_frames(tmp_path / "missing.mp4")
    folder = tmp_path / "mixed"
    write_folder(folder, [np.zeros((16, 16, 3), np.uint8), np.zeros((16, 24, 3), np.uint8)], ["a", "b"])
    with pytest.raises(VideoReadError, match="b.png: frame is 16x24 but the first frame is 16x16"):
        list(open_frames(folder))


def test_read_first_mask_kinds(tmp_path):
    ids = np.zeros((8, 10), np.uint8)
    ids[1:4, 1:4], ids[5:7, 6:9] = 2, 5
    write_indexed_png(tmp_path / "p.png", ids)
    got, how = read_first_mask(tmp_path / "p.png")
    np.testing.assert_array_equal(got, ids)
    assert "palette" in how and "[2, 5]" in how
    Image.fromarray(np.where(ids > 0, 255, 0).astype(np.uint8), "L").save(tmp_path / "b.png")
    got, how = read_first_mask(tmp_path / "b.png")
    np.testing.assert_array_equal(got, (ids > 0).astype(np.uint8))
    assert "binary" in how
    Image.fromarray(DAVIS_PALETTE[ids]).save(tmp_path / "rgb.png")  # a rendered DAVIS mask
    np.testing.assert_array_equal(read_first_mask(tmp_path / "rgb.png")[0], ids)
    Image.fromarray((ids * 20).astype(np.uint8), "L").save(tmp_path / "grey.png")
    with pytest.raises(MaskReadError, match="grey.png: a 'L' image holding values"):
        read_first_mask(tmp_path / "grey.png")
