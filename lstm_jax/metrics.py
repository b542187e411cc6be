"""Metrics kept as sums plus a count, averaged only when reported.

A metric pytree is a flat dict such as ``{"loss": Σ wᵢ·lossᵢ, "accuracy": Σ wᵢ·correctᵢ, "count": Σ wᵢ}``:
every entry except ``count`` is a weighted sum over examples (or tokens), ``count`` is the total weight. Sums
of batches add exactly, so a partial last batch, padded examples (weight 0) and batches split over devices
all average correctly; `compute` divides once at the end.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["MetricSums", "merge", "zeros_like", "compute", "to_host", "language_model_metrics"]

MetricSums = dict[str, jax.Array]


def merge(a: Mapping[str, jax.Array] | None, b: Mapping[str, jax.Array]) -> MetricSums:
    """Adds two metric-sum dicts key by key (`a` may be None for "nothing yet")."""
    if a is None:
        return dict(b)
    if set(a) != set(b):
        raise ValueError(f"metric sums have different keys: {sorted(a)} vs {sorted(b)}")
    return {k: a[k] + b[k] for k in a}


def zeros_like(sums: Mapping[str, jax.Array]) -> MetricSums:
    """All-zero float32 sums with the same keys (an accumulator's initial value)."""
    return {k: jnp.zeros((), jnp.float32) for k in sums}


def to_host(sums: Mapping[str, jax.Array]) -> dict[str, float]:
    """Fetches metric sums to Python floats (one host transfer)."""
    host = jax.device_get(dict(sums))
    return {k: float(np.asarray(v)) for k, v in host.items()}


def compute(sums: Mapping[str, float | jax.Array]) -> dict[str, float]:
    """Averages: every key except ``count`` divided by ``count``; ``count`` is reported as is.

    With a zero count the averages are NaN (nothing was measured), never a division error.
    """
    if "count" not in sums:
        raise ValueError(f"metric sums need a 'count' entry, got keys {sorted(sums)}")
    host = to_host(sums) if any(isinstance(v, jax.Array) for v in sums.values()) else sums
    count = float(host["count"])
    out = {
        k: (float(v) / count if count > 0 else float("nan"))
        for k, v in host.items()
        if k != "count"
    }
    out["count"] = count
    return out


def language_model_metrics(
    values: Mapping[str, float], *, bits_name: str | None = None
) -> dict[str, float]:
    """`values` (averages with a ``loss`` in nats per token) plus ``perplexity`` = exp(loss) (exp
    capped at loss 50) and, when `bits_name` is given, loss / ln 2 under that name
    (``bits_per_char``)."""
    out = dict(values)
    if "loss" in values:
        if bits_name:
            out[bits_name] = values["loss"] / math.log(2)
        out["perplexity"] = math.exp(min(values["loss"], 50.0))
    return out
