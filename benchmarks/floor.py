"""The floor of an LSTM training step on this machine: how fast could any arrangement of it be?

    python -m benchmarks.floor --results benchmarks/results/2026-12-02-cpu-idle.json

Every LSTM training step holds, per layer, two chains that no arrangement can shorten or batch: `T` forward
products `[B, H] @ [H, 4H]` one after another (`h_t` needs `h_{t-1}`) and `T` backward products
`[B, 4H] @ [4H, H]` one after another (`dh_{t-1}` needs `dh_t`), each followed by at least one elementwise
kernel (the gates). Everything else (input projections, weight gradients, embedding, dense head) can be
batched into large matmuls, which run at best at the machine's fp32 matmul ceiling. So

    step time >= chain + (training FLOPs - chain FLOPs) / ceiling

where `chain` is measured here: the `2 * T * layers` chained products with one small elementwise kernel each
(`tanh`), as jitted `lax.scan`s (XLA's matmul kernels and loop overhead, nothing else), on one device with
all cores, and at half the batch on one core (the data-parallel arrangement, `--cpu_devices=2`, where each
core runs half the batch). PyTorch's time for the same chained products (an eager loop: oneDNN's kernels
plus dispatch) is printed next to it when torch is installed. Given a `benchmarks.run` results JSON, the
table also gives the issue's target (the fastest other framework's step / 1.5) and whether the floor
leaves room for it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks import at_least
from benchmarks.shapes import Shape, get_shape, shape_list_arg

PREFIX = "@@FLOOR "
TARGET_FACTOR = 1.5  # issue 6: lstm_jax's step at least 1.5x faster than the fastest peer


def chain_flops(shape: Shape) -> float:
    """FLOPs of the chained products: per layer `2 * T` products of `2 * B * H * 4H`."""
    return sum(2 * shape.time * 2 * shape.batch * h * 4 * h for h in shape.lstm)


def floor_ms(shape: Shape, chain_ms: float, ceiling_gflops: float) -> float:
    """`chain_ms` plus the rest of the step's matmul FLOPs at the ceiling, in ms."""
    rest = shape.train_flops() - chain_flops(shape)
    return chain_ms + rest / (ceiling_gflops * 1e9) * 1e3


def fastest_peer_ms(results: dict, shape_name: str) -> tuple[str, float] | None:
    """The fastest framework other than lstm_jax in a `benchmarks.run` results dict: `(peer, median ms)`."""
    rows = results.get("shapes", {}).get(shape_name, {})
    peers = [
        (r["median_ms"], p)
        for p, r in rows.items()
        if "median_ms" in r and not p.startswith("lstm_jax")
    ]
    if not peers:
        return None
    ms, peer = min(peers)
    return peer, ms


def median_ms(fn: Callable[[], object], reps: int) -> float:
    """Median wall milliseconds of `fn()` over `reps` calls, after one warm-up call (which compiles); `fn`
    must block until its result is ready."""
    fn()  # warm-up (and compile)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def xla_chain_ms(batch: int, steps: int, hidden: int, reps: int) -> float:
    """Median ms of `steps` chained `[B, H] @ [H, 4H]` products and then `steps` chained
    `[B, 4H] @ [4H, H]` products, each followed by a `tanh`, in one jitted function (two `lax.scan`s)."""
    import jax
    import jax.numpy as jnp

    r = jax.random.normal(jax.random.key(0), (hidden, 4 * hidden)) / math.sqrt(hidden)
    rt = jnp.asarray(r.T)

    @jax.jit
    def chain(h0, r, rt):
        def fwd(h, _):
            return jnp.tanh((h @ r)[:, :hidden]), None

        def bwd(d, _):
            return jnp.tile(jnp.tanh(d @ rt), (1, 4)), None

        h, _ = jax.lax.scan(fwd, h0, None, length=steps)
        d, _ = jax.lax.scan(bwd, jnp.tile(h, (1, 4)), None, length=steps)  # depends on the forward
        return d

    h0 = jnp.ones((batch, hidden), jnp.float32) * 0.1
    return median_ms(lambda: chain(h0, r, rt).block_until_ready(), reps)


def torch_chain_ms(batch: int, steps: int, hidden: int, reps: int) -> float | None:
    """The same chains in PyTorch eager (no autograd), or None when torch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    g = torch.Generator().manual_seed(0)
    r = torch.randn(hidden, 4 * hidden, generator=g) / math.sqrt(hidden)
    rt = r.t().contiguous()
    h0 = torch.full((batch, hidden), 0.1)

    def chain():
        with torch.no_grad():
            h = h0
            for _ in range(steps):
                h = torch.tanh((h @ r)[:, :hidden])
            d = h.repeat(1, 4)
            for _ in range(steps):
                d = torch.tanh(d @ rt).repeat(1, 4)
        return d

    return median_ms(chain, reps)


def worker(shape_names: Sequence[str], batch_divisor: int, reps: int) -> dict:
    """Chain times for each shape, summed over its layers, at `batch // batch_divisor`."""
    out = {}
    for name in shape_names:
        shape = get_shape(name)
        b = shape.batch // batch_divisor
        xla = sum(xla_chain_ms(b, shape.time, h, reps) for h in shape.lstm)
        per_layer = [torch_chain_ms(b, shape.time, h, reps) for h in shape.lstm]
        torch_ms = None if None in per_layer else sum(per_layer)
        out[name] = {"batch": b, "xla_chain_ms": xla, "torch_chain_ms": torch_ms}
    return out


def _run_worker(shape_names: Sequence[str], single_core: bool, reps: int) -> dict:
    """Runs `worker` in a fresh process: all cores, or (single_core) half the batch on one thread."""
    env = dict(os.environ)
    args = [sys.executable, "-m", "benchmarks.floor", "--worker", "--shapes", ",".join(shape_names)]
    args += ["--reps", str(reps)]
    if single_core:
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
        ).strip()
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
        args += ["--batch-divisor", "2"]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(PREFIX):
            return json.loads(line[len(PREFIX) :])
    raise RuntimeError(f"floor worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def report(
    shape_names: Sequence[str],
    all_cores: dict,
    one_core: dict,
    ceiling_gflops: float,
    results: dict | None,
) -> str:
    """The markdown table: chains, floors, and (with `results`) the target and the best lstm_jax step."""
    head = (
        "| shape | chain XLA, all cores | chain XLA, B/2 on one core | chain PyTorch, all cores "
        "| rest at ceiling | floor, one device | floor, 2 devices |"
    )
    sep = "|---|---:|---:|---:|---:|---:|---:|"
    if results is not None:
        head += " lstm_jax best | fastest peer | target (peer / 1.5) | target >= floor? |"
        sep += "---:|---|---:|---|"
    lines = [head, sep]
    for name in shape_names:
        shape = get_shape(name)
        a, o = all_cores[name], one_core[name]
        rest = floor_ms(shape, 0.0, ceiling_gflops)
        f1 = floor_ms(shape, a["xla_chain_ms"], ceiling_gflops)
        f2 = floor_ms(shape, o["xla_chain_ms"], ceiling_gflops)
        tch = "-" if a["torch_chain_ms"] is None else f"{a['torch_chain_ms']:.1f}"
        row = (
            f"| {name} {shape.title} | {a['xla_chain_ms']:.1f} | {o['xla_chain_ms']:.1f} | {tch} "
            f"| {rest:.1f} | {f1:.1f} | {f2:.1f} |"
        )
        if results is not None:
            rows = results.get("shapes", {}).get(name, {})
            ours = [
                r["median_ms"]
                for p, r in rows.items()
                if p.startswith("lstm_jax") and "median_ms" in r
            ]
            best = f"{min(ours):.1f}" if ours else "-"
            fp = fastest_peer_ms(results, name)
            if fp is None:
                row += f" {best} | - | - | - |"
            else:
                target = fp[1] / TARGET_FACTOR
                verdict = "yes" if target >= min(f1, f2) else "no: below the floor"
                row += f" {best} | {fp[0]} {fp[1]:.1f} | {target:.1f} | {verdict} |"
        lines.append(row)
    return "\n".join(lines)


def _read_results(
    p: argparse.ArgumentParser, path: str, names: Sequence[str]
) -> tuple[dict, float]:
    """`(results, ceiling)` of a `benchmarks.run` JSON, checked before minutes of measuring: a file that
    cannot be read or is not such a run is a usage error (`p.error`: one line, exit 2), not the traceback
    (FileNotFoundError, JSONDecodeError, KeyError) it was."""
    try:
        results = json.loads(Path(path).read_text())
        ceiling = float(results["ceiling"]["ceiling_gflops"])
        if not ceiling > 0:
            raise ValueError(f"ceiling_gflops {ceiling}")
        # The table with stand-in chain times: a damaged row fails here, not after the measuring.
        chains = {n: {"batch": 1, "xla_chain_ms": 0.0, "torch_chain_ms": None} for n in names}
        report(names, chains, chains, ceiling, results)
    except OSError as e:
        p.error(f"--results {path!r} cannot be read ({e.strerror or e})")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        p.error(f"--results {path!r} is not a benchmarks.run JSON ({type(e).__name__}: {e})")
    return results, ceiling


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="A,B,C,D", type=shape_list_arg)
    p.add_argument("--reps", type=at_least(1), default=20)
    p.add_argument("--results", default=None, help="a benchmarks.run JSON: ceiling, peers' times")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--batch-divisor", type=at_least(1), default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = args.shapes
    if args.worker:
        print(PREFIX + json.dumps(worker(names, args.batch_divisor, args.reps)), flush=True)
        return
    results = None
    if args.results:
        results, ceiling = _read_results(p, args.results, names)
    else:
        from benchmarks.ceiling import measure

        ceiling = measure()["ceiling_gflops"]
    all_cores = _run_worker(names, single_core=False, reps=args.reps)
    one_core = _run_worker(names, single_core=True, reps=args.reps)
    print(
        f"fp32 matmul ceiling {ceiling:.0f} GFLOP/s; chain and floor times in ms per training step"
    )
    print(report(names, all_cores, one_core, ceiling, results))


if __name__ == "__main__":
    main()
