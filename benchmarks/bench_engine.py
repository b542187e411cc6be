"""Engine overhead: ms per training step through `train_and_evaluate` vs a bare jitted loop.

Same model, loss, optimizer and batches (shape C of `benchmarks/shapes.py`, the IMDB tutorial model: Embedding 15000x16 ->
LSTM 32 -> Dense 1, batch 100, 228 tokens, RMSprop). The bare loop is the lower bound: one jitted
value_and_grad + optax update per step on device-resident batches, no logging, no checkpoints.

    python -m benchmarks.bench_engine [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from benchmarks import at_least
from lstm_jax import config_utils, losses, optim
from lstm_jax.logging_utils import read_jsonl
from lstm_jax.nn import LSTM
from lstm_jax.train import Task, padded_batches, shuffled_batches, train_and_evaluate

VOCAB, EMB, HIDDEN, BATCH, T = 15000, 16, 32, 100, 228


class Classifier(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(VOCAB, EMB, rngs=rngs)
        self.lstm = LSTM(EMB, HIDDEN, rngs=rngs)
        self.out = nnx.Linear(HIDDEN, 1, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        _, state = self.lstm(self.embed(tokens), mask=tokens > 0)
        return self.out(state.h)[:, 0]


def loss_fn(
    model: Classifier, batch: dict, *, key: jax.Array, train: bool, carry: None
) -> tuple[jax.Array, tuple[dict, None]]:
    sums = losses.binary_metric_sums(model(batch["tokens"]), batch["label"], batch["weight"])
    return sums["loss"] / jnp.maximum(sums["count"], 1e-9), (sums, None)


def make_data(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(20, T + 1, n)
    tokens = rng.integers(2, VOCAB, (n, T)).astype(np.int32)
    tokens[np.arange(T)[None, :] >= lengths[:, None]] = 0
    return {"tokens": tokens, "label": rng.integers(0, 2, n).astype(np.int32)}


def config_for(steps: int) -> ml_collections.ConfigDict:
    config = config_utils.engine_defaults()
    config.optimizer.name = "rmsprop"
    config.train.batch_size = BATCH
    config.train.num_epochs = 1
    config.train.log_every_steps = 10
    config.train.num_steps = steps
    return config


def engine_ms_per_step(steps: int) -> float:
    config = config_for(steps)
    train, valid = make_data(steps * BATCH), make_data(200, seed=1)
    task = Task(
        build_model=lambda cfg, rngs: Classifier(rngs=rngs),
        loss_fn=loss_fn,
        train_batches=lambda e, s: shuffled_batches(train, BATCH, seed=0, epoch=e, start=s),
        steps_per_epoch=steps,
        eval_batches={"validation": lambda: padded_batches(valid, BATCH)},
    )
    with tempfile.TemporaryDirectory() as workdir:
        train_and_evaluate(config, workdir, task)
        lines = [x for x in read_jsonl(workdir + "/metrics.jsonl") if x["kind"] == "train"]
    # Skip the first interval (compilation); examples/s of each later interval -> ms per step.
    return statistics.median(1000 * BATCH / x["examples_per_s"] for x in lines[1:])


def bare_ms_per_step(steps: int) -> float:
    model = Classifier(rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    tx = optim.make_optimizer(config_for(steps).optimizer, steps)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, batch):
        def f(p):
            return loss_fn(nnx.merge(graphdef, p), batch, key=None, train=True, carry=None)

        (loss, _), grads = jax.value_and_grad(f, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    data = make_data(steps * BATCH)
    batches = [
        {k: jnp.asarray(v[i * BATCH : (i + 1) * BATCH]) for k, v in data.items()}
        for i in range(steps)
    ]
    for b in batches:
        b["weight"] = jnp.ones((BATCH,), jnp.float32)
    params, opt_state, loss = step(params, opt_state, batches[0])
    loss.block_until_ready()
    times = []
    for chunk in range(1, steps // 10):
        t = time.perf_counter()
        for b in batches[chunk * 10 : (chunk + 1) * 10]:
            params, opt_state, loss = step(params, opt_state, b)
        loss.block_until_ready()
        times.append((time.perf_counter() - t) * 100)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Both measurements skip their first 10 steps (compilation) and take a median of the later 10-step
    # intervals: under 20 steps there is none (a StatisticsError traceback after both compilations).
    parser.add_argument("--steps", type=at_least(20), default=60, help="at least 20")
    args = parser.parse_args(argv)
    bare = bare_ms_per_step(args.steps)
    engine = engine_ms_per_step(args.steps)
    print(
        json.dumps(
            {
                "shape": "C (IMDB tutorial)",
                "bare_ms_per_step": round(bare, 2),
                "engine_ms_per_step": round(engine, 2),
                "overhead_pct": round(100 * (engine / bare - 1), 1),
                "devices": jax.device_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
