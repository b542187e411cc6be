"""One benchmark process: builds one framework's model for one shape and times training steps on request.

The driver (`benchmarks/run.py`) starts one worker per (framework, shape) so that each framework keeps its
own process (Keras' backend is fixed at import) and peak memory is per model. Protocol: the worker prints
lines starting with `@@BENCH ` followed by JSON on stdout (anything else is framework chatter) and reads one
JSON command per line on stdin:

    {"cmd": "time", "steps": n}        -> {"times": [seconds per step, ...]}
    {"cmd": "generate", ...}           -> generation speed (char model only)
    {"cmd": "quit"}                    -> {"peak_rss_mb": ..., "xla_bytes": ...} and exit
                                          (peak_rss_mb: before any "generate", the training's)

Usage (normally only through the driver): `python -m benchmarks.worker PEER SHAPE`.
"""

from __future__ import annotations

import json
import resource
import sys
import time
import traceback
from types import ModuleType

PEERS = (
    "lstm_jax",
    "lstm_jax_dp",
    "lstm_jax_cudnn",
    "lstm_jax_unroll8",
    "flax",
    "keras_jax",
    "keras_tf",
    "keras_tf_xla",
    "torch",
    "torch_compile",
)
PREFIX = "@@BENCH "


def _send(obj: dict) -> None:
    sys.stdout.write(PREFIX + json.dumps(obj) + "\n")
    sys.stdout.flush()


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _malloc_tuned() -> bool:
    """Whether `import lstm_jax` applied its glibc malloc setting in this worker (it leaves it off where JAX
    runs on a GPU or TPU). `--malloc all` gives the setting to every worker through GLIBC_TUNABLES instead;
    the driver knows that itself."""
    runtime = sys.modules.get("lstm_jax.runtime")
    return runtime is not None and runtime.malloc_tuned()


def _peak_rss_mb() -> float:
    """This process's peak resident memory, MB: Linux's VmHWM, which starts afresh at exec. `ru_maxrss`
    does not: Linux carries the parent's resident size at the fork into the child's, so a worker started by
    a large process (a pytest worker, a driver holding arrays) reported at least that parent's size."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# JAX's compile phases, as its `jax.monitoring` duration events name them, and the keys they are summed under.
COMPILE_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
    "/jax/core/compile/backend_compile_duration": "xla_compile_s",
}


# lstm_jax's peers: each one's keyword arguments for `lstm_jax_peer.build`.
LSTM_JAX_VARIANTS = {
    "lstm_jax": {},
    "lstm_jax_dp": {"data_parallel": True},
    "lstm_jax_cudnn": {"impl": "cudnn"},
    "lstm_jax_unroll8": {"unroll": 8},
}
# The peers whose training step JAX compiles.
JAX_PEERS = (*LSTM_JAX_VARIANTS, "flax", "keras_jax")


def _watch_jax_compiles(peer: str) -> dict[str, float] | None:
    """A dict that sums, from now on, the seconds this process spends in each of JAX's compile phases
    (`COMPILE_EVENTS`: tracing to a jaxpr, lowering to StableHLO, XLA's compilation, which on a GPU
    includes its autotuning); None for a peer that JAX does not compile (PyTorch, Keras on TensorFlow).
    The first step's share of these says where a slow first step goes; what is left of it is running the
    step (and, on a GPU, loading its kernels)."""
    if peer not in JAX_PEERS:
        return None
    import jax

    sums = dict.fromkeys(COMPILE_EVENTS.values(), 0.0)

    def listener(event: str, duration: float, **_) -> None:
        key = COMPILE_EVENTS.get(event)
        if key is not None:
            sums[key] += duration

    jax.monitoring.register_event_duration_secs_listener(listener)
    return sums


def load(peer: str) -> tuple[ModuleType, dict]:
    """Returns `(module, build_kwargs)` for a peer name. The Keras backend must already be set."""
    if peer in LSTM_JAX_VARIANTS:
        from benchmarks.peers import lstm_jax_peer as mod

        return mod, dict(LSTM_JAX_VARIANTS[peer])
    if peer == "flax":
        from benchmarks.peers import flax_peer as mod

        return mod, {}
    if peer.startswith("keras"):
        from benchmarks.peers import keras_peer as mod

        return mod, ({"jit_compile": True} if peer == "keras_tf_xla" else {"jit_compile": False})
    if peer.startswith("torch"):
        from benchmarks.peers import torch_peer as mod

        return mod, {"compile": peer == "torch_compile"}
    raise ValueError(f"unknown peer {peer!r}; one of {', '.join(PEERS)}")


def main(peer: str, shape_name: str) -> int:
    from benchmarks.shapes import get_shape

    shape = get_shape(shape_name)
    try:
        mod, kwargs = load(peer)
        missing = mod.available(**({"impl": kwargs["impl"]} if "impl" in kwargs else {}))
    except ImportError as e:
        missing = str(e)
    if missing:
        _send({"status": "missing", "reason": missing})
        return 0
    if peer == "keras_jax":
        kwargs = {}  # the JAX backend always jits the train function
    base_rss = _rss_mb()
    try:
        bench = mod.build(shape, **kwargs)
        compiles = _watch_jax_compiles(peer)
        t0 = time.perf_counter()
        bench.step()
        first = time.perf_counter() - t0
        compiles = None if compiles is None else dict(compiles)
        t0 = time.perf_counter()
        bench.step()
        second = time.perf_counter() - t0
    except Exception as e:  # a peer that does not work here is reported, not fatal
        _send({"status": "failed", "reason": f"{type(e).__name__}: {e}"[:500]})
        traceback.print_exc()
        return 0
    _send(
        {
            "status": "ready",
            "param_count": bench.param_count,
            "first_step_s": first,
            **({"first_step_compile": compiles} if compiles is not None else {}),
            "second_step_s": second,
            "base_rss_mb": base_rss,
            "malloc_tuned": _malloc_tuned(),
        }
    )
    # The peak before any generation: the training step's. The char model's generation (lstm_jax's, the
    # Keras tutorial loop) builds more models in this process; on shape A their memory would be counted
    # for those peers only.
    train_peak = None
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "time":
            times = []
            try:
                for _ in range(int(cmd["steps"])):
                    t0 = time.perf_counter()
                    bench.step()
                    times.append(time.perf_counter() - t0)
            except Exception as e:  # as at the first step: reported, not fatal
                _send({"status": "failed", "reason": f"{type(e).__name__}: {e}"[:500]})
                traceback.print_exc()
                return 0
            _send({"times": times})
        elif cmd["cmd"] == "generate":
            if train_peak is None:
                train_peak = _peak_rss_mb()
            try:
                _send(_generate(peer, shape, cmd))
            except Exception as e:  # reported; the worker still answers "quit" (peak memory)
                _send({"status": "failed", "reason": f"{type(e).__name__}: {e}"[:500]})
                traceback.print_exc()
        elif cmd["cmd"] == "quit":
            try:
                xla = bench.memory_bytes()
            except Exception:  # memory analysis is best-effort
                xla = None
            peak = _peak_rss_mb()
            reply = {"peak_rss_mb": peak if train_peak is None else train_peak, "xla_bytes": xla}
            if train_peak is not None:
                reply["peak_rss_with_generation_mb"] = peak
            _send(reply)
            return 0
    return 0


# lstm_jax's generation modes (benchmarks.run --gen-modes).
GEN_MODES = ("window", "stateful", "stateful-xla")


def _generate(peer: str, shape, cmd: dict) -> dict:
    out = {}
    if peer == "lstm_jax":
        from benchmarks.peers import lstm_jax_peer

        modes = cmd.get("modes", GEN_MODES)
        for streams in cmd["streams"]:
            if "window" in modes:
                out[f"window_{streams}"] = lstm_jax_peer.generation_speed(
                    shape, streams, cmd["length"]
                )
            for mode, impl in (("stateful", "auto"), ("stateful-xla", "xla")):
                if mode in modes:
                    out[f"{mode}_{streams}"] = lstm_jax_peer.stateful_generation_speed(
                        shape, streams, cmd["length"], impl=impl
                    )
    elif peer.startswith("keras"):
        from benchmarks.peers import keras_peer

        out["tutorial_1"] = keras_peer.tutorial_generation_speed(shape, 1, cmd["tutorial_length"])
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
