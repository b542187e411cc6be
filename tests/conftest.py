"""Shared pytest setup.

Keras must run on the JAX backend for the parity tests, and the backend is fixed when Keras is first
imported (importing TensorFlow imports Keras), so it is set here, before any test module is imported.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests (and the experiment binaries they start) compile without the persistent compilation cache, so a run
# of the suite writes nothing under the user's home; tests/test_runtime.py turns it on where it is tested.
os.environ.setdefault("LSTM_JAX_COMPILATION_CACHE", "off")
# Nor the TF-IDF baseline's result cache (lstm_jax.baselines); tests/test_baselines.py tests it.
os.environ.setdefault("LSTM_JAX_BASELINE_CACHE", "off")
# The suite's models are tiny: XLA's LLVM optimisation costs more than it saves on them, so the tests (and
# the processes they start, which inherit this) compile with `jax_disable_most_optimizations` (LLVM at -O0;
# the HLO passes, fusion included, still run). tests/test_core.py: 253 s -> 156 s on this 2-core machine.
# The parity of every impl is also checked at full optimisation (the `full_xla_optimization` fixture), and
# `JAX_DISABLE_MOST_OPTIMIZATIONS=0 make test` runs the whole suite the way users' programs compile.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")


import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def full_xla_optimization():
    """XLA's full optimisation for the programs a test compiles (fresh `jax.jit`s), as users get it.

    The flag is not part of JAX's compilation cache key: a test that uses this fixture must compile its
    own programs (a new `jax.jit` of a new function), not call ones compiled earlier in the worker.
    """
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", before)
