"""Where does lstm_jax's training step go? One shape's step under `jax.profiler`, per XLA op.

    python -m benchmarks.profile_step --shape A --steps 10

Traces `--steps` steps of the benchmark's lstm_jax step (after 5 warm-up steps) with XLA:CPU's per-op
trace events (`--xla_cpu_enable_xprof_traceme`), then prints the traced ms per step, each op's time per
step summed over the threads that ran it (`ffi_call.*` are the native kernel's calls, `ynn_fusion.*` and
`dot*` XLA's matmuls), and the timeline of the last traced step (ops of at least `--min-ms`).

With `--native-stats` it then times `--steps` more steps, untraced, with the native kernel's own timing on
(`lstm_jax.native.stats`): per training call (forward/backward, per layer shape) the wall ms per step, the
ms all threads spent in its timesteps, the part of that in each step's matmul and that matmul's GFLOP/s per
thread, and how late the helper tasks started; then the share of the step inside the calls, and one core's
FMA peak (`lstm_jax.native.fma_peak_gflops`) with the matmuls' GFLOP/s per thread as fractions of it.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks import at_least
from benchmarks.shapes import shape_arg

if TYPE_CHECKING:
    from benchmarks.peers.lstm_jax_peer import Bench

_FLAG = "--xla_cpu_enable_xprof_traceme=true"


def _events(trace_dir: str) -> tuple[list[dict], dict]:
    path = next(Path(trace_dir).rglob("*.trace.json.gz"))
    trace = json.load(gzip.open(path))
    names = {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in trace["traceEvents"]
        if e.get("ph") == "M" and e.get("name") == "thread_name"
    }
    return [e for e in trace["traceEvents"] if e.get("ph") == "X"], names


def _is_op(event: dict, names: dict) -> bool:
    """An XLA op's event (not Python's, not the executor's own bookkeeping)."""
    thread = names.get((event.get("pid"), event.get("tid")), "")
    name = event["name"]
    return not (
        thread.startswith("python")
        or name.startswith(("ThunkExecutor", "ThreadpoolListener", "end: ", "$"))
        or "::" in name
    )


def profile(
    shape_name: str, steps: int, top: int = 25, min_ms: float = 0.1, stats: bool = False
) -> str:
    """Profiles `steps` training steps of `shape_name`; returns the report."""
    import jax

    from benchmarks.peers import lstm_jax_peer
    from benchmarks.shapes import get_shape

    bench = lstm_jax_peer.Bench(get_shape(shape_name))
    for _ in range(5):
        bench.step()
    out = []
    with tempfile.TemporaryDirectory() as trace_dir:
        t0 = time.perf_counter()
        with jax.profiler.trace(trace_dir):
            starts = []
            for _ in range(steps):
                starts.append(time.perf_counter())
                bench.step()
            end = time.perf_counter()
        out.append(f"shape {shape_name}: {(end - t0) / steps * 1e3:.2f} ms per traced step")
        events, names = _events(trace_dir)
    ops = [e for e in events if _is_op(e, names)]
    if not ops:
        return "\n".join(out + [f"no XLA op events (XLA_FLAGS needs {_FLAG} before JAX starts)"])
    total = collections.defaultdict(float)
    count = collections.Counter()
    for e in ops:
        total[e["name"]] += e["dur"]
        count[e["name"]] += 1
    out.append(
        f"ms per step, summed over threads (top {top}; all ops: "
        f"{sum(total.values()) / steps / 1e3:.2f}):"
    )
    for name, us in sorted(total.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"{us / steps / 1e3:9.2f}  x{count[name] / steps:4.1f}  {name}")
    # The last step: from its first op to the end of its last one.
    ts0 = min(e["ts"] for e in ops)
    wall0 = starts[0]
    last = [e for e in ops if e["ts"] - ts0 >= (starts[-1] - wall0) * 1e6 - 1e3]
    if not last:
        # The first traced op started more than 1 ms after the wall clock's first step (a loaded
        # machine): align the last step's wall-clock length to the trace's end instead.
        ts_end = max(e["ts"] + e["dur"] for e in ops)
        last = [e for e in ops if e["ts"] + e["dur"] >= ts_end - (end - starts[-1]) * 1e6]
    if last:
        first = min(e["ts"] for e in last)
        out.append(
            f"timeline of the last step (start ms, +duration ms, thread, op >= {min_ms} ms):"
        )
        for e in sorted(last, key=lambda e: e["ts"]):
            if e["dur"] >= min_ms * 1e3:
                thread = names.get((e["pid"], e["tid"]), "?")[-10:]
                out.append(
                    f"{(e['ts'] - first) / 1e3:8.2f} +{e['dur'] / 1e3:7.2f}  {thread:10s} {e['name']}"
                )
    if stats:
        out.append(native_stats(bench, steps))
    return "\n".join(out)


def native_stats(bench: Bench, steps: int) -> str:
    """Times `steps` untraced steps of `bench` with the native kernel's per-call timing on."""
    from lstm_jax import native

    bench.step()
    with native.stats() as calls:
        t0 = time.perf_counter()
        for _ in range(steps):
            bench.step()  # blocks until the step is done
        step_s = (time.perf_counter() - t0) / steps
    if not calls:
        return "native kernel: no calls (impl is not native here)"
    out = [
        f"native kernel calls, {steps} untraced steps: {step_s * 1e3:.2f} ms per step",
        "   wall ms  thread ms  matmul ms  GFLOP/s/thread  helper start ms  call",
    ]
    wall = 0.0
    for c in calls:
        n = c["calls"] / steps  # calls of this kind per step
        start = c["helper_start"] / c["helpers_started"] * 1e3 if c["helpers_started"] else 0.0
        out.append(
            f"{c['wall'] / steps * 1e3:10.2f} {c['steps'] / steps * 1e3:10.2f} "
            f"{c['matmul'] / steps * 1e3:10.2f} {c['matmul_flops'] / max(c['matmul'], 1e-12) / 1e9:15.1f}"
            f" {start:16.3f}  {c['kind']} T={c['T']} B={c['B']} F={c['F']} H={c['H']} (x{n:g})"
        )
        wall += c["wall"] / steps
    out.append(f"in the calls: {wall * 1e3:.2f} of {step_s * 1e3:.2f} ms ({wall / step_s:.0%})")
    peak = native.fma_peak_gflops(threads=1, seconds=0.05, repeats=5)
    rates = [c["matmul_flops"] / max(c["matmul"], 1e-12) / 1e9 for c in calls]
    out.append(
        f"one core's FMA peak {peak:.1f} GFLOP/s (native.fma_peak_gflops, one thread, after the steps): "
        f"the calls' matmuls at {100 * min(rates) / peak:.0f}-{100 * max(rates) / peak:.0f}% of it"
    )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="A", type=shape_arg, help="A-D (or tiny)")
    p.add_argument("--steps", type=at_least(1), default=10)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--min-ms", type=float, default=0.1)
    p.add_argument(
        "--native-stats", action="store_true", help="then time the native kernel's calls"
    )
    args = p.parse_args(argv)
    print(profile(args.shape, args.steps, args.top, args.min_ms, args.native_stats), flush=True)


if __name__ == "__main__":
    flags = os.environ.get("XLA_FLAGS", "")
    if _FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {_FLAG}".strip()
    main()
