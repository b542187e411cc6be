"""Micro-benchmark of one LSTM stack's forward + backward, comparing `lstm_layer` arrangements (impls).

    python -m benchmarks.layer --batch 100 --time 228 --features 16 --hidden 32 --impls fused,scan

Times `jax.value_and_grad` of a stack of `--layers` layers, the impls interleaved, and prints the median
and 10th percentile of wall time and of process CPU time per call. CPU time is the steadier number on a
shared machine; run with `XLA_FLAGS=--xla_cpu_multi_thread_eigen=false` to make it single-threaded.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import at_least
from lstm_jax import core


def _chained_matmul(rk: jax.Array, batch: int, steps: int) -> jax.Array:
    """The floor of any LSTM arrangement: only the chained `[B, H] @ [H, 4H]` matmuls of the recurrence.

    `h_{t+1} = (h_t @ rk)[:, :H]`, so under `grad` the backward pass chains `dz @ rk.T` the same way; no gate
    math, no input projection, no weight gradient. Returns `[B, T, H]`.
    """
    hsz = rk.shape[0]

    def step(h, _):
        h = (h @ rk)[:, :hsz] * 0.5
        return h, h

    h0 = jnp.ones((batch, hsz), rk.dtype)
    _, hs = jax.lax.scan(step, h0, None, length=steps)
    return jnp.swapaxes(hs, 0, 1)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=at_least(1), default=40)
    p.add_argument("--time", type=at_least(1), default=50)
    p.add_argument("--features", type=at_least(1), default=1)
    p.add_argument("--hidden", type=at_least(1), default=300)
    p.add_argument("--layers", type=at_least(1), default=2)
    p.add_argument(
        "--impls", default="fused,scan", help="lstm_layer impls; 'floor' = chained matmuls only"
    )
    p.add_argument("--reps", type=at_least(1), default=30)
    args = p.parse_args(argv)
    sizes = [args.features] + [args.hidden] * args.layers
    params = [core.init_lstm(jax.random.key(n), sizes[n], sizes[n + 1]) for n in range(args.layers)]
    xs = jax.random.normal(jax.random.key(99), (args.batch, args.time, args.features))
    fns = {}
    for impl in args.impls.split(","):

        def loss(ps, xs, impl=impl):
            h = xs
            for prm in ps:
                if impl == "floor":
                    h = _chained_matmul(prm["recurrent_kernel"], h.shape[0], args.time)
                else:
                    h, _ = core.lstm_layer(prm, h, impl=impl)
            return jnp.sum(h[:, -1] ** 2)

        fn = jax.jit(jax.value_and_grad(loss))
        t0 = time.perf_counter()
        jax.block_until_ready(fn(params, xs))
        print(f"{impl}: first call {time.perf_counter() - t0:.2f} s", flush=True)
        fns[impl] = fn
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(args.reps):
        for k, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            jax.block_until_ready(fn(params, xs))
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    for k in fns:
        w, c = 1e3 * np.array(wall[k]), 1e3 * np.array(cpu[k])
        print(
            f"{k:10s} wall median {np.median(w):8.2f} ms  p10 {np.percentile(w, 10):8.2f}   "
            f"cpu median {np.median(c):8.2f} ms  p10 {np.percentile(c, 10):8.2f}"
        )


if __name__ == "__main__":
    main()
