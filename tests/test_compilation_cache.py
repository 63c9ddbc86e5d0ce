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
    written = sorted(p.name for p in folder.iterdir())
    assert written, "nothing written to the cache folder"
    second = probe(env)
    assert second[1] == first[1]  # same result
    # Every program the first process compiled (the jitted function, jnp.ones, the sum) is
    # served from the cache: one hit per entry written.
    assert int(second[2]) == len(written) >= 1
    assert sorted(p.name for p in folder.iterdir()) == written


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
