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


import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="module")
def fast_compiles():
    """Tiny models: XLA's optimisation passes cost more than they save here. A module opts in with
    `pytestmark = pytest.mark.usefixtures("fast_compiles")` (tests/test_native.py: 4 min 48 s -> 3 min 37 s)."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)
