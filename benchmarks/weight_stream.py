"""How fast can one-stream generation be? A chain of `[1, H] @ [H, 4H]` products, as one character of
stateful generation runs, with the weights of 1 to 4 such matrices.

    python -m benchmarks.weight_stream --hidden 300

Every generated character multiplies one row by every weight matrix of the model (shape A's char model: 3
matrices of 300 x 1200, 4.3 MB), so one stream's speed is bounded by how fast the weights stream into the
core: from L2 while they fit, from L3 (or memory) beyond. Prints microseconds per step and the weight
bandwidth for each number of matrices, then the native kernel's generation (`lstm_jax.native.generate`,
greedy, one stream, a char model of two LSTM layers of `--hidden` units and `--vocab` outputs) in
microseconds per character for each thread count up to the cores (`--no-kernel` skips it).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=300)
    p.add_argument("--max-matrices", type=int, default=4)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--vocab", type=int, default=60)
    p.add_argument("--no-kernel", action="store_true")
    args = p.parse_args(argv)
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
