"""Measures the machine's fp32 matmul ceiling: the best GFLOP/s of an `n x n x n` matmul in numpy and JAX
(on JAX's default device: the GPU's, where there is one);
and beside it the fp32 multiply-add peak (`lstm_jax.native.fma_peak_gflops`: vector FMAs in registers on
every core at once), which no matmul can beat.

Run by the driver in its own process (with the benchmark's environment); prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

import numpy as np


def best_gflops(fn: Callable[[], object], n: int, repeats: int) -> float:
    fn()  # warm-up (and compile, for JAX)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def measure(n: int = 2048, repeats: int = 5) -> dict:
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    numpy_gf = best_gflops(lambda: a @ b, n, repeats)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    # On a GPU JAX's matmul runs there, at "highest" precision: true fp32, not TF32 (the default there).
    dot = jax.jit(lambda x, y: jnp.dot(x, y, precision=jax.lax.Precision.HIGHEST))
    jax_gf = best_gflops(lambda: dot(ja, jb).block_until_ready(), n, repeats)
    try:
        from lstm_jax import native

        fma_peak = native.fma_peak_gflops()
    except RuntimeError:  # the native kernel is unavailable here: no peak, the ceiling still stands
        fma_peak = None
    return {
        "n": n,
        "numpy_gflops": numpy_gf,
        "jax_gflops": jax_gf,
        "jax_device": jax.devices()[0].device_kind,
        "jax_backend": jax.default_backend(),
        "ceiling_gflops": max(numpy_gf, jax_gf),
        "fma_peak_gflops": fma_peak,
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "cpu_count": os.cpu_count(),
    }


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
    print("@@BENCH " + json.dumps(measure(n)), flush=True)
