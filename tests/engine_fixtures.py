"""Tiny models and tasks for the engine tests (shared by tests/test_train.py, test_checkpoint.py, ...).

The model is built directly on `lstm_jax.core`: an embedding, one LSTM layer whose weights are `nnx.Param`s
from `init_lstm`, and a linear read-out. Two tasks: sequence classification (last state -> class) and a
next-token language model that carries the LSTM state across consecutive batches (truncated BPTT).
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lstm_jax import config_utils, losses
from lstm_jax.core import LSTMState, init_lstm, lstm_layer
from lstm_jax.train import Task, padded_batches, shuffled_batches, steps_per_epoch


class TinyLSTM(nnx.Module):
    """Embed [B, T] -> LSTM -> logits: `[B, classes]` (last state) or `[B, T, classes]` (every step)."""

    def __init__(self, vocab: int, hidden: int, classes: int, dropout: float, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, 8, rngs=rngs)
        p = init_lstm(rngs.params(), 8, hidden)
        self.kernel = nnx.Param(p["kernel"])
        self.recurrent_kernel = nnx.Param(p["recurrent_kernel"])
        self.bias = nnx.Param(p["bias"])
        self.out = nnx.Linear(hidden, classes, rngs=rngs)
        self.dropout = dropout

    def __call__(self, tokens, *, mask=None, initial_state=None, deterministic=True, key=None):
        x = self.embed(tokens)
        if not deterministic and self.dropout > 0:
            keep = jax.random.bernoulli(key, 1 - self.dropout, x.shape)
            x = jnp.where(keep, x / (1 - self.dropout), 0.0)
        params = {
            "kernel": self.kernel[...],
            "recurrent_kernel": self.recurrent_kernel[...],
            "bias": self.bias[...],
        }
        ys, state = lstm_layer(params, x, mask=mask, initial_state=initial_state)
        return ys, state

    def classify(self, tokens, **kw):
        _, state = self(tokens, **kw)
        return self.out(state.h)


def base_config(**train):
    config = config_utils.engine_defaults()
    config.model.vocab = 12
    config.model.hidden = 16
    config.model.classes = 3
    config.model.dropout = 0.1
    config.optimizer.learning_rate = 0.02
    config.train.batch_size = 8
    config.train.num_epochs = 2
    config.train.log_every_steps = 2
    config.train.prefetch = 0
    config.train.update(train)
    return config


def build_model(config, rngs):
    m = config.model
    return TinyLSTM(m.vocab, m.hidden, m.classes, m.dropout, rngs=rngs)


def classification_data(n: int = 40, t: int = 6, vocab: int = 12, seed: int = 0):
    """Label = (first token) mod 3, so the task is learnable."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, vocab, size=(n, t)).astype(np.int32)
    return {"tokens": tokens, "label": (tokens[:, 0] % 3).astype(np.int32)}


def classifier_loss(model, batch, *, key, train, carry):
    logits = model.classify(batch["tokens"], deterministic=not train, key=key)
    sums = losses.softmax_metric_sums(logits, batch["label"], batch["weight"])
    return sums["loss"] / jnp.maximum(sums["count"], 1e-9), (sums, None)


def classification_task(config, train=None, valid=None, *, stop_at=None, eval_bs=6, **kw) -> Task:
    train = train if train is not None else classification_data(40)
    valid = valid if valid is not None else classification_data(15, seed=1)
    bs = config.train.batch_size
    drop = config_utils.drop_remainder(config)
    steps = steps_per_epoch(len(train["label"]), bs, drop)

    def train_batches(epoch, start):
        batches = shuffled_batches(
            train, bs, seed=config.seed, epoch=epoch, start=start, drop_remainder=drop
        )
        for n, b in enumerate(batches, start=start):
            if stop_at is not None and epoch * steps + n >= stop_at:
                raise KeyboardInterrupt("simulated interruption")
            yield b

    return Task(
        build_model=build_model,
        loss_fn=classifier_loss,
        train_batches=train_batches,
        steps_per_epoch=steps,
        eval_batches={
            "validation": lambda: padded_batches(valid, eval_bs),
            "test": lambda: padded_batches(valid, eval_bs),
        },
        data_info={"source": "fixture", "train_examples": len(train["label"])},
        **kw,
    )


def lm_loss(model, batch, *, key, train, carry):
    ys, state = model(
        batch["inputs"], initial_state=LSTMState(*carry), deterministic=not train, key=key
    )
    logits = model.out(ys)
    w = batch["weight"][:, None] * jnp.ones(batch["targets"].shape)
    sums = losses.softmax_metric_sums(logits, batch["targets"], w)
    return sums["loss"] / jnp.maximum(sums["count"], 1e-9), (sums, tuple(state))


def lm_task(config, *, length: int = 2000, seq: int = 5) -> Task:
    """Char-rnn layout: the stream is cut into `batch` parallel rows, consecutive batches continue them."""
    text = (np.arange(length) * 7 % 11 + 1).astype(np.int32)  # a periodic, learnable stream
    bs, hidden = config.train.batch_size, config.model.hidden
    rows = text[: (length - 1) // bs * bs].reshape(bs, -1)
    targets = text[1 : (length - 1) // bs * bs + 1].reshape(bs, -1)
    steps = rows.shape[1] // seq

    def train_batches(epoch, start):
        for b in range(start, steps):
            sl = slice(b * seq, (b + 1) * seq)
            yield {"inputs": rows[:, sl], "targets": targets[:, sl]}

    def eval_batches():
        for b in range(min(steps, 4)):
            sl = slice(b * seq, (b + 1) * seq)
            yield {"inputs": rows[:, sl], "targets": targets[:, sl]}

    def init_carry(batch_size):
        z = jnp.zeros((batch_size, hidden), jnp.float32)
        return (z, z)

    return Task(
        build_model=build_model,
        loss_fn=lm_loss,
        train_batches=train_batches,
        steps_per_epoch=steps,
        eval_batches={"validation": eval_batches},
        init_carry=init_carry,
        derive_metrics=lambda m: {**m, "bits_per_token": m["loss"] / np.log(2)},
    )


def assert_the_seed_orders_the_training_batches_only(task_of_seed) -> None:
    """`task_of_seed(seed)` builds an experiment's `Task` under `config.seed = seed`: seeds 0 and 1 give
    other training batches (order, and so which examples share a batch) in each of two epochs, while
    the data (its fingerprint) and every evaluation batch stay the same, so that runs of several seeds
    are scored on the same held-out examples."""
    a, b = task_of_seed(0), task_of_seed(1)
    assert a.steps_per_epoch == b.steps_per_epoch
    assert a.data_fingerprint == b.data_fingerprint

    def same(x, y):
        return x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)

    for epoch in (0, 1):
        first, second = list(a.train_batches(epoch, 0)), list(b.train_batches(epoch, 0))
        assert len(first) == len(second) == a.steps_per_epoch
        assert not all(same(x, y) for x, y in zip(first, second, strict=True))
    assert a.eval_batches.keys() == b.eval_batches.keys()
    for split in a.eval_batches:
        first, second = list(a.eval_batches[split]()), list(b.eval_batches[split]())
        assert len(first) == len(second) > 0
        assert all(same(x, y) for x, y in zip(first, second, strict=True))


def assert_padding_rows_change_nothing(loss_fn, model, batch) -> None:
    """The loss and every gradient of `batch` (a training batch whose last rows are weight-0 padding)
    equal those of its real rows alone: a short last batch padded to the batch shape trains exactly as
    the short batch would (Keras' and PyTorch's last batch)."""
    weight = np.asarray(batch["weight"])
    assert 0 < (weight > 0).sum() < len(weight), "the batch must hold real and padding rows"
    short = {k: np.asarray(v)[weight > 0] for k, v in batch.items()}

    def loss(m, b):
        b = {k: jnp.asarray(v) for k, v in b.items()}
        return loss_fn(m, b, key=jax.random.key(0), train=False, carry=None)[0]

    full_loss, full_grads = nnx.value_and_grad(loss)(model, batch)
    short_loss, short_grads = nnx.value_and_grad(loss)(model, short)
    np.testing.assert_allclose(float(full_loss), float(short_loss), rtol=1e-5)
    leaves = jax.tree.leaves(full_grads), jax.tree.leaves(short_grads)
    assert len(leaves[0]) == len(leaves[1]) > 0
    for a, b in zip(*leaves, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)


def epoch_keeping_the_remainder(task, num_examples: int, batch_size: int) -> dict:
    """Checks the batches of epoch 0 of a task built with `train.drop_remainder=False` over
    `num_examples` (not a multiple of `batch_size`): ceil(n / batch) batches of `batch_size` rows, every
    example counted once by the weights, one short batch; returns that short batch."""
    assert num_examples % batch_size
    assert task.steps_per_epoch == -(-num_examples // batch_size)
    batches = list(task.train_batches(0, 0))
    assert len(batches) == task.steps_per_epoch
    assert all(len(b["weight"]) == batch_size for b in batches)
    assert sum(float(b["weight"].sum()) for b in batches) == num_examples
    short = [b for b in batches if b["weight"].sum() < batch_size]
    assert len(short) == 1
    return short[0]


# A locale whose stdout encodes ASCII only (C, without Python's coercion to a UTF-8 locale or UTF-8 mode).
C_LOCALE = {"LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}


# A --config file of nothing but the engine's defaults, for `run_cli_script`.
ENGINE_DEFAULTS_CONFIG = (
    "from lstm_jax.config_utils import engine_defaults\n\n\ndef get_config():\n"
    "    return engine_defaults()\n"
)


def run_cli_script(tmp_path, main: str, *args: str) -> subprocess.CompletedProcess:
    """Runs the script `main` (a `cli.run(...)` entry point) as `tmp_path/main.py` with `args`, from
    `tmp_path`, where `cfg.py` is `ENGINE_DEFAULTS_CONFIG`; the repository is on PYTHONPATH."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (tmp_path / "main.py").write_text(main)
    (tmp_path / "cfg.py").write_text(ENGINE_DEFAULTS_CONFIG)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, str(tmp_path / "main.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
        timeout=120,
        check=False,
    )
