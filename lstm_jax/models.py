"""The experiments' models: Flax NNX modules built from `lstm_jax.nn` and Flax's own Embed/Linear/Dropout.

Two families cover the four tutorials:

* `LanguageModel`: token ids `[batch, time]` -> next-token logits, either at every position
  (`[batch, time, vocab]`, char-rnn style) or from the last state only (`[batch, vocab]`, the Keras tutorials'
  "window -> next token" form).
* `TextClassifier`: token ids `[batch, time]` -> one logit `[batch]` (binary, sigmoid) or class logits
  `[batch, classes]` (softmax).

Both take int32 ids, an optional bool `mask [batch, time]` (True at real tokens) and the shared call keywords
`deterministic` and `key` (dropout randomness is explicit, never stored in the module; `deterministic=None`
follows `model.train()` / `model.eval()`, evaluation by default: see `lstm_jax.nn`).
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lstm_jax.core import LSTMState
from lstm_jax.nn import StackedLSTM, layer_sizes, resolve_deterministic, split_key

Array = jax.Array
InputMode = Literal["embed", "scalar", "onehot"]
Pool = Literal["last", "mean", "max", "mean_max"]

__all__ = ["LanguageModel", "TextClassifier", "DenseStack"]

# Keras' defaults, which the tutorials rely on: Dense is glorot-uniform with zero bias, Embedding is
# uniform(-0.05, 0.05) (Flax's own defaults are lecun-normal and a unit-variance normal).
_DENSE_INIT = jax.nn.initializers.glorot_uniform()
_EMBED_INIT = jax.nn.initializers.uniform(0.1)  # [0, 0.1) shifted to [-0.05, 0.05) below
_ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh, "linear": lambda x: x}
ACTIVATIONS = tuple(_ACTIVATIONS)  # the names `DenseStack` accepts


def _embed_init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    return _EMBED_INIT(key, shape, dtype) - 0.05


def _linear(n_in: int, n_out: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(n_in, n_out, kernel_init=_DENSE_INIT, rngs=rngs)


def _embed(vocab_size: int, dim: int, rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(vocab_size, dim, embedding_init=_embed_init, rngs=rngs)


def _final_h(states: Any, bidirectional: bool) -> Array:
    """The last layer's final h from a `StackedLSTM`'s `states`: `[batch, H]`, or with
    `bidirectional=True` both directions' side by side, forward first, whatever the merge mode
    (`[batch, 2H]`)."""
    last = states[-1]
    return jnp.concatenate([last[0].h, last[1].h], axis=-1) if bidirectional else last.h


def _final_h_features(lstm: StackedLSTM, bidirectional: bool) -> int:
    """The width of `_final_h`'s result for the stack `lstm`."""
    return 2 * lstm.layers[-1].hidden_size if bidirectional else lstm.out_features


class DenseStack(nnx.Module):
    """Dense layers with an activation (Keras `Dense(units, activation=...)` repeated).

    `layers` is a sequence of `(units, activation)` with activation one of "relu", "tanh", "linear".
    """

    def __init__(self, in_features: int, layers: list[tuple[int, str]], *, rngs: nnx.Rngs):
        mods, fns = [], []
        size = in_features
        for units, act in layers:
            if act not in _ACTIVATIONS:
                raise ValueError(
                    f"DenseStack: unknown activation {act!r}; use relu, tanh or linear"
                )
            mods.append(_linear(size, units, rngs))
            fns.append(act)
            size = units
        self.layers = nnx.List(mods)
        self.activations = tuple(fns)
        self.out_features = size

    def __call__(self, x: Array) -> Array:
        """`x [..., in_features]` -> `[..., out_features]`."""
        for layer, act in zip(self.layers, self.activations, strict=True):
            x = _ACTIVATIONS[act](layer(x))
        return x


def _check_key(who: str, key: Array | None, deterministic: bool, *dropouts: nnx.Dropout) -> None:
    """A ValueError naming `key=` when training mode has dropout to draw and no key (nnx.Dropout's own
    message asks for an `rngs` argument that the models do not take)."""
    if not deterministic and key is None and any(d.rate > 0 for d in dropouts):
        raise ValueError(f"{who}: dropout in training mode (deterministic=False) needs key=")


def _check_vocab(vocab_size: int, who: str) -> None:
    """A ValueError for a vocabulary of no tokens (it was a ZeroDivisionError in an initializer)."""
    if (
        isinstance(vocab_size, bool)
        or not isinstance(vocab_size, (int, np.integer))
        or vocab_size < 1
    ):
        raise ValueError(
            f"{who}: vocab_size must be an int >= 1 (token ids 0 .. vocab_size - 1), got {vocab_size!r}"
        )


def _encode_inputs(mode: InputMode, embed: nnx.Embed | None, ids: Array, vocab_size: int) -> Array:
    if mode == "embed":
        return embed(ids)
    if mode == "scalar":  # the Macbeth tutorial: each character as one feature, index / vocab_size
        return (ids.astype(jnp.float32) / vocab_size)[..., None]
    if mode == "onehot":
        return jax.nn.one_hot(ids, vocab_size, dtype=jnp.float32)
    raise ValueError(f"unknown input mode {mode!r}; use embed, scalar or onehot")


class LanguageModel(nnx.Module):
    """Embedding (or scalar / one-hot input) -> stacked LSTM -> optional dense layers -> vocab logits.

    Args:
      vocab_size: number of token ids (logits size).
      hidden_sizes: LSTM units per layer, e.g. `(300, 300)` (Macbeth) or `(128, 64)` (fashion).
      rngs: initialisation RNGs.
      input_mode: "embed" (Embedding `embed_dim`), "scalar" (`id / vocab_size` as one feature, as the
        Macbeth tutorial) or "onehot".
      embed_dim: embedding size when `input_mode="embed"`.
      dropout: dropout between LSTM layers and after the last one (the tutorials' `Dropout` layers).
      dense_layers: `(units, activation)` layers between the LSTM and the output layer
        (fashion: `[(64, "relu")]`).
      predict: "last" (logits from the last state, `[batch, vocab]`; with `bidirectional=True`, both
        directions' final states side by side) or "all" (every position, `[batch, time, vocab]`).
      **lstm_kwargs: passed to every `lstm_jax.nn.LSTM` (recurrent_dropout, unroll, remat, impl, ...).
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_sizes: tuple[int, ...] | list[int],
        *,
        rngs: nnx.Rngs,
        input_mode: InputMode = "embed",
        embed_dim: int = 64,
        dropout: float = 0.0,
        dense_layers: list[tuple[int, str]] | tuple = (),
        predict: Literal["last", "all"] = "all",
        **lstm_kwargs: Any,
    ):
        if predict not in ("last", "all"):
            raise ValueError(f"LanguageModel: predict must be 'last' or 'all', got {predict!r}")
        _check_vocab(vocab_size, "LanguageModel")
        hidden_sizes = layer_sizes(hidden_sizes, "LanguageModel")
        if input_mode not in ("embed", "scalar", "onehot"):
            raise ValueError(f"LanguageModel: unknown input_mode {input_mode!r}")
        self.vocab_size = vocab_size
        self.input_mode = input_mode
        self.predict = predict
        self.embed = _embed(vocab_size, embed_dim, rngs) if input_mode == "embed" else None
        in_features = {"embed": embed_dim, "scalar": 1, "onehot": vocab_size}[input_mode]
        self.lstm = StackedLSTM(
            in_features, tuple(hidden_sizes), rngs=rngs, dropout_between=dropout, **lstm_kwargs
        )
        self.bidirectional = bool(lstm_kwargs.get("bidirectional", False))
        last = predict == "last"
        feat = _final_h_features(self.lstm, self.bidirectional) if last else self.lstm.out_features
        self.dropout = nnx.Dropout(dropout)
        self.dense = DenseStack(feat, list(dense_layers), rngs=rngs)
        self.head = _linear(self.dense.out_features, vocab_size, rngs)
        self.deterministic = True  # the mode: `.train()` / `.eval()` set it (`lstm_jax.nn`)

    def __call__(
        self,
        ids: Array,
        *,
        mask: Array | None = None,
        initial_state: list[LSTMState] | None = None,
        deterministic: bool | None = None,
        key: Array | None = None,
    ) -> tuple[Array, list[LSTMState]]:
        """`ids [batch, time]` -> `(logits, final states per layer)`.

        Logits are `[batch, vocab]` with `predict="last"` and `[batch, time, vocab]` with `predict="all"`.
        """
        deterministic = resolve_deterministic(self, deterministic)
        h, states = self.features(
            ids, mask=mask, initial_state=initial_state, deterministic=deterministic, key=key
        )
        return self.head(h), states

    def encode(self, ids: Array) -> Array:
        """The first LSTM's input for token `ids [...]`: `[..., in_features]` (embedding row, scalar or
        one-hot, per `input_mode`)."""
        return _encode_inputs(self.input_mode, self.embed, ids, self.vocab_size)

    def features(
        self,
        ids: Array,
        *,
        mask: Array | None = None,
        initial_state: list[LSTMState] | None = None,
        deterministic: bool | None = None,
        key: Array | None = None,
    ) -> tuple[Array, list[LSTMState]]:
        """Everything but the output layer: `(features, states)`, logits = `self.head(features)`.

        Features are `[batch, F]` or `[batch, time, F]` (F = the last dense layer's units, else the last
        LSTM's). A loss can apply `self.head` in chunks (`losses.chunked_softmax_metric_sums`) so the full
        `[batch, time, vocab]` logits never exist.
        """
        deterministic = resolve_deterministic(self, deterministic)
        _check_key("LanguageModel", key, deterministic, self.dropout)
        k_lstm, k_drop = split_key(key, 2)
        kw = {"mask": mask, "initial_state": initial_state, "deterministic": deterministic}
        if self.input_mode == "embed":
            # The first LSTM looks the ids up itself (and folds the table into its input projection
            # when that is cheaper; `lstm_jax.core.lstm_layer`).
            outs, states = self.lstm(ids, key=k_lstm, embedding=self.embed.embedding[...], **kw)
        else:
            x = _encode_inputs(self.input_mode, self.embed, ids, self.vocab_size)
            outs, states = self.lstm(x, key=k_lstm, **kw)
        if self.predict == "all":
            h = outs
        else:  # the last layer's final h, both directions' when bidirectional (as pool="last" below)
            h = _final_h(states, self.bidirectional)
        h = self.dropout(h, deterministic=deterministic, rngs=k_drop)
        return self.dense(h), states


class TextClassifier(nnx.Module):
    """Embedding -> dropout -> (Bi)LSTM stack -> pooling -> dropout -> dense layers -> logits.

    Args:
      vocab_size: embedding rows (ids >= vocab_size are an error upstream).
      embed_dim: embedding size (IMDB tutorial 16, fake news 300).
      hidden_sizes: LSTM units per layer (IMDB `(32,)`, fake news `(199,)`).
      num_outputs: 1 for a binary classifier (one sigmoid logit), else the number of classes (softmax).
      rngs: initialisation RNGs.
      embed_dropout: dropout on the embeddings (fake news 0.5).
      token_dropout: word dropout: each token's whole embedding vector is zeroed with this probability
        (one Bernoulli draw per `[batch, time]` position, kept vectors scaled by `1 / (1 - rate)`), so the
        model learns not to rely on any single word. Applied before `embed_dropout`.
      dropout: dropout on the pooled LSTM features (fake news 0.4), and between stacked LSTM layers.
      bidirectional: Bidirectional LSTM layers (concat).
      pool: "last" (final state of the last layer; with `bidirectional` both directions' final states),
        "mean", "max" or "mean_max" over real tokens.
      dense_layers: `(units, activation)` layers before the output (fake news `[(399, "relu"), (43, "relu")]`).
      **lstm_kwargs: passed to every `lstm_jax.nn.LSTM`.
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        hidden_sizes: tuple[int, ...] | list[int],
        *,
        num_outputs: int = 1,
        rngs: nnx.Rngs,
        embed_dropout: float = 0.0,
        token_dropout: float = 0.0,
        dropout: float = 0.0,
        bidirectional: bool = False,
        pool: Pool = "last",
        dense_layers: list[tuple[int, str]] | tuple = (),
        **lstm_kwargs: Any,
    ):
        if pool not in ("last", "mean", "max", "mean_max"):
            raise ValueError(
                f"TextClassifier: unknown pool {pool!r}; use last, mean, max or mean_max"
            )
        if num_outputs < 1:
            raise ValueError(f"TextClassifier: num_outputs must be >= 1, got {num_outputs}")
        _check_vocab(vocab_size, "TextClassifier")
        hidden_sizes = layer_sizes(hidden_sizes, "TextClassifier")
        self.embed = _embed(vocab_size, embed_dim, rngs)
        self.embed_dropout = nnx.Dropout(embed_dropout)
        self.token_dropout = nnx.Dropout(token_dropout, broadcast_dims=(-1,))
        self.lstm = StackedLSTM(
            embed_dim,
            tuple(hidden_sizes),
            rngs=rngs,
            dropout_between=dropout,
            bidirectional=bidirectional,
            **lstm_kwargs,
        )
        self.pool = pool
        self.bidirectional = bidirectional
        if pool == "last":
            feat = _final_h_features(self.lstm, bidirectional)
        else:
            feat = self.lstm.out_features * (2 if pool == "mean_max" else 1)
        self.dropout = nnx.Dropout(dropout)
        self.dense = DenseStack(feat, list(dense_layers), rngs=rngs)
        self.head = _linear(self.dense.out_features, num_outputs, rngs)
        self.num_outputs = num_outputs
        self.deterministic = True  # the mode: `.train()` / `.eval()` set it (`lstm_jax.nn`)

    def features(
        self,
        ids: Array,
        *,
        mask: Array | None = None,
        deterministic: bool | None = None,
        key: Array | None = None,
    ) -> Array:
        """The pooled sequence representation `[batch, features]` (before the dense head)."""
        deterministic = resolve_deterministic(self, deterministic)
        _check_key("TextClassifier", key, deterministic, self.embed_dropout, self.token_dropout)
        k_emb, k_lstm = split_key(key, 2)
        # Its own key, derived so that models without word dropout keep their random streams.
        k_tok = None if k_emb is None else jax.random.fold_in(k_emb, 1)
        if deterministic or (self.token_dropout.rate == 0 and self.embed_dropout.rate == 0):
            # Nothing between the embedding and the LSTM: the LSTM looks the ids up itself (and folds
            # the table into its input projection when that is cheaper; `lstm_jax.core.lstm_layer`).
            table = self.embed.embedding[...]
            outs, states = self.lstm(
                ids, mask=mask, deterministic=deterministic, key=k_lstm, embedding=table
            )
        else:
            x = self.token_dropout(self.embed(ids), deterministic=deterministic, rngs=k_tok)
            x = self.embed_dropout(x, deterministic=deterministic, rngs=k_emb)
            outs, states = self.lstm(x, mask=mask, deterministic=deterministic, key=k_lstm)
        if self.pool == "last":
            return _final_h(states, self.bidirectional)
        m = jnp.ones(outs.shape[:2], bool) if mask is None else mask
        mf = m[..., None].astype(outs.dtype)
        count = jnp.maximum(mf.sum(axis=1), 1.0)
        mean = (outs * mf).sum(axis=1) / count
        # `initial`: sequences of length 0 (time == 0, which the LSTM layers take) have nothing to
        # reduce, and pool to zeros as an all-padding row does.
        mx = jnp.where(m[..., None], outs, -jnp.inf).max(axis=1, initial=-jnp.inf)
        mx = jnp.where(jnp.isfinite(mx), mx, 0.0)  # an all-padding row pools to zeros
        return {"mean": mean, "max": mx, "mean_max": jnp.concatenate([mean, mx], -1)}[self.pool]

    def __call__(
        self,
        ids: Array,
        *,
        mask: Array | None = None,
        deterministic: bool | None = None,
        key: Array | None = None,
    ) -> Array:
        """`ids [batch, time]` -> logits `[batch]` (binary) or `[batch, num_outputs]`."""
        deterministic = resolve_deterministic(self, deterministic)
        _check_key("TextClassifier", key, deterministic, self.dropout)
        k_feat, k_drop = split_key(key, 2)
        h = self.features(ids, mask=mask, deterministic=deterministic, key=k_feat)
        h = self.dropout(h, deterministic=deterministic, rngs=k_drop)
        logits = self.head(self.dense(h))
        return logits[:, 0] if self.num_outputs == 1 else logits
