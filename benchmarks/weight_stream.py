"""How fast can one-stream generation be? A chain of `[1, H] @ [H, 4H]` products, as one character of
stateful generation runs, with the weights of 1 to 4 such matrices.

    python -m benchmarks.weight_stream --hidden 300

Every generated character multiplies one row by every weight matrix of the model (shape A's char model: 3
matrices of 300 x 1200, 4.3 MB), so one stream's speed is bounded by how fast the weights stream into the
core: from L2 while they fit, from L3 (or memory) beyond. Prints microseconds per step and the weight
bandwidth for each number of matrices, then the native kernel's generation (`lstm_jax.native.generate`,
greedy, one stream, a char model of two LSTM layers of `--hidden` units and `--vocab` outputs) in
microseconds per character for each thread count up to the cores (`--no-kernel` skips it).

    python -m benchmarks.weight_stream --spread --calls 40

times instead whole `generate_stateful` calls (`--length` characters, one stream, sampled, a char model of
two LSTM layers of `--hidden` units) with the native kernel's helper moved off the caller's CPU (as
shipped) and not moved (`LSTM_JAX_NATIVE_SPREAD=0`), interleaved call by call; prints each one's median,
quartiles and 90th percentile in ms.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from benchmarks import at_least
from benchmarks.floor import median_ms


def per_step_seconds(matrices: int, hidden: int, steps: int, repeats: int = 5) -> float:
    """Median seconds per step of `h <- tanh(h @ W_k)[:, :H]` over `matrices` matrices `[H, 4H]`."""
    keys = jax.random.split(jax.random.key(0), matrices)
    ws = [0.01 * jax.random.normal(k, (hidden, 4 * hidden)) for k in keys]

    @jax.jit
    def chain(ws):
        def step(h, _):
            for w in ws:
                h = jnp.tanh(h @ w)[:, :hidden]
            return h, None

        return jax.lax.scan(step, jnp.ones((1, hidden)), None, length=steps)[0]

    return median_ms(lambda: chain(ws).block_until_ready(), repeats) / 1e3 / steps


def kernel_per_char_seconds(
    hidden: int, vocab: int, steps: int, threads: int, repeats: int = 5
) -> float:
    """Median seconds per character of `lstm_jax.native.generate` for one greedy stream through two LSTM
    layers of `hidden` units and an output layer of `vocab` (random weights)."""
    from lstm_jax import native

    k = jax.random.split(jax.random.key(1), 5)
    g = 4 * hidden
    table = 0.1 * jax.random.normal(k[0], (vocab, g))
    layers = [
        {"recurrent_kernel": 0.05 * jax.random.normal(k[1], (hidden, g))},
        {
            "kernel": 0.05 * jax.random.normal(k[2], (hidden, g)),
            "recurrent_kernel": 0.05 * jax.random.normal(k[3], (hidden, g)),
            "bias": jnp.zeros((g,)),
        },
    ]
    for layer in layers:
        layer["h"] = layer["c"] = jnp.zeros((1, hidden))
    head = 0.05 * jax.random.normal(k[4], (hidden, vocab))
    gen = jax.jit(
        lambda first: native.generate(
            first, table, layers, head, jnp.zeros((vocab,)), steps, threads=threads
        )
    )
    first = jnp.zeros((1,), jnp.int32)
    return median_ms(lambda: gen(first).block_until_ready(), repeats) / 1e3 / steps


def spread_ab(hidden: int, vocab: int, length: int, calls: int) -> dict[str, list[float]]:
    """Seconds per `generate_stateful` call, with LSTM_JAX_NATIVE_SPREAD unset ("moved") and "0"
    ("not moved"), alternating call by call."""
    import os
    import time

    from flax import nnx

    from lstm_jax.generate import generate_stateful
    from lstm_jax.models import LanguageModel

    model = LanguageModel(
        vocab, (hidden, hidden), rngs=nnx.Rngs(0), input_mode="scalar", predict="all"
    )
    prime = jnp.zeros((1, 1), jnp.int32)
    key = jax.random.key(1)
    generate_stateful(model, prime, length, key=key, temperature=1.0).block_until_ready()

    def set_spread(value: str | None) -> None:
        if value is None:
            os.environ.pop("LSTM_JAX_NATIVE_SPREAD", None)
        else:
            os.environ["LSTM_JAX_NATIVE_SPREAD"] = value

    settings = {"moved": None, "not moved": "0"}  # the variable's value for each kind of call
    times: dict[str, list[float]] = {mode: [] for mode in settings}
    saved = os.environ.get("LSTM_JAX_NATIVE_SPREAD")
    try:
        for _ in range(calls):
            for mode, value in settings.items():
                set_spread(value)
                t0 = time.perf_counter()
                generate_stateful(
                    model, prime, length, key=key, temperature=1.0
                ).block_until_ready()
                times[mode].append(time.perf_counter() - t0)
    finally:
        set_spread(saved)
    return times


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=at_least(1), default=300)
    p.add_argument("--max-matrices", type=at_least(1), default=4)
    p.add_argument("--steps", type=at_least(1), default=2000)
    p.add_argument("--vocab", type=at_least(1), default=60)
    p.add_argument("--no-kernel", action="store_true")
    p.add_argument(
        "--spread", action="store_true", help="time generate_stateful calls, helper moved or not"
    )
    p.add_argument("--length", type=at_least(1), default=200, help="characters per call (--spread)")
    p.add_argument("--calls", type=at_least(1), default=40, help="calls of each kind (--spread)")
    args = p.parse_args(argv)
    if args.spread:
        import numpy as np

        for mode, ts in spread_ab(args.hidden, args.vocab, args.length, args.calls).items():
            q = np.percentile(1e3 * np.asarray(ts), [25, 50, 75, 90])
            print(
                f"helper {mode:9s}: median {q[1]:6.2f} ms ({args.length / q[1] * 1e3:,.0f} chars/s), "
                f"quartiles {q[0]:.2f}-{q[2]:.2f}, 90th percentile {q[3]:.2f} ({len(ts)} calls)",
                flush=True,
            )
        return
    for m in range(1, args.max_matrices + 1):
        mb = m * args.hidden * 4 * args.hidden * 4 / 1e6
        s = per_step_seconds(m, args.hidden, args.steps)
        print(
            f"{m} x [{args.hidden}, {4 * args.hidden}] ({mb:.1f} MB): {1e6 * s:7.1f} us/step, "
            f"{mb / 1e3 / s:6.1f} GB/s",
            flush=True,
        )
    from lstm_jax import native

    if args.no_kernel or native.unavailable_reason() is not None:
        return
    from lstm_jax.runtime import usable_cores

    for threads in range(1, max(1, usable_cores()) + 1):
        s = kernel_per_char_seconds(args.hidden, args.vocab, args.steps, threads)
        print(f"native generate, {threads} thread(s): {1e6 * s:7.1f} us/character", flush=True)


if __name__ == "__main__":
    main()
