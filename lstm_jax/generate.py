"""Compiled text generation: greedy or sampled (temperature, top-k), the whole loop in one `lax.scan`.

Two loops match the two ways the language models are trained:

* `generate_stateful`: for models that predict at every position (`LanguageModel(predict="all")`). The
  prime is run once through the LSTM, then each step feeds the chosen token and carries the LSTM state:
  O(1) work per generated token.
* `generate_windowed`: for "window -> next token" models (`predict="last"`, the Keras tutorials). Each step
  runs the model on the last `window` tokens, exactly as the tutorial's loop of one `model.predict` per
  token, but compiled.

Both take token ids `[streams, prime_len]` and return the generated ids `[streams, num_steps]`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array

__all__ = ["sample_logits", "generate_stateful", "generate_windowed"]


def sample_logits(key: Array, logits: Array, temperature: float = 0.0, top_k: int = 0) -> Array:
    """Chooses one token per row of `logits [batch, vocab]`.

    `temperature == 0` is greedy (argmax). Otherwise samples from `softmax(logits / temperature)`, restricted
    to the `top_k` most likely tokens when `top_k > 0`.
    """
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_k > 0:
        k = min(top_k, logits.shape[-1])
        kth = jax.lax.top_k(logits, k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _check(temperature: float, top_k: int, num_steps: int) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = no limit), got {top_k}")
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")


@functools.partial(nnx.jit, static_argnames=("num_steps", "temperature", "top_k"))
def _stateful(model, prime, key, *, num_steps, temperature, top_k):
    logits, states = model(prime)
    first = sample_logits(jax.random.fold_in(key, 0), logits[:, -1], temperature, top_k)

    def step(carry, t):
        tok, states = carry
        logits, states = model(tok[:, None], initial_state=states)
        nxt = sample_logits(jax.random.fold_in(key, t), logits[:, -1], temperature, top_k)
        return (nxt, states), tok

    _, toks = jax.lax.scan(step, (first, states), jnp.arange(1, num_steps + 1))
    return toks.T


def generate_stateful(
    model: nnx.Module,
    prime: Array,
    num_steps: int,
    *,
    key: Array | None = None,
    temperature: float = 0.0,
    top_k: int = 0,
) -> Array:
    """Generates `num_steps` tokens after `prime [streams, prime_len]` carrying the LSTM state.

    `model(ids, initial_state=...) -> (logits [B, T, V], states)` as `LanguageModel(predict="all")`.
    Returns int32 ids `[streams, num_steps]`.
    """
    _check(temperature, top_k, num_steps)
    if prime.ndim != 2 or prime.shape[1] < 1:
        raise ValueError(f"prime must be [streams, prime_len >= 1] ids, got shape {prime.shape}")
    key = jax.random.key(0) if key is None else key
    return _stateful(
        model,
        jnp.asarray(prime, jnp.int32),
        key,
        num_steps=num_steps,
        temperature=float(temperature),
        top_k=int(top_k),
    )


@functools.partial(nnx.jit, static_argnames=("num_steps", "temperature", "top_k", "use_mask"))
def _windowed(model, window, key, *, num_steps, temperature, top_k, use_mask):
    def step(window, t):
        mask = (window != 0) if use_mask else None
        logits, _ = model(window, mask=mask)
        nxt = sample_logits(jax.random.fold_in(key, t), logits, temperature, top_k)
        return jnp.concatenate([window[:, 1:], nxt[:, None]], axis=1), nxt

    _, toks = jax.lax.scan(step, window, jnp.arange(num_steps))
    return toks.T


def generate_windowed(
    model: nnx.Module,
    window: Array,
    num_steps: int,
    *,
    key: Array | None = None,
    temperature: float = 0.0,
    top_k: int = 0,
    mask_padding: bool = False,
) -> Array:
    """Generates `num_steps` tokens, each predicted from the last `window_len` tokens.

    Args:
      model: `model(ids [B, W], mask=...) -> (logits [B, V], states)` (`LanguageModel(predict="last")`).
      window: int ids `[streams, window_len]`, pre-padded with 0 when shorter (as the tutorials pad).
      num_steps: tokens to generate.
      key: PRNG key for sampling (unused when greedy).
      temperature: 0 = greedy.
      top_k: sample among the k most likely tokens (0 = all).
      mask_padding: pass `mask = ids != 0` to the model (models trained with masked padding).

    Returns:
      int32 ids `[streams, num_steps]`.
    """
    _check(temperature, top_k, num_steps)
    if window.ndim != 2 or window.shape[1] < 1:
        raise ValueError(f"window must be [streams, window_len >= 1] ids, got shape {window.shape}")
    key = jax.random.key(0) if key is None else key
    return _windowed(
        model,
        jnp.asarray(window, jnp.int32),
        key,
        num_steps=num_steps,
        temperature=float(temperature),
        top_k=int(top_k),
        use_mask=bool(mask_padding),
    )
