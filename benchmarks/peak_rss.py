"""Peak RSS of the benchmark's lstm_jax training step, each measurement in a fresh process.

    python -m benchmarks.peak_rss --shape D --processes 3
    python -m benchmarks.peak_rss --shape D --processes 3 \
        --xla xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE

Starts `--processes` processes per build, alternating (the shipped step, then with `--xla` the step compiled
with that XLA option, as `benchmarks.ab_rule --xla` does), each building the shape's step and running
`--steps` steps, and prints each process's peak RSS (Linux's `VmHWM`) after the build, the first step and
the last. One process's peak says little: on shape D, four identical processes peaked at 703 to 1,117 MB after 6 steps
(benchmarks/README.md, run 4): the same program each time; what varies was not measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.shapes import SHAPES

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "PEAK_RSS "


def _maxrss_mb() -> float:
    """This process's peak RSS, MB: `VmHWM` (as the benchmark's workers read it), which starts afresh at
    exec; `ru_maxrss` carries the starting process's resident size over fork+exec, so `measure` called
    from a large process reported at least that process's size for every build."""
    from benchmarks.worker import _peak_rss_mb

    return _peak_rss_mb()


def child(shape_name: str, steps: int, xla: str | None) -> dict:
    """Builds the step in this process, runs `steps` steps; the peak RSS (MB) after each stage."""
    from benchmarks.peers import lstm_jax_peer
    from benchmarks.shapes import get_shape

    options = dict([xla.split("=", 1)]) if xla else None
    bench = lstm_jax_peer.Bench(get_shape(shape_name), compiler_options=options)
    out = {"build": _maxrss_mb()}
    bench.step()
    out["first_step"] = _maxrss_mb()
    for _ in range(steps - 1):
        bench.step()
    out["last_step"] = _maxrss_mb()
    return out


def measure(shape_name: str, processes: int, steps: int, xla: str | None) -> dict[str, list[dict]]:
    """`{build: [per-process peaks]}` for the shipped step (and the `xla` one), processes alternating."""
    builds = {"shipped": None} | ({f"--xla {xla}": xla} if xla else {})
    runs: dict[str, list[dict]] = {name: [] for name in builds}
    for _ in range(processes):
        for name, option in builds.items():
            argv = [sys.executable, "-m", "benchmarks.peak_rss", "--child", "--shape", shape_name]
            argv += ["--steps", str(steps)] + (["--xla", option] if option else [])
            done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
            lines = [x for x in done.stdout.splitlines() if x.startswith(PREFIX)]
            if done.returncode or not lines:
                raise RuntimeError(f"{name}: the process failed: {done.stderr.strip()[-600:]}")
            runs[name].append(json.loads(lines[-1][len(PREFIX) :]))
    return runs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="D", choices=[*SHAPES, "tiny"])
    p.add_argument("--processes", type=int, default=3)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--xla", default=None, metavar="NAME=VALUE")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.processes < 1 or args.steps < 1:
        p.error("--processes and --steps must be at least 1")
    if args.xla is not None and "=" not in args.xla:
        p.error(f"--xla takes NAME=VALUE, got {args.xla!r}")
    if args.child:
        print(PREFIX + json.dumps(child(args.shape, args.steps, args.xla)), flush=True)
        return
    try:
        runs = measure(args.shape, args.processes, args.steps, args.xla)
    except RuntimeError as e:
        sys.exit(f"peak_rss: {e}")
    print(
        f"shape {args.shape}: peak RSS MB per process (after build / first step / step {args.steps})"
    )
    for name, peaks in runs.items():
        cells = ", ".join(
            f"{r['build']:.0f}/{r['first_step']:.0f}/{r['last_step']:.0f}" for r in peaks
        )
        last = [r["last_step"] for r in peaks]
        print(
            f"  {name}: {cells}; last step min {min(last):.0f}, median {statistics.median(last):.0f},"
            f" max {max(last):.0f}"
        )


if __name__ == "__main__":
    main()
