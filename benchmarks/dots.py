"""XLA's dot against numpy's matmul (OpenBLAS) on the big matmuls of a training step that stay in XLA.

    python -m benchmarks.dots

With the native kernel running the recurrences, what XLA still computes is mostly the hoisted input
projection `x @ W`, its input gradient `dz @ W^T` and the weight gradients `x^T @ dz` over all timesteps.
This times each shape (shape A's layer 2 and shape D's layer: `[T*B, F]` with `4H` gate columns) as a
jitted JAX dot and as numpy's matmul, median wall time, and prints GFLOP/s for both: where XLA's dot
runs well below numpy's, that part of the step is bounded by XLA's matmul, not by the recurrence.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from benchmarks import at_least
from benchmarks.floor import median_ms

# name: (rows m, contraction k, columns n, whether the left operand is stored [k, m] and transposed)
SHAPES = {
    "A weight grad x^T @ dz": (300, 2000, 1200, True),
    "A projection x @ W": (2000, 300, 1200, False),
    "A input grad dz @ W^T": (2000, 1200, 300, False),
    "D weight grad x^T @ dz": (199, 32000, 796, True),
    "D projection x @ W": (32000, 300, 796, False),
}


def time_shape(m: int, k: int, n: int, transposed: bool, repeats: int) -> tuple[float, float]:
    """Seconds per `[m, k] @ [k, n]` product for (XLA's jitted dot, numpy's matmul)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((k, m) if transposed else (m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)

    def product(x, y):
        return (x.T if transposed else x) @ y

    ja, jb = jax.device_put(a), jax.device_put(b)
    jitted = jax.jit(product)
    return (
        median_ms(lambda: jax.block_until_ready(jitted(ja, jb)), repeats) / 1e3,
        median_ms(lambda: product(a, b), repeats) / 1e3,
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=at_least(1), default=30)
    p.add_argument(
        "--scale", type=float, default=1.0, help="multiply every dimension (tests use less)"
    )
    args = p.parse_args(argv)
    print("| product | GFLOP | XLA ms | XLA GFLOP/s | numpy ms | numpy GFLOP/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (m, k, n, transposed) in SHAPES.items():
        m, k, n = (max(1, round(v * args.scale)) for v in (m, k, n))
        xla, ref = time_shape(m, k, n, transposed, args.repeats)
        gflop = 2 * m * k * n / 1e9
        print(
            f"| {name} | {gflop:.2f} | {xla * 1e3:.2f} | {gflop / xla:.1f} | {ref * 1e3:.2f} | "
            f"{gflop / ref:.1f} |"
        )


if __name__ == "__main__":
    main()
