"""impl="cudnn" on an NVIDIA GPU: parity with impl="scan", then the two timed side by side.

    python -m benchmarks.gpu_check                    # the four shapes' LSTM stacks; exit 1 on a mismatch
    python -m benchmarks.gpu_check --out gpu.json     # also save every number
    python -m benchmarks.run --peers lstm_jax,lstm_jax_cudnn,flax,torch,torch_compile --no-generate
                                                      # then the whole training steps against the peers

For each benchmark shape (`benchmarks/shapes.py`) it builds the shape's LSTM stack (`lstm_jax.nn.StackedLSTM`,
the embedding's output as input) and compares impl="cudnn" with impl="scan": outputs, final states and the
gradients of a loss of both with respect to the inputs and every parameter, without a mask, with
post-padding (random lengths, one row empty), with pre-padding, and (first layer only) in reverse. It runs
at `jax_default_matmul_precision="highest"`, so that neither cuDNN nor XLA uses TF32; a difference is the
largest absolute error divided by the largest magnitude of the reference. Then it times one forward +
backward of each stack per impl, interleaved, at JAX's default precision (TF32 allowed, as users run it).

`--emulate` stands JAX's reference of the cuDNN op (`jax.experimental.rnn.lstm_ref`) in for cuDNN, so the
script itself can be checked off a GPU (the test suite does, at `--max-time 4`). Exit status 2 when
impl="cudnn" cannot run here (no NVIDIA GPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import at_least
from benchmarks.shapes import SHAPES, Shape, get_shape, shape_list_arg
from lstm_jax import core
from lstm_jax import nn as lnn
from lstm_jax.logging_utils import write_json

FWD_TOL = 1e-4  # relative to the reference's largest magnitude, at "highest" precision
GRAD_TOL = 1e-3


def _emulate_cudnn() -> None:
    from jax.experimental import rnn

    def reference(xs, h0, c0, weights, lengths, features, hidden):
        w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(weights, features, hidden, 1, False)
        ys, h, c = rnn.lstm_ref(
            xs, h0[None], c0[None], w_ih, w_hh, b_ih, b_hh, lengths, features, hidden, 1, 0.0, False
        )
        return ys, h[0], c[0]

    core._cudnn_rnn = reference
    core._cudnn_unavailable_reason = lambda: None


def _masks(batch: int, time_steps: int, rng: np.random.Generator) -> dict[str, np.ndarray | None]:
    lengths = rng.integers(1, time_steps + 1, size=batch)
    lengths[0], lengths[-1] = 0, time_steps  # an empty row and a full one
    post = np.arange(time_steps)[None, :] < lengths[:, None]
    return {"none": None, "post": post, "pre": post[:, ::-1].copy()}


def _stack_fn(shape, impl: str, reverse: bool = False):
    """`(params, xs, mask) -> (loss, (outputs, h, c))` of the shape's LSTM stack with `impl`."""
    model = lnn.StackedLSTM(shape.in_features, shape.lstm, rngs=nnx.Rngs(0), impl=impl)
    graphdef, params = nnx.split(model, nnx.Param)

    def fn(params, xs, mask):
        m = nnx.merge(graphdef, params)
        if reverse:  # the first layer alone, walking time backwards
            layer = m.layers[0]
            p = {k: getattr(layer, k)[...] for k in ("kernel", "recurrent_kernel", "bias")}
            outs, (h, c) = core.lstm_layer(p, xs, mask=mask, reverse=True, impl=impl)
        else:
            outs, states = m(xs, mask=mask)
            h, c = states[-1]
        w = jnp.linspace(-1.0, 1.0, outs.size, dtype=outs.dtype).reshape(outs.shape)
        return jnp.sum(w * outs) + jnp.sum(h * h) + jnp.sum(jnp.tanh(c)), (outs, h, c)

    return fn, params


def _rel_err(ref, got) -> float:
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    scale = max(float(np.max(np.abs(ref))), 1e-30)
    return float(np.max(np.abs(ref - got))) / scale


def parity(shape: Shape, max_time: int, rng: np.random.Generator) -> list[dict]:
    t = min(shape.time, max_time)
    xs = jnp.asarray(rng.standard_normal((shape.batch, t, shape.in_features), dtype=np.float32))
    rows = []
    cases = [(name, m, False) for name, m in _masks(shape.batch, t, rng).items()]
    cases.append(("post, reverse", cases[1][1], True))
    compiled = {}  # one jitted function per (impl, reverse); the mask is an argument
    for name, mask, reverse in cases:
        out = {}
        for impl in ("scan", "cudnn"):
            if (impl, reverse) not in compiled:
                fn, params = _stack_fn(shape, impl, reverse)
                grad_fn = jax.jit(jax.value_and_grad(fn, argnums=(0, 1), has_aux=True))
                compiled[impl, reverse] = grad_fn, params
            grad_fn, params = compiled[impl, reverse]
            (_, aux), grads = grad_fn(params, xs, None if mask is None else jnp.asarray(mask))
            out[impl] = (aux, grads)
        (aux_s, g_s), (aux_c, g_c) = out["scan"], out["cudnn"]
        fwd = max(_rel_err(a, b) for a, b in zip(aux_s, aux_c, strict=True))
        grad = max(
            _rel_err(a, b) for a, b in zip(jax.tree.leaves(g_s), jax.tree.leaves(g_c), strict=True)
        )
        rows.append(
            {
                "shape": shape.name,
                "time": t,
                "case": name,
                "forward_rel_err": fwd,
                "grad_rel_err": grad,
                "ok": fwd <= FWD_TOL and grad <= GRAD_TOL,
            }
        )
    return rows


def timing(shape: Shape, max_time: int, rounds: int, rng: np.random.Generator) -> dict:
    t = min(shape.time, max_time)
    xs = jnp.asarray(rng.standard_normal((shape.batch, t, shape.in_features), dtype=np.float32))
    fns = {}
    for impl in ("scan", "cudnn"):
        fn, params = _stack_fn(shape, impl)
        grad_fn = jax.jit(jax.value_and_grad(fn, argnums=(0, 1), has_aux=True))
        jax.block_until_ready(grad_fn(params, xs, None))  # compile
        fns[impl] = (grad_fn, params)
    times = {impl: [] for impl in fns}
    for _ in range(rounds):
        for impl, (grad_fn, params) in fns.items():
            t0 = time.perf_counter()
            for _ in range(10):
                res = grad_fn(params, xs, None)
            jax.block_until_ready(res)
            times[impl].append((time.perf_counter() - t0) / 10 * 1e3)
    med = {impl: statistics.median(v) for impl, v in times.items()}
    return {
        "shape": shape.name,
        "time": t,
        "scan_ms": med["scan"],
        "cudnn_ms": med["cudnn"],
        "speedup": med["scan"] / med["cudnn"],
        "all_ms": times,
    }


def _save(path: str, result: dict) -> None:
    """Writes `result` to `path` (when given) whole or not at all: a run killed mid-write keeps the last
    complete file."""
    if path:
        write_json(path, result)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--shapes",
        default=",".join(SHAPES),
        type=shape_list_arg,
        help="comma-separated shape names",
    )
    p.add_argument(
        "--max-time", type=at_least(1), default=10_000, help="cut every shape's sequence length"
    )
    p.add_argument("--rounds", type=at_least(1), default=5, help="interleaved timing rounds")
    p.add_argument("--no-timing", dest="timing", action="store_false")
    p.add_argument("--emulate", action="store_true", help="JAX's reference op instead of cuDNN")
    p.add_argument("--out", default="", help="JSON file for every number")
    args = p.parse_args(argv)
    if args.emulate:
        _emulate_cudnn()
    reason = core._cudnn_unavailable_reason()
    if reason is not None:
        print(f"error: impl='cudnn' cannot run here: {reason}", file=sys.stderr)
        return 2
    dev = jax.devices()[0]
    print(f"jax {jax.__version__} on {dev.device_kind} ({jax.default_backend()})")
    rng = np.random.default_rng(0)
    shapes = [get_shape(s) for s in args.shapes]
    result = {"device": dev.device_kind, "jax": jax.__version__, "emulated": args.emulate}
    print(
        "\n| shape | T | case | forward rel. err | gradient rel. err | ok |\n|---|---:|---|---:|---:|---|",
        flush=True,
    )
    rows = result["parity"] = []
    for s in shapes:  # each row printed as it comes, so that a run cut short keeps what it measured
        with jax.default_matmul_precision("highest"):
            new_rows = parity(s, args.max_time, rng)
        rows.extend(new_rows)
        for r in new_rows:
            print(
                f"| {r['shape']} | {r['time']} | {r['case']} | {r['forward_rel_err']:.2e} | "
                f"{r['grad_rel_err']:.2e} | {'yes' if r['ok'] else 'NO'} |",
                flush=True,
            )
        _save(args.out, result)
    if args.timing:
        print("\nLSTM stack forward + backward, ms (median of interleaved rounds of 10 calls)")
        print(
            "| shape | T | scan | cudnn | cudnn speed-up |\n|---|---:|---:|---:|---:|", flush=True
        )
        result["timing"] = []
        for s in shapes:
            r = timing(s, args.max_time, args.rounds, rng)
            result["timing"].append(r)
            print(
                f"| {r['shape']} | {r['time']} | {r['scan_ms']:.2f} | {r['cudnn_ms']:.2f} | "
                f"{r['speedup']:.2f}x |",
                flush=True,
            )
            _save(args.out, result)
    ok = all(r["ok"] for r in rows)
    print("\nparity: " + ("every case within tolerance" if ok else "MISMATCH (see the table)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
