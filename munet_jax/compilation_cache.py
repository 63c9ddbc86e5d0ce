"""The on-disk XLA compilation cache that the command-line tools turn on.

MUNet's programs take long to compile (the 480p inference step 7 s and the
whole-video program ~15 s on a 2-core CPU, the full training step minutes); JAX
can keep compiled executables on disk and load them in the next process instead
(`jax_compilation_cache_dir`). `train`, `evaluate`, `segment`, `visualize` and
`demo` call `enable()` first thing, which picks the folder:

- `JAX_COMPILATION_CACHE_DIR` set: JAX's own setting, used as it is;
- else `MUNET_JAX_COMPILATION_CACHE`: a folder, or `off` (also `0`, `no`,
  `false`) for no cache;
- else `$XDG_CACHE_HOME/munet_jax/xla/<machine tag>` (`~/.cache/...`).

The default folder is one per machine tag (processor model and vector
extensions, platform, jax/jaxlib versions): XLA's cache key names the backend
but not the CPU's instruction set, and an executable compiled for AVX-512 must
not be loaded on a processor without it (a home directory shared by the nodes of
a cluster). Only programs that took at least a second to compile are written
(JAX's default). The folder is kept under a size limit by JAX's own
least-recently-used eviction (`jax_compilation_cache_max_size`, which needs the
`filelock` package and also serialises processes that share the folder):
`MUNET_JAX_COMPILATION_CACHE_MAX_GB`, default 4 (the demo's eleven programs
take 3 MB), `unlimited` for none. With `JAX_COMPILATION_CACHE_DIR`
set, JAX's own settings apply (`JAX_COMPILATION_CACHE_MAX_SIZE`, in bytes). The
cache is trusted code: do not point it at a folder others can write to.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import warnings
from pathlib import Path

OFF = ("0", "off", "no", "false", "none")
DEFAULT_MAX_GB = 4.0
UNLIMITED = ("unlimited", "-1", "inf")


def machine_tag(cpuinfo: str | None = None) -> str:
    """A short name of this machine's compile target: '<arch>-<12 hex digits>'."""
    import jax
    import jaxlib

    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = platform.processor()
    # The first processor's model and flags (every core has the same); not the whole text,
    # which holds per-core clock speeds that change from second to second.
    lines = [line for line in cpuinfo.splitlines() if line.split(":")[0].strip() in ("model name", "flags", "Features")]
    seen = list(dict.fromkeys(lines))
    digest = hashlib.sha256("\n".join([platform.machine(), jax.__version__, jaxlib.__version__, *seen]).encode())
    return f"{platform.machine() or 'unknown'}-{digest.hexdigest()[:12]}"


def default_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "munet_jax" / "xla" / machine_tag()


def max_size_bytes(setting: str | None = None) -> int:
    """The cache's size limit in bytes from `MUNET_JAX_COMPILATION_CACHE_MAX_GB` (or `setting`); -1: none."""
    if setting is None:
        setting = os.environ.get("MUNET_JAX_COMPILATION_CACHE_MAX_GB", "")
    text = setting.strip().lower()
    if not text:
        return int(DEFAULT_MAX_GB * 2**30)
    if text in UNLIMITED:
        return -1
    try:
        gb = float(text)
    except ValueError:
        gb = -1.0
    if not gb > 0 or gb == float("inf"):
        raise ValueError(f"MUNET_JAX_COMPILATION_CACHE_MAX_GB={setting!r}: give the compilation cache's size limit "
                         "as a positive number of GiB (e.g. 4), or 'unlimited'")
    return int(gb * 2**30)


def enable(directory: str | os.PathLike | None = None) -> str | None:
    """Turns the persistent compilation cache on (see the module doc); returns its folder, or None if off.

    Call before the first compilation of the process. A folder that cannot be created
    gives a warning and no cache, never an error: the cache only saves time.
    """
    import jax

    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    setting = str(directory) if directory is not None else os.environ.get("MUNET_JAX_COMPILATION_CACHE", "")
    if setting.strip().lower() in OFF:
        return None
    path = Path(setting).expanduser() if setting.strip() else default_dir()
    limit = max_size_bytes()  # a bad value fails here, before anything is compiled
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        warnings.warn(f"compilation cache folder {path} cannot be created ({error}); compiling without it "
                      "(set MUNET_JAX_COMPILATION_CACHE to a writable folder, or to 'off')", stacklevel=2)
        return None
    # JAX's eviction needs filelock (a dependency of munet_jax; an environment may lack it).
    if limit != -1 and importlib.util.find_spec("filelock") is None:
        warnings.warn("the compilation cache is not size-limited: JAX's eviction needs the 'filelock' package "
                      "(pip install filelock)", stacklevel=2)
        limit = -1
    jax.config.update("jax_compilation_cache_max_size", limit)
    jax.config.update("jax_compilation_cache_dir", str(path))
    return str(path)
