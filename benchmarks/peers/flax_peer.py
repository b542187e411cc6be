"""Flax NNX: `nnx.RNN(nnx.OptimizedLSTMCell)` layers, nnx.Embed/Linear, optax; jitted, donated step."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks.peers.lstm_jax_peer import loss_fn, make_optimizer
from benchmarks.shapes import Shape


def available() -> str | None:
    return None


class Model(nnx.Module):
    def __init__(self, shape: Shape, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(shape.vocab, shape.embed, rngs=rngs) if shape.vocab else None
        layers = []
        size = shape.in_features
        for h in shape.lstm:
            layers.append(nnx.RNN(nnx.OptimizedLSTMCell(size, h, rngs=rngs), return_carry=True))
            size = h
        self.rnns = nnx.List(layers)
        dense = []
        for units, _ in shape.dense:
            dense.append(nnx.Linear(size, units, rngs=rngs))
            size = units
        self.dense = nnx.List(dense)
        self.acts = tuple(act for _, act in shape.dense)
        self.out = nnx.Linear(size, shape.classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.embed(x) if self.embed is not None else x
        for rnn in self.rnns:
            zeros = jnp.zeros((h.shape[0], rnn.cell.hidden_features), h.dtype)
            (_, last), h = rnn(h, initial_carry=(zeros, zeros))  # the carry is (c, h)
        z = last
        for layer, act in zip(self.dense, self.acts, strict=True):
            z = getattr(jax.nn, act)(layer(z))
        return self.out(z)


class Bench:
    def __init__(self, shape: Shape, seed: int = 0):
        model = Model(shape, rngs=nnx.Rngs(seed))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        self.params, self.rest = params, rest
        self.param_count = int(sum(np.size(a) for a in jax.tree.leaves(params)))
        tx = make_optimizer(shape)
        self.opt_state = tx.init(params)
        x, y = shape.data(seed)
        self.x, self.y = jnp.asarray(x), jnp.asarray(y)

        @functools.partial(jax.jit, donate_argnums=(0, 1))
        def train_step(params, opt_state, rest, x, y):
            def loss(p):
                return loss_fn(shape, nnx.merge(graphdef, p, rest)(x), y)

            value, grads = jax.value_and_grad(loss)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, value

        self._train_step = train_step

    def step(self) -> None:
        self.params, self.opt_state, loss = self._train_step(
            self.params, self.opt_state, self.rest, self.x, self.y
        )
        loss.block_until_ready()

    def memory_bytes(self) -> int | None:
        lowered = self._train_step.lower(self.params, self.opt_state, self.rest, self.x, self.y)
        m = lowered.compile().memory_analysis()
        if m is None:
            return None
        return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes)


def build(shape: Shape, seed: int = 0) -> Bench:
    return Bench(shape, seed)
