"""Compiled text generation: greedy or sampled (temperature, top-k), the whole loop in one `lax.scan`.

Two loops match the two ways the language models are trained:

* `generate_stateful`: for models that predict at every position (`LanguageModel(predict="all")`). The
  prime is run once through the LSTM, then each step feeds the chosen token and carries the LSTM state:
  O(1) work per generated token. On CPU, a `LanguageModel` of LSTM layers and its output layer (no dense
  layers between) generates in one call of the native kernel (`lstm_jax.native.generate`), which splits
  each token's weights between the cores; the same tokens as the `lax.scan` loop (`impl="xla"`).
* `generate_windowed`: for "window -> next token" models (`predict="last"`, the Keras tutorials). Each step
  runs the model on the last `window` tokens, exactly as the tutorial's loop of one `model.predict` per
  token, but compiled.

Both take token ids `[streams, prime_len]` and return the generated ids `[streams, num_steps]`.
"""

from __future__ import annotations

import functools
import math
import operator
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from lstm_jax import native
from lstm_jax.config_utils import MAX_SEED
from lstm_jax.errors import UserError
from lstm_jax.models import LanguageModel
from lstm_jax.nn import LSTM, check_key

Array = jax.Array

__all__ = [
    "sample_logits",
    "INVALID_TOKEN",
    "scale_logits",
    "generate_stateful",
    "generate_windowed",
    "native_generation_blocker",
    "temperature_ok",
    "check_sampling_flags",
    "warn_unused_top_k",
    "check_seed",
]


def sample_logits(key: Array, logits: Array, temperature: float = 0.0, top_k: int = 0) -> Array:
    """Chooses one token per row of `logits [batch, vocab]`.

    `temperature == 0` is greedy (argmax). Otherwise samples from `softmax(logits / temperature)`, restricted
    to the `top_k` most likely tokens when `top_k > 0` (tokens tied with the k-th are kept too, as
    Hugging Face's top-k warper keeps them).

    The largest logit is subtracted before dividing (softmax is unchanged by the shift), so the best
    token's scaled logit is 0 and the others are negative, -inf at worst: a tiny temperature (1e-45, or
    one float32 rounds to 0) samples the argmax instead of overflowing to inf - inf = NaN. The top k are
    the k largest logits, ranked before dividing: at a huge temperature (1e38) the scaled logits are
    subnormal numbers that the CPU flushes to 0, all tied with the best one.

    A row with no distribution to draw from (a NaN logit, or every logit -inf: a diverged model) has no
    token: called eagerly this is a ValueError naming the rows (as `torch.multinomial` refuses invalid
    probabilities); under `jax.jit`, which cannot raise, such a row's token is `INVALID_TOKEN` (-1), and
    `generate_stateful` / `generate_windowed` raise the ValueError when one comes back (a plain argmax
    returned token 0 for it, silently).
    """
    concrete = isinstance(temperature, (int, float, np.number))  # not a traced value under jit
    if concrete and not temperature_ok(temperature):
        # A negative one sampled from softmax(-logits / |t|): the least likely tokens, silently.
        raise ValueError(
            f"sample_logits: temperature must be a finite number >= 0 (0 = greedy), got {temperature}"
        )
    if top_k < 0:
        raise ValueError(f"sample_logits: top_k must be >= 0 (0 = no limit), got {top_k}")
    if key is None and not (concrete and temperature == 0):
        raise TypeError(
            "sample_logits: key is None; sampling (temperature > 0) needs a PRNG key, e.g."
            " jax.random.key(0)"
        )
    logits = jnp.asarray(logits)
    invalid = _invalid_rows(logits)
    if not isinstance(invalid, jax.core.Tracer) and bool(jnp.any(invalid)):
        rows = jnp.nonzero(jnp.reshape(invalid, (-1,)))[0][:10].tolist()
        raise ValueError(
            f"sample_logits: logits rows {rows} (flattened) hold NaN or are all -inf: no token to"
            " choose (NaN model weights or inputs?)"
        )
    if temperature == 0.0:
        tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    else:
        logits = logits.astype(jnp.float32)
        scaled = scale_logits(logits, temperature)
        if top_k > 0:
            k = min(top_k, logits.shape[-1])
            kth = jax.lax.top_k(logits, k)[0][..., -1:]
            scaled = jnp.where(logits < kth, -jnp.inf, scaled)
        tokens = jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)
    return jnp.where(invalid, jnp.int32(INVALID_TOKEN), tokens)


# What `sample_logits` (and the native generation kernel) return under jit for a row of logits without a
# distribution (a NaN, or all -inf).
INVALID_TOKEN = -1


def _invalid_rows(logits: Array) -> Array:
    """`[...]` bool: the rows of `logits [..., vocab]` holding a NaN (jnp.max propagates it) or only -inf."""
    best = jnp.max(logits, axis=-1)
    return jnp.isnan(best) | (best == -jnp.inf)


def _check_tokens(tokens: Array, what: str) -> Array:
    """`tokens` from a generation loop, or a ValueError where a step's logits had no token to choose
    (`INVALID_TOKEN`). Under a caller's jit (tokens a tracer) they are returned as they are."""
    if isinstance(tokens, jax.core.Tracer):
        return tokens
    bad = jnp.argwhere(tokens == INVALID_TOKEN)
    if bad.shape[0]:
        stream, step = bad[0].tolist()
        raise ValueError(
            f"{what}: the logits of stream {stream} at generated step {step} held NaN or were all -inf:"
            " no token to choose (NaN model weights, or inputs that overflowed?)"
        )
    return tokens


def scale_logits(logits: Array, temperature: float) -> Array:
    """`(logits - max) / temperature` in float32, the maximum (ties too) exactly 0 whatever the temperature
    (also where float32 rounds or flushes the temperature to 0). The native kernel's `choose` computes the
    same values, so both give the same tokens."""
    logits = logits.astype(jnp.float32)
    shifted = logits - jnp.max(logits, axis=-1, keepdims=True)
    return jnp.where(shifted == 0, 0.0, shifted / temperature)


def temperature_ok(temperature: float) -> bool:
    """Whether `temperature` is a sampling temperature: a finite number >= 0 (0 = greedy); NaN is not."""
    return 0 <= temperature < math.inf  # False for NaN too


# The most tokens one generation call makes per sample, and the most samples: the compiled loop holds
# [num_samples, length] outputs (and its keys) in memory, so a mistyped --length=1000000000 would
# otherwise eat the machine's memory before anything is printed.
MAX_LENGTH = 1_000_000
MAX_SAMPLES = 10_000
# Samples x length, the tokens one call holds ([samples, length] int32 ids, the text after): each cap alone
# would allow 10^10 (40 GB of ids).
MAX_TOKENS = 10_000_000


def check_length(length: int, *, name: str, unit: str) -> None:
    """`UserError` unless 1 <= `length` <= `MAX_LENGTH`; `name` is the flag (``--length``)."""
    if length < 1:
        raise UserError(f"{name}={length} must be >= 1; pass the number of {unit} to generate")
    if length > MAX_LENGTH:
        raise UserError(
            f"{name}={length} is over the {MAX_LENGTH:,} {unit} one call generates; pass a smaller"
            " number (and run generation again for more)"
        )


def check_sampling_flags(
    temperature: float, top_k: int, *, flag: str = "--", unit: str = "tokens"
) -> None:
    """`UserError` for a sampling setting a user gave out of range, named as `{flag}temperature` and
    `{flag}top_k` (a mode's flags, or `--config.generate.` for the samples a training run makes at its
    end); `unit` names what top_k counts ("characters", "words")."""
    if not temperature_ok(temperature):
        raise UserError(f"{flag}temperature={temperature} must be a number >= 0 (0 = greedy)")
    if top_k < 0:
        raise UserError(f"{flag}top_k={top_k} must be >= 0 (0 = all {unit})")


def warn_unused_top_k(
    temperature: float,
    top_k: int,
    *,
    unit: str = "tokens",
    temperature_flag: bool = False,
    top_k_flag: bool = False,
    fix_flag: str | None = None,
) -> bool:
    """A warning when `top_k` is set but greedy decoding (temperature 0) takes the most likely token,
    so the setting does nothing (as Hugging Face's `generate` warns for `top_k` without sampling).
    Each value is named as the flag (``--top_k``) when `*_flag`, else as the config field
    (``--config.generate.top_k``). The fix names `fix_flag` when given (a generate mode's
    ``--temperature``: there ``--config.generate.temperature`` needs a --config file as well), else the
    temperature as named. Returns whether it warned."""
    if temperature != 0 or top_k <= 0:
        return False
    t_name = "--temperature" if temperature_flag else "--config.generate.temperature"
    k_name = "--top_k" if top_k_flag else "--config.generate.top_k"
    logging.warning(
        "%s=%d has no effect at %s=0 (greedy: the most likely %s); pass %s > 0 to sample among the"
        " %d most likely",
        k_name,
        top_k,
        t_name,
        unit.removesuffix("s"),
        fix_flag or t_name,
        top_k,
    )
    return True


def check_seed(seed: int, *, name: str = "--sample_seed") -> None:
    """`UserError` unless 0 <= `seed` <= `MAX_SEED`; `name` is the flag."""
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"{name}={seed} must be between 0 and {MAX_SEED:,}")


def _check(temperature: float, top_k: int, num_steps: int) -> None:
    for name, value in (("num_steps", num_steps), ("top_k", top_k)):
        try:
            operator.index(value)
        except TypeError:
            # A float num_steps was JAX's "Shapes must be 1D sequences of concrete values of integer type".
            raise TypeError(
                f"{name} must be an int, got {type(value).__name__} {value!r}"
            ) from None
    try:
        float(temperature)
        ok = not isinstance(temperature, (str, bytes))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise TypeError(
            f"temperature must be a number >= 0 (0 = greedy), got {type(temperature).__name__}"
            f" {temperature!r}"
        )
    if not temperature_ok(temperature):
        raise ValueError(
            f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}"
        )
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = no limit), got {top_k}")
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")


def _token_ids(ids, name: str, model) -> Array:
    """`ids` as int32 token ids. `jnp.asarray(ids, jnp.int32)` wrapped an int64 id 2**32 + 3 into the
    valid id 3 and truncated float ids, silently: a float dtype is a TypeError, and (for ids known on
    the host) an id outside `[0, model.vocab_size)` (of a `LanguageModel`; else outside int32) a
    ValueError."""
    arr = ids if isinstance(ids, jax.Array) else np.asarray(ids)
    if not jnp.issubdtype(arr.dtype, jnp.integer):
        raise TypeError(f"{name} must be integer token ids, got dtype {arr.dtype}")
    if not isinstance(arr, jax.core.Tracer) and arr.size:
        vocab = model.vocab_size if isinstance(model, LanguageModel) else None
        lo, hi = int(np.min(arr)), int(np.max(arr))
        low, high = (0, vocab) if vocab is not None else (-(2**31), 2**31)
        if lo < low or hi >= high:
            raise ValueError(
                f"{name} holds token ids outside [{low}, {high}) (min {lo}, max {hi}); "
                + (f"the model's vocabulary has {vocab} tokens" if vocab is not None else "int32")
            )
    return jnp.asarray(arr, jnp.int32)


def _infer(model, *args, **kw):
    """`model(*args, **kw)` in inference mode: generation never drops units, whatever the mode NNX's
    `model.train()` left lstm_jax's modules in (they take `deterministic`; another model is called as
    it is)."""
    if isinstance(getattr(model, "deterministic", None), bool):
        kw["deterministic"] = True
    return model(*args, **kw)


@functools.partial(nnx.jit, static_argnames=("num_steps", "temperature", "top_k"))
def _stateful(model, prime, key, *, num_steps, temperature, top_k):
    logits, states = _infer(model, prime)
    first = sample_logits(jax.random.fold_in(key, 0), logits[:, -1], temperature, top_k)

    def step(carry, t):
        tok, states = carry
        logits, states = _infer(model, tok[:, None], initial_state=states)
        nxt = sample_logits(jax.random.fold_in(key, t), logits[:, -1], temperature, top_k)
        return (nxt, states), tok

    _, toks = jax.lax.scan(step, (first, states), jnp.arange(1, num_steps + 1))
    return toks.T


# `jax.jit` of the model as a pytree (an NNX module is one) rather than `nnx.jit`: per call, nnx.jit's graph
# traversal took 2.7 ms of a 200-character call's 18 ms here, `nnx.split` 0.8 ms, flattening the pytree 0.1.
@functools.partial(jax.jit, static_argnames=("num_steps", "temperature", "top_k"))
def _stateful_native(model, prime, key, *, num_steps, temperature, top_k):
    logits, states = _infer(model, prime)
    first = sample_logits(jax.random.fold_in(key, 0), logits[:, -1], temperature, top_k)
    params = [layer.params_dict() for layer in model.lstm.layers]
    vocab = model.vocab_size
    # Layer 0's pre-activations for each token, looked up per step.
    table = model.encode(jnp.arange(vocab)) @ params[0]["kernel"] + params[0]["bias"]
    noise = None
    if temperature > 0:  # what jax.random.categorical adds at step t (sample_logits' key)
        streams = prime.shape[0]
        noise = jax.vmap(
            lambda t: jax.random.gumbel(jax.random.fold_in(key, t), (streams, vocab), jnp.float32)
        )(jnp.arange(num_steps))
    layers = [dict(p, h=s.h, c=s.c) for p, s in zip(params, states, strict=True)]
    # The kernel refuses ids outside the table: a first INVALID_TOKEN goes in as 0 and is put back below.
    toks = native.generate(
        jnp.maximum(first, 0),
        table,
        layers,
        model.head.kernel[...],
        model.head.bias[...],
        num_steps,
        noise=noise,
        temperature=temperature,
        top_k=top_k,
    )
    return toks if num_steps == 0 else toks.at[:, 0].set(first)


# The native path draws every step's Gumbel noise up front ([num_steps, streams, vocab] float32); above this
# size `impl="auto"` samples with the lax.scan loop instead, which draws it step by step.
NATIVE_NOISE_MAX_BYTES = 256 * 2**20


def native_generation_blocker(model: nnx.Module) -> str | None:
    """Why `generate_stateful` cannot use the native kernel for `model` (None when it can).

    It can for a `LanguageModel(predict="all")` whose layers are float32, forward `LSTM`s followed
    directly by the output layer, on the CPU backend, with the native kernel built.
    """
    if jax.default_backend() != "cpu":
        return f"the native kernel is for CPU (backend: {jax.default_backend()})"
    if not isinstance(model, LanguageModel) or model.predict != "all":
        return "the model is not a LanguageModel(predict='all')"
    if len(model.dense.layers) > 0:
        return "the model has dense layers between the LSTM and the output layer"
    if model.head.bias is None:
        return "the output layer has no bias"
    for layer in model.lstm.layers:
        if not isinstance(layer, LSTM) or layer.reverse:
            return "a layer is not a forward LSTM"
        if layer.compute_dtype is not None or any(
            v.dtype != jnp.float32 for v in layer.params_dict().values()
        ):
            return "a layer is not float32"
    return native.unavailable_reason()


def generate_stateful(
    model: nnx.Module,
    prime: Array,
    num_steps: int,
    *,
    key: Array | None = None,
    temperature: float = 0.0,
    top_k: int = 0,
    impl: Literal["auto", "native", "xla"] = "auto",
) -> Array:
    """Generates `num_steps` tokens after `prime [streams, prime_len]` carrying the LSTM state.

    `model(ids, initial_state=...) -> (logits [B, T, V], states)` as `LanguageModel(predict="all")`.
    `impl`: "xla" (a `lax.scan` of the model's step), "native" (one call of the native CPU kernel; see
    `native_generation_blocker`) or "auto" (native where it can run). `key` defaults to
    `jax.random.key(0)`, so sampling (temperature > 0) without a key gives the same tokens every call.
    Returns int32 ids `[streams, num_steps]`.
    """
    _check(temperature, top_k, num_steps)
    if isinstance(model, LanguageModel) and model.predict != "all":
        raise ValueError(
            "generate_stateful needs a LanguageModel(predict='all') (logits at every position, to carry"
            f" the state); this one has predict={model.predict!r}: use generate_windowed"
        )
    # A nested list, as jnp functions take one.
    prime = prime if isinstance(prime, jax.Array) else np.asarray(prime)
    key = jax.random.key(0) if key is None else check_key(key, "generate_stateful: key")
    if isinstance(model, LanguageModel) and model.bidirectional:
        # Its backward direction reads the sequence from the end: a state carried forward one token at
        # a time is not what it computes on the whole sequence, and the tokens came out with no error.
        raise ValueError(
            "generate_stateful: the model is bidirectional; its backward direction cannot be carried"
            " forward token by token (each new token changes every backward state). Generate with a"
            " unidirectional LanguageModel"
        )
    if prime.ndim != 2 or prime.shape[1] < 1:
        raise ValueError(f"prime must be [streams, prime_len >= 1] ids, got shape {prime.shape}")
    if impl not in ("auto", "native", "xla"):
        raise ValueError(f"impl must be 'auto', 'native' or 'xla', got {impl!r}")
    args = (_token_ids(prime, "prime", model), key)
    kw = {"num_steps": num_steps, "temperature": float(temperature), "top_k": int(top_k)}
    if impl != "xla":
        blocker = native_generation_blocker(model)
        noise_bytes = 4 * num_steps * prime.shape[0] * model.vocab_size if blocker is None else 0
        if temperature > 0 and noise_bytes > NATIVE_NOISE_MAX_BYTES:
            blocker = (
                f"sampling {num_steps} tokens x {prime.shape[0]} streams needs "
                f"{noise_bytes / 2**20:.0f} MiB of Gumbel noise (limit "
                f"{NATIVE_NOISE_MAX_BYTES / 2**20:.0f} MiB); generate fewer at a time"
            )
        if blocker is None:
            return _check_tokens(_stateful_native(model, *args, **kw), "generate_stateful")
        if impl == "native":
            raise ValueError(f"impl='native' cannot generate with this model: {blocker}")
    return _check_tokens(_stateful(model, *args, **kw), "generate_stateful")


@functools.partial(nnx.jit, static_argnames=("num_steps", "temperature", "top_k", "use_mask"))
def _windowed(model, window, key, *, num_steps, temperature, top_k, use_mask):
    def step(window, t):
        mask = (window != 0) if use_mask else None
        logits, _ = _infer(model, window, mask=mask)
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
      key: PRNG key for sampling (unused when greedy); `jax.random.key(0)` by default, so sampling
        without a key gives the same tokens every call.
      temperature: 0 = greedy.
      top_k: sample among the k most likely tokens (0 = all).
      mask_padding: pass `mask = ids != 0` to the model (models trained with masked padding).

    Returns:
      int32 ids `[streams, num_steps]`.
    """
    _check(temperature, top_k, num_steps)
    if isinstance(model, LanguageModel) and model.predict != "last":
        raise ValueError(
            "generate_windowed needs a LanguageModel(predict='last') (logits from the last state);"
            f" this one has predict={model.predict!r}: use generate_stateful"
        )
    window = window if isinstance(window, jax.Array) else np.asarray(window)
    key = jax.random.key(0) if key is None else check_key(key, "generate_windowed: key")
    if window.ndim != 2 or window.shape[1] < 1:
        raise ValueError(f"window must be [streams, window_len >= 1] ids, got shape {window.shape}")
    tokens = _windowed(
        model,
        _token_ids(window, "window", model),
        key,
        num_steps=num_steps,
        temperature=float(temperature),
        top_k=int(top_k),
        use_mask=bool(mask_padding),
    )
    return _check_tokens(tokens, "generate_windowed")
