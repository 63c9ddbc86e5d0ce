"""Shared test set-up.

Eight simulated CPU devices for the multi-device tests: XLA reads this flag when
JAX first initialises its backend, so it is set here, before any test imports jax.
"""

import os
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
DAVIS_SAMPLE = SHARED_DIR / "data" / "davis_sample"


@pytest.fixture(scope="session")
def davis_sample_root() -> Path:
    """The two real DAVIS val sequences beside the checkout; skipped where absent (a user's clone)."""
    if not (DAVIS_SAMPLE / "JPEGImages" / "480p").is_dir():
        pytest.skip(f"{DAVIS_SAMPLE} not present")
    return DAVIS_SAMPLE
