"""What does one of `lstm_jax.core`'s size rules buy? The benchmark's lstm_jax step, built twice in one
process (once with the constant changed, once as shipped) and timed interleaved.

    python -m benchmarks.ab_rule --shape C --set NATIVE_WEIGHT_GRADS_MAX_L2_FRACTION=-1
    python -m benchmarks.ab_rule --shape C --set NATIVE_INPUT_PROJECTION_MAX_L2_FRACTION=0

The rules are read when a step is traced, so the changed build is traced (its first step run) with the
constant changed and the shipped one after it is restored. Each round times `--steps` steps of one build,
then of the other; prints the median ms per step of each build over `--rounds` rounds, and both builds'
losses (the same model and batch: equal up to float summation order for a while, then apart as training
on one batch amplifies rounding).
"""

from __future__ import annotations

import argparse
import statistics
import time

RULES = (
    "CPU_PER_STEP_MAX_HIDDEN",
    "FOLD_EMBEDDING_MAX_ROWS_PER_POSITION",
    "NATIVE_INPUT_PROJECTION_MAX_L2_FRACTION",
    "NATIVE_WEIGHT_GRADS_MAX_L2_FRACTION",
    "NATIVE_BIAS_GRAD_IN_KERNEL",
    "NATIVE_FOLDED_ROWS_BY_ID",
    "NATIVE_SCATTER_ROWS",
)


def compare(shape_name: str, name: str, value: float, rounds: int, steps: int) -> dict:
    """Median ms per step of the step built with `core.<name> = value` and as shipped."""
    from benchmarks.peers import lstm_jax_peer
    from benchmarks.shapes import get_shape
    from lstm_jax import core

    shape = get_shape(shape_name)
    shipped = getattr(core, name)
    setattr(core, name, type(shipped)(value))
    try:
        changed = lstm_jax_peer.Bench(shape)
        changed.step()  # traced with the changed rule
    finally:
        setattr(core, name, shipped)
    as_shipped = lstm_jax_peer.Bench(shape)
    as_shipped.step()
    times: dict[str, list[float]] = {"changed": [], "shipped": []}
    for _ in range(rounds):
        for key, bench in (("changed", changed), ("shipped", as_shipped)):
            t0 = time.perf_counter()
            for _ in range(steps):
                bench.step()
            times[key].append((time.perf_counter() - t0) / steps)
    return {
        "shape": shape_name,
        "rule": f"{name}={value:g} (shipped: {shipped:g})",
        "changed_ms": statistics.median(times["changed"]) * 1e3,
        "shipped_ms": statistics.median(times["shipped"]) * 1e3,
        "changed_loss": float(changed.loss),
        "shipped_loss": float(as_shipped.loss),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="C", help="A-D (or tiny)")
    p.add_argument("--set", required=True, help=f"NAME=VALUE, NAME one of {', '.join(RULES)}")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=5, help="steps per build per round")
    args = p.parse_args(argv)
    name, sep, value = args.set.partition("=")
    if not sep or name not in RULES:
        p.error(f"--set must be NAME=VALUE with NAME one of {', '.join(RULES)}; got {args.set!r}")
    try:
        number = float(value)
    except ValueError:
        p.error(f"--set {name}: {value!r} is not a number")
    r = compare(args.shape, name, number, args.rounds, args.steps)
    print(
        f"shape {r['shape']}, {r['rule']}: changed {r['changed_ms']:.2f} ms, shipped "
        f"{r['shipped_ms']:.2f} ms per step (median of {args.rounds} interleaved rounds); losses "
        f"{r['changed_loss']:.6g} / {r['shipped_loss']:.6g}",
        flush=True,
    )


if __name__ == "__main__":
    main()
