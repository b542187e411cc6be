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


def _probe(tune: str) -> dict:
    env = {**os.environ, "LSTM_JAX_TUNE_MALLOC": tune, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


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
