"""Inference: the memory bank as explicit state, the jitted step, streaming and whole-video APIs.

Nothing here imports TensorFlow; `munet_jax.inference` runs where only JAX is installed.
"""

from munet_jax.inference.config import inference_config
from munet_jax.inference.engine import InferenceEngine, InferenceState
from munet_jax.inference.memory_bank import MemoryBank, empty_bank, write
from munet_jax.inference.stream import VideoSegmenter, segment_video

__all__ = [
    "InferenceEngine",
    "InferenceState",
    "MemoryBank",
    "VideoSegmenter",
    "empty_bank",
    "inference_config",
    "segment_video",
    "write",
]
