"""Keras 3 `LSTM`, on the backend named by `KERAS_BACKEND` (set by the driver before this import).

`train_on_batch` runs Keras' own compiled train function (jitted on JAX; a `tf.function`, with XLA when
`jit_compile=True`, on TensorFlow).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import numpy as np

from benchmarks.shapes import Shape

if TYPE_CHECKING:  # keras is imported once the driver has set KERAS_BACKEND
    import keras

# The package each Keras backend imports, as pip installs it.
BACKEND_PACKAGES = {"tensorflow": "tensorflow-cpu", "jax": "jax", "torch": "torch"}


def available() -> str | None:
    """None, or why Keras cannot run here: Keras itself is not installed, or the backend `KERAS_BACKEND`
    names is not (`import keras` imports it: without TensorFlow the Keras-TF rows said "keras not
    installed (No module named 'tensorflow')" while Keras was installed)."""
    import importlib.util

    if importlib.util.find_spec("keras") is None:
        return "keras not installed; pip install -e '.[bench]'"
    try:
        import keras  # noqa: F401
    except ImportError as e:
        backend = os.environ.get("KERAS_BACKEND", "tensorflow")
        package = BACKEND_PACKAGES.get(backend, backend)
        return f"keras's {backend} backend cannot be imported ({e}); pip install {package}"
    return None


def build_model(shape: Shape, seed: int = 0) -> keras.Model:
    import keras

    keras.utils.set_random_seed(seed)
    if shape.vocab:
        inputs = keras.Input((shape.time,), batch_size=shape.batch, dtype="int32")
        h = keras.layers.Embedding(shape.vocab, shape.embed)(inputs)
    else:
        inputs = keras.Input((shape.time, 1), batch_size=shape.batch)
        h = inputs
    for n, units in enumerate(shape.lstm):
        h = keras.layers.LSTM(units, return_sequences=n < len(shape.lstm) - 1)(h)
    for units, act in shape.dense:
        h = keras.layers.Dense(units, activation=act)(h)
    out_act = "sigmoid" if shape.classes == 1 else "softmax"
    outputs = keras.layers.Dense(shape.classes, activation=out_act)(h)
    return keras.Model(inputs, outputs)


class Bench:
    def __init__(self, shape: Shape, seed: int = 0, jit_compile: bool | str = "auto"):
        import keras

        self.model = build_model(shape, seed)
        opt = (
            keras.optimizers.RMSprop(1e-3)
            if shape.optimizer == "rmsprop"
            else keras.optimizers.Adam(1e-3)
        )
        loss = "binary_crossentropy" if shape.classes == 1 else "sparse_categorical_crossentropy"
        self.model.compile(optimizer=opt, loss=loss, jit_compile=jit_compile)
        self.param_count = int(self.model.count_params())
        self.x, self.y = shape.data(seed)

    def step(self) -> None:
        self.model.train_on_batch(self.x, self.y)  # returns host numbers: blocks until done

    def memory_bytes(self) -> int | None:
        return None


def build(shape: Shape, seed: int = 0, jit_compile: bool | str = "auto") -> Bench:
    return Bench(shape, seed, jit_compile)


def tutorial_generation_speed(shape: Shape, streams: int, length: int) -> dict:
    """The tutorial's loop: one `model.predict` on the last `T` characters per generated character."""
    model = build_model(shape)
    rng = np.random.default_rng(0)
    window = rng.integers(0, shape.classes, (streams, shape.time))

    def one_char(window):
        probs = model.predict(window[..., None] / shape.classes, verbose=0)
        probs = np.asarray(probs, np.float64)
        probs /= probs.sum(-1, keepdims=True)
        nxt = np.array([rng.choice(shape.classes, p=p) for p in probs])
        return np.concatenate([window[:, 1:], nxt[:, None]], axis=1)

    t0 = time.perf_counter()
    window = one_char(window)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(length):
        window = one_char(window)
    elapsed = time.perf_counter() - t0
    return {
        "streams": streams,
        "length": length,
        "first_call_s": first,
        "median_s": elapsed,
        "chars_per_s": streams * length / elapsed,
        "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
    }
