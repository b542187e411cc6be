"""Flax NNX modules built on the functional core (`lstm_jax.core`).

Each module holds its parameters as `nnx.Param`s in the core's Keras layout, so
`lstm_jax.core.lstm_layer(layer.params_dict(), xs)` and `layer(xs)` compute the same thing. Randomness is
explicit: modules never hold RNG state; training code passes `key=` and `deterministic=False`.

Call convention shared by every module here::

    outputs, final_state = layer(xs, *, mask=None, initial_state=None, deterministic=None, key=None)

with `xs: [batch, time, features]`, `mask: [batch, time]` bool, `outputs: [batch, time, H]`.
`deterministic=None` follows the module's mode: evaluation (no dropout) when built, training after NNX's
`module.train()`, evaluation again after `module.eval()` (they set the `deterministic` attribute of every
module here, as of `nnx.Dropout`); an explicit True / False overrides it for the call. Training mode with
dropout still needs `key=`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lstm_jax import core
from lstm_jax.core import Impl, LSTMState, MergeMode

Array = jax.Array

__all__ = [
    "LSTM",
    "Bidirectional",
    "StackedLSTM",
    "layer_sizes",
    "resolve_deterministic",
    "split_key",
]


def resolve_deterministic(module: nnx.Module, deterministic: bool | None) -> bool:
    """The call's `deterministic`, or when None the module's mode (`module.train()` / `module.eval()`)."""
    return module.deterministic if deterministic is None else deterministic


def layer_sizes(hidden_sizes: Any, who: str) -> tuple[int, ...]:
    """`hidden_sizes` (units per layer, e.g. `(300, 300)`) as a tuple; one int is a TypeError (see
    `core._hidden_sizes`), and no layer at all is a ValueError."""
    sizes = core._hidden_sizes(hidden_sizes, who)
    if not sizes:
        raise ValueError(f"{who}: hidden_sizes must name at least one layer")
    return sizes


def split_key(key: Array | None, n: int) -> list[Array | None]:
    """`n` independent dropout keys from `key`, or `n` Nones when `key` is None (evaluation)."""
    if key is None:
        return [None] * n
    return list(jax.random.split(check_key(key), n))


def check_key(key: Any, who: str = "key=") -> Any:
    """`key` when it is a JAX PRNG key. An `nnx.Rngs` (Flax's habit: `rngs=`) was JAX's "unexpected PRNG
    key type Rngs", and an int seed (`key=0`, as `torch.manual_seed` takes one) "invalid PRNG key data",
    naming neither the argument nor the fix: each is a TypeError saying what to pass."""
    if isinstance(key, nnx.Rngs):
        raise TypeError(
            f"{who} must be a JAX PRNG key, got nnx.Rngs; pass key=rngs.dropout() (or"
            " jax.random.key(seed))"
        )
    if isinstance(key, (int, np.integer)) or (
        hasattr(key, "ndim")
        and key.ndim == 0
        and not jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    ):
        raise TypeError(f"{who} must be a PRNG key, e.g. jax.random.key({key}), got {key!r}")
    return key


class LSTM(nnx.Module):
    """One LSTM layer (Keras' `LSTM(units, return_sequences=True, return_state=True)`).

    Args:
      in_features: features per timestep.
      hidden_size: units `H`.
      rngs: `nnx.Rngs` used once, for initialisation (stream `params`).
      forget_bias: initial forget-gate bias (Keras `unit_forget_bias`).
      dropout: variational input dropout rate (Keras `dropout`): one mask per sequence.
      recurrent_dropout: variational dropout on `h_{t-1}` (Keras `recurrent_dropout`): one mask per sequence.
        Both masks are shared by the four gates, as in tf.keras 2's default path; Keras 3 draws one per
        gate whenever `recurrent_dropout > 0`.
      reverse: walk time backwards (outputs stay aligned with inputs).
      unroll: `lax.scan` unroll factor.
      remat: rematerialise the step in the backward pass.
      compute_dtype: matmul dtype (e.g. `jnp.bfloat16`); state stays float32.
      impl: core arrangement ("auto", "scan", "fused", "native", "per_step", "cudnn").
    """

    def __init__(
        self,
        in_features: int,
        hidden_size: int,
        *,
        rngs: nnx.Rngs,
        forget_bias: float = 1.0,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        reverse: bool = False,
        unroll: int = 1,
        remat: bool = False,
        compute_dtype: Any = None,
        impl: Impl = "auto",
        param_dtype: Any = jnp.float32,
    ):
        for name, rate in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"LSTM: {name} must be in [0, 1), got {rate}")
        p = core.init_lstm(
            rngs.params(), in_features, hidden_size, forget_bias=forget_bias, dtype=param_dtype
        )
        self.kernel = nnx.Param(p["kernel"])
        self.recurrent_kernel = nnx.Param(p["recurrent_kernel"])
        self.bias = nnx.Param(p["bias"])
        self.in_features = in_features
        self.hidden_size = hidden_size
        self.dropout = dropout
        self.recurrent_dropout = recurrent_dropout
        self.reverse = reverse
        self.unroll = unroll
        self.remat = remat
        self.compute_dtype = compute_dtype
        self.impl = impl
        # The mode: `.train()` / `.eval()` set it (see the module docstring).
        self.deterministic = True

    def params_dict(self) -> core.Params:
        """The parameters as the core's plain dict `{"kernel", "recurrent_kernel", "bias"}`."""
        return {
            "kernel": self.kernel[...],
            "recurrent_kernel": self.recurrent_kernel[...],
            "bias": self.bias[...],
        }

    def load_params(self, params: core.Params) -> None:
        """Sets the weights from a core dict (e.g. from `lstm_jax.convert.from_keras`)."""
        core._layer_params(params, "LSTM.load_params")  # a KeyError before, naming no fix
        for name in ("kernel", "recurrent_kernel", "bias"):
            current = getattr(self, name)
            value = jnp.asarray(params[name], current[...].dtype)
            if value.shape != current[...].shape:
                raise ValueError(
                    f"LSTM.load_params: {name} has shape {value.shape}, expected {current[...].shape}"
                )
            current[...] = value

    def __call__(
        self,
        xs: Array,
        *,
        mask: Array | None = None,
        initial_state: LSTMState | None = None,
        deterministic: bool | None = None,
        key: Array | None = None,
        return_gates: bool = False,
        embedding: Array | None = None,
    ) -> tuple[Array, LSTMState] | tuple[Array, LSTMState, core.Gates]:
        """`xs [batch, time, in_features]` -> `(outputs [batch, time, H], LSTMState)` (+ `Gates`).

        With `embedding [vocab, in_features]`, `xs` is integer ids `[batch, time]` and the input is
        `embedding[xs]` (folded into the input projection when that is cheaper; `core.lstm_layer`).
        """
        deterministic = resolve_deterministic(self, deterministic)
        xs = jnp.asarray(xs)  # an array-like (a nested list), as `core.lstm_layer` takes it
        in_mask = rec_mask = None
        if not deterministic and (self.dropout > 0 or self.recurrent_dropout > 0):
            if key is None:
                raise ValueError("LSTM: dropout in training mode needs key=")
            in_mask, rec_mask = core.variational_dropout_masks(
                check_key(key),
                xs.shape[0],
                self.in_features,
                self.hidden_size,
                dropout=self.dropout,
                recurrent_dropout=self.recurrent_dropout,
                dtype=self.kernel[...].dtype,
            )
        return core.lstm_layer(
            self.params_dict(),
            xs,
            mask=mask,
            initial_state=initial_state,
            reverse=self.reverse,
            unroll=self.unroll,
            remat=self.remat,
            input_dropout_mask=in_mask,
            recurrent_dropout_mask=rec_mask,
            compute_dtype=self.compute_dtype,
            return_gates=return_gates,
            impl=self.impl,
            embedding=embedding,
        )


class Bidirectional(nnx.Module):
    """Forward and backward `LSTM`s with separate parameters (Keras `Bidirectional`).

    `merge` is Keras' `merge_mode`: "concat" (outputs `[batch, time, 2H]`), "sum", "ave", "mul", or None
    (returns the pair). The backward layer's outputs are aligned with input positions; with a mask, padded
    positions are zeros in both directions. The final state is `(forward_state, backward_state)`.
    """

    def __init__(
        self,
        in_features: int,
        hidden_size: int,
        *,
        rngs: nnx.Rngs,
        merge: MergeMode = "concat",
        **lstm_kwargs: Any,
    ):
        if merge not in ("concat", "sum", "ave", "mul", None):
            raise ValueError(
                f"Bidirectional: unknown merge {merge!r}; use concat, sum, ave, mul or None"
            )
        if "reverse" in lstm_kwargs:
            raise ValueError("Bidirectional: do not pass reverse; the wrapper runs both directions")
        self.forward = LSTM(in_features, hidden_size, rngs=rngs, **lstm_kwargs)
        self.backward = LSTM(in_features, hidden_size, rngs=rngs, reverse=True, **lstm_kwargs)
        self.merge = merge
        self.hidden_size = hidden_size
        self.deterministic = True

    @property
    def out_features(self) -> int:
        return 2 * self.hidden_size if self.merge == "concat" else self.hidden_size

    def __call__(
        self,
        xs: Array,
        *,
        mask: Array | None = None,
        initial_state: tuple[LSTMState, LSTMState] | None = None,
        deterministic: bool | None = None,
        key: Array | None = None,
        embedding: Array | None = None,
    ) -> tuple[Array | tuple[Array, Array], tuple[LSTMState, LSTMState]]:
        """`xs [batch, time, F]` -> `(merged outputs, (forward_state, backward_state))`; with
        `embedding`, `xs` is token ids `[batch, time]` (see `LSTM`)."""
        deterministic = resolve_deterministic(self, deterministic)
        kf, kb = split_key(key, 2)
        # One LSTMState would be taken apart: its h for the forward state, its c for the backward.
        init_f, init_b = core._direction_states(initial_state, "Bidirectional")
        kw = {"mask": mask, "deterministic": deterministic, "embedding": embedding}
        out_f, st_f = self.forward(xs, initial_state=init_f, key=kf, **kw)
        out_b, st_b = self.backward(xs, initial_state=init_b, key=kb, **kw)
        return core._merge(out_f, out_b, self.merge), (st_f, st_b)


class StackedLSTM(nnx.Module):
    """A stack of `LSTM` (or `Bidirectional`) layers with dropout between layers.

    Args:
      in_features: input features.
      hidden_sizes: units of each layer, e.g. `(300, 300)`.
      rngs: initialisation RNGs.
      dropout_between: per-element dropout on each layer's outputs before the next layer (as the tutorials'
        `Dropout` layers between LSTMs); not applied after the last layer.
      bidirectional: make every layer a `Bidirectional` (concat; `merge=` sum, ave or mul instead).
      **lstm_kwargs: passed to each `LSTM` (variational dropout, unroll, remat, impl, ...).
    """

    def __init__(
        self,
        in_features: int,
        hidden_sizes: tuple[int, ...] | list[int],
        *,
        rngs: nnx.Rngs,
        dropout_between: float = 0.0,
        bidirectional: bool = False,
        **lstm_kwargs: Any,
    ):
        hidden_sizes = layer_sizes(hidden_sizes, "StackedLSTM")
        if not 0.0 <= dropout_between < 1.0:
            raise ValueError(
                f"StackedLSTM: dropout_between must be in [0, 1), got {dropout_between}"
            )
        if bidirectional and "merge" in lstm_kwargs and lstm_kwargs["merge"] is None:
            raise ValueError(
                "StackedLSTM: merge=None gives each layer a pair of outputs, which the next layer cannot"
                " take; use concat, sum, ave or mul"
            )
        layers = []
        size = in_features
        for h in hidden_sizes:
            if bidirectional:
                layer = Bidirectional(size, h, rngs=rngs, **lstm_kwargs)
                size = layer.out_features
            else:
                layer = LSTM(size, h, rngs=rngs, **lstm_kwargs)
                size = h
            layers.append(layer)
        self.layers = nnx.List(layers)
        self.dropout = nnx.Dropout(dropout_between)
        self.out_features = size
        self.deterministic = True

    def __call__(
        self,
        xs: Array,
        *,
        mask: Array | None = None,
        initial_state: list | None = None,
        deterministic: bool | None = None,
        key: Array | None = None,
        embedding: Array | None = None,
    ) -> tuple[Array, list[LSTMState | tuple[LSTMState, LSTMState]]]:
        """`xs [batch, time, F]` -> `(last layer outputs [batch, time, H_last], [state per layer])`.

        With `embedding [vocab, F]`, `xs` is token ids `[batch, time]`, embedded for the first layer
        (see `LSTM`).
        """
        deterministic = resolve_deterministic(self, deterministic)
        if isinstance(initial_state, LSTMState):
            # With two layers its h went to layer 0 and its c to layer 1, each refused as "not an LSTMState".
            raise ValueError(
                f"StackedLSTM: initial_state must be a list of one state per layer ({len(self.layers)}),"
                " got one LSTMState; pass [state] for one layer"
            )
        if initial_state is not None and len(initial_state) != len(self.layers):
            raise ValueError(
                f"StackedLSTM: initial_state must hold one state per layer ({len(self.layers)}), got"
                f" {len(initial_state)}"
            )
        if not deterministic and key is None and self.dropout.rate > 0 and len(self.layers) > 1:
            raise ValueError("StackedLSTM: dropout_between in training mode needs key=")
        keys = split_key(key, 2 * len(self.layers))
        states = []
        h = xs
        for n, layer in enumerate(self.layers):
            init = None if initial_state is None else initial_state[n]
            emb = embedding if n == 0 else None
            h, st = layer(
                h,
                mask=mask,
                initial_state=init,
                deterministic=deterministic,
                key=keys[2 * n],
                embedding=emb,
            )
            states.append(st)
            if n < len(self.layers) - 1:
                h = self.dropout(h, deterministic=deterministic, rngs=keys[2 * n + 1])
        return h, states
