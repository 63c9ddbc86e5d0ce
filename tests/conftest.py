"""Shared test set-up.

Eight simulated CPU devices for the multi-device tests: XLA reads this flag when
JAX first initialises its backend, so it is set here, before any test imports jax.
"""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# One on-disk compilation cache for this test run, empty at its start and removed at its end
# (no state carries over between runs): the many tests that build the same programs (new jit
# objects, CLI subprocesses) load them instead of compiling them again, and the CLIs' own
# default cache under ~/.cache is never written by the tests.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="munet_jax-test-xla-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
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
