"""The CLIs' on-disk compilation cache: folder choice, and a second process loading what the first compiled."""

import os
import subprocess
import sys

import pytest

from munet_jax import compilation_cache

# Compiles one program (cached whatever its compile time) and prints the cache folder and
# how many compilations were served from the cache (JAX's own monitoring event).
PROBE = """
import jax, jax.numpy as jnp
from munet_jax import compilation_cache
hits = []
jax.monitoring.register_event_listener(lambda name, **kw: hits.append(name))
print(compilation_cache.enable())
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
f = jax.jit(lambda x: jnp.tanh(x @ x.T) @ x)
print(float(f(jnp.ones((96, 96))).sum()))
print(hits.count("/jax/compilation_cache/cache_hits"))
"""


def probe(env: dict) -> list[str]:
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "MUNET_JAX_COMPILATION_CACHE")}
    env.update(extra)
    return env


def test_second_process_loads_the_program_the_first_compiled(tmp_path):
    folder = tmp_path / "cache"
    env = clean_env(MUNET_JAX_COMPILATION_CACHE=str(folder))
    first = probe(env)
    assert first[0] == str(folder) and first[2] == "0"
    written = sorted(cache_entries(folder))
    assert written, "nothing written to the cache folder"
    second = probe(env)
    assert second[1] == first[1]  # same result
    # Every program the first process compiled (the jitted function, jnp.ones, the sum) is
    # served from the cache: one hit per entry written.
    assert int(second[2]) == len(written) >= 1
    assert sorted(cache_entries(folder)) == written


def test_off_and_jax_own_setting(tmp_path):
    assert probe(clean_env(MUNET_JAX_COMPILATION_CACHE="off"))[0] == "None"
    # JAX's own variable wins and is used as it is.
    own = tmp_path / "jax_own"
    out = probe(clean_env(JAX_COMPILATION_CACHE_DIR=str(own), MUNET_JAX_COMPILATION_CACHE=str(tmp_path / "x")))
    assert out[0] == str(own) and any(own.iterdir()) and not (tmp_path / "x").exists()


def test_default_folder_is_per_machine(tmp_path, monkeypatch):
    avx2 = "model name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx2 fma\ncpu MHz\t\t: 2450.0\n"
    avx512 = "model name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx2 fma avx512f\ncpu MHz\t\t: 2450.0\n"
    # The clock speed changes from read to read; the tag must not.
    assert compilation_cache.machine_tag(avx2) == compilation_cache.machine_tag(avx2.replace("2450.0", "3100.2"))
    assert compilation_cache.machine_tag(avx2) != compilation_cache.machine_tag(avx512)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = compilation_cache.default_dir()
    assert folder.parent == tmp_path / "munet_jax" / "xla" and folder.name == compilation_cache.machine_tag()


def test_unwritable_folder_warns_and_compiles_without(tmp_path, monkeypatch):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.warns(UserWarning, match="cannot be created"):
        assert compilation_cache.enable(blocker / "cache") is None


# Compiles `n` distinct programs (one shape each), every one written to the cache.
PROBE_MANY = """
import sys, jax, jax.numpy as jnp
from munet_jax import compilation_cache
print(compilation_cache.enable())
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
for i in range(int(sys.argv[1])):
    x = jnp.full((40 + 8 * i, 40 + 8 * i), 0.5)
    jax.block_until_ready(jax.jit(lambda x: jnp.tanh(x @ x.T) @ x)(x))
"""


def cache_entries(folder) -> dict[str, int]:
    """JAX's cache files ('<key>-cache') in folder and their sizes in bytes."""
    return {p.name: p.stat().st_size for p in folder.glob("*-cache")}


def test_cache_is_kept_under_its_size_limit(tmp_path):
    def run(folder, n, max_gb):
        env = clean_env(MUNET_JAX_COMPILATION_CACHE=str(folder), MUNET_JAX_COMPILATION_CACHE_MAX_GB=max_gb)
        result = subprocess.run([sys.executable, "-c", PROBE_MANY, str(n)], env=env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr
        return cache_entries(folder)

    unlimited = run(tmp_path / "unlimited", 6, "unlimited")
    total = sum(unlimited.values())
    assert len(unlimited) >= 6 and not list((tmp_path / "unlimited").glob("*-atime"))
    # A limit of 60% of what the same programs take without one: the oldest entries go,
    # the folder stays under it, and the entries that are left are the newest.
    limit = 0.6 * total
    limited = run(tmp_path / "limited", 6, str(limit / 2**30))
    assert 0 < sum(limited.values()) <= limit < total
    assert len(limited) < len(unlimited)
    assert set(limited) <= set(unlimited)  # the same keys: eviction, not different programs
    # JAX's LRU bookkeeping: an access-time file beside every entry that is left.
    assert {p.name.removesuffix("-atime") for p in (tmp_path / "limited").glob("*-atime")} == {
        name.removesuffix("-cache") for name in limited}


@pytest.mark.parametrize("setting, expected", [("", 4 * 2**30), ("0.5", 2**29), ("unlimited", -1), (" 2 ", 2 * 2**30)])
def test_size_limit_setting(setting, expected):
    assert compilation_cache.max_size_bytes(setting) == expected


@pytest.mark.parametrize("setting", ["0", "-3", "four", "nan"])
def test_bad_size_limit_names_the_variable(setting):
    with pytest.raises(ValueError, match="MUNET_JAX_COMPILATION_CACHE_MAX_GB"):
        compilation_cache.max_size_bytes(setting)


def test_without_filelock_the_cache_works_unlimited_with_a_warning(tmp_path):
    code = """
import sys, warnings
sys.modules["filelock"] = None  # as if not installed: importing it raises ImportError
import jax
from munet_jax import compilation_cache
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    print(compilation_cache.enable())
print(jax.config.jax_compilation_cache_max_size)
print(any("filelock" in str(w.message) for w in caught))
"""
    env = clean_env(MUNET_JAX_COMPILATION_CACHE=str(tmp_path / "c"))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(tmp_path / "c"), "-1", "True"]
