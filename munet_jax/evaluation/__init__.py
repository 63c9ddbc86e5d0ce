"""Benchmark runs of a trained model: DAVIS 2017 (PNGs + J&F + FPS) and YouTube-VOS valid
(PNGs + CodaLab zip + FPS). The command line is `python -m munet_jax.evaluate`.

Imports neither TensorFlow nor the training loop: runs where only JAX is installed.
"""

from munet_jax.evaluation.davis_run import DavisRun, run_davis
from munet_jax.evaluation.timing import TimedEngine, VideoTiming, build_inference_config, format_timing
from munet_jax.evaluation.youtube_vos_run import YouTubeRun, run_youtube_vos, write_submission_zip

__all__ = [
    "DavisRun",
    "TimedEngine",
    "VideoTiming",
    "YouTubeRun",
    "build_inference_config",
    "format_timing",
    "run_davis",
    "run_youtube_vos",
    "write_submission_zip",
]
