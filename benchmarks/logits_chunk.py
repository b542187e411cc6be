"""Train-step time of the fashion word model's loss with the output layer whole or in chunks.

    python -m benchmarks.logits_chunk [--lengths 32,575] [--chunks 0,1024] [--steps 5]

The fashion model (Embedding 64 -> LSTM 128 -> LSTM 64 -> Dense 64 -> Dense 9,259) on random lines of
128 x T words, `jax.value_and_grad` of `word_lm.line_loss` with `logits_chunk` = 0 (all positions at once)
or N positions at a time; median wall time per step, minor page faults and system time per step.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import at_least
from lstm_jax.models import LanguageModel
from lstm_jax.tasks.word_lm import line_loss

VOCAB = 9259  # the Myntra catalogue's vocabulary


def _integers(minimum: int) -> Callable[[str], list[int]]:
    """An argparse `type`: comma-separated integers of at least `minimum` each."""
    one = at_least(minimum)

    def parse(text: str) -> list[int]:
        return [one(v) for v in text.split(",")]

    parse.__name__ = f"comma-separated integers >= {minimum}"
    return parse


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="32,575", type=_integers(1))
    # line_loss chunks only above 0: a negative chunk would run whole while the report named it.
    p.add_argument("--chunks", default="0,1024", type=_integers(0))
    p.add_argument("--steps", type=at_least(1), default=5)
    args = p.parse_args(argv)
    model = LanguageModel(
        VOCAB, (128, 64), rngs=nnx.Rngs(0), embed_dim=64, dense_layers=[(64, "relu")]
    )
    graphdef, params = nnx.split(model)
    rng = np.random.default_rng(0)
    for length in args.lengths:
        ids = rng.integers(1, VOCAB, (2, 128, length))
        batch = {
            "inputs": jnp.asarray(ids[0]),
            "targets": jnp.asarray(ids[1]),
            "tmask": jnp.ones((128, length)),
            "weight": jnp.ones((128,)),
        }
        for chunk in args.chunks:

            @jax.jit
            def step(p, chunk=chunk, batch=batch):
                def f(q):
                    m = nnx.merge(graphdef, q)
                    key = jax.random.key(0)
                    return line_loss(m, batch, key=key, train=True, carry=None, logits_chunk=chunk)[
                        0
                    ]

                return jax.value_and_grad(f)(p)

            jax.block_until_ready(step(params))
            times = []
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            for _ in range(args.steps):
                t = time.perf_counter()
                jax.block_until_ready(step(params))
                times.append(time.perf_counter() - t)
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            n = args.steps
            print(
                f"T={length} logits_chunk={chunk}: {statistics.median(times) * 1e3:.1f} ms/step,"
                f" minor faults {(r1.ru_minflt - r0.ru_minflt) / n:.0f},"
                f" sys {(r1.ru_stime - r0.ru_stime) / n * 1e3:.0f} ms per step",
                flush=True,
            )


if __name__ == "__main__":
    main()
