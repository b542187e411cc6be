"""Weight import from Keras, PyTorch and Flax into the core layout.

Our layout is Keras': `kernel [in, 4H]`, `recurrent_kernel [H, 4H]`, `bias [4H]`, gates i, f, c, o.

* Keras `LSTM.get_weights()` is `[kernel, recurrent_kernel, bias]` in exactly this layout.
* PyTorch `nn.LSTM` stores `weight_ih_l{k}[_reverse] [4H, in]`, `weight_hh_l{k}[_reverse] [4H, H]` and two
  biases `bias_ih`, `bias_hh` (each `[4H]`), gates i, f, g, o (the same order). We transpose the matrices and
  add the biases: `b = b_ih + b_hh`.

* Flax's `nnx.OptimizedLSTMCell` holds `dense_i.kernel [in, 4H]` and `dense_h.kernel [H, 4H]`,
  `dense_h.bias [4H]`, gates i, f, g, o: exactly this layout. `nnx.LSTMCell` (and Linen's `LSTMCell` /
  `OptimizedLSTMCell`, whose params are the same) hold one `[in, H]` kernel per gate (`ii`, `if_` / `if`,
  `ig`, `io`) and one `[H, H]` kernel plus bias per gate (`hi`, `hf`, `hg`, `ho`), concatenated here in
  that order. Flax's carry is `(c, h)`, ours `LSTMState(h, c)`: `LSTMState(h=carry[1], c=carry[0])`,
  and back `(state.c, state.h)`. Flax's default initialisers differ (lecun-normal kernel, zero forget
  bias); the function is Keras' `LSTM` with those weights.

Imported weights are float32 whatever their source dtype (float64, float16, bfloat16): the core's
parameters are float32, and the native kernel's fast path needs them so; cast the returned arrays for
other dtypes (`jax.tree.map(lambda a: a.astype(jnp.float64), params)` under ``jax_enable_x64``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from lstm_jax.core import Params, _layer_params

__all__ = ["from_keras", "to_keras", "from_torch", "from_torch_lstm", "from_flax"]


def _np(x: Any) -> np.ndarray:
    """Converts an array-like (NumPy, JAX, or a torch tensor) to NumPy without importing torch."""
    if hasattr(x, "detach"):
        # Through float32 in torch: NumPy has no bfloat16, so `.numpy()` of a bf16 tensor raises.
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def _core_params(kernel: np.ndarray, rk: np.ndarray, bias: np.ndarray) -> Params:
    """The core's dict of `kernel [in, 4H]`, `recurrent_kernel [H, 4H]`, `bias [4H]` as JAX arrays."""
    return {
        "kernel": jnp.asarray(kernel),
        "recurrent_kernel": jnp.asarray(rk),
        "bias": jnp.asarray(bias),
    }


def from_keras(weights: Sequence[Any] | Any) -> Params:
    """`keras.layers.LSTM(...).get_weights()` (or the layer itself) -> core params.

    The core computes Keras' default cell (`activation="tanh"`, `recurrent_activation="sigmoid"`);
    weights alone do not say which activations they were trained with, so pass the layer to have
    them checked (another activation is a `ValueError`, not a model that silently computes another
    function).

    Args:
      weights: `[kernel [in, 4H], recurrent_kernel [H, 4H], bias [4H]]` (a layer built with
        `use_bias=True`), or a built `keras.layers.LSTM`.
    """
    if hasattr(weights, "get_weights"):  # a Keras layer
        _check_keras_activations(weights)
        if not weights.get_weights() and not getattr(weights, "built", True):
            raise ValueError(
                f"from_keras: the {type(weights).__name__} layer is not built yet, so it has no"
                " weights: call it on a batch (layer(x)) or layer.build((batch, time, features))"
                " first, or pass the trained layer"
            )
        weights = weights.get_weights()
    if isinstance(weights, Mapping):
        # Its keys were taken for arrays: "could not convert string to float: 'kernel'".
        raise TypeError(
            f"from_keras: expected the list layer.get_weights() (or the layer), got a mapping with keys"
            f" {sorted(map(str, weights))}"
            + ("; it is already lstm_jax's params" if "recurrent_kernel" in weights else "")
        )
    if len(weights) > 3 and len(weights) % 3 == 0:
        # A `Bidirectional(LSTM)` wrapper (6 arrays) or a model's `get_weights()`: several LSTMs.
        raise ValueError(
            f"from_keras: expected one LSTM's [kernel, recurrent_kernel, bias] (3 arrays), got "
            f"{len(weights)} (the weights of {len(weights) // 3} layers); pass one LSTM layer's "
            "get_weights(), for a Bidirectional wrapper layer.forward_layer.get_weights() and "
            "layer.backward_layer.get_weights()"
        )
    if len(weights) != 3:
        raise ValueError(
            f"from_keras: expected [kernel, recurrent_kernel, bias] (3 arrays), got {len(weights)}; "
            "build the Keras LSTM with use_bias=True"
        )
    kernel, rk, bias = (_np(w) for w in weights)
    h = rk.shape[0] if rk.ndim == 2 else -1  # not 2-D: no H, and the message below names the shapes
    if (
        kernel.ndim != 2
        or rk.shape != (h, 4 * h)
        or kernel.shape[1] != 4 * h
        or bias.shape != (4 * h,)
    ):
        raise ValueError(
            f"from_keras: inconsistent shapes kernel {kernel.shape}, recurrent_kernel {rk.shape}, "
            f"bias {bias.shape}"
        )
    return _core_params(kernel, rk, bias)


def _check_keras_activations(layer: Any) -> None:
    if "GRU" in type(layer).__name__ or "GRU" in type(getattr(layer, "cell", None)).__name__:
        # Its activations are an LSTM's defaults too, and its 3 arrays were "inconsistent shapes".
        raise ValueError(
            f"from_keras: {type(layer).__name__} is a GRU layer, not an LSTM; pass a"
            " keras.layers.LSTM (lstm_jax has no GRU)"
        )
    cell = getattr(layer, "cell", layer)
    for attr, expected in (("recurrent_activation", "sigmoid"), ("activation", "tanh")):
        fn = getattr(cell, attr, None)
        if fn is None:
            raise ValueError(
                f"from_keras: {type(layer).__name__} has no {attr}; pass a keras.layers.LSTM (or its"
                " get_weights())"
            )
        name = getattr(fn, "__name__", repr(fn))
        if name != expected:
            raise ValueError(
                f"from_keras: the layer's {attr} is {name}, but the core LSTM computes {attr}="
                f"{expected!r} (Keras' default); its weights would give other outputs here: retrain"
                f" the Keras layer with {attr}={expected!r}"
            )


def to_keras(params: Params) -> list[np.ndarray]:
    """Core params -> the list `keras.layers.LSTM.set_weights` expects: `[kernel [in, 4H],
    recurrent_kernel [H, 4H], bias [4H]]`."""
    return [np.asarray(a) for a in _layer_params(params, "to_keras")]


def from_torch(state_dict: Mapping[str, Any], layer: int = 0, reverse: bool = False) -> Params:
    """One layer (one direction) of a PyTorch `nn.LSTM` state dict -> core params.

    Args:
      state_dict: `torch.nn.LSTM(...).state_dict()` or any mapping with the same keys (tensors or arrays).
      layer: layer index `k` of `weight_ih_l{k}`.
      reverse: take the `_reverse` direction of a bidirectional LSTM.
    """
    suffix = f"_l{layer}" + ("_reverse" if reverse else "")
    try:
        w_ih = _np(state_dict[f"weight_ih{suffix}"])
        w_hh = _np(state_dict[f"weight_hh{suffix}"])
    except KeyError as e:
        raise KeyError(
            f"from_torch: {e.args[0]!r} not in the state dict (keys: {sorted(state_dict)})"
        ) from None
    if f"weight_hr{suffix}" in state_dict:
        raise ValueError("from_torch: LSTMs with proj_size > 0 are not supported")
    if (
        w_ih.ndim != 2  # a 1-D weight_ih was returned as a 1-D kernel
        or w_hh.ndim != 2
        or w_hh.shape[0] != 4 * w_hh.shape[1]
        or w_ih.shape[0] != w_hh.shape[0]
    ):
        raise ValueError(
            f"from_torch: inconsistent shapes weight_ih {w_ih.shape}, weight_hh {w_hh.shape}; expected"
            " [4H, in] and [4H, H]"
        )
    four_h = w_hh.shape[0]
    bias = np.zeros((four_h,), np.float32)
    for name in (f"bias_ih{suffix}", f"bias_hh{suffix}"):
        if name in state_dict:  # absent when the torch LSTM was built with bias=False
            b = _np(state_dict[name])
            if b.shape != (four_h,):  # [1] or [4H, 1] broadcast into the sum silently
                raise ValueError(
                    f"from_torch: {name} has shape {tuple(b.shape)}, expected ({four_h},) (4H for"
                    f" weight_hh {tuple(w_hh.shape)})"
                )
            bias = bias + b
    return _core_params(w_ih.T, w_hh.T, bias)


def from_torch_lstm(
    state_dict: Mapping[str, Any], prefix: str | None = None
) -> list[Params] | list[tuple[Params, Params]]:
    """Every layer of a PyTorch `nn.LSTM` state dict.

    `state_dict` is the LSTM's own (`lstm.state_dict()`) or a whole model's (`model.state_dict()`), whose
    keys carry the module's path (`"encoder.lstm.weight_ih_l0"`); `prefix` names that path
    (`"encoder.lstm."`, or `"encoder.lstm"`), and by default it is found when the dict holds one
    `nn.LSTM`. Returns a list of core params per layer, or of `(forward, backward)` pairs when the LSTM
    is bidirectional.
    """
    prefixes = {k[: k.index("weight_ih_l")] for k in state_dict if "weight_ih_l" in k}
    given = prefix
    if prefix is None:
        if len(prefixes) > 1:
            raise ValueError(
                f"from_torch_lstm: the state dict holds several LSTMs ({', '.join(sorted(prefixes))});"
                " pass prefix= to pick one"
            )
        prefix = prefixes.pop() if prefixes else ""
    elif (
        prefix and not prefix.endswith(".") and any(k.startswith(prefix + ".") for k in state_dict)
    ):
        prefix += "."  # the module's path as `named_modules()` spells it: "encoder.lstm"
    if prefix:
        state_dict = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    layers = sorted(
        {int(k.split("_l")[1].split("_")[0]) for k in state_dict if k.startswith("weight_ih_l")}
    )
    if not layers:
        if given and prefixes:  # a misspelt prefix, or a parent module's path ("encoder")
            found = ", ".join(repr(p) for p in sorted(prefixes))
            raise ValueError(
                f"from_torch_lstm: no LSTM's weight_ih_l* keys start with prefix={given!r}; the state"
                f" dict holds LSTMs at {found}: pass one of them as prefix="
            )
        raise ValueError("from_torch_lstm: no weight_ih_l* keys; is this an nn.LSTM state dict?")
    missing = sorted(set(range(layers[-1] + 1)) - set(layers))
    if missing:  # nn.LSTM numbers its layers 0..num_layers-1: a stack with a hole is not one LSTM
        raise ValueError(
            f"from_torch_lstm: the state dict has weight_ih_l* of layers {layers} but none of layer(s)"
            f" {missing}; nn.LSTM numbers its layers 0 to num_layers-1, so these weights are not one"
            " LSTM's: pass its whole state dict (or build the layers one by one with from_torch)"
        )
    bidir = any(k.endswith("_reverse") for k in state_dict)
    if bidir:
        return [
            (from_torch(state_dict, k), from_torch(state_dict, k, reverse=True)) for k in layers
        ]
    return [from_torch(state_dict, k) for k in layers]


_FLAX_GATES = ("i", "f", "g", "o")


def from_flax(cell_or_params: Any) -> Params:
    """A Flax LSTM cell's weights -> core params (see the module docstring for the mapping).

    Takes an `nnx.OptimizedLSTMCell` or `nnx.LSTMCell` (whose activations are checked to be the default
    sigmoid and tanh, which the core computes), or their parameters as a mapping: `nnx.state(cell)`
    (or its `.to_pure_dict()`), or a Linen cell's params (`variables["params"]` or the whole
    `variables`). Flax's carry `(c, h)` is `LSTMState(h=carry[1], c=carry[0])` here.
    """
    params = cell_or_params
    if hasattr(params, "gate_fn") and hasattr(params, "activation_fn"):  # an NNX cell
        import jax
        from flax import nnx

        if not isinstance(params, (nnx.OptimizedLSTMCell, nnx.LSTMCell)):  # e.g. a GRUCell
            raise TypeError(
                "from_flax: expected a Flax LSTM cell (nnx.OptimizedLSTMCell or nnx.LSTMCell) or its"
                f" params mapping, got {type(params).__name__}"
            )
        if params.gate_fn is not jax.nn.sigmoid or params.activation_fn is not jnp.tanh:
            raise ValueError(
                "from_flax: the cell's gate_fn / activation_fn are not the default sigmoid / tanh,"
                " which lstm_jax computes; its weights would give other outputs here"
            )
        params = nnx.state(params, nnx.Param)
    if hasattr(params, "to_pure_dict"):
        params = params.to_pure_dict()
    if not isinstance(params, Mapping):
        raise TypeError(
            f"from_flax: expected a Flax LSTM cell or its params mapping, got {type(params).__name__}"
        )
    if set(params) == {"params"}:
        params = params["params"]
    if "dense_i" in params and "dense_h" in params:  # OptimizedLSTMCell (NNX)
        kernel = _np(params["dense_i"]["kernel"])
        rk = _np(params["dense_h"]["kernel"])
        if "bias" not in params["dense_h"]:  # a GRUCell's dense_h has none
            raise ValueError(
                "from_flax: dense_h holds no bias, which an nnx.OptimizedLSTMCell's has (these are not"
                f" an LSTM cell's weights: dense_h holds {sorted(params['dense_h'])})"
            )
        bias = _np(params["dense_h"]["bias"])
        if "bias" in params["dense_i"]:
            bias_i = _np(params["dense_i"]["bias"])
            if bias_i.shape != bias.shape:
                # Summed, a [4H, 1] one broadcast into [4H, 4H], another length was NumPy's error.
                raise ValueError(
                    f"from_flax: dense_i bias has shape {bias_i.shape}, dense_h's {bias.shape};"
                    " expected both [4H]"
                )
            bias = bias + bias_i
    elif all(f"h{g}" in params for g in _FLAX_GATES):  # LSTMCell (NNX, Linen), Linen's Optimized
        names = {g: f"i{g}" for g in _FLAX_GATES}
        if "if_" in params:
            names["f"] = "if_"  # NNX's name: `if` is a Python keyword
        kernel = np.concatenate([_np(params[names[g]]["kernel"]) for g in _FLAX_GATES], axis=1)
        rk = np.concatenate([_np(params[f"h{g}"]["kernel"]) for g in _FLAX_GATES], axis=1)
        bias = np.concatenate([_np(params[f"h{g}"]["bias"]) for g in _FLAX_GATES])
    else:
        raise ValueError(
            "from_flax: no Flax LSTM cell weights (dense_i / dense_h, or ii, if, ig, io, hi, hf, hg,"
            f" ho) in keys {sorted(params)}"
        )
    four_h = rk.shape[1]
    if rk.shape != (four_h // 4, four_h) or kernel.shape[1] != four_h or bias.shape != (four_h,):
        raise ValueError(
            f"from_flax: inconsistent shapes kernel {kernel.shape}, recurrent kernel {rk.shape},"
            f" bias {bias.shape}; expected [in, 4H], [H, 4H], [4H]"
        )
    return _core_params(kernel, rk, bias)
