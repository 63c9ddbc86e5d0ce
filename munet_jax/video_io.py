"""A user's video as a stream of RGB frames, and MP4 writing.

    with open_frames("clip.mp4") as stream:        # or a folder of images
        for name, frame in stream:                 # frame: uint8 [H, W, 3] RGB
            ...

A video is never loaded whole: frames are decoded one at a time, so a long clip
costs the memory of one frame. Frame names are the file stems of a folder
(sorted naturally: "frame2" before "frame10") or 00000, 00001, ... for a video
file, so that masks written under these names line up with the input.

Problems with the input raise `VideoReadError` (a ValueError) naming the file
and the fix. `Mp4Writer` writes to a temporary file beside the target and
renames it when closed, so an interrupted run leaves no half-written MP4.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_FOLDER_FPS = 24.0  # DAVIS clips were shot at 24 fps; a folder of images carries no rate


class VideoReadError(ValueError):
    """The video or frames folder cannot be read; the message names the file and the fix."""


def natural_key(name: str) -> list:
    """Sort key that orders digit runs by value: frame2 < frame10 (plain sorting gives the reverse)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_frame_files(folder: Path) -> list[Path]:
    """The image files of a frames folder in natural order of their stems."""
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
             and p.suffix.lower() in IMAGE_EXTENSIONS]
    stems: dict[str, Path] = {}
    for p in files:
        if p.stem in stems:
            # Two files would write the same output mask <stem>.png: refuse rather than guess.
            raise VideoReadError(f"{folder}: {stems[p.stem].name} and {p.name} share the frame name {p.stem!r}; "
                                 "keep one image per frame name")
        stems[p.stem] = p
    return sorted(files, key=lambda p: natural_key(p.stem))


def read_image_file(path: Path) -> np.ndarray:
    """An image file -> uint8 RGB [H, W, 3] (greyscale is expanded), or VideoReadError."""
    data = np.fromfile(path, dtype=np.uint8)  # imdecode of bytes also copes with non-ASCII paths
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise VideoReadError(f"{path}: OpenCV cannot decode this image (corrupt or not an image); "
                             "replace or remove the file")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class FrameStream:
    """Frames of a folder or a video file, decoded one at a time. Use `open_frames`."""

    def __init__(self, path: Path, max_frames: int | None):
        self.path = path
        self.max_frames = max_frames
        self._capture = None
        self._files: list[Path] | None = None
        if path.is_dir():
            self.kind = "folder"
            self._files = list_frame_files(path)
            if not self._files:
                raise VideoReadError(f"{path}: the frames folder holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                                     "point --video at the folder of frames or at a video file")
            if max_frames is not None:
                self._files = self._files[:max_frames]
            self._first = read_image_file(self._files[0])
            self.fps = None
            self.expected_frames = len(self._files)
        elif path.is_file():
            self.kind = "video"
            self._capture = cv2.VideoCapture(str(path))
            ok, bgr = self._capture.read() if self._capture.isOpened() else (False, None)
            if not ok or bgr is None:
                self.close()
                raise VideoReadError(f"{path}: OpenCV cannot decode a frame of this video (corrupt, empty, or a "
                                     "codec this OpenCV build lacks); re-encode it, e.g. `ffmpeg -i IN -c:v libx264 "
                                     "out.mp4`, or extract its frames into a folder")
            self._first = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            fps = self._capture.get(cv2.CAP_PROP_FPS)
            self.fps = float(fps) if fps and np.isfinite(fps) and fps > 0 else None
            count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT))  # container's claim: an estimate
            count = count if count > 0 else None
            if max_frames is not None:
                count = max_frames if count is None else min(count, max_frames)
            self.expected_frames = count
        else:
            raise VideoReadError(f"{path}: no such file or folder; pass a video file (.mp4, ...) or a folder of frames")
        self.height, self.width = self._first.shape[:2]
        self._started = False

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        """Yields (frame name, uint8 RGB [H, W, 3]); every frame has the first frame's size."""
        if self._started:
            raise RuntimeError("a FrameStream can be iterated once; open the video again to re-read it")
        self._started = True
        limit = self.max_frames if self.max_frames is not None else float("inf")
        if self._files is not None:
            for t, file in enumerate(self._files):
                frame = self._first if t == 0 else read_image_file(file)
                self._check_size(frame, file)
                yield file.stem, frame
            return
        t, bgr = 0, None
        frame = self._first
        while t < limit:
            self._check_size(frame, f"{self.path} frame {t}")
            yield f"{t:05d}", frame
            t += 1
            if t >= limit:
                break
            ok, bgr = self._capture.read()
            if not ok:
                break  # end of stream
            frame = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def _check_size(self, frame: np.ndarray, where) -> None:
        if frame.shape[:2] != (self.height, self.width):
            raise VideoReadError(f"{where}: frame is {frame.shape[0]}x{frame.shape[1]} but the first frame is "
                                 f"{self.height}x{self.width}; every frame of a video must have one size")

    @property
    def first_frame(self) -> np.ndarray:
        return self._first

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def __enter__(self) -> "FrameStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_frames(path: str | os.PathLike, max_frames: int | None = None) -> FrameStream:
    """Opens a video file or a frames folder; reads (and checks) the first frame now."""
    if max_frames is not None and max_frames < 1:
        raise VideoReadError(f"max_frames={max_frames}: must be at least 1 (or omitted for the whole video)")
    return FrameStream(Path(path).expanduser(), max_frames)


class Mp4Writer:
    """Writes RGB frames to an MP4 (OpenCV 'mp4v'), atomically.

    The file is written as a hidden temporary beside `path` and renamed on `close()`;
    `abort()` (or an exception inside `with`) deletes it. Frames are padded to even
    sides with black, since the MPEG-4 encoder silently crops odd sides.
    """

    def __init__(self, path: str | os.PathLike, fps: float):
        if not fps > 0:
            raise ValueError(f"fps={fps!r}: the MP4 frame rate must be positive")
        self.path = Path(path)
        self.fps = float(fps)
        # The temporary keeps the .mp4 suffix: OpenCV picks the container from the extension.
        self._tmp = self.path.with_name(f".{self.path.stem}.tmp-{os.getpid()}.mp4")
        self._writer = None
        self._size: tuple[int, int] | None = None  # (H, W) of the first frame
        self.frames_written = 0

    def write(self, frame: np.ndarray) -> None:
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"{self.path}: frames must be uint8 RGB [H, W, 3], got {frame.dtype} {frame.shape}")
        if self._writer is None:
            self._size = frame.shape[:2]
            h, w = (s + s % 2 for s in self._size)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self._writer.isOpened():
                self.abort()
                raise RuntimeError(f"{self.path}: OpenCV cannot open an 'mp4v' MP4 writer here "
                                   "(its build lacks the encoder, or the folder is not writable)")
        elif frame.shape[:2] != self._size:
            raise ValueError(f"{self.path}: frame {self.frames_written} is {frame.shape[0]}x{frame.shape[1]}, "
                             f"the first was {self._size[0]}x{self._size[1]}; an MP4 holds one frame size")
        h, w = self._size
        padded = np.pad(frame, [(0, h % 2), (0, w % 2), (0, 0)])
        self._writer.write(cv2.cvtColor(padded, cv2.COLOR_RGB2BGR))
        self.frames_written += 1

    def close(self) -> Path:
        """Finishes the file and moves it to `path`."""
        if self._writer is None:
            raise RuntimeError(f"{self.path}: no frame was written; an empty MP4 is not created")
        self._writer.release()
        self._writer = None
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def count_video_frames(path: str | os.PathLike) -> int:
    """Frames that OpenCV actually decodes from a video (not the container's claimed count)."""
    capture = cv2.VideoCapture(str(path))
    n = 0
    try:
        while capture.isOpened():
            ok, _ = capture.read()
            if not ok:
                break
            n += 1
    finally:
        capture.release()
    return n


# ----------------------------------------------------------------------------- first-frame mask


class MaskReadError(ValueError):
    """The first-frame mask cannot be used; the message names the file and the fix."""


def read_first_mask(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """A user's first-frame mask -> (object ids uint8 [H, W], how it was read).

    Accepted: an indexed (palette) PNG of object ids (DAVIS / YouTube-VOS style);
    a binary mask, greyscale or RGB, holding only 0 and 255 (or 0 and 1): object 1;
    an RGB PNG painted in DAVIS palette colours: each colour's id.
    """
    from PIL import Image  # Pillow keeps palette indices; OpenCV would expand them to colours

    from munet_jax.palette import DAVIS_PALETTE

    path = Path(path).expanduser()
    if not path.is_file():
        raise MaskReadError(f"{path}: no such mask file; pass --mask=<first frame's mask PNG>")
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            pixels = np.array(image)
    except (OSError, SyntaxError) as error:
        raise MaskReadError(f"{path}: cannot read the mask image ({error}); save it again as a PNG") from error
    if pixels.ndim == 3:
        colour = pixels[..., :3]  # alpha, if any, is not part of the mask
        if np.all(colour == colour[..., :1]):
            pixels = colour[..., 0]
        else:
            # A mask rendered in DAVIS colours: map each colour back to its id.
            packed = (colour.astype(np.int32) << np.array([16, 8, 0])).sum(-1)
            table = (DAVIS_PALETTE.astype(np.int32) << np.array([16, 8, 0])).sum(-1)
            values, inverse = np.unique(packed, return_inverse=True)
            lookup = {int(v): i for i, v in enumerate(table)}
            unknown = [v for v in values if int(v) not in lookup]
            if unknown:
                raise MaskReadError(
                    f"{path}: an RGB mask with colours that are not DAVIS palette colours (e.g. #{int(unknown[0]):06x}); "
                    "save object ids as an indexed (palette) PNG, or a binary mask with 0 = background, 255 = object")
            ids = np.array([lookup[int(v)] for v in values], np.uint8)[inverse.reshape(packed.shape)]
            return ids, f"RGB PNG in DAVIS palette colours, object ids {_id_list(ids)}"
    values = set(np.unique(pixels).tolist())
    if mode == "P" and not values <= {0, 255}:
        return pixels.astype(np.uint8), f"palette PNG, object ids {_id_list(pixels)}"
    if values <= {0, 255} or values <= {0, 1} or mode == "1":
        ids = (pixels > 0).astype(np.uint8)
        top = 1 if mode == "1" or values <= {0, 1} else 255
        return ids, f"binary PNG (0 / {top}) -> object id 1"
    shown = sorted(values)[:8]
    raise MaskReadError(
        f"{path}: a {mode!r} image holding values {shown}{' ...' if len(values) > 8 else ''}, neither a binary "
        "0/255 mask nor a palette PNG of object ids; save the objects as an indexed (palette) PNG "
        "(ids 1, 2, ...), or one object as a binary PNG (0 = background, 255 = object)")


def _id_list(ids: np.ndarray) -> list[int]:
    return [int(i) for i in np.unique(ids) if i != 0]
