"""The benchmark: lstm_jax's training step against Flax, Keras 3 (JAX, TensorFlow) and PyTorch.

    python -m benchmarks.run [--shapes A,B,C,D] [--peers ...] [--rounds 5] [--out PATH]

For each shape (see `benchmarks/shapes.py`) it starts one worker process per framework (`worker.py`),
measures the first step (trace + compile + run), then times the frameworks interleaved, round-robin, for
`--rounds` rounds of about `--round-seconds` each, and reports the median and spread of the per-step times.
It also measures the machine's fp32 matmul ceiling (`ceiling.py`), each run's fraction of it, peak memory
per worker, and on the char model (shape A) the speed of compiled generation against the tutorial's loop of
one `predict` per character. Prints a markdown table and writes the raw numbers as JSON (default
`benchmarks/results/<UTC date and time>.json`, never an existing file).

`OPENBLAS_CORETYPE` is removed from the workers' environment (it halves numpy's matmul speed here).
A framework that is not installed is reported as missing; one that fails on a shape is reported as failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.floor import TARGET_FACTOR as TARGET_SPEEDUP
from benchmarks.floor import fastest_peer_ms
from benchmarks.shapes import get_shape
from benchmarks.worker import GEN_MODES, PEERS, PREFIX
from lstm_jax.logging_utils import write_json
from lstm_jax.runtime import GLIBC_TUNABLES

ROOT = Path(__file__).resolve().parent.parent
LABELS = {
    "lstm_jax": "lstm_jax",
    "lstm_jax_dp": "lstm_jax, data-parallel over one host device per core",
    "lstm_jax_cudnn": "lstm_jax with impl='cudnn' (NVIDIA GPUs)",
    "lstm_jax_unroll8": "lstm_jax with unroll=8",
    "flax": "Flax nnx.RNN(OptimizedLSTMCell)",
    "keras_jax": "Keras 3 (JAX)",
    "keras_tf": "Keras 3 (TensorFlow)",
    "keras_tf_xla": "Keras 3 (TensorFlow, XLA)",
    "torch": "PyTorch eager",
    "torch_compile": "torch.compile",
}


# The packages whose versions a report records ("missing" for those not installed).
VERSIONED_PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "numpy",
    "torch",
    "keras",
    "tensorflow",
    "tensorflow-cpu",
)


def package_versions() -> dict[str, str]:
    """Installed versions of the frameworks compared (from package metadata; nothing is imported)."""
    out = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


# `--malloc` modes and how the report names them.
MALLOC_MODES = {
    "ours": "lstm_jax only (each framework as it runs out of the box)",
    "all": "every framework",
    "none": "nobody",
}
# `--malloc all` is the default since 2026-12-05: with glibc's defaults the peers' steps page-fault and
# zero fresh buffers every step (PyTorch's A step 18-20k faults), which lstm_jax's import-time setting
# avoids; the comparison is of the LSTM code, so every framework gets the same allocator.


def child_env(peer: str | None = None, malloc: str = "all", root: Path = ROOT) -> dict[str, str]:
    """A worker's environment, importing lstm_jax and benchmarks from the checkout `root`. `malloc`:
    "ours" = only lstm_jax tunes glibc malloc (on import, its default), "all" = every framework gets the
    same setting (GLIBC_TUNABLES), "none" = nobody does."""
    if malloc not in MALLOC_MODES:
        raise ValueError(f"malloc must be one of {tuple(MALLOC_MODES)}, got {malloc!r}")
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("GLIBC_TUNABLES", None)
    env.pop("LSTM_JAX_TUNE_MALLOC", None)
    if malloc == "all":
        env["GLIBC_TUNABLES"] = GLIBC_TUNABLES  # lstm_jax.runtime's setting, for any process
    elif malloc == "none" or peer is None or not peer.startswith("lstm_jax"):
        # The Flax worker imports lstm_jax (for the shared loss and optimizer), which would tune it too.
        env["LSTM_JAX_TUNE_MALLOC"] = "0"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # On a GPU several JAX workers live at once: each takes what it needs, not JAX's default 75% up front.
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if peer is not None and peer.startswith("keras"):
        env["KERAS_BACKEND"] = "jax" if peer == "keras_jax" else "tensorflow"
    if peer == "lstm_jax_dp":
        from benchmarks.peers.lstm_jax_peer import data_parallel_xla_flags

        env["XLA_FLAGS"] = data_parallel_xla_flags(env.get("XLA_FLAGS", ""))
    return env


class Worker:
    """A running `benchmarks.worker` process and its replies; `root`: the checkout it runs from (another
    revision's, for `benchmarks.ab_trees`)."""

    def __init__(
        self, peer: str, shape: str, timeout: float, malloc: str = "all", root: Path = ROOT
    ):
        self.peer, self.timeout = peer, timeout
        argv = [sys.executable, "-m", "benchmarks.worker", peer, shape]
        self.start(argv, env=child_env(peer, malloc, root), cwd=root)

    def start(self, argv: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> None:
        """Starts `argv` in `cwd` with line-buffered pipes for the replies, stderr kept in a temporary
        file for `exit_reason`, and the reader thread."""
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            bufsize=1,
        )
        self.start_reader()

    def start_reader(self) -> None:
        """Reads the worker's stdout in a thread, so that `read` can give up after `timeout` seconds (a
        blocking `readline` waited forever on a hung worker)."""
        self.lines: queue.Queue[str] = queue.Queue()

        def pump() -> None:
            for line in self.proc.stdout:
                self.lines.put(line)
            self.lines.put("")  # end of output

        threading.Thread(target=pump, daemon=True).start()

    def read(self) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.proc.kill()  # hung: it would go on taking the cores from the others
                return {"status": "failed", "reason": f"timed out: no reply in {self.timeout:g} s"}
            if not line:
                return {"status": "failed", "reason": self.exit_reason()}
            if line.startswith(PREFIX):
                return json.loads(line[len(PREFIX) :])

    def ask(self, cmd: dict) -> dict:
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        except OSError:
            # It died while idle (the out-of-memory killer's usual pick): BrokenPipeError.
            return {"status": "failed", "reason": self.exit_reason()}
        return self.read()

    def exit_reason(self) -> str:
        """Why the worker's output ended: its exit status (a signal: SIGKILL is most often the kernel's
        out-of-memory killer) and its last stderr line (an uncaught exception's type and message)."""
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        if code is not None and code < 0:
            status = f"killed by signal {-code}"
            if -code == signal.SIGKILL:
                status += " (SIGKILL: out of memory?)"
        else:
            status = f"exit code {code}"
        self.log.seek(0)
        lines = [x.strip() for x in self.log.read().splitlines() if x.strip()]
        return f"worker exited, {status}" + (f": {lines[-1][:300]}" if lines else "")

    def close(self) -> dict:
        reply = {}
        if self.proc.poll() is None:
            try:
                reply = self.ask({"cmd": "quit"})
            except (BrokenPipeError, OSError):
                reply = {}
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        return reply


def run_child_json(args: list[str], timeout: float = 600) -> dict:
    out = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    for line in out.stdout.splitlines():
        if line.startswith(PREFIX):
            return json.loads(line[len(PREFIX) :])
    raise RuntimeError(f"{args} printed no result: {out.stderr[-800:]}")


def summarize(times: list[float]) -> dict:
    ts = sorted(times)
    q = statistics.quantiles(ts, n=4, method="inclusive") if len(ts) >= 2 else [ts[0]] * 3
    return {
        "median_ms": 1e3 * statistics.median(ts),
        "p25_ms": 1e3 * q[0],
        "p75_ms": 1e3 * q[2],
        "min_ms": 1e3 * ts[0],
        "max_ms": 1e3 * ts[-1],
        "n": len(ts),
    }


def bench_shape(shape_name: str, peers: list[str], args: argparse.Namespace) -> dict:
    """Times every peer on one shape, interleaved; returns `{peer: result}`."""
    results: dict[str, dict] = {}
    workers: dict[str, Worker] = {}
    for peer in peers:  # start and compile one at a time, so compile times are not contended
        w = Worker(peer, shape_name, args.timeout, args.malloc)
        reply = w.read()
        if reply.get("status") != "ready":
            results[peer] = reply
            w.close()
            print(
                f"  {shape_name} {peer}: {reply.get('status')}: {reply.get('reason')}", flush=True
            )
            continue
        workers[peer] = w
        results[peer] = {**reply, "times": []}
        compiled = reply.get("first_step_compile")
        print(
            f"  {shape_name} {peer}: {reply['param_count']:,} params, "
            f"first step {reply['first_step_s']:.2f} s"
            + (f" (XLA compile {compiled['xla_compile_s']:.2f} s)" if compiled else ""),
            flush=True,
        )
    steps = {
        p: max(1, min(50, round(args.round_seconds / max(results[p]["second_step_s"], 1e-4))))
        for p in workers
    }
    order = list(workers)
    for rnd in range(args.rounds + 1):  # round 0 is a discarded warm-up
        if not order:  # every peer unavailable for this shape
            break
        for peer in order[rnd % len(order) :] + order[: rnd % len(order)]:
            reply = workers[peer].ask({"cmd": "time", "steps": steps[peer]})
            if "times" not in reply:
                # Failed mid-run: kept with its start's numbers, minus a median.
                results[peer] = {**results[peer], **reply}
                workers.pop(peer).close()
                order.remove(peer)
                print(f"  {shape_name} {peer}: failed: {reply.get('reason')}", flush=True)
                continue
            if rnd > 0:
                results[peer]["times"].extend(reply["times"])
            time.sleep(0.05)  # let the previous framework's worker threads go idle
        if not order:
            break
    if shape_name == "A" and args.generate:
        gen = {
            "streams": [1, 64],
            "length": args.gen_length,
            "tutorial_length": args.tutorial_length,
            "modes": args.gen_modes.split(","),
        }
        for peer in ("lstm_jax", "keras_jax", "keras_tf"):
            if peer in workers:
                reply = workers[peer].ask({"cmd": "generate", **gen})
                if "status" in reply:  # it failed (or its worker died): the step's results stand
                    results[peer]["generation_failed"] = reply.get("reason", "")
                    print(f"  A {peer} generation: failed: {reply.get('reason')}", flush=True)
                else:
                    results[peer]["generation"] = reply
    for peer, w in workers.items():
        results[peer].update(w.close())
        results[peer].update(summarize(results[peer]["times"]))
    return results


def _tuned_text(report: dict) -> str:
    """Which workers ran with lstm_jax's malloc setting: every one with `--malloc all` (GLIBC_TUNABLES);
    otherwise those whose `import lstm_jax` applied it, as they reported it (it is left off where JAX runs on
    a GPU), or (runs saved before they reported it) what `--malloc` asked for."""
    mode = report["args"].get("malloc", "ours")
    seen = {
        p: r["malloc_tuned"]
        for res in report["shapes"].values()
        for p, r in res.items()
        if "malloc_tuned" in r
    }
    if mode == "all" or not seen:
        return MALLOC_MODES[mode]
    return ", ".join(p for p in seen if seen[p]) or "nobody"


def _jax_device_text(report: dict) -> str:
    """' on <GPU>' where the ceiling's JAX matmul ran on an accelerator (older runs: on the CPU)."""
    c = report["ceiling"]
    return "" if c.get("jax_backend", "cpu") == "cpu" else f" on {c['jax_device']}"


def _target_lines(report: dict) -> list[str]:
    """Per shape, how far the speed target is from the machine's limits: the step's FLOPs at the measured
    matmul ceiling take `flops / ceiling` ms; the target (the fastest peer's ms / TARGET_SPEEDUP) needs the
    whole step, every FLOP of it, at `bound / target` of the ceiling. lstm_jax's own share is beside it,
    and both again as fractions of the FMA peak (`ceiling.py`) where it was measured: a target that needs
    100% of that peak or more is out of reach on the machine, whatever the code."""
    ceiling = report["ceiling"]["ceiling_gflops"]
    peak = report["ceiling"].get("fma_peak_gflops")
    rows = []
    for name, res in report["shapes"].items():
        fastest_peer = fastest_peer_ms(report, name)
        if fastest_peer is None:
            continue
        fastest = fastest_peer[1]
        target = fastest / TARGET_SPEEDUP
        flops = get_shape(name).train_flops()
        bound = flops / (ceiling * 1e9) * 1e3
        ours = res.get("lstm_jax", {}).get("median_ms")
        share = f"{100 * bound / ours:.0f}%" if ours else "-"
        if peak:
            need_peak = f"{100 * flops / (target / 1e3) / (peak * 1e9):.0f}%"
            ours_peak = f"{100 * flops / (ours / 1e3) / (peak * 1e9):.0f}%" if ours else "-"
        else:
            need_peak = ours_peak = "-"
        rows.append(
            f"| {name} | {fastest:.1f} | {target:.1f} | {bound:.1f} | {100 * bound / target:.0f}% "
            f"| {share} | {need_peak} | {ours_peak} |"
        )
    if not rows:
        return []
    peak_text = (
        f"; the last two columns are the same GFLOP/s against the {peak:.0f} GFLOP/s FMA peak"
        if peak
        else ""
    )
    return [
        "",
        f"The target, {TARGET_SPEEDUP}x the fastest peer, against the ceiling: the step's FLOPs at "
        f"{ceiling:.0f} GFLOP/s take the bound's ms, so the target needs the whole step at bound / "
        f"target of the ceiling (lstm_jax: bound / its ms){peak_text}.",
        "",
        f"| shape | fastest peer ms | {TARGET_SPEEDUP}x target ms | ceiling bound ms | target needs "
        "| lstm_jax reaches | target needs, of FMA peak | lstm_jax, of FMA peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
    ]


def _first_step_lines(report: dict) -> list[str]:
    """Where the first step of each JAX-compiled peer went: JAX's tracing, lowering and XLA's compilation
    (`benchmarks.worker.COMPILE_EVENTS`), and the rest (running the step; on a GPU also loading its
    kernels). Runs saved before the workers measured it have no such rows."""
    rows = []
    for name, res in report["shapes"].items():
        for peer, r in res.items():
            c = r.get("first_step_compile")
            if not c or "first_step_s" not in r:
                continue
            rest = r["first_step_s"] - c["trace_s"] - c["lower_s"] - c["xla_compile_s"]
            rows.append(
                f"| {name} | {LABELS.get(peer, peer)} | {r['first_step_s']:.2f} | {c['trace_s']:.2f} "
                f"| {c['lower_s']:.2f} | {c['xla_compile_s']:.2f} | {rest:.2f} |"
            )
    if not rows:
        return []
    return [
        "",
        "First step of the JAX-compiled frameworks, seconds: JAX's tracing and lowering, XLA's "
        "compilation (on a GPU its autotuning included), and the rest (running the step).",
        "",
        "| shape | framework | first step | trace | lower | XLA compile | rest |",
        "|---|---|---:|---:|---:|---:|---:|",
        *rows,
    ]


def _peak_text(report: dict) -> str:
    # absent in results saved before the benchmark measured it
    peak = report["ceiling"].get("fma_peak_gflops")
    if not peak:
        return ""
    text = f"; fp32 FMA peak {peak:.0f} GFLOP/s (vector FMAs in registers, all cores)"
    # numpy's matmul runs on the same CPU cores: a peak under it was not the peak. (So it was on an Intel
    # host whose kernel build split its 512-bit vectors in two: 224 against numpy's 306; 2026-12-04.)
    if peak < report["ceiling"]["numpy_gflops"]:
        text += (
            f" - WARNING: under numpy's {report['ceiling']['numpy_gflops']:.0f}, so not the cores' peak"
            " (a native kernel built below the CPU's vector width, see lstm_jax.native._vector_flags,"
            " or a probe disturbed by other work); the FMA-peak columns below bound nothing"
        )
    return text


def cpu_description() -> dict:
    """What kind of CPU host a run was on, from `/proc/cpuinfo` and sysfs (Linux; `{}` elsewhere): the
    model name, family/model/stepping, the vector extensions that set the kernel's speed, and the cache
    sizes. The runs in benchmarks/README.md come from several kinds of host, and the name a VM reports
    ("Intel(R) Xeon(R) Processor") does not tell them apart; these fields do."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    first = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor's block is enough: the cores of one host are alike
        key, _, value = line.partition(":")
        first[key.strip()] = value.strip()
    flags = set(first.get("flags", "").split())
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
    caches = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if kind != "Instruction":
            caches[f"L{level}"] = size
    return {
        "model_name": first.get("model name"),
        "vendor": first.get("vendor_id"),
        "family_model_stepping": "/".join(
            first.get(k, "?") for k in ("cpu family", "model", "stepping")
        ),
        "isa": [f for f in wanted if f in flags],
        "caches": caches,  # as cpu0 sees them: L1/L2 per core, L3 shared
    }


def _cpu_text(report: dict) -> str:
    cpu = report.get("cpu") or {}  # runs saved before 2026-12-04 have no "cpu"
    if not cpu:
        return ""
    caches = ", ".join(f"{k} {v}" for k, v in cpu.get("caches", {}).items())
    return (
        f" ({cpu.get('model_name')}, family/model/stepping {cpu.get('family_model_stepping')}; "
        f"{' '.join(cpu.get('isa', [])) or 'no AVX2'}; {caches})"
    )


def _versions_text(report: dict) -> str:
    """The installed packages' versions as the table's header prints them ("" for runs saved before
    reports recorded them)."""
    versions = {k: v for k, v in report.get("versions", {}).items() if v != "missing"}
    return (
        (" Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")
        if versions
        else ""
    )


def markdown(report: dict) -> str:
    ceiling = report["ceiling"]["ceiling_gflops"]
    lines = [
        f"Machine: {report['machine']}{_cpu_text(report)}; fp32 matmul ceiling {ceiling:.0f} GFLOP/s "
        f"(numpy {report['ceiling']['numpy_gflops']:.0f}, "
        f"JAX{_jax_device_text(report)} {report['ceiling']['jax_gflops']:.0f}, "
        f"{report['ceiling']['n']}^3){_peak_text(report)}. Per-step times: median [p25-p75] over "
        f"{report['args']['rounds']} interleaved rounds; "
        f"glibc malloc tuned for: {_tuned_text(report)}.{_versions_text(report)}",
        "",
        "| shape | framework | params | ms/step | seq/s | vs fastest peer | GFLOP/s | % ceiling "
        "| first step s | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, res in report["shapes"].items():
        shape = get_shape(name)
        fastest_peer = fastest_peer_ms(report, name)
        fastest = None if fastest_peer is None else fastest_peer[1]
        for peer, r in res.items():
            label = LABELS.get(peer, peer)
            if "median_ms" not in r:
                lines.append(
                    f"| {name} | {label} | | {r.get('status', 'failed')}: "
                    f"{str(r.get('reason', ''))[:80]} | | | | | | |"
                )
                continue
            ms = r["median_ms"]
            gflops = shape.train_flops() / (ms / 1e3) / 1e9
            ratio = f"{fastest / ms:.2f}x" if fastest else "-"
            lines.append(
                f"| {name} {shape.title} | {label} | {r['param_count']:,} | {ms:.1f} "
                f"[{r['p25_ms']:.1f}-{r['p75_ms']:.1f}] | {shape.batch / (ms / 1e3):.0f} | {ratio} "
                f"| {gflops:.0f} | {100 * gflops / ceiling:.0f}% | {r['first_step_s']:.2f} "
                f"| {r.get('peak_rss_mb', float('nan')):.0f} |"
            )
    lines += _target_lines(report)
    lines += _first_step_lines(report)
    gen_lines = []
    for res in report["shapes"].values():
        for peer, r in res.items():
            if "generation_failed" in r:
                gen_lines.append(
                    f"| {LABELS.get(peer, peer)} | failed: {str(r['generation_failed'])[:80]} | | | |"
                )
            for kind, g in (r.get("generation") or {}).items():
                gen_lines.append(
                    f"| {LABELS.get(peer, peer)} | {kind} | {g['streams']} | {g['chars_per_s']:.0f} "
                    f"| {g['first_call_s']:.2f} |"
                )
    if gen_lines:
        lines += [
            "",
            "Generation with the char model (A): `window` runs the LSTMs over the last "
            f"{get_shape('A').time} characters for every new one (the tutorial's semantics), compiled "
            "into one scan; `stateful` carries the state (one step per character) through "
            "`generate_stateful` (on CPU the native kernel's one-call loop), `stateful-xla` the same "
            "as a `lax.scan`; `tutorial` is one `model.predict` per character.",
            "",
            "| framework | mode | streams | chars/s | first call s |",
            "|---|---|---:|---:|---:|",
            *gen_lines,
        ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="A,B,C,D", help="comma-separated shape names (A-D, or tiny)")
    p.add_argument(
        "--peers",
        # not lstm_jax_cudnn (NVIDIA GPUs only) or lstm_jax_unroll8 (the GPU session's loop probe)
        default=",".join(p for p in PEERS if p not in ("lstm_jax_cudnn", "lstm_jax_unroll8")),
        help=f"comma-separated frameworks, of {','.join(PEERS)}",
    )
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--round-seconds", type=float, default=1.0, help="time per peer per round")
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for one reply")
    p.add_argument("--no-generate", dest="generate", action="store_false")
    p.add_argument("--gen-length", type=int, default=200, help="compiled generation length")
    p.add_argument("--tutorial-length", type=int, default=20, help="predict-loop characters")
    p.add_argument(
        "--gen-modes",
        default=",".join(GEN_MODES),
        help="lstm_jax generation modes to time (comma-separated; window is slow at long lengths)",
    )
    p.add_argument("--ceiling-n", type=int, default=2048, help="matmul size for the ceiling")
    p.add_argument(
        "--malloc",
        choices=list(MALLOC_MODES),
        default="all",
        help="glibc malloc tuning: all (every framework gets lstm_jax's setting: the fair default), ours"
        " (only lstm_jax, as each framework runs out of the box), or none",
    )
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<date>.json)")
    p.add_argument(
        "--show",
        default=None,
        metavar="JSON",
        help="print the tables of a saved run (re-rendered by this version) and exit; runs nothing",
    )
    return p.parse_args(argv)


def show(path: str) -> int:
    """Prints the markdown of a saved run; 2 with a one-line error if it cannot be read as one."""
    try:
        report = json.loads(Path(path).read_text())
        table = markdown(report)
    except FileNotFoundError:
        print(f"error: no such file {path!r}; give a JSON written by --out", file=sys.stderr)
        return 2
    except OSError as e:
        print(
            f"error: cannot read {path!r} ({e.strerror}); give a JSON written by --out",
            file=sys.stderr,
        )
        return 2
    except (
        ValueError,  # JSONDecodeError and UnicodeDecodeError too; and a number field holding text
        ArithmeticError,  # a zero ms or ceiling
        KeyError,
        TypeError,
        AttributeError,
    ) as e:
        print(
            f"error: {path!r} is not a benchmark run's JSON ({type(e).__name__}: {e}); give a file "
            "written by --out",
            file=sys.stderr,
        )
        return 2
    print(table)
    return 0


def out_problem(path: Path) -> str | None:
    """Why the run's JSON could not be written at `path`, or None: checked before any measuring, since
    the file is first written after the first shape's minutes of work."""
    if path.is_dir():
        return f"--out={str(path)!r} is a directory; give a file path"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f"{path.name}.", suffix=".probe"):
            pass
    except OSError as e:
        return f"--out={str(path)!r} cannot be written ({e.strerror or e})"
    return None


def default_out(now: dt.datetime, directory: Path) -> Path:
    """The JSON path of a run without `--out`: `<UTC date>T<HHMM>.json` in `directory`, with `-2`, `-3`, ...
    after it where that file exists. The minute alone named a second run started within the minute of a
    finished one (a short run: one shape, one peer) the same, and it overwrote the first's results."""
    stem = f"{now:%Y-%m-%dT%H%M}"
    path, n = directory / f"{stem}.json", 1
    while path.exists():
        n += 1
        path = directory / f"{stem}-{n}.json"
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.show:
        return show(args.show)
    # Each name once: a repeated peer started a second worker that replaced the first (left running), and
    # a repeated shape was measured again over the first's results.
    peers = list(dict.fromkeys(p.strip() for p in args.peers.split(",") if p.strip()))
    for p in peers:
        if p not in PEERS:
            print(f"error: unknown peer {p!r}; use some of {','.join(PEERS)}", file=sys.stderr)
            return 2
    shapes = list(dict.fromkeys(s.strip() for s in args.shapes.split(",") if s.strip()))
    for s in shapes:
        try:
            get_shape(s)
        except KeyError:
            print(f"error: unknown shape {s!r}; use A, B, C, D or tiny", file=sys.stderr)
            return 2
    problem = None
    if not peers:
        problem = f"--peers={args.peers!r} names no peer; use some of {','.join(PEERS)}"
    elif not shapes:
        problem = f"--shapes={args.shapes!r} names no shape; use some of A, B, C, D, tiny"
    elif args.rounds < 1:
        problem = f"--rounds={args.rounds} must be >= 1"
    elif not args.round_seconds > 0:
        problem = f"--round-seconds={args.round_seconds} must be > 0"
    elif args.ceiling_n < 1:
        # A 0x0 matmul's ceiling of 0 GFLOP/s ended the table in ZeroDivisionError.
        problem = f"--ceiling-n={args.ceiling_n} must be >= 1"
    elif not args.timeout > 0:  # no reply could arrive in time: every peer "timed out" at once
        problem = f"--timeout={args.timeout} must be > 0"
    elif args.generate and "A" in shapes and min(args.gen_length, args.tutorial_length) < 1:
        # 0 characters were "generated" at 0 chars/s and put in the table as measured; fewer failed
        # each peer's generation, both after shape A's minutes of timing.
        flag = "--gen-length" if args.gen_length < 1 else "--tutorial-length"
        value = args.gen_length if args.gen_length < 1 else args.tutorial_length
        problem = f"{flag}={value} must be >= 1"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    bad = set(args.gen_modes.split(",")) - set(GEN_MODES)
    if bad:
        print(
            f"error: unknown --gen-modes {','.join(sorted(bad))}; use {', '.join(GEN_MODES)}",
            file=sys.stderr,
        )
        return 2
    now = dt.datetime.now(dt.UTC)
    out = Path(args.out) if args.out else default_out(now, ROOT / "benchmarks" / "results")
    problem = out_problem(out)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    print("measuring the fp32 matmul ceiling ...", flush=True)
    ceiling = run_child_json(["-m", "benchmarks.ceiling", str(args.ceiling_n)])
    report = {
        "date": now.isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.system()}",
        "cpu": cpu_description(),
        "python": platform.python_version(),
        "versions": package_versions(),
        "args": vars(args),
        "ceiling": ceiling,
        "shapes": {},
    }
    report["flops"] = {}
    # The file is rewritten after each shape: a run cut short keeps the shapes it measured.
    for s in shapes:
        print(f"shape {s}:", flush=True)
        report["shapes"][s] = bench_shape(s, peers, args)
        report["flops"][s] = get_shape(s).train_flops()
        report["markdown"] = markdown(report)
        write_json(str(out), report)
    print(report["markdown"])
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
