"""What does a change of the code (the native kernel's C++, a core function) buy? The benchmark's lstm_jax
step of one shape from this checkout and from another revision, each in its own worker process, timed in
alternation (A B, B A, ...).

    python -m benchmarks.ab_trees --shape A --base HEAD~1
    python -m benchmarks.ab_trees --shape D --base /path/to/another/checkout --rounds 10 --steps 3

`--base` is a git revision of this repository (checked out into a temporary worktree, removed after) or a
directory holding a checkout. `benchmarks.ab_rule` compares the values of one of core.py's size rules in
one process; this compares whole trees, so a kernel change is timed against the kernel before it (each
tree's kernel is built into the native cache under its own source hash). Prints the median ms per step of
each over `--rounds` rounds of `--steps` steps, their 25th-75th percentiles, and the ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from benchmarks import at_least
from benchmarks.run import ROOT, Worker
from benchmarks.shapes import shape_arg


@contextlib.contextmanager
def checkout(base: str) -> Iterator[Path]:
    """`base` as a directory: itself if it is one, else a temporary git worktree of that revision."""
    path = Path(base)
    if path.is_dir():
        if not (path / "lstm_jax" / "__init__.py").is_file():
            raise SystemExit(f"--base {base}: the directory holds no lstm_jax checkout")
        yield path.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="ab_trees_") as tmp:
        tree = Path(tmp) / "base"
        try:
            proc = subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(tree), base],
                capture_output=True,
                text=True,
            )
        except FileNotFoundError:
            raise SystemExit(
                f"--base {base}: not a directory, and git is not installed to check out a revision"
            ) from None
        if proc.returncode:
            raise SystemExit(
                f"--base {base}: neither a directory nor a revision git can check out here"
                f" ({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'git failed'})"
            )
        try:
            yield tree
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                capture_output=True,
            )


def compare(shape: str, base: Path, rounds: int, steps: int, timeout: float = 600) -> dict:
    """Median (and quartiles of) ms per step of this checkout's step ("this") and `base`'s."""
    workers = {
        name: Worker("lstm_jax", shape, timeout, root=root)
        for name, root in (("this", ROOT), ("base", base))
    }
    try:
        for name, w in workers.items():
            ready = w.read()
            if ready.get("status") != "ready":
                raise SystemExit(f"the {name} tree's worker failed: {ready.get('reason', ready)}")
        times: dict[str, list[float]] = {name: [] for name in workers}
        for r in range(rounds):
            for name in ("this", "base") if r % 2 == 0 else ("base", "this"):
                reply = workers[name].ask({"cmd": "time", "steps": steps})
                if "times" not in reply:
                    raise SystemExit(
                        f"the {name} tree's worker failed: {reply.get('reason', reply)}"
                    )
                times[name].append(statistics.median(reply["times"]) * 1e3)
    finally:
        for w in workers.values():
            w.close()
    out = {"shape": shape, "rounds": rounds, "steps": steps}
    for name, ms in times.items():
        q = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
        out[name] = {"median_ms": statistics.median(ms), "p25_ms": q[0], "p75_ms": q[2]}
    out["ratio"] = out["this"]["median_ms"] / out["base"]["median_ms"]
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="A", type=shape_arg, help="A-D (or tiny)")
    p.add_argument("--base", required=True, help="a git revision, or a directory with a checkout")
    p.add_argument("--rounds", type=at_least(1), default=20)
    p.add_argument("--steps", type=at_least(1), default=5, help="steps per tree per round")
    args = p.parse_args(argv)
    with checkout(args.base) as base:
        r = compare(args.shape, base, args.rounds, args.steps)
    t, b = r["this"], r["base"]
    print(
        f"shape {r['shape']}: this checkout {t['median_ms']:.2f} ms [{t['p25_ms']:.2f}-"
        f"{t['p75_ms']:.2f}], --base {args.base} {b['median_ms']:.2f} ms [{b['p25_ms']:.2f}-"
        f"{b['p75_ms']:.2f}] per step (median [p25-p75] of {args.rounds} alternating rounds of"
        f" {args.steps} steps); this / base = {r['ratio']:.3f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
