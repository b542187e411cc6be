"""What does one of `lstm_jax.core`'s size rules buy? The benchmark's lstm_jax step, built twice in one
process (once with the constant changed, once as shipped) and timed interleaved.

    python -m benchmarks.ab_rule --shape C --set NATIVE_WEIGHT_GRADS_MAX_L2_FRACTION=-1
    python -m benchmarks.ab_rule --shape C --set NATIVE_INPUT_PROJECTION_MAX_L2_FRACTION=0
    python -m benchmarks.ab_rule --shape D --xla xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE

The rules are read when a step is traced, so the changed build is traced (its first step run) with the
constant changed and the shipped one after it is restored. `--xla NAME=VALUE` compares an XLA compiler
option instead, given to the changed build's step alone (`jax.jit(..., compiler_options=...)`); the
example above is XLA's default less YNNPACK's dots (Eigen's then). Each round times `--steps` steps of one build,
then of the other; prints the median ms per step of each build over `--rounds` rounds, and both builds'
losses (the same model and batch: equal up to float summation order for a while, then apart as training
on one batch amplifies rounding).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

from benchmarks import at_least
from benchmarks.shapes import shape_arg

RULES = (
    "CPU_PER_STEP_MAX_HIDDEN",
    "FOLD_EMBEDDING_MAX_ROWS_PER_POSITION",
    "NATIVE_INPUT_PROJECTION_MAX_L2_FRACTION",
    "NATIVE_WEIGHT_GRADS_MAX_L2_FRACTION",
    "NATIVE_BIAS_GRAD_IN_KERNEL",
    "NATIVE_FOLDED_ROWS_BY_ID",
    "NATIVE_SCATTER_ROWS",
)


def compare(
    shape_name: str,
    name: str,
    value: float | str,
    rounds: int,
    steps: int,
    xla: bool = False,
) -> dict:
    """Median ms per step of the step built with `core.<name> = value` (or with the XLA compiler option
    `name=value` when `xla`) and as shipped."""
    from benchmarks.peers import lstm_jax_peer
    from benchmarks.shapes import get_shape
    from lstm_jax import core

    shape = get_shape(shape_name)
    if xla:
        changed = lstm_jax_peer.Bench(shape, compiler_options={name: value})
        changed.step()
        rule = f"XLA option {name}={value}"
    else:
        shipped = getattr(core, name)
        setattr(core, name, type(shipped)(value))
        try:
            changed = lstm_jax_peer.Bench(shape)
            changed.step()  # traced with the changed rule
        finally:
            setattr(core, name, shipped)
        rule = f"{name}={value:g} (shipped: {shipped:g})"
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
        "rule": rule,
        "changed_ms": statistics.median(times["changed"]) * 1e3,
        "shipped_ms": statistics.median(times["shipped"]) * 1e3,
        "changed_loss": float(changed.loss),
        "shipped_loss": float(as_shipped.loss),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="C", type=shape_arg, help="A-D (or tiny)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--set", help=f"NAME=VALUE, NAME one of {', '.join(RULES)}")
    which.add_argument(
        "--xla", help="NAME=VALUE, an XLA compiler option (a DebugOptions field) for one build"
    )
    p.add_argument("--rounds", type=at_least(1), default=15)
    p.add_argument("--steps", type=at_least(1), default=5, help="steps per build per round")
    args = p.parse_args(argv)
    if args.xla is not None:
        name, sep, value = args.xla.partition("=")
        if not sep or not name:
            p.error(f"--xla must be NAME=VALUE; got {args.xla!r}")
        r = compare(args.shape, name, value, args.rounds, args.steps, xla=True)
    else:
        name, sep, value = args.set.partition("=")
        if not sep or name not in RULES:
            p.error(
                f"--set must be NAME=VALUE with NAME one of {', '.join(RULES)}; got {args.set!r}"
            )
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if math.isnan(number):
            p.error(f"--set {name}: {value!r} is not a number")
        from lstm_jax import core

        # compare() sets `type(shipped)(value)`: an integer or on/off rule would silently take 64 for 64.5
        # or True for 0.5 (the shipped value) while the report named the value asked for; `int` of an
        # infinity raised OverflowError.
        kind = type(getattr(core, name))
        if kind is not float and (math.isinf(number) or kind(number) != number):
            what = "0 or 1" if kind is bool else "an integer"
            p.error(f"--set {name}: {value!r} is not {what} ({name} is {kind.__name__})")
        r = compare(args.shape, name, number, args.rounds, args.steps)
    print(
        f"shape {r['shape']}, {r['rule']}: changed {r['changed_ms']:.2f} ms, shipped "
        f"{r['shipped_ms']:.2f} ms per step (median of {args.rounds} interleaved rounds); losses "
        f"{r['changed_loss']:.6g} / {r['shipped_loss']:.6g}",
        flush=True,
    )


if __name__ == "__main__":
    main()
