"""The four tutorial model shapes (issue 6), shared by every framework's benchmark.

Each shape is a classifier over a whole sequence: the last recurrent layer returns only its final `h`, which
feeds a small dense head. Inputs and targets are random but fixed (the timing does not depend on values).
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Shape:
    """One benchmark model and its batch.

    Attributes:
      name: "A".."D".
      title: what the tutorial calls it.
      batch: sequences per training step, `B`.
      time: timesteps per sequence, `T`.
      vocab: embedding rows (token inputs), or 0 for one scalar feature per step (the char model).
      embed: embedding width (0 when `vocab == 0`; the input then has 1 feature).
      lstm: hidden sizes of the stacked LSTMs; all but the last return sequences.
      dense: hidden dense layers of the head, as `(units, activation)`.
      classes: output units; 1 means a sigmoid with binary cross-entropy, more a softmax with
        sparse categorical cross-entropy.
      optimizer: "adam" or "rmsprop" (Keras defaults: lr 1e-3, RMSprop rho 0.9, eps 1e-7).
    """

    name: str
    title: str
    batch: int
    time: int
    vocab: int
    embed: int
    lstm: tuple[int, ...]
    dense: tuple[tuple[int, str], ...]
    classes: int
    optimizer: str

    @property
    def in_features(self) -> int:
        return self.embed if self.vocab else 1

    def train_flops(self) -> float:
        """Matmul FLOPs of one training step (forward + backward), counting `2*m*n*k` per product.

        LSTM layer with `F` inputs and `H` units over `B*T` positions: forward `x@W` and `h@R` cost
        `2*B*T*(F+H)*4H`; the backward pass costs twice the forward (input and weight gradients), except
        that the first layer needs no input gradient when its input is data (the char model); below an
        embedding it does, for the embedding's gradient. Dense layers likewise. Embedding lookups and
        elementwise gate math are not counted. This is the standard computation's count, the same for
        every framework; lstm_jax's folded embedding (`lstm_layer(..., embedding=)`) executes fewer.
        """
        bt = self.batch * self.time
        total = 0.0
        size = self.in_features
        for n, h in enumerate(self.lstm):
            fwd_x, fwd_h = 2 * bt * size * 4 * h, 2 * bt * h * 4 * h
            dx = 0 if n == 0 and not self.vocab else fwd_x
            total += 3 * fwd_h + 2 * fwd_x + dx
            size = h
        for units, _ in (*self.dense, (self.classes, "out")):
            fwd = 2 * self.batch * size * units
            total += 3 * fwd
            size = units
        return total

    def data(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """A fixed batch: `x [B, T]` int32 tokens (or `[B, T, 1]` float32 for the char model), `y [B]`."""
        rng = np.random.default_rng(seed)
        if self.vocab:
            x = rng.integers(1, self.vocab, size=(self.batch, self.time), dtype=np.int32)
        else:
            x = rng.random((self.batch, self.time, 1), dtype=np.float32)
        if self.classes == 1:
            y = rng.integers(0, 2, size=(self.batch,)).astype(np.float32)
        else:
            y = rng.integers(0, self.classes, size=(self.batch,), dtype=np.int32)
        return x, y


SHAPES: dict[str, Shape] = {
    "A": Shape("A", "char", 40, 50, 0, 0, (300, 300), (), 60, "adam"),
    "B": Shape("B", "word", 128, 30, 5000, 64, (128, 64), ((64, "relu"),), 5000, "adam"),
    "C": Shape("C", "imdb", 100, 228, 15000, 16, (32,), (), 1, "rmsprop"),
    "D": Shape(
        "D", "fake_news", 64, 500, 10000, 300, (199,), ((399, "relu"), (43, "relu")), 1, "adam"
    ),
}

# A tiny shape for the harness's own smoke test (seconds, not minutes).
TINY = Shape("tiny", "smoke", 4, 6, 50, 8, (8, 8), ((8, "relu"),), 5, "adam")


def get_shape(name: str) -> Shape:
    if name == "tiny":
        return TINY
    return SHAPES[name]


def shape_arg(name: str) -> str:
    """An argparse `type` for one shape name: an unknown name is a usage error (exit 2, one line), not the
    `KeyError` traceback of `get_shape` after JAX has started."""
    name = name.strip()
    if name != "tiny" and name not in SHAPES:
        raise argparse.ArgumentTypeError(
            f"unknown shape {name!r}; use one of {', '.join(SHAPES)} or tiny"
        )
    return name


def shape_list_arg(text: str) -> list[str]:
    """An argparse `type` for comma-separated shape names (each checked by `shape_arg`, each kept once)."""
    names = [shape_arg(s) for s in text.split(",") if s.strip()]
    if not names:
        raise argparse.ArgumentTypeError(
            f"{text!r} names no shape; use some of {', '.join(SHAPES)}, tiny"
        )
    return list(dict.fromkeys(names))
