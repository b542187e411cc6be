"""The glibc malloc setting of `lstm_jax.runtime`: applied on import, opt-out, and it stops per-call paging."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lstm_jax import runtime

REPO = Path(__file__).resolve().parents[1]
GLIBC = runtime._libc() is not None

# Runs a jitted function whose temporaries (~64 MiB) are allocated and freed on every call and counts the
# minor page faults of the calls after the first two.
PROBE = """
import json, resource
import lstm_jax
import jax, jax.numpy as jnp
from lstm_jax import runtime

@jax.jit
def f(x):
    y = jnp.tanh(x @ x.T)  # [2048, 2048] temporaries
    return (jnp.exp(y) * y).sum()

x = jnp.ones((2048, 4096), jnp.float32) * 1e-3
for _ in range(2):
    f(x).block_until_ready()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    f(x).block_until_ready()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 5
print(json.dumps({"tuned": runtime.malloc_tuned(), "faults_per_call": faults}))
"""


def _run_script(script: str, env: dict[str, str]) -> dict:
    """Runs `script` in a fresh Python process on the CPU; returns the JSON of its last printed line."""
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env={**env, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _probe(tune: str) -> dict:
    return _run_script(PROBE, {**os.environ, "LSTM_JAX_TUNE_MALLOC": tune})


@pytest.mark.skipif(not GLIBC, reason="the malloc setting exists only with glibc")
def test_import_applies_the_setting_and_it_is_idempotent():
    assert runtime.malloc_tuned()  # `import lstm_jax` (conftest, the imports above) applied it
    assert runtime.tune_malloc()


@pytest.mark.skipif(not GLIBC, reason="the malloc setting exists only with glibc")
def test_tuned_malloc_stops_per_call_page_faults_and_the_env_var_opts_out():
    tuned, default = _probe("1"), _probe("0")
    assert tuned["tuned"] and not default["tuned"]
    # With glibc's defaults the ~64 MiB of temporaries are mmap-ed and faulted in again on every call
    # (16k+ faults of 4 KiB); tuned, the heap keeps them mapped.
    assert default["faults_per_call"] > 5000, default
    assert tuned["faults_per_call"] < default["faults_per_call"] / 10, (tuned, default)


# Compiles one program with the persistent cache as the experiment binaries set it up; prints the cache
# directory and the cache entries on disk afterwards.
CACHE_PROBE = """
import json, os, sys
if os.environ.get("PROBE_WITHOUT_FILELOCK"):
    sys.modules["filelock"] = None  # `import filelock` raises ImportError, as when it is not installed
import jax, jax.numpy as jnp
from lstm_jax import runtime

path = runtime.enable_compilation_cache()

@jax.jit
def f(x):
    return jnp.tanh(x @ x.T).sum()

value = float(f(jnp.ones((64, 32), jnp.float32)))
entries = sorted(n for n in os.listdir(path) if n.endswith("-cache")) if path else []
cap = jax.config.jax_compilation_cache_max_size
print(json.dumps({"path": path, "entries": entries, "value": value, "max_size": cap}))
"""


def _cache_probe(**env_vars: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **env_vars)
    return _run_script(CACHE_PROBE, env)


def test_compilation_cache_is_reused_by_the_next_process_and_can_be_turned_off(tmp_path):
    cache = tmp_path / "cache"
    first = _cache_probe(LSTM_JAX_COMPILATION_CACHE=str(cache))
    assert first["path"] == str(cache) and len(first["entries"]) >= 1
    # Size-capped: the least recently used entries are evicted beyond the cap.
    assert first["max_size"] == runtime._CACHE_MAX_BYTES
    # A second process with the same program finds its executable: no new entry, the same result.
    second = _cache_probe(LSTM_JAX_COMPILATION_CACHE=str(cache))
    assert second["entries"] == first["entries"] and second["value"] == first["value"]
    # Off: nothing configured, nothing written.
    for off in ("off", "0", ""):
        assert _cache_probe(LSTM_JAX_COMPILATION_CACHE=off)["path"] is None
    # Without the filelock package JAX cannot cap the cache (every entry would fail to read or write):
    # the cache still works, uncapped.
    bare = _cache_probe(
        LSTM_JAX_COMPILATION_CACHE=str(tmp_path / "bare"), PROBE_WITHOUT_FILELOCK="1"
    )
    assert bare["entries"] and bare["max_size"] == -1
    # A cache the user set for JAX itself wins over ours.
    theirs = tmp_path / "theirs"
    probe = _cache_probe(
        LSTM_JAX_COMPILATION_CACHE=str(cache), JAX_COMPILATION_CACHE_DIR=str(theirs)
    )
    assert probe["path"] == str(theirs) and probe["entries"]


def test_experiment_binaries_enable_the_cache(tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "LSTM_JAX_COMPILATION_CACHE": str(cache), "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    out = subprocess.run(
        [sys.executable, "-m", "experiments.imdb_sentiment.main", f"--workdir={tmp_path / 'run'}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # No config and no saved run: a user error, after the cache was set up (the directory exists).
    assert out.returncode == 2 and "no --config given" in out.stderr
    assert cache.is_dir()
