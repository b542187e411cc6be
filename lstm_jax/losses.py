"""Losses and their metric sums: masked softmax cross-entropy and sigmoid binary cross-entropy.

Every ``*_metric_sums`` function returns the sums-plus-count dict of `lstm_jax.metrics`; a loss function for
the engine typically returns ``(sums["loss"] / max(sums["count"], 1e-9), sums)``, see `weighted_mean`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from lstm_jax.metrics import MetricSums

__all__ = [
    "softmax_cross_entropy",
    "sigmoid_binary_cross_entropy",
    "weighted_mean",
    "softmax_metric_sums",
    "chunked_softmax_metric_sums",
    "binary_metric_sums",
]


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Cross-entropy with integer targets.

    Args:
      logits: `[..., classes]` unnormalised scores.
      labels: `[...]` integer class ids in `[0, classes)`.

    Returns:
      `[...]` per-position loss in nats, computed in float32 with a stable log-softmax.
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]


def sigmoid_binary_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Binary cross-entropy from logits, stable for large |logits|.

    Uses `max(x, 0) - x·z + log1p(exp(-|x|))`, which equals `-z·log σ(x) - (1-z)·log(1-σ(x))`.

    Args:
      logits: `[...]` scores (the pre-sigmoid output of the model).
      labels: `[...]` targets in {0, 1} (or soft targets in [0, 1]).

    Returns:
      `[...]` per-example loss in nats.
    """
    x = logits.astype(jnp.float32)
    z = labels.astype(jnp.float32)
    return jnp.maximum(x, 0.0) - x * z + jnp.log1p(jnp.exp(-jnp.abs(x)))


def weighted_mean(values: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """`Σ values·weights / Σ weights` (0 when every weight is 0, never NaN): `values [...]`, `weights`
    as `_weights` takes them -> a scalar `[]`."""
    values = values.astype(jnp.float32)
    if weights is None:
        return jnp.mean(values)
    w = _weights(values.shape, weights)
    return jnp.sum(values * w) / jnp.maximum(jnp.sum(w), 1e-9)


def _weights(shape: tuple[int, ...], weights: jax.Array | None) -> jax.Array:
    """`weights` as float32 `shape`. Weights with fewer axes whose shape is `shape`'s leading axes are
    per-row, as Keras' `sample_weight`: `[batch]` weights with `[batch, time]` labels weight each
    row's every position (NumPy's trailing-axis broadcasting raised for them, or, when batch == time,
    silently weighted positions); any other shape broadcasts as NumPy's (`[time]`: per position)."""
    if weights is None:
        return jnp.ones(shape, jnp.float32)
    w = jnp.asarray(weights).astype(jnp.float32)
    if 0 < w.ndim < len(shape) and w.shape == tuple(shape[: w.ndim]):
        w = w.reshape(w.shape + (1,) * (len(shape) - w.ndim))
    return jnp.broadcast_to(w, shape)


def softmax_metric_sums(
    logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None
) -> MetricSums:
    """Weighted sums for integer-target classification or language modelling.

    Args:
      logits: `[..., classes]`.
      labels: `[...]` integer targets.
      weights: optional `[...]` weights, or `[batch]` per row (`_weights`); 0 drops a position (padding,
        masked tokens).

    Returns:
      `{"loss": Σ w·CE, "accuracy": Σ w·[argmax = label], "count": Σ w}`.
    """
    w = _weights(labels.shape, weights)
    ce = softmax_cross_entropy(logits, labels)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return {"loss": jnp.sum(ce * w), "accuracy": jnp.sum(correct * w), "count": jnp.sum(w)}


def chunked_softmax_metric_sums(
    features: jax.Array,
    head: Callable[[jax.Array], jax.Array],
    labels: jax.Array,
    weights: jax.Array | None = None,
    *,
    chunk_size: int = 512,
) -> MetricSums:
    """`softmax_metric_sums(head(features), labels, weights)` without the full logits array.

    A language model's output layer turns `[batch, time, features]` into `[batch, time, vocab]` logits: for
    the fashion model (9,259 words) a batch of 128 lines of 575 words is 2.7 GB of logits, and as much again
    for their gradient. Here the positions are cut into chunks of `chunk_size`; a `lax.scan` computes each
    chunk's logits, cross-entropy and accuracy and adds up the sums, and `jax.checkpoint` makes the backward
    pass recompute one chunk's logits at a time instead of saving them. The sums equal the unchunked ones
    (up to float summation order), and so do their gradients (tested); on XLA:CPU the saving is the time
    spent allocating, page-faulting and zero-filling those buffers, which dominated large-vocabulary steps.

    Args:
      features: `[..., features]` inputs of the output layer.
      head: the output layer, `[n, features] -> [n, classes]` logits (e.g. the model's `nnx.Linear`).
      labels: `[...]` integer targets; weights: optional `[...]` (0 drops a position).
      chunk_size: positions per chunk (the last chunk is padded with weight 0).

    Returns:
      `{"loss", "accuracy", "count"}` as `softmax_metric_sums`.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    w = _weights(labels.shape, weights).reshape(-1)
    x = features.reshape(-1, features.shape[-1])
    t = labels.reshape(-1)
    n = x.shape[0]
    size = max(1, min(int(chunk_size), n))  # no positions at all: zero chunks, zero sums
    pad = (-n) % size
    if pad:
        x = jnp.concatenate([x, jnp.zeros((pad, x.shape[1]), x.dtype)])
        t = jnp.concatenate([t, jnp.zeros((pad,), t.dtype)])
        w = jnp.concatenate([w, jnp.zeros((pad,), w.dtype)])
    chunks = (x.reshape(-1, size, x.shape[1]), t.reshape(-1, size), w.reshape(-1, size))

    @jax.checkpoint
    def body(acc: MetricSums, chunk: tuple[jax.Array, jax.Array, jax.Array]):
        xc, tc, wc = chunk
        sums = softmax_metric_sums(head(xc), tc, wc)
        return {k: acc[k] + sums[k] for k in acc}, None

    zero = jnp.zeros((), jnp.float32)
    sums, _ = jax.lax.scan(body, {"loss": zero, "accuracy": zero, "count": zero}, chunks)
    return sums


def binary_metric_sums(
    logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None
) -> MetricSums:
    """Weighted sums for binary classification from logits (prediction: logit > 0, i.e. p > 0.5).

    Args:
      logits: `[batch]` (or `[batch, 1]`, squeezed) pre-sigmoid scores.
      labels: `[batch]` in {0, 1}.
      weights: optional `[batch]`; 0 for padded examples.

    Returns:
      `{"loss": Σ w·BCE, "accuracy": Σ w·[pred = label], "count": Σ w}`.
    """
    if logits.ndim == labels.ndim + 1 and logits.shape[-1] == 1:
        logits = logits[..., 0]
    w = _weights(labels.shape, weights)
    bce = sigmoid_binary_cross_entropy(logits, labels)
    correct = ((logits > 0).astype(jnp.float32) == labels.astype(jnp.float32)).astype(jnp.float32)
    return {"loss": jnp.sum(bce * w), "accuracy": jnp.sum(correct * w), "count": jnp.sum(w)}
