"""lstm_jax: `lstm_jax.nn` LSTMs with `flax.nnx` Embed/Linear and optax, one jitted, donated train step.

The `lstm_jax_dp` peer is the same model and step run data-parallel over one XLA host device per CPU core
(`Bench(data_parallel=True)` in a worker started with `data_parallel_xla_flags()`), through the engine's
`lstm_jax.train.data_parallel_grads`: what `--cpu_devices=auto` does in training.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks.shapes import Shape
from lstm_jax import nn as lnn
from lstm_jax import runtime
from lstm_jax.train import data_parallel_grads


def available(impl: str = "auto") -> str | None:
    """None, or why `impl` cannot run here ("cudnn" needs an NVIDIA GPU)."""
    from lstm_jax import core

    return core.impl_unavailable_reason(impl)


class Model(nnx.Module):
    """Embedding (or 1 scalar feature) -> stacked LSTMs (last returns its final h) -> dense head."""

    def __init__(self, shape: Shape, *, rngs: nnx.Rngs, impl: str = "auto", unroll: int = 1):
        self.shape = shape
        self.embed = nnx.Embed(shape.vocab, shape.embed, rngs=rngs) if shape.vocab else None
        self.lstm = lnn.StackedLSTM(
            shape.in_features, shape.lstm, rngs=rngs, impl=impl, unroll=unroll
        )
        size = shape.lstm[-1]
        dense = []
        for units, _ in shape.dense:
            dense.append(nnx.Linear(size, units, rngs=rngs))
            size = units
        self.dense = nnx.List(dense)
        self.acts = tuple(act for _, act in shape.dense)
        self.out = nnx.Linear(size, shape.classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """`x [B, T]` tokens or `[B, T, 1]` floats -> logits `[B, classes]`."""
        if self.embed is not None:  # the first LSTM looks the tokens up (and may fold the table)
            _, states = self.lstm(x, embedding=self.embed.embedding[...])
        else:
            _, states = self.lstm(x)
        z = states[-1].h
        for layer, act in zip(self.dense, self.acts, strict=True):
            z = getattr(jax.nn, act)(layer(z))
        return self.out(z)


def loss_fn(shape: Shape, logits: jax.Array, y: jax.Array) -> jax.Array:
    if shape.classes == 1:
        return optax.sigmoid_binary_cross_entropy(logits[:, 0], y).mean()
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_optimizer(shape: Shape) -> optax.GradientTransformation:
    if shape.optimizer == "rmsprop":
        return optax.rmsprop(1e-3, decay=0.9, eps=1e-7)
    return optax.adam(1e-3, eps=1e-7)


def data_parallel_xla_flags(flags: str = "") -> str:
    """`XLA_FLAGS` for the `lstm_jax_dp` worker: one host device per core, single-threaded kernels."""
    return runtime.cpu_devices_flags(runtime.usable_cores(), flags)


def merge(graphdef: nnx.GraphDef, template: nnx.State, params: dict) -> Model:
    """The model from pure-dict `params`, as the engine's `Engine.merge` (the template is not mutated)."""
    state = jax.tree.map(lambda v: v, template)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def _loss_and_grads(shape: Shape, graphdef, template):
    """`(params, x, y) -> (loss, grads)` of the model on one batch."""

    def loss_and_grads(params, x, y):
        def loss(p):
            return loss_fn(shape, merge(graphdef, template, p)(x), y)

        return jax.value_and_grad(loss)(params)

    return loss_and_grads


def _data_parallel(loss_and_grads, mesh: jax.sharding.Mesh):
    """`loss_and_grads` through the engine's `data_parallel_grads` over `mesh` (for XLA:CPU: one host device
    per core, see `data_parallel_xla_flags`): each device runs the whole forward and backward pass on its
    slice of the batch with single-threaded kernels, and the loss and gradients are averaged. Same
    mathematics as on one device, another float summation order."""

    def engine_form(params, batch, key, carry):
        value, grads = loss_and_grads(params, batch["x"], batch["y"])
        return value, {"count": jnp.float32(batch["y"].shape[0])}, None, grads

    sharded = data_parallel_grads(engine_form, mesh)

    def data_parallel(params, x, y):
        value, _, _, grads = sharded(params, {"x": x, "y": y}, jax.random.PRNGKey(0), None)
        return value, grads

    return data_parallel


def _train_step(
    loss_and_grads, tx: optax.GradientTransformation, compiler_options: dict | None = None
):
    """One jitted, donated step: loss and gradients, then the optimizer update (replicated when
    `loss_and_grads` is data-parallel), jitted as the engine's (`runtime.jit_choosing_cpu_dots`).
    `compiler_options`: XLA options for this step's compilation instead (`benchmarks.ab_rule --xla`)."""

    def train_step(params, opt_state, x, y):
        value, grads = loss_and_grads(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    if compiler_options is not None:
        return jax.jit(train_step, donate_argnums=(0, 1), compiler_options=compiler_options)
    return runtime.jit_choosing_cpu_dots(train_step, donate_argnums=(0, 1))


class Bench:
    def __init__(
        self,
        shape: Shape,
        seed: int = 0,
        impl: str = "auto",
        data_parallel: bool = False,
        compiler_options: dict | None = None,
        unroll: int = 1,
    ):
        self.shape = shape
        model = Model(shape, rngs=nnx.Rngs(seed), impl=impl, unroll=unroll)
        # Parameters as a pure dict of arrays, as the engine keeps them (lstm_jax.train): an nnx.State
        # argument costs ~1.5 ms of Python per call to rebuild its Variables.
        self.graphdef, self.template = nnx.split(model, nnx.Param)
        self.params = nnx.to_pure_dict(self.template)
        self.param_count = int(sum(np.size(a) for a in jax.tree.leaves(self.params)))
        tx = make_optimizer(shape)
        self.opt_state = tx.init(self.params)
        x, y = shape.data(seed)
        self.x, self.y = jnp.asarray(x), jnp.asarray(y)
        loss_and_grads = _loss_and_grads(shape, self.graphdef, self.template)
        if data_parallel:
            mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
            if shape.batch % mesh.size:
                raise ValueError(f"batch {shape.batch} is not divisible by {mesh.size} devices")
            loss_and_grads = _data_parallel(loss_and_grads, mesh)
            replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
            self.params = jax.device_put(self.params, replicated)
            self.opt_state = jax.device_put(self.opt_state, replicated)
            self.x, self.y = jax.device_put(self.x, batch), jax.device_put(self.y, batch)
        self._train_step = _train_step(loss_and_grads, tx, compiler_options)
        self.loss = None

    def step(self) -> None:
        self.params, self.opt_state, self.loss = self._train_step(
            self.params, self.opt_state, self.x, self.y
        )
        self.loss.block_until_ready()

    def memory_bytes(self) -> int | None:
        """XLA's own account of the step's temporaries plus arguments and outputs (bytes)."""
        lowered = self._train_step.lower(self.params, self.opt_state, self.x, self.y)
        m = lowered.compile().memory_analysis()
        if m is None:
            return None
        return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes)


def build(
    shape: Shape, seed: int = 0, data_parallel: bool = False, impl: str = "auto", unroll: int = 1
) -> Bench:
    """`unroll`: the `lax.scan` unroll factor of every layer (the `lstm_jax_unroll8` peer; it changes the
    scan-based impls, which a GPU runs; the CPU's native kernel runs its own loop)."""
    return Bench(shape, seed, impl=impl, data_parallel=data_parallel, unroll=unroll)


# ---------------------------------------------------------------------------------------------------------
# Generation with the char model (shape A): the tutorial's loop feeds a window of the last T characters to
# `model.predict` once per generated character. The same computation compiled: one `lax.scan` over the
# generated characters whose body runs the LSTMs over the current window and samples the next character.
# ---------------------------------------------------------------------------------------------------------


def make_generator(
    shape: Shape, bench: Bench, streams: int, length: int
) -> Callable[[jax.Array], jax.Array]:
    """Returns `gen(key) -> chars [streams, length]`, jitted, for the char model's window semantics."""
    graphdef, template, params = bench.graphdef, bench.template, bench.params
    vocab = shape.classes

    @jax.jit
    def gen(params, seed_window, key):
        model = merge(graphdef, template, params)

        def body(window, k):
            logits = model(window[..., None].astype(jnp.float32) / vocab)
            nxt = jax.random.categorical(k, logits, axis=-1)
            window = jnp.concatenate([window[:, 1:], nxt[:, None]], axis=1)
            return window, nxt

        _, chars = jax.lax.scan(body, seed_window, jax.random.split(key, length))
        return chars.T

    seed_window = jnp.asarray(
        np.random.default_rng(0).integers(0, vocab, (streams, shape.time)), jnp.int32
    )

    def run(key):
        return gen(params, seed_window, key).block_until_ready()

    return run


def generation_speed(shape: Shape, streams: int, length: int, repeats: int = 3) -> dict:
    """Characters per second of compiled window generation (`streams` sequences at once)."""
    bench = Bench(shape)
    run = make_generator(shape, bench, streams, length)
    t0 = time.perf_counter()
    run(jax.random.key(0))
    compile_s = time.perf_counter() - t0
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        run(jax.random.key(r + 1))
        times.append(time.perf_counter() - t0)
    best = float(np.median(times))
    return {
        "streams": streams,
        "length": length,
        "first_call_s": compile_s,
        "median_s": best,
        "chars_per_s": streams * length / best,
    }


def stateful_generation_speed(
    shape: Shape,
    streams: int,
    length: int,
    repeats: int = 3,
    impl: str = "auto",
    min_seconds: float = 1.0,
) -> dict:
    """Characters per second when the state is carried (one LSTM step per character, no window), through
    the library's `generate_stateful` on a `LanguageModel` of shape A's sizes (scalar input, LSTM 300 x 2,
    softmax over the classes), sampling as the tutorial's loop does. `impl`: "auto" (the native kernel on
    CPU) or "xla" (the `lax.scan` loop). The median over at least `repeats` calls and `min_seconds` of
    them (a 200-character call takes ~20 ms: three calls alone varied by 20% on a shared host)."""
    from lstm_jax.generate import generate_stateful
    from lstm_jax.models import LanguageModel

    model = LanguageModel(
        shape.classes, tuple(shape.lstm), rngs=nnx.Rngs(0), input_mode="scalar", predict="all"
    )
    prime = jnp.zeros((streams, 1), jnp.int32)

    def gen(key):
        return generate_stateful(model, prime, length, key=key, temperature=1.0, impl=impl)

    t0 = time.perf_counter()
    gen(jax.random.key(0)).block_until_ready()
    compile_s = time.perf_counter() - t0
    times = []
    while len(times) < repeats or (sum(times) < min_seconds and len(times) < 200):
        t0 = time.perf_counter()
        gen(jax.random.key(len(times) + 1)).block_until_ready()
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    return {
        "streams": streams,
        "length": length,
        "first_call_s": compile_s,
        "median_s": med,
        "calls": len(times),
        "chars_per_s": streams * length / med,
        "impl": impl,
    }
