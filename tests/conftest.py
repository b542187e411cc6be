"""Shared pytest setup.

Keras must run on the JAX backend for the parity tests, and the backend is fixed when Keras is first
imported (importing TensorFlow imports Keras), so it is set here, before any test module is imported.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The experiment binaries the tests start never use the user's compilation cache (in their home): off here,
# then a temp dir of the suite's (pytest_configure below); tests/test_runtime.py sets its own where it tests it.
os.environ.setdefault("LSTM_JAX_COMPILATION_CACHE", "off")
# Nor the TF-IDF baseline's result cache (lstm_jax.baselines); tests/test_baselines.py tests it.
os.environ.setdefault("LSTM_JAX_BASELINE_CACHE", "off")
# The suite's models are tiny: XLA's LLVM optimisation costs more than it saves on them, so the tests (and
# the processes they start, which inherit this) compile with `jax_disable_most_optimizations` (LLVM at -O0;
# the HLO passes, fusion included, still run). tests/test_core.py: 253 s -> 156 s on this 2-core machine.
# The parity of every impl is also checked at full optimisation (the `full_xla_optimization` fixture), and
# `JAX_DISABLE_MOST_OPTIMIZATIONS=0 make test` runs the whole suite the way users' programs compile.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")


import shutil  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

# A persistent XLA compilation cache for the run: tests build the same small programs again and again (the
# same model and step in test after test, under new `jax.jit`s that JAX's in-memory cache cannot match), and
# compilation was two thirds of tests/test_train.py's and tests/test_core.py's time (255 -> 148 s for the
# two, measured). Entries are keyed by JAX on the program, its shapes and the compile options
# (`jax_disable_most_optimizations` included, tests/test_runtime.py checks it), so a hit is the executable
# a fresh compilation would build. Each pytest-xdist worker has its own subdirectory: JAX writes entries
# in place, so a shared one could be read half written (its file lock, which `jax_compilation_cache_max_size`
# turns on, re-reads the whole directory on every write: the suite took longer with it, not shorter).
# `LSTM_JAX_TEST_XLA_CACHE` unset: a temp dir, removed at the end; a path: kept there (later runs reuse it);
# `off`: no cache (and the processes the tests start keep `LSTM_JAX_COMPILATION_CACHE=off` above). Either
# way nothing is written under the user's home.
TEST_XLA_CACHE = "LSTM_JAX_TEST_XLA_CACHE"
_made_cache = pytest.StashKey[str]()


def pytest_configure(config):
    setting = os.environ.get(TEST_XLA_CACHE, "")
    if setting.strip().lower() in ("off", "0", "false", "no"):
        return
    if not setting and not hasattr(config, "workerinput"):  # the controller (or the only process)
        setting = tempfile.mkdtemp(prefix="lstm_jax_test_xla_cache_")
        os.environ[TEST_XLA_CACHE] = setting  # inherited by the xdist workers, started after this
        config.stash[_made_cache] = setting
    if setting:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        jax.config.update("jax_compilation_cache_dir", os.path.join(setting, worker))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        if os.environ["LSTM_JAX_COMPILATION_CACHE"] == "off":  # not set by the user: set above
            # The experiment binaries the tests start, as users run them: with the binaries' own cache
            # (`runtime.enable_compilation_cache`, size-capped, so file-locked), here per worker.
            os.environ["LSTM_JAX_COMPILATION_CACHE"] = os.path.join(setting, f"{worker}-binaries")
            os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"


def pytest_unconfigure(config):
    made = config.stash.get(_made_cache, None)
    if made:
        shutil.rmtree(made, ignore_errors=True)


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
