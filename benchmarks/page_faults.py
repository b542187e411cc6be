"""Page faults and system time per lstm_jax training step on the benchmark shapes (A-D).

    python -m benchmarks.page_faults [--shapes A,B,C] [--steps 10]
    LSTM_JAX_TUNE_MALLOC=0 python -m benchmarks.page_faults   # glibc's default malloc, for comparison

Measures `getrusage` around `--steps` steps after two warm-up steps: minor page faults, user and system
CPU time per step. This is how the cost of XLA:CPU's fresh per-step buffers was found (README, "Speed").
"""

from __future__ import annotations

import argparse
import resource
import time

from benchmarks import at_least
from benchmarks.peers import lstm_jax_peer
from benchmarks.shapes import get_shape, shape_list_arg
from lstm_jax import runtime


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="A,B,C", type=shape_list_arg)
    p.add_argument("--steps", type=at_least(1), default=10)
    args = p.parse_args(argv)
    print(f"malloc tuned: {runtime.malloc_tuned()}")
    for name in args.shapes:
        bench = lstm_jax_peer.build(get_shape(name))
        bench.step()
        bench.step()
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(args.steps):
            bench.step()
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        n = args.steps
        print(
            f"{name}: wall {(t1 - t0) / n * 1e3:.1f} ms/step, user {(r1.ru_utime - r0.ru_utime) / n * 1e3:.1f}"
            f" ms, sys {(r1.ru_stime - r0.ru_stime) / n * 1e3:.1f} ms,"
            f" minor faults {(r1.ru_minflt - r0.ru_minflt) / n:.0f} per step",
            flush=True,
        )


if __name__ == "__main__":
    main()
