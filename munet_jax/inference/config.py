"""Defaults of the `inference` ConfigDict (memory policy and shape buckets).

The protocol configs put it under `config.inference`; every field can be
overridden from the command line (`--config.inference.mem_every=3`).
"""

from __future__ import annotations

import ml_collections

STRIDE = 16  # res4 stride of the model: bucket sides must be multiples of it


def inference_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # STM's schedule: frame t is written to memory permanently when t % mem_every == 0
    # (frame 0 always); every other frame only lives in the temporary slot until the next one.
    c.mem_every = 5
    # Memory slots per object, including slot 0 (the first frame, never evicted) and the
    # temporary slot (the previous frame): capacity - 2 permanent slots form a FIFO ring,
    # so with mem_every=5 the bank covers the last 5 * 18 = 90 frames plus frame 0.
    c.capacity = 20
    # (H, W) that frames are padded up to (bottom/right): one compiled program per bucket.
    # 480p DAVIS is 480x854 (a few videos are wider), 720p and 1080p YouTube-VOS / webcams;
    # 240x432 is DAVIS at half resolution (fast evaluation, the demo's synthetic videos), which
    # the 64-grid fallback of `choose_size_bucket` would pad to 256x448 (10.6% more pixels).
    c.size_buckets = ((240, 432), (480, 864), (480, 912), (720, 1280), (1088, 1920))
    # Object counts that K is padded up to (padded objects are invalid, predict exactly 0).
    c.object_buckets = (1, 2, 4, 8, 16)
    return c


def check_inference_config(c: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the field and the fix for an unusable config."""
    if not isinstance(c.mem_every, int) or c.mem_every < 1:
        raise ValueError(f"inference.mem_every={c.mem_every!r}: must be an integer >= 1 (STM uses 5)")
    if not isinstance(c.capacity, int) or c.capacity < 3:
        raise ValueError(
            f"inference.capacity={c.capacity!r}: must be an integer >= 3 "
            "(the first frame, at least one permanent slot, and the temporary slot)"
        )
    if not c.size_buckets:
        raise ValueError("inference.size_buckets is empty: give at least one (H, W), e.g. ((480, 864),)")
    for hw in c.size_buckets:
        if len(hw) != 2 or any(not isinstance(s, int) or s <= 0 or s % STRIDE for s in hw):
            raise ValueError(
                f"inference.size_buckets entry {tuple(hw)!r}: must be (H, W) positive multiples of {STRIDE}"
            )
    if not c.object_buckets or any(not isinstance(k, int) or k < 1 for k in c.object_buckets):
        raise ValueError(f"inference.object_buckets={tuple(c.object_buckets)!r}: must be positive integers, e.g. (1, 2, 4, 8)")
