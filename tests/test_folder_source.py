"""FolderVideoSource, the base of the folder readers, under a minimal layout of its own."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from munet_jax.data import davis, folder_source
from munet_jax.data.davis import DavisSource
from munet_jax.data.folder_source import DatasetLayoutError, FolderVideoSource, check_frame_indices
from munet_jax.data.youtube_vos import YouTubeVOSSource
from munet_jax.palette import write_indexed_png


class FlatSource(FolderVideoSource):
    """<root>/<video>/frames/*.jpg and <root>/<video>/masks/*.png, every video in sorted order."""

    def __init__(self, root: Path):
        super().__init__(root, "all", "flat")
        videos = sorted(p.name for p in self.root.iterdir())
        self._build_index(videos, self._scan)

    def image_dir(self, video_id: str) -> Path:
        return self.root / video_id / "frames"

    def mask_dir(self, video_id: str) -> Path:
        return self.root / video_id / "masks"

    def _scan(self, video_id: str):
        frames = self._list_frames(video_id, self.root, "add the frames", "add a frame")
        masks = self._list_masks(self.image_dir(video_id), self.mask_dir(video_id), frames, "fix it")
        return frames, [f in masks for f in frames]

    def _video_object_ids(self, index: int) -> tuple[int, ...]:
        return (1,)


@pytest.fixture()
def flat_root(tmp_path) -> Path:
    root = tmp_path / "flat"
    for video, (h, w, n) in {"a": (12, 16, 3), "b": (8, 20, 2)}.items():
        (root / video / "frames").mkdir(parents=True)
        for t in range(n):
            rgb = np.full((h, w, 3), 40 * t + 10, np.uint8)
            cv2.imwrite(str(root / video / "frames" / f"{t:05d}.jpg"), rgb)
            if t != 1:  # frame 1 is not annotated
                ids = np.zeros((h, w), np.uint8)
                ids[: h // 2] = 1
                write_indexed_png(root / video / "masks" / f"{t:05d}.png", ids)
    return root


def test_base_implements_the_video_source(flat_root):
    source = FlatSource(flat_root)
    assert len(source) == 2 and source.video_ids == ("a", "b")
    info = source.info(0)
    assert (info.video_id, info.num_frames, info.height, info.width) == ("a", 3, 12, 16)
    assert info.frame_names == ("00000", "00001", "00002") and info.annotated == (True, False, True)
    assert info.object_ids == (1,)
    frames, masks = source.load(0, [2, 1])
    assert frames.shape == (2, 12, 16, 3) and masks.shape == (2, 12, 16)
    assert abs(int(frames[0].mean()) - 90) <= 2  # JPEG of a flat grey 90
    assert masks[0, :6].all() and not masks[0, 6:].any() and not masks[1].any()
    np.testing.assert_array_equal(source.load_masks(0, [2, 1]), masks)
    assert source.frame_path(1, 1) == flat_root / "b" / "frames" / "00001.jpg"
    assert source.mask_path(1, 0) == flat_root / "b" / "masks" / "00000.png"
    assert source.frame_bytes(1, 1) == source.frame_path(1, 1).read_bytes()
    assert source.index_of("b") == 1
    with pytest.raises(KeyError, match="'c' is not in flat \\(2 videos\\)"):
        source.index_of("c")
    with pytest.raises(IndexError, match=r"flat/b: frame indices \[2\] outside 0..1"):
        source.load(1, [0, 2])


def test_base_checks_the_folders(flat_root):
    (flat_root / "a" / "masks" / "00007.png").write_bytes(b"")
    with pytest.raises(DatasetLayoutError, match="00007.png: mask without a frame .*: fix it"):
        FlatSource(flat_root)
    (flat_root / "a" / "masks" / "00007.png").unlink()
    for f in (flat_root / "b" / "frames").iterdir():
        f.unlink()
    with pytest.raises(DatasetLayoutError, match="frames: no .jpg frames; add a frame"):
        FlatSource(flat_root)
    (flat_root / "b" / "frames").rmdir()
    with pytest.raises(DatasetLayoutError, match="video 'b' is listed in .* but its frame folder is missing; add the frames"):
        FlatSource(flat_root)


def test_check_frame_indices():
    assert check_frame_indices("x/y", 3, np.array([2, 0])) == [2, 0]
    with pytest.raises(IndexError, match=r"x/y: frame indices \[-1, 3\] outside 0..2"):
        check_frame_indices("x/y", 3, [-1, 0, 3])


def test_readers_share_the_base_and_davis_keeps_its_helpers():
    assert issubclass(DavisSource, FolderVideoSource) and issubclass(YouTubeVOSSource, FolderVideoSource)
    for name in davis.__all__:
        if name != "DavisSource":
            assert getattr(davis, name) is getattr(folder_source, name)
