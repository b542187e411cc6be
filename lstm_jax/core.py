"""The functional LSTM core: pure functions of parameters, state and input.

Layout and gate order follow Keras (and PyTorch / cuDNN): one fused weight matrix per input with the four
gates side by side in the order **input, forget, cell candidate, output**::

    params = {"kernel": [in, 4H], "recurrent_kernel": [H, 4H], "bias": [4H]}

One step computes exactly::

    i = σ(x·Ui + h·Wi + bi)      f = σ(x·Uf + h·Wf + bf)
    c̃ = tanh(x·Uc + h·Wc + bc)   o = σ(x·Uo + h·Wo + bo)
    c = f ⊙ c_prev + i ⊙ c̃        h = o ⊙ tanh(c)

`lstm_layer` runs the step over `[batch, time, features]` with `jax.lax.scan`. The input projection of all
timesteps is one matmul outside the loop (the "hoisted" layout), so the loop body is `h @ recurrent_kernel`
plus elementwise gate math. Four arrangements of the same computation exist, all parity-tested:

* ``"scan"``: hoisted projection, `lax.scan`, gradients by JAX autodiff (the reference; what GPUs/TPUs want).
* ``"fused"``: hoisted projection, `lax.scan`, and a custom VJP whose backward scan only propagates the
  state; the weight gradient of the recurrent kernel is then one `[H, B·T] @ [B·T, 4H]` matmul after the
  loop instead of T small accumulations inside it. Faster on XLA:CPU than "scan" (see README, "Speed").
* ``"native"``: "fused" with each of its two recurrences run by one call of a native CPU kernel
  (`lstm_jax.native`, XLA FFI; compiled on first use): no per-timestep kernel dispatch, register-tiled
  matmuls, the gate math in the same pass, batch rows split over threads. Dense inputs of a layer whose
  `[kernel; rk]` is small against the L2 cache are projected inside the same per-step matmul
  (`NATIVE_INPUT_PROJECTION_MAX_L2_FRACTION`), and the weight gradients of a layer whose `[F + H, 4H]`
  takes at most 0.55 of the L2 cache are summed inside the backward call
  (`NATIVE_WEIGHT_GRADS_MAX_L2_FRACTION`), every layer's bias gradient too (`NATIVE_BIAS_GRAD_IN_KERNEL`).
  An embedding folded into the projection is read by token id inside the forward call, and its gradient
  summed by one native call (`NATIVE_FOLDED_ROWS_BY_ID`, `NATIVE_SCATTER_ROWS`). CPU and float32 only.
* ``"per_step"``: the textbook arrangement, `x_t @ kernel` inside the loop, gradients by autodiff.
* ``"cudnn"``: NVIDIA GPUs only, opt-in: the whole layer, forward and backward, as one cuDNN RNN call
  (`jax.experimental.rnn.lstm`; the weights packed into cuDNN's flat layout, Keras' gate order being
  cuDNN's). Masks whose real tokens are one contiguous run per row (post- or pre-padding) are run by
  moving each row's run to the front; any other mask falls back to "scan" at run time. Float32 without
  recurrent dropout (else "scan"). Parity-tested on CPU against JAX's reference of the cuDNN op
  (`jax.experimental.rnn.lstm_ref`); `python -m benchmarks.gpu_check` checks it on a GPU. Not yet
  measured on a GPU, so ``"auto"`` does not pick it.

``impl="auto"`` picks ``"scan"`` on GPU/TPU. On CPU it picks ``"native"`` whenever the kernel is available
(float32, no remat): on the four tutorial shapes an LSTM stack's forward + backward ran 1.35-1.58x faster
than with the best XLA impl (README, "Speed"). Without the kernel (``LSTM_JAX_NATIVE=off``, no compiler) it picks by the measured
crossover of the XLA impls (`python -m benchmarks.layer`, forward + backward): ``"per_step"`` for H <= 64,
where the hoisted layout's extra `[T, B, 4H]` traffic and kernels cost more than they save (IMDB tutorial
shape B100 T228 F16 H32: 40 vs 55 ms; B64 T200 F64 H64: 66 vs 81 ms; at B128 T30 H64 the two tie), and
``"fused"`` above (H=256-300: 5-12% faster than per_step). With ``remat=True`` (for memory) "auto" and
"native" run ``"per_step"`` with `jax.checkpoint` around the step on CPU: its backward pass keeps only each
step's `(h, c)` and input, where the hoisted impls keep `[T, B, 4H]` arrays whatever the remat ("fused"'s
remat keeps the projection `zx` instead of the gates, the same size; measured on B32 T200 F128 H256, the
gradient's XLA temporaries: per_step+remat 30 MB, native 56, fused+remat 82, scan+remat 102).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Params = dict[str, Array]
Impl = Literal["auto", "scan", "fused", "per_step", "native", "cudnn"]
MergeMode = Literal["concat", "sum", "ave", "mul"] | None

# On CPU, `impl="auto"` uses "per_step" up to this hidden size and "fused" above it (see the docstring).
CPU_PER_STEP_MAX_HIDDEN = 64

# `lstm_layer(..., embedding=table)` folds the lookup into the input projection when the table has at most
# this many rows per (batch x time) position and the native kernel does not project the inputs itself (see
# `lstm_layer`; measured in benchmarks/README.md).
FOLD_EMBEDDING_MAX_ROWS_PER_POSITION = 1.0

# Impl "native" reads a folded embedding's rows by token id inside its forward call
# (`native.forward_ids`) instead of XLA gathering them into a [T, B, 4H] array first (8 ms of shape D's
# step, and 102 MB written and read again), and sums the table's gradient in one native call
# (`native.scatter_rows`, `NATIVE_SCATTER_ROWS`) that reads `dz` where the backward call wrote it, where
# XLA's scatter-add first copies it (7.5 ms). Measured on shape D (Zen 4 host, 2026-12-06, `python -m
# benchmarks.ab_rule --shape D --rounds 20 --steps 4 --set <rule>=0`): both on 272.6 ms against 287.2
# without either, the scatter alone 282.2 against 289.3; the losses bit for bit the same.
NATIVE_FOLDED_ROWS_BY_ID = True
NATIVE_SCATTER_ROWS = True

# impl "native" projects dense inputs inside the kernel's per-step matmul, `[x_t, h] @ [kernel; rk]`, when
# that weight matrix (read once per step) takes at most this fraction of a core's L2 cache; larger ones are
# projected by XLA first, as "fused" does. Measured on a 2 MB L2 (README, "Speed"): shape B's layers (0.2
# and 0.4 MB) train 5-6% faster inside the kernel, shape A's first layer (1.4 MB) no faster, its second
# (2.9 MB) 10% slower.
NATIVE_INPUT_PROJECTION_MAX_L2_FRACTION = 0.5

# Impl "native" sums a layer's weight gradients inside its backward call (each step's
# `[x_t, h_{t-1}]^T @ dz_t` while dz_t is in cache) when `[F + H, 4H]` takes at most this fraction of a
# core's L2 cache (each thread keeps the transposed weights and its share of the gradient there), and
# leaves them to single XLA matmuls after the loop above it. Measured on the benchmark's whole steps with
# `python -m benchmarks.ab_rule` (benchmarks/README.md): the IMDB shape (24.6 KB) 25.1 / 26.9 ms without
# against 19.8 / 21.2 with; the char model (1.4-2.9 MB, whose per-step rank-20 updates are slower than
# XLA's one large matmul) 9-15% slower with (138.9 / 147.4 against 127.3 / 128.3); the word model (196
# and 393 KB) a tie on one host (41.2 / 42.3 against 39.5 / 43.2), and on a 2 MB L2 (2026-12-05) 2-6%
# faster with, in 10 of 10 runs of 30-40 rounds, either build timed first (e.g. 24.87 against 26.43 ms,
# 25.47 against 26.73; at this rule's commit 24.77 against the old rule's 25.76, and 24.48 against
# 25.43). On a 1 MB L2 (AMD Zen 4, 2026-12-06) the word model's first layer (0.38 of it) was out under the
# old fraction 0.2: in, B's step was faster in 6 of 6 runs of 40 rounds, either build timed first (25.63
# against 26.67 ms, 25.41 / 25.45, 23.83 / 24.90; 23.41 / 24.38, 24.44 / 26.14, 23.72 / 24.78), and one
# layer's jitted gradient alone (B128, T230, in and out forced) was 128-133 ms in against 136-147 out at
# 512 KB (imdb_best's layer), 13.2 / 14.1 at 384 KB, a tie at 800 KB (83.7 / 83.4), 6% slower at 1.4 MB
# (26.3 / 24.8, the char model's B40) and 5% at 1.55 MB (82.2 / 78.2, the fake-news layer's B64). So
# 0.55 of the L2: the word and imdb_best layers in on 1 and 2 MB L2s, the char and fake-news layers out
# everywhere (0.7 of a 2 MB L2 and up), the IMDB tutorial's on any L2 above 45 KB.
NATIVE_WEIGHT_GRADS_MAX_L2_FRACTION = 0.55

# Impl "native" sums every layer's bias gradient (the sum of `dz` over all timesteps and rows) inside its
# backward call, a few adds per step while dz_t is in cache, instead of XLA reducing `[T, B, 4H]` after
# it (in shape B's trace that reduction took 1.3 and 0.7 ms of a 47 ms step, reading dz while the weight
# gradients' matmuls did). `python -m benchmarks.ab_rule --shape B --set NATIVE_BIAS_GRAD_IN_KERNEL=0`,
# four runs (benchmarks/README.md): B 41.2 / 45.1 / 69.6 / 77.1 ms with XLA's reduction against 40.3 /
# 44.1 / 60.7 / 69.8 in the kernel; A and D a tie.
NATIVE_BIAS_GRAD_IN_KERNEL = True

__all__ = [
    "LSTMState",
    "Gates",
    "init_lstm",
    "lstm_step",
    "lstm_layer",
    "bidirectional",
    "stacked_lstm",
    "init_stacked_lstm",
    "variational_dropout_masks",
    "zero_state",
]


class LSTMState(NamedTuple):
    """The recurrent state. Both fields are `[batch, hidden]`."""

    h: Array
    c: Array


class Gates(NamedTuple):
    """Per-step activations returned by `lstm_layer(..., return_gates=True)`; each `[batch, time, hidden]`.

    Masked (padded) steps hold zeros in the gates and the carried cell state in `c`.
    """

    i: Array
    f: Array
    g: Array
    o: Array
    c: Array


def zero_state(batch_size: int, hidden_size: int, dtype: Any = jnp.float32) -> LSTMState:
    """An all-zeros `LSTMState` of shape `[batch_size, hidden_size]`."""
    z = jnp.zeros((batch_size, hidden_size), dtype)
    return LSTMState(z, z)


def _orthogonal(key: Array, shape: tuple[int, int], dtype: Any) -> Array:
    # Drawn in float32 and cast: XLA:CPU's QR has no bfloat16 kernel.
    return jax.nn.initializers.orthogonal()(key, shape, jnp.float32).astype(dtype)


def init_lstm(
    key: Array,
    input_size: int,
    hidden_size: int,
    *,
    forget_bias: float = 1.0,
    kernel_init: Callable[..., Array] | None = None,
    recurrent_init: Callable[..., Array] | None = None,
    dtype: Any = jnp.float32,
) -> Params:
    """Initialises one LSTM layer with Keras' defaults.

    Args:
      key: PRNG key.
      input_size: features per timestep, `in`.
      hidden_size: units, `H`.
      forget_bias: initial forget-gate bias (Keras' `unit_forget_bias=True` is 1.0; 0.0 turns it off).
      kernel_init: initializer for `kernel [in, 4H]`; default glorot-uniform (Keras).
      recurrent_init: initializer for `recurrent_kernel [H, 4H]`; default orthogonal (Keras).
      dtype: parameter dtype.

    Returns:
      `{"kernel": [in, 4H], "recurrent_kernel": [H, 4H], "bias": [4H]}`, gates ordered i, f, c, o.
    """
    for name, n in (("input_size", input_size), ("hidden_size", hidden_size)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            # A float (32.0, e.g. from a config) was JAX's "Shapes must be ... of integer type".
            raise TypeError(f"init_lstm: {name} must be an int, got {type(n).__name__} {n!r}")
    if input_size <= 0 or hidden_size <= 0:
        raise ValueError(
            f"init_lstm: input_size and hidden_size must be positive, got {input_size}, {hidden_size}"
        )
    k1, k2 = jax.random.split(key)
    kernel_init = kernel_init or jax.nn.initializers.glorot_uniform()
    recurrent_init = recurrent_init or _orthogonal
    h = hidden_size
    bias = jnp.zeros((4 * h,), dtype).at[h : 2 * h].set(forget_bias)
    return {
        "kernel": kernel_init(k1, (input_size, 4 * h), dtype),
        "recurrent_kernel": recurrent_init(k2, (h, 4 * h), dtype),
        "bias": bias,
    }


def _gates(z: Array) -> tuple[Array, Array, Array, Array]:
    """Splits pre-activations `[..., 4H]` into activated gates i, f, g (candidate), o."""
    zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
    return jax.nn.sigmoid(zi), jax.nn.sigmoid(zf), jnp.tanh(zg), jax.nn.sigmoid(zo)


def lstm_step(params: Params, state: LSTMState, x: Array) -> tuple[LSTMState, Array]:
    """One LSTM step.

    Args:
      params: layer parameters (see `init_lstm`).
      state: `LSTMState(h, c)` (or a pair `(h, c)`; Flax's carry is `(c, h)`: `LSTMState(carry[1],
        carry[0])`), each `[batch, H]`.
      x: input `[batch, in]` (any leading dims, the state's).

    Returns:
      `(new_state, h)` with `h: [batch, H]`. Shapes that do not fit are a ValueError.
    """
    kernel, rk, bias = _layer_params(params, "lstm_step")
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        raise ValueError(
            f"lstm_step: state must be LSTMState(h, c) (or a pair (h, c)), got {type(state).__name__}"
        )
    state = LSTMState(*(jnp.asarray(s) for s in state))
    x = jnp.asarray(x)
    hsz = rk.shape[0]
    shapes = (jnp.shape(kernel), jnp.shape(rk), jnp.shape(bias))
    if len(shapes[0]) != 2 or shapes[1:] != ((hsz, 4 * hsz), (4 * hsz,)) or shapes[0][1] != 4 * hsz:
        raise ValueError(
            f"lstm_step: params must be kernel [F, 4H], recurrent_kernel [H, 4H], bias [4H]; got shapes"
            f" {shapes[0]}, {shapes[1]}, {shapes[2]} (a transposed PyTorch weight? lstm_jax.from_torch)"
        )
    if x.ndim < 1 or x.shape[-1] != kernel.shape[0]:
        raise ValueError(
            f"lstm_step: x must be [batch, {kernel.shape[0]}] (the kernel's input size), got shape"
            f" {x.shape}"
        )
    expected = (*x.shape[:-1], hsz)
    for a, name in zip(state, "hc", strict=True):
        if a.shape != expected:
            raise ValueError(
                f"lstm_step: state.{name} must be [batch, H] = {expected} (x is {x.shape}, H={hsz} from"
                f" recurrent_kernel), got shape {a.shape}"
            )
    return _step(kernel, rk, bias, state, x)


def _step(
    kernel: Array, rk: Array, bias: Array, state: LSTMState, x: Array
) -> tuple[LSTMState, Array]:
    """`lstm_step` without its argument checks (the per-step impl's loop body)."""
    z = x @ kernel + state.h @ rk + bias
    i, f, g, o = _gates(z)
    c = f * state.c + i * g
    h = o * jnp.tanh(c)
    return LSTMState(h, c), h


_PARAM_KEYS = ("kernel", "recurrent_kernel", "bias")


def _layer_params(params: Any, who: str) -> tuple[Array, Array, Array]:
    """`(kernel [F, 4H], recurrent_kernel [H, 4H], bias [4H])` of one layer's `params` dict, or a
    TypeError / ValueError naming what was passed instead (a module, a list of layers, another library's
    weights) and how to get the dict. Static: no cost inside a compiled function."""
    expected = (
        "{'kernel': [F, 4H], 'recurrent_kernel': [H, 4H], 'bias': [4H]} (as init_lstm returns)"
    )
    if not isinstance(params, Mapping):
        hint = ""
        if hasattr(params, "params_dict"):
            hint = "; pass module.params_dict()"
        elif isinstance(params, (list, tuple)):
            hint = "; a list of layers' params goes to stacked_lstm"
        raise TypeError(
            f"{who}: params must be the dict {expected}, got {type(params).__name__}{hint}"
        )
    missing = [k for k in _PARAM_KEYS if k not in params]
    if missing:
        keys = sorted(map(str, params))
        hint = ""
        if any(k.startswith("weight_ih") for k in keys):
            hint = "; a PyTorch state dict: convert it with lstm_jax.from_torch(state_dict)"
        elif any(k in keys for k in ("dense_i", "dense_h", "ii", "hi", "params")):
            hint = "; Flax LSTM cell weights: convert them with lstm_jax.from_flax(...)"
        raise ValueError(
            f"{who}: params lacks {missing}; expected the dict {expected}, got keys {keys}{hint}"
        )
    return params["kernel"], params["recurrent_kernel"], params["bias"]


# ---------------------------------------------------------------------------------------------------------
# The recurrence over pre-projected inputs. Everything below works time-major: zx [T, B, 4H].
# ---------------------------------------------------------------------------------------------------------


def _low_precision_dot(a: Array, b: Array, dtype: Any, spec: str = "bh,hg->bg") -> Array:
    """A matmul with both operands in `dtype` (e.g. bfloat16), returned in float32.

    GPUs/TPUs accumulate in float32 via `preferred_element_type`; XLA:CPU has no bf16 x bf16 -> f32 dot,
    so there the product is formed in `dtype` and then cast.
    """
    a, b = a.astype(dtype), b.astype(dtype)
    if jax.default_backend() == "cpu":
        return jnp.einsum(spec, a, b).astype(jnp.float32)
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _cell_from_z(z: Array, c_prev: Array) -> tuple[Array, Array, tuple[Array, ...]]:
    i, f, g, o = _gates(z)
    c = f * c_prev + i * g
    h = o * jnp.tanh(c)
    return h, c, (i, f, g, o)


def _recurrence_scan(
    rk: Array,
    zx: Array,
    mask: Array | None,
    h0: Array,
    c0: Array,
    rmask: Array | None,
    *,
    reverse: bool,
    unroll: int,
    remat: bool,
    compute_dtype: Any,
    return_gates: bool,
) -> tuple[Array, tuple[Array, Array], Gates | None]:
    """Reference recurrence: `lax.scan` over `zx [T, B, 4H]`; gradients by autodiff."""
    state_dtype = h0.dtype

    def step(carry, inputs):
        h_prev, c_prev = carry
        zx_t, m_t = inputs
        hr = h_prev if rmask is None else h_prev * rmask
        if compute_dtype is not None:
            rec = _low_precision_dot(hr, rk, compute_dtype)
        else:
            rec = hr @ rk
        z = zx_t.astype(state_dtype) + rec.astype(state_dtype)
        h_new, c_new, gates = _cell_from_z(z, c_prev)
        if m_t is None:
            h, c, out = h_new, c_new, h_new
        else:
            m = m_t[:, None]
            h = jnp.where(m, h_new, h_prev)
            c = jnp.where(m, c_new, c_prev)
            out = jnp.where(m, h_new, jnp.zeros_like(h_new))
            if return_gates:
                gates = tuple(jnp.where(m, gt, jnp.zeros_like(gt)) for gt in gates)
        ys = (out, Gates(*gates, c)) if return_gates else out
        return (h, c), ys

    if remat:
        step = jax.checkpoint(step)
    (h, c), ys = jax.lax.scan(step, (h0, c0), (zx, mask), reverse=reverse, unroll=unroll)
    if return_gates:
        return ys[0], (h, c), ys[1]
    return ys, (h, c), None


def _tanh_gate_consts(hsz: int, dtype: Any) -> tuple[Array, Array]:
    """Per-column `(scale, offset)` `[4H]` so that `scale * tanh(scale * z) + offset` activates all gates.

    `sigmoid(x) = 0.5 * tanh(0.5 * x) + 0.5`, so the i, f and o columns use scale 0.5 and offset 0.5 and the
    candidate column scale 1 and offset 0: one transcendental per element and one elementwise kernel for
    all four gates (XLA:CPU otherwise emits one kernel per gate).
    """
    half = np.full(hsz, 0.5, np.float32)
    one = np.ones(hsz, np.float32)
    scale = np.concatenate([half, half, one, half])
    offset = np.concatenate([half, half, 0 * one, half])
    return jnp.asarray(scale, dtype), jnp.asarray(offset, dtype)


def _fused_forward(rk, bias, zx, mask, h0, c0, rmask, reverse, unroll, remat):
    """Forward scan over `zx [T, B, 4H]` (the input projection without bias; `bias [4H]` is added per step
    inside the loop's elementwise kernel, which saves a pass over `zx`).

    Without remat the activated gates of step t overwrite `zx[t]` in place (the loop carries the buffer), so
    no new `[T, B, 4H]` buffer is allocated and zero-filled; the states `(h_prev, c_prev)` are saved packed
    as `[T, B, 2H]`, one write per step, and the outputs are rebuilt from them after the loop. Returns
    `(outs [T, B, H], (h_T, c_T), (hc_prev [T, B, 2H], acts [T, B, 4H] or None))`.
    """
    hsz = rk.shape[0]
    scale, offset = _tanh_gate_consts(hsz, zx.dtype)
    steps = jnp.arange(zx.shape[0])

    def cell(h_prev, c_prev, zx_t, m_t):
        hr = h_prev if rmask is None else h_prev * rmask
        acts = scale * jnp.tanh(scale * (zx_t + bias + hr @ rk)) + offset
        i, f, g, o = jnp.split(acts, 4, axis=-1)
        c_new = f * c_prev + i * g
        h_new = o * jnp.tanh(c_new)
        if m_t is not None:
            m = m_t[:, None]
            h_new = jnp.where(m, h_new, h_prev)
            c_new = jnp.where(m, c_new, c_prev)
        return h_new, c_new, acts

    if remat:

        def step(carry, inputs):
            h_prev, c_prev = carry
            zx_t, m_t = inputs
            h, c, _ = cell(h_prev, c_prev, zx_t, m_t)
            return (h, c), jnp.concatenate([h_prev, c_prev], axis=-1)

        (h, c), hc = jax.lax.scan(step, (h0, c0), (zx, mask), reverse=reverse, unroll=unroll)
        acts_all = None
    else:

        def step(carry, inputs):
            h_prev, c_prev, buf = carry
            t, m_t = inputs
            zx_t = jax.lax.dynamic_index_in_dim(buf, t, 0, keepdims=False)
            h, c, acts = cell(h_prev, c_prev, zx_t, m_t)
            buf = jax.lax.dynamic_update_index_in_dim(buf, acts, t, 0)
            return (h, c, buf), jnp.concatenate([h_prev, c_prev], axis=-1)

        (h, c, acts_all), hc = jax.lax.scan(
            step, (h0, c0, zx), (steps, mask), reverse=reverse, unroll=unroll
        )
    # The carried h after step t is the h_prev saved at the next step in scan order (or the final h).
    h_prev_all = hc[..., :hsz]
    if reverse:
        after = jnp.concatenate([h[None], h_prev_all[:-1]], axis=0)
    else:
        after = jnp.concatenate([h_prev_all[1:], h[None]], axis=0)
    outs = after if mask is None else jnp.where(mask[..., None], after, jnp.zeros_like(after))
    return outs, (h, c), (hc, acts_all)


def _native_inputs(mask, rmask, t, b, hsz):
    """The native kernel's dense forms of the optional masks: `[T, B]` and `[B, H]` float32 multipliers."""
    m = jnp.ones((t, b), jnp.float32) if mask is None else mask.astype(jnp.float32)
    r = jnp.ones((b, hsz), jnp.float32) if rmask is None else rmask.astype(jnp.float32)
    return m, r


def _native_forward(rk, bias, inputs, mask, h0, c0, rmask, reverse, kernel=None, ids=None):
    """`_fused_forward` (without remat) as one native call (`lstm_jax.native`). `inputs` is the projection
    `zx [T, B, 4H]`; or with `kernel` the inputs `xs [T, B, F]`, projected inside the kernel's per-step
    matmul (`native.forward_x`); or with `ids [T, B]` a folded embedding's projected table `[V, 4H]`, whose
    rows at `ids` the call reads (`native.forward_ids`).

    Differentiating the call itself (a derivative of the gradient) runs its XLA twin's JVP, so higher-order
    derivatives work as with "fused"."""
    from lstm_jax import native

    m, r = _native_inputs(
        mask, rmask, *(inputs.shape[:2] if ids is None else ids.shape), rk.shape[0]
    )

    @jax.custom_jvp
    def call(kernel, rk, bias, inputs, h0, c0, r):
        if ids is not None:
            return native.forward_ids(rk, bias, inputs, ids, m, h0, c0, r, reverse)
        if kernel is None:
            return native.forward(rk, bias, inputs, m, h0, c0, r, reverse)
        return native.forward_x(kernel, rk, bias, inputs, m, h0, c0, r, reverse)

    @call.defjvp
    def call_jvp(primals, tangents):
        def twin(kernel, rk, bias, inputs, h0, c0, r):
            rm = None if rmask is None else r
            if ids is not None:
                zx = jnp.take(inputs, ids, axis=0)
            elif kernel is None:
                zx = inputs
            else:
                zx = jnp.einsum("tbf,fg->tbg", inputs, kernel)
            outs, (h, c), (hc, acts) = _fused_forward(
                rk, bias, zx, mask, h0, c0, rm, reverse, 1, False
            )
            return acts, outs, h, c, hc

        return jax.jvp(twin, primals, tangents)

    acts, outs, h, c, hc = call(kernel, rk, bias, inputs, h0, c0, r)
    return outs, (h, c), (hc, acts)


def _weights_within_l2(features: int, hidden: int, fraction: float) -> bool:
    """Whether a layer's float32 `[features + hidden, 4 hidden]` weights take at most `fraction` of one
    core's L2 cache (the native kernel's size rules)."""
    from lstm_jax import native

    weight_bytes = (features + hidden) * 4 * hidden * 4
    return weight_bytes <= fraction * native.l2_cache_bytes()


def _native_sums_weight_grads(features: int, hidden: int) -> bool:
    """Whether impl "native" sums the weight gradients in its backward call (see
    `NATIVE_WEIGHT_GRADS_MAX_L2_FRACTION`)."""
    return _weights_within_l2(features, hidden, NATIVE_WEIGHT_GRADS_MAX_L2_FRACTION)


def _native_backward(
    rk, acts, hc, mask, rmask, d_outs, dh_final, dc_final, reverse, kernel=None, xs=None
):
    """`_fused_backward_states` (without remat) as one native call; differentiable like
    `_native_forward`. Returns `(dz, dxs, dh_0, dc_0, dw, d_bias)`: with `kernel` (the `forward_x` form)
    `dxs [T, B, F]` is the inputs' gradient from the same per-step matmul, else None. For small layers
    (`_native_sums_weight_grads`) the call also sums the weight gradients step by step while each `dz_t`
    is in cache: `dw`, the gradient of `[kernel; rk]` `[F + H, 4H]` (with `xs`, the inputs of the
    `forward_x` form) or of `rk` `[H, 4H]`; else `dw` is None (single XLA matmuls after the loop compute
    the weight gradients). `d_bias [4H]`, the sum of `dz`, is summed in the call with `dw` or when
    `NATIVE_BIAS_GRAD_IN_KERNEL` (else None: XLA reduces `dz` after the call)."""
    from lstm_jax import native

    m, r = _native_inputs(mask, rmask, *acts.shape[:2], rk.shape[0])
    features = 0 if kernel is None else kernel.shape[0]
    sums = _native_sums_weight_grads(features, rk.shape[0])
    bias_sum = sums or NATIVE_BIAS_GRAD_IN_KERNEL

    @jax.custom_jvp
    def call(kernel, rk, acts, hc, d_outs, dh_final, dc_final, r, xs):
        state = (acts, hc, m, d_outs, dh_final, dc_final, r, reverse)
        if kernel is None:
            dz, dh0, dc0, *grads = native.backward(
                rk, *state, weight_grads=sums, bias_grad=bias_sum
            )
            out = (dz, None, dh0, dc0, *grads)
        else:
            inputs = xs if sums else None  # given xs, the call sums the weight gradients
            out = native.backward_x(kernel, rk, *state, xs=inputs, bias_grad=bias_sum)
        if sums:
            return out
        return (*out[:-1], None, out[-1]) if bias_sum else (*out, None, None)

    @call.defjvp
    def call_jvp(primals, tangents):
        def twin(kernel, rk, acts, hc, d_outs, dh_final, dc_final, r, xs):
            rm = None if rmask is None else r
            dz, dh0, dc0 = _fused_backward_states(
                rk, None, None, mask, rm, hc, acts, d_outs, dh_final, dc_final, reverse, 1, False
            )
            dxs = None if kernel is None else jnp.einsum("tbg,fg->tbf", dz, kernel)
            if not sums:
                return dz, dxs, dh0, dc0, None, dz.sum(axis=(0, 1)) if bias_sum else None
            rows = hc[..., : rk.shape[0]] * r  # h_{t-1} * rmask, [T, B, H]
            if kernel is not None:
                rows = jnp.concatenate([xs, rows], axis=-1)
            dw = jnp.einsum("tbk,tbg->kg", rows, dz)
            return dz, dxs, dh0, dc0, dw, dz.sum(axis=(0, 1))

        return jax.jvp(twin, primals, tangents)

    return call(kernel, rk, acts, hc, d_outs, dh_final, dc_final, r, xs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10))
def _recurrence_fused(rk, bias, zx, mask, h0, c0, rmask, reverse, unroll, remat, native=False):
    if native:
        outs, final, _ = _native_forward(rk, bias, zx, mask, h0, c0, rmask, reverse)
    else:
        outs, final, _ = _fused_forward(rk, bias, zx, mask, h0, c0, rmask, reverse, unroll, remat)
    return outs, final


def _recurrence_fused_fwd(rk, bias, zx, mask, h0, c0, rmask, reverse, unroll, remat, native=False):
    # symbolic_zeros=True (see defvjp below) wraps each primal in a CustomVJPPrimal.
    rk, bias, zx, mask, h0, c0, rmask = jax.custom_derivatives.custom_vjp_primal_tree_values(
        (rk, bias, zx, mask, h0, c0, rmask)
    )
    if native:
        outs, final, saved = _native_forward(rk, bias, zx, mask, h0, c0, rmask, reverse)
    else:
        outs, final, saved = _fused_forward(
            rk, bias, zx, mask, h0, c0, rmask, reverse, unroll, remat
        )
    # Without remat zx is not kept: its buffer now holds the gates (a kept zx would force a copy).
    return (outs, final), (rk, bias, zx if remat else None, mask, rmask, saved)


def _recurrence_fused_bwd(reverse, unroll, remat, native, res, cotangents):
    rk, bias, zx, mask, rmask, (hc, acts_all) = res
    d_outs, dh_final, dc_final = _cotangents(cotangents)
    d_rk = d_bias = None  # the native call sums d_bias (and d_rk for small layers), else XLA below
    if native:
        dz, _, dh0, dc0, d_rk, d_bias = _native_backward(
            rk, acts_all, hc, mask, rmask, d_outs, dh_final, dc_final, reverse
        )
    else:
        dz, dh0, dc0 = _fused_backward_states(
            rk,
            bias,
            zx,
            mask,
            rmask,
            hc,
            acts_all,
            d_outs,
            dh_final,
            dc_final,
            reverse,
            unroll,
            remat,
        )
    return _fused_weight_grads(rk, mask, rmask, hc, dz, dh0, dc0, d_rk, d_bias)


def _cotangents(cotangents):
    """`(d_outs, dh_final, dc_final)` from a recurrence's output cotangents. A symbolic zero is a cotangent
    the caller did not use: the final state's become [B, H] zeros; the outputs' (a model that reads only
    the final state) becomes None, not [T, B, H] zeros."""
    d_outs, (dh_final, dc_final) = cotangents
    zero = jax.custom_derivatives.SymbolicZero
    dh_final, dc_final = (
        jnp.zeros(a.shape, a.dtype) if isinstance(a, zero) else a for a in (dh_final, dc_final)
    )
    return (None if isinstance(d_outs, zero) else d_outs), dh_final, dc_final


def _fused_backward_states(
    rk, bias, zx, mask, rmask, hc, acts_all, d_outs, dh_final, dc_final, reverse, unroll, remat
):
    """The fused VJP's backward recurrence: only the state gradients are carried; returns `(dz [T, B, 4H],
    dh_0, dc_0)`. With remat the gates are recomputed from `zx` and `bias` (else `acts_all` holds them).
    `d_outs` None means zeros."""
    hsz = rk.shape[0]
    if d_outs is None:
        d_outs = jnp.zeros((*hc.shape[:2], hsz), hc.dtype)
    rk_t = rk.T
    scale, offset = _tanh_gate_consts(hsz, rk.dtype)

    def grads(dh, dc, acts, c_prev, m_t, dout):
        i, f, g, o = jnp.split(acts, 4, axis=-1)
        c_new = f * c_prev + i * g
        tc = jnp.tanh(c_new)
        if m_t is None:
            dh_new = dh + dout
            dc_new = dc + dh_new * o * (1.0 - tc * tc)
            dh_pass = dc_pass = 0.0
        else:
            # Selected, not multiplied by the mask: a masked step's output cotangent (which may be
            # anything, NaN included: the output there is a constant zero) must not reach the state's.
            m = m_t[:, None]
            zero = jnp.zeros((), dh.dtype)
            dh_new = jnp.where(m, dh + dout, zero)
            dc_new = jnp.where(m, dc + dh_new * o * (1.0 - tc * tc), zero)
            dh_pass, dc_pass = jnp.where(m, zero, dh), jnp.where(m, zero, dc)
        dzi = dc_new * g * i * (1.0 - i)
        dzf = dc_new * c_prev * f * (1.0 - f)
        dzg = dc_new * i * (1.0 - g * g)
        dzo = dh_new * tc * o * (1.0 - o)
        dz = jnp.concatenate([dzi, dzf, dzg, dzo], axis=-1)
        dhr = dz @ rk_t
        dh_prev = (dhr if rmask is None else dhr * rmask) + dh_pass
        dc_prev = dc_new * f + dc_pass
        return dh_prev, dc_prev, dz

    if remat:

        def step(carry, inputs):
            dh, dc = carry
            hc_t, zx_t, m_t, dout = inputs
            h_prev, c_prev = hc_t[:, :hsz], hc_t[:, hsz:]
            hr = h_prev if rmask is None else h_prev * rmask
            acts = scale * jnp.tanh(scale * (zx_t + bias + hr @ rk)) + offset
            dh_prev, dc_prev, dz = grads(dh, dc, acts, c_prev, m_t, dout)
            return (dh_prev, dc_prev), dz

        (dh0, dc0), dz = jax.lax.scan(
            step, (dh_final, dc_final), (hc, zx, mask, d_outs), reverse=not reverse, unroll=unroll
        )
    else:

        def step(carry, inputs):
            dh, dc = carry
            acts, hc_t, m_t, dout = inputs
            dh_prev, dc_prev, dz = grads(dh, dc, acts, hc_t[:, hsz:], m_t, dout)
            return (dh_prev, dc_prev), dz

        (dh0, dc0), dz = jax.lax.scan(
            step,
            (dh_final, dc_final),
            (acts_all, hc, mask, d_outs),
            reverse=not reverse,
            unroll=unroll,
        )
    return dz, dh0, dc0


def _fused_weight_grads(rk, mask, rmask, hc, dz, dh0, dc0, d_rk=None, d_bias=None):
    """The fused VJP's outputs from the backward recurrence's `dz [T, B, 4H]`: the recurrent kernel's and
    the bias's gradients as single reductions over all timesteps (unless given: the native kernel sums
    them in its loop)."""
    hsz = rk.shape[0]
    h_prev_all = hc[..., :hsz]
    t, b, _ = h_prev_all.shape
    if d_rk is None:  # the recurrent weight gradient as one matmul over all timesteps
        hr_all = h_prev_all if rmask is None else h_prev_all * rmask
        d_rk = hr_all.reshape(t * b, hsz).T @ dz.reshape(t * b, 4 * hsz)
    if rmask is None:
        d_rmask = None
    else:
        d_rmask = jnp.einsum("tbg,hg,tbh->bh", dz, rk, h_prev_all)
    d_mask = None if mask is None else np.zeros(mask.shape, dtype=jax.dtypes.float0)
    d_bias = dz.sum(axis=(0, 1)) if d_bias is None else d_bias
    return d_rk, d_bias, dz, d_mask, dh0, dc0, d_rmask


_recurrence_fused.defvjp(_recurrence_fused_fwd, _recurrence_fused_bwd, symbolic_zeros=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def _recurrence_native_x(kernel, rk, bias, xs, mask, h0, c0, rmask, reverse):
    """The "native" layer from time-major inputs `xs [T, B, F]`: projection and recurrence in one kernel
    call each way; the weight gradients are single matmuls over all timesteps."""
    outs, final, _ = _native_forward(rk, bias, xs, mask, h0, c0, rmask, reverse, kernel)
    return outs, final


def _recurrence_native_x_fwd(kernel, rk, bias, xs, mask, h0, c0, rmask, reverse):
    kernel, rk, bias, xs, mask, h0, c0, rmask = (
        jax.custom_derivatives.custom_vjp_primal_tree_values(
            (kernel, rk, bias, xs, mask, h0, c0, rmask)
        )
    )
    outs, final, saved = _native_forward(rk, bias, xs, mask, h0, c0, rmask, reverse, kernel)
    return (outs, final), (kernel, rk, xs, mask, rmask, saved)


def _recurrence_native_x_bwd(reverse, res, cotangents):
    kernel, rk, xs, mask, rmask, (hc, acts) = res
    d_outs, dh_final, dc_final = _cotangents(cotangents)
    dz, dxs, dh0, dc0, dw, d_bias = _native_backward(
        rk, acts, hc, mask, rmask, d_outs, dh_final, dc_final, reverse, kernel, xs
    )
    f = kernel.shape[0]
    d_rk, d_bias, _, d_mask, dh0, dc0, d_rmask = _fused_weight_grads(
        rk, mask, rmask, hc, dz, dh0, dc0, None if dw is None else dw[f:], d_bias
    )
    d_kernel = _kernel_grad(xs, dz) if dw is None else dw[:f]
    return d_kernel, d_rk, d_bias, dxs, d_mask, dh0, dc0, d_rmask


_recurrence_native_x.defvjp(_recurrence_native_x_fwd, _recurrence_native_x_bwd, symbolic_zeros=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def _recurrence_native_ids(table, ids, rk, bias, mask, h0, c0, rmask, reverse):
    """The "native" layer of a folded embedding: `table [V, 4H]` (embedding @ kernel) read at token ids
    `ids [T, B]` inside the forward call; the backward call as `_recurrence_fused`'s, then the table's
    gradient as the scatter-add of `dz` that `jnp.take`'s transpose is."""
    outs, final, _ = _native_forward(rk, bias, table, mask, h0, c0, rmask, reverse, ids=ids)
    return outs, final


def _recurrence_native_ids_fwd(table, ids, rk, bias, mask, h0, c0, rmask, reverse):
    table, ids, rk, bias, mask, h0, c0, rmask = (
        jax.custom_derivatives.custom_vjp_primal_tree_values(
            (table, ids, rk, bias, mask, h0, c0, rmask)
        )
    )
    outs, final, saved = _native_forward(rk, bias, table, mask, h0, c0, rmask, reverse, ids=ids)
    rows = jnp.zeros((table.shape[0], 0), table.dtype)  # the table's row count, for its gradient
    return (outs, final), (ids, rows, rk, mask, rmask, saved)


def _recurrence_native_ids_bwd(reverse, res, cotangents):
    ids, rows, rk, mask, rmask, (hc, acts) = res
    d_outs, dh_final, dc_final = _cotangents(cotangents)
    dz, _, dh0, dc0, d_rk, d_bias = _native_backward(
        rk, acts, hc, mask, rmask, d_outs, dh_final, dc_final, reverse
    )
    d_rk, d_bias, dz, d_mask, dh0, dc0, d_rmask = _fused_weight_grads(
        rk, mask, rmask, hc, dz, dh0, dc0, d_rk, d_bias
    )
    d_table = _scatter_rows(dz, ids, rows.shape[0])
    d_ids = np.zeros(ids.shape, dtype=jax.dtypes.float0)
    return d_table, d_ids, d_rk, d_bias, d_mask, dh0, dc0, d_rmask


def _scatter_rows(dz: Array, ids: Array, vocab: int) -> Array:
    """The table gradient of `_recurrence_native_ids`: `[vocab, 4H]` zeros plus each row of `dz [T, B,
    4H]` at its id, the transpose of `jnp.take(table, ids, axis=0)`. With `NATIVE_SCATTER_ROWS` one native
    call (`native.scatter_rows`), else XLA's scatter-add, which XLA:CPU feeds a copy of `dz` (a layout
    change on the size-1 axis it gives each row; 7.5 ms of shape D's step). A derivative of it (a second
    derivative of the layer) is the XLA scatter's."""
    from lstm_jax import native

    def xla(dz):
        return jnp.zeros((vocab, dz.shape[-1]), dz.dtype).at[ids].add(dz, mode="drop")

    if not NATIVE_SCATTER_ROWS:
        return xla(dz)

    @jax.custom_jvp
    def call(dz):
        return native.scatter_rows(dz, ids, vocab)

    @call.defjvp
    def call_jvp(primals, tangents):
        return call(*primals), xla(*tangents)

    return call(dz)


_recurrence_native_ids.defvjp(
    _recurrence_native_ids_fwd, _recurrence_native_ids_bwd, symbolic_zeros=True
)


@jax.custom_vjp
def _project(xs_tm: Array, kernel: Array) -> Array:
    """The hoisted input projection `xs_tm [T, B, F] @ kernel [F, 4H] -> [T, B, 4H]` of the fused impls,
    whose VJP states its two matmuls in 2-D row-major form: `dz @ kernel^T` and `x^T @ dz`. Autodiff of
    the einsum asks for `(dz^T x)^T`, for which XLA:CPU copies `dz` transposed ([T*B, 4H], 9.6 MB per layer
    on shape A) before the matmul: this form trains shapes A and B about 6% faster (benchmarks/README.md).
    """
    return jnp.einsum("tbf,fg->tbg", xs_tm, kernel)


def _project_fwd(xs_tm, kernel):
    # The einsum itself, not `_project`: a custom_vjp called here would block forward-over-reverse
    # (`jax.hessian`) through the projection.
    return jnp.einsum("tbf,fg->tbg", xs_tm, kernel), (xs_tm, kernel)


def _project_bwd(res, dz):
    xs_tm, kernel = res
    t, b, f = xs_tm.shape
    dx = jnp.dot(dz.reshape(t * b, -1), kernel.T).reshape(t, b, f)
    return dx, _kernel_grad(xs_tm, dz)


def _kernel_grad(xs_tm: Array, dz: Array) -> Array:
    """The input kernel's gradient `x^T @ dz` over all timesteps, from `xs_tm [T, B, F]` and
    `dz [T, B, 4H]`, as one row-major 2-D matmul (see `_project`)."""
    t, b, f = xs_tm.shape
    return jnp.dot(xs_tm.reshape(t * b, f).T, dz.reshape(t * b, -1))


_project.defvjp(_project_fwd, _project_bwd)


def _resolve_impl(
    impl: Impl,
    compute_dtype: Any,
    return_gates: bool,
    hidden_size: int = 0,
    remat: bool = False,
    dtype: Any = jnp.float32,
) -> str:
    if impl not in ("auto", "scan", "fused", "per_step", "native", "cudnn"):
        raise ValueError(
            f"lstm_layer: unknown impl {impl!r}; use 'auto', 'scan', 'fused', 'per_step', 'native' "
            "or 'cudnn'"
        )
    if impl == "cudnn" or (impl == "native" and jax.default_backend() != "cpu"):
        reason = impl_unavailable_reason(impl)
        if reason is not None:
            raise ValueError(
                f"lstm_layer: impl={impl!r} is unavailable here: {reason}; use impl='auto'"
            )
    if compute_dtype is not None or return_gates:
        return "scan"  # only the autodiff scan has low-precision matmuls and gate outputs
    if impl == "cudnn" and jnp.dtype(dtype) != jnp.float32:
        return "scan"  # jax.experimental.rnn's cuDNN LSTM is float32-only
    cpu = jax.default_backend() == "cpu"
    if impl == "auto":
        if not cpu:
            return "scan"
        if remat:
            return "per_step"  # the only arrangement whose remat saves memory (see the docstring)
        if jnp.dtype(dtype) == jnp.float32 and _native_available():
            return "native"
        if hidden_size <= CPU_PER_STEP_MAX_HIDDEN:
            return "per_step"
        return "fused"
    if impl == "native":
        if remat:
            return "per_step"  # the kernel keeps its activations; per_step's remat saves memory
        if jnp.dtype(dtype) != jnp.float32:
            return "fused"  # the kernel is float32-only
        reason = impl_unavailable_reason(impl)
        if reason is not None:
            raise ValueError(f"lstm_layer: impl='native' is unavailable here: {reason}")
    return impl


def _native_projects_inputs(features: int, hidden: int) -> bool:
    """Whether impl "native" projects `[B, T, features]` inputs inside its kernel (see
    `NATIVE_INPUT_PROJECTION_MAX_L2_FRACTION`)."""
    return _weights_within_l2(features, hidden, NATIVE_INPUT_PROJECTION_MAX_L2_FRACTION)


def _native_available() -> bool:
    from lstm_jax import native

    return native.available()


def impl_unavailable_reason(impl: str) -> str | None:
    """Why the explicitly chosen `impl` cannot run on this machine (None when it can): "cudnn" needs an
    NVIDIA GPU, "native" the CPU backend and a built kernel. The other impls run anywhere."""
    if impl == "cudnn":
        return _cudnn_unavailable_reason()
    if impl == "native":
        if jax.default_backend() != "cpu":
            return f"it is a CPU kernel and JAX's default backend is {jax.default_backend()!r}"
        from lstm_jax import native

        return native.unavailable_reason()
    return None


def _cudnn_unavailable_reason() -> str | None:
    """None when `jax.experimental.rnn`'s cuDNN LSTM can run on JAX's default backend, else why not."""
    if jax.default_backend() != "gpu":
        return f"it needs an NVIDIA GPU and JAX's default backend is {jax.default_backend()!r}"
    platform_version = str(getattr(jax.devices()[0].client, "platform_version", "")).lower()
    if "rocm" in platform_version:
        return "it needs an NVIDIA GPU and this is a ROCm GPU (MIOpen packs the gates differently)"
    from jax.experimental import rnn

    if rnn.gpu_rnn is None:
        return "this jaxlib has no GPU RNN kernels (jax._src.lib.gpu_rnn)"
    return None


def _cudnn_rnn(
    xs: Array, h0: Array, c0: Array, weights: Array, lengths: Array, features: int, hidden: int
) -> tuple[Array, Array, Array]:
    """One single-layer, one-direction cuDNN LSTM call: `xs [B, T, F]` post-padded to `lengths [B]`
    (int32, each >= 1), `weights` in cuDNN's flat layout (`_cudnn_weights`). Returns `(ys [B, T, H]`,
    zero past each length, `h [B, H]`, `c [B, H])`. Matmul precision follows
    `jax_default_matmul_precision` (TF32 allowed unless it is "highest"). The tests replace this function
    with JAX's reference of the same op, `jax.experimental.rnn.lstm_ref`."""
    from jax.experimental import rnn

    ys, h, c = rnn.lstm(
        xs,
        h0[None],
        c0[None],
        weights,
        lengths,
        input_size=features,
        hidden_size=hidden,
        num_layers=1,
        dropout=0.0,
        bidirectional=False,
    )
    return ys, h[0], c[0]


def _cudnn_weights(kernel: Array, rk: Array, bias: Array) -> Array:
    """`kernel [F, 4H]`, `recurrent_kernel [H, 4H]`, `bias [4H]` as cuDNN's flat weight vector
    `(W_ih [4H, F], W_hh [4H, H], b_ih [4H], b_hh [4H])` (`jax.experimental.rnn`'s layout; the gate order
    i, f, g, o is Keras' i, f, c, o); cuDNN's second bias is zero."""
    return jnp.concatenate([kernel.T.ravel(), rk.T.ravel(), bias, jnp.zeros_like(bias)])


def _cudnn_layer(
    kernel: Array,
    rk: Array,
    bias: Array,
    xs: Array,
    mask: Array | None,
    h0: Array,
    c0: Array,
    reverse: bool,
) -> tuple[Array, Array, Array, Array]:
    """impl "cudnn": returns `(outputs [B, T, H], h, c, ok)`, `ok` a scalar bool that is False when some
    row's real tokens are not one contiguous run (the caller then uses "scan").

    cuDNN runs post-padded sequences of given lengths. Each row's run of real tokens (post- or
    pre-padded; with `reverse`, in reverse order) is gathered to the front, run, and the outputs scattered
    back to their positions with zeros at padding: the same outputs and final state as the masked scan,
    whose masked steps keep the state. A row without real tokens keeps `(h0, c0)`.
    """
    b, t, f = xs.shape
    hsz = rk.shape[0]
    weights = _cudnn_weights(kernel, rk, bias)
    if mask is None and not reverse:
        ys, h, c = _cudnn_rnn(xs, h0, c0, weights, jnp.full((b,), t, jnp.int32), f, hsz)
        return ys, h, c, jnp.bool_(True)
    pos = jnp.arange(t, dtype=jnp.int32)[None, :]  # [1, T]
    if mask is None:
        lengths = jnp.full((b,), t, jnp.int32)
        start = jnp.zeros((b,), jnp.int32)
    else:
        m = jnp.asarray(mask, bool)
        lengths = m.sum(axis=1, dtype=jnp.int32)
        start = jnp.argmax(m, axis=1).astype(jnp.int32)  # the first real token (0 without any)
    start, end = start[:, None], (start + lengths)[:, None]
    in_run = (pos >= start) & (pos < end)  # [B, T]
    ok = jnp.bool_(True) if mask is None else jnp.all(in_run == m)
    # Packed position j reads input position src[j]; input position p is packed position dst[p].
    if reverse:
        src, dst = end - 1 - pos, end - 1 - pos
    else:
        src, dst = start + pos, pos - start
    packed = jnp.take_along_axis(xs, jnp.clip(src, 0, t - 1)[..., None], axis=1)
    ys, h, c = _cudnn_rnn(packed, h0, c0, weights, jnp.maximum(lengths, 1), f, hsz)
    outs = jnp.take_along_axis(ys, jnp.clip(dst, 0, t - 1)[..., None], axis=1)
    outs = jnp.where(in_run[..., None], outs, jnp.zeros((), outs.dtype))
    empty = (lengths == 0)[:, None]
    return outs, jnp.where(empty, h0, h), jnp.where(empty, c0, c), ok


def lstm_layer(
    params: Params,
    xs: Array,
    *,
    mask: Array | None = None,
    initial_state: LSTMState | None = None,
    reverse: bool = False,
    unroll: int = 1,
    remat: bool = False,
    input_dropout_mask: Array | None = None,
    recurrent_dropout_mask: Array | None = None,
    compute_dtype: Any = None,
    return_gates: bool = False,
    impl: Impl = "auto",
    embedding: Array | None = None,
) -> tuple[Array, LSTMState] | tuple[Array, LSTMState, Gates]:
    """Runs an LSTM layer over a batch of sequences.

    Args:
      params: `{"kernel": [F, 4H], "recurrent_kernel": [H, 4H], "bias": [4H]}`.
      xs: inputs `[batch, time, F]`, or integer token ids `[batch, time]` when `embedding` is given.
      mask: optional bool `[batch, time]`, True at real tokens (Keras semantics). A masked step leaves h and c
        unchanged, so pre- and post-padded sequences give the same final state as the unpadded sequence;
        its output is zeros (as PyTorch's packed sequences give; Keras' LSTM repeats the last output
        there, its `Bidirectional` gives zeros too).
      initial_state: optional `LSTMState`, each `[batch, H]` (or `[H]` / `[1, H]`, broadcast over the
        batch: a learned initial state); zeros by default. Other shapes are a ValueError.
      reverse: walk time backwards; outputs stay aligned with input positions.
      unroll: `lax.scan` unroll factor (int).
      remat: recompute the step in the backward pass instead of storing its activations (long sequences):
        `jax.checkpoint` around the step. "auto" and "native" then run "per_step" on CPU, whose backward
        pass keeps only `(h, c)` and the input per step; the hoisted impls keep `[T, B, 4H]` arrays with
        or without it ("fused"'s remat saves no memory; see the module docstring).
      input_dropout_mask: optional `[batch, F]` multiplier applied to every timestep's input (variational
        dropout; already scaled by 1/keep). See `variational_dropout_masks`. `[F]` / `[1, F]` are
        broadcast over the batch.
      recurrent_dropout_mask: optional `[batch, H]` multiplier applied to `h_{t-1}` in the recurrent matmul
        (`[H]` / `[1, H]` broadcast over the batch).
      compute_dtype: e.g. `jnp.bfloat16` to run the matmuls in that dtype; state and gate math stay in the
        parameters' dtype (float32).
      return_gates: also return `Gates` (i, f, g, o, c), each `[batch, time, H]`, for inspection.
      impl: "auto", "scan", "fused", "native", "per_step" or "cudnn" (see module docstring). Any impl
        runs as "scan" with `compute_dtype` or `return_gates` (only the autodiff scan has those), and
        every impl with `time == 0` or `batch == 0`. "fused" and "native" differentiate through custom
        VJPs: reverse mode and forward-over-reverse (`jax.hessian`) work, forward mode of the layer
        itself (`jax.jvp`, `jax.jacfwd`) needs "scan" or "per_step". An
        explicit "native" runs "per_step" with remat, "fused" for non-float32 parameters, and raises a
        ValueError when the kernel cannot be built here (the message says why); "cudnn" raises one off
        NVIDIA GPUs and falls back to "scan" for non-float32 parameters, recurrent dropout, and (at run
        time) masks whose real tokens are not one contiguous run per row.
      embedding: optional table `[vocab, F]`; the layer's input is then `embedding[xs]` (an Embedding
        layer in front of this one, with nothing in between). With a hoisted impl ("scan", "fused",
        "native"), no
        `input_dropout_mask` and `vocab <= batch * time` the lookup is folded into the input projection:
        `(embedding @ kernel)[xs]` instead of `embedding[xs] @ kernel`, the same numbers (up to float
        summation order) with `vocab` instead of `batch * time` rows in the projection's matmul and in
        both of its gradient matmuls (the fake-news shape: 10,000 instead of 32,000). Otherwise, and when
        "native" projects the inputs inside its per-step matmul (small layers: then no `[T, B, 4H]`
        projection exists to fold into; the IMDB shape's step 15-17% faster than folded), the rows are
        looked up first. Ids out of range give NaN inputs, as `jnp.take` (and `nnx.Embed`).

    Returns:
      `(outputs [batch, time, H], final_state)`, plus `Gates` when `return_gates`.
    """
    kernel, rk, bias = _layer_params(params, "lstm_layer")
    xs = jnp.asarray(xs)  # an array-like (a nested list, a NumPy array), as jnp functions take
    if embedding is not None:
        embedding = jnp.asarray(embedding)
        if xs.ndim != 2 or not jnp.issubdtype(xs.dtype, jnp.integer):
            raise ValueError(
                f"lstm_layer: with embedding=, xs must be integer token ids [batch, time], got "
                f"{xs.dtype} {xs.shape}"
            )
        if embedding.ndim != 2:
            raise ValueError(f"lstm_layer: embedding must be [vocab, F], got {embedding.shape}")
        b, t = xs.shape
        f = embedding.shape[1]
    elif xs.ndim != 3:
        hint = ""
        if xs.ndim == 2 and jnp.issubdtype(xs.dtype, jnp.integer):
            hint = "; integer token ids [batch, time] need embedding=table [vocab, features]"
        elif xs.ndim == 2:
            hint = "; one feature per step is xs[..., None], one sequence is xs[None]"
        raise ValueError(
            f"lstm_layer: xs must be [batch, time, features], got {xs.dtype} shape {xs.shape}{hint}"
        )
    else:
        b, t, f = xs.shape
    hsz = rk.shape[0]
    # Checked here for every impl: the native kernel reads 4H bias floats and [H, 4H] weights whatever
    # the arrays' sizes (a [2H] bias was read past its end, an [8H] one cut to its first 4H).
    if rk.ndim != 2 or rk.shape[1] != 4 * hsz:
        raise ValueError(f"lstm_layer: recurrent_kernel must be [H, 4H], got shape {rk.shape}")
    for a, name in ((kernel, "kernel"), (rk, "recurrent_kernel"), (bias, "bias")):
        if not jnp.issubdtype(jnp.result_type(a), jnp.floating):
            # Else jax.nn.sigmoid's "logistic does not accept dtype int32", deep in the recurrence.
            raise TypeError(
                f"lstm_layer: params['{name}'] must be floating point, got {jnp.result_type(a)};"
                " cast the params, e.g. jax.tree.map(lambda a: a.astype(jnp.float32), params)"
            )
    if jnp.shape(bias) != (4 * hsz,):
        raise ValueError(
            f"lstm_layer: bias must be [4H] = {(4 * hsz,)} (H={hsz} from recurrent_kernel), got shape"
            f" {jnp.shape(bias)}"
        )
    if kernel.shape != (f, 4 * hsz):
        raise ValueError(
            f"lstm_layer: kernel has shape {kernel.shape} but inputs have {f} features and H={hsz}; "
            f"expected {(f, 4 * hsz)}"
        )
    if mask is not None:
        mask = jnp.asarray(mask)  # an array-like (a list of lists, a NumPy array) as the inputs are
    if mask is not None and mask.shape != (b, t):
        raise ValueError(f"lstm_layer: mask must be [batch, time] = {(b, t)}, got {mask.shape}")
    if isinstance(unroll, np.integer):  # e.g. from a NumPy array or a loaded config: the same int
        unroll = int(unroll)
    if not isinstance(unroll, int) or unroll < 1:
        raise ValueError(f"lstm_layer: unroll must be a positive int, got {unroll!r}")
    if compute_dtype is not None:
        try:
            cd = jnp.dtype(compute_dtype)
        except TypeError as e:
            raise TypeError(f"lstm_layer: compute_dtype {compute_dtype!r} is not a dtype") from e
        if not jnp.issubdtype(cd, jnp.floating):
            # An integer or bool dtype truncated the weights and inputs in the matmuls: outputs off by
            # 0.3 with no error.
            raise ValueError(
                f"lstm_layer: compute_dtype must be a floating dtype (jnp.bfloat16, jnp.float16,"
                f" jnp.float32), got {cd}; None computes in the parameters' dtype"
            )
        # float64 without jax_enable_x64 is float32, as everywhere in JAX (it was an AttributeError).
        compute_dtype = jax.dtypes.canonicalize_dtype(cd)
    impl = _resolve_impl(impl, compute_dtype, return_gates, hsz, remat, rk.dtype)
    if impl == "cudnn" and recurrent_dropout_mask is not None:
        impl = "scan"  # cuDNN has no dropout on h_{t-1}
    if t == 0 or b == 0:
        # Empty sequences or an empty batch: nothing to compute, and the other impls index step 0 or
        # split the [T * B] rows (the native kernel's gradient divides by the batch: SIGFPE).
        impl = "scan"

    state_dtype = rk.dtype
    # One dtype for all three parameters, the recurrent kernel's (the state's): a float64 bias beside
    # float32 weights (NumPy arrays under jax_enable_x64) failed in every impl but "scan", and the native
    # kernel refused a bfloat16 one. The cast's transpose gives each gradient its parameter's dtype.
    kernel, bias = kernel.astype(state_dtype), bias.astype(state_dtype)
    params = {"kernel": kernel, "recurrent_kernel": rk, "bias": bias}
    if initial_state is None:
        initial_state = zero_state(b, hsz, state_dtype)
    if not isinstance(initial_state, (tuple, list)):
        # An array of 2 rows has two items too: its rows were taken for h and c.
        raise ValueError(
            "lstm_layer: initial_state must be LSTMState(h, c), got "
            f"{type(initial_state).__name__} of shape {jnp.shape(initial_state)}"
        )
    if len(initial_state) != 2:
        raise ValueError(
            f"lstm_layer: initial_state must be LSTMState(h, c), got {len(initial_state)} items"
        )
    for s, name in zip(initial_state, "hc", strict=True):
        if s is None:  # else JAX's "None is not a valid value for jnp.array", naming neither
            raise ValueError(
                f"lstm_layer: initial_state.{name} is None; give both h and c ([batch, H] each, or"
                " [H] / [1, H]), e.g. zeros for the one you do not set, or initial_state=None for"
                " zeros"
            )
    # Every impl gets [batch, H] (the native kernel reads exactly b * H floats from each).
    h0, c0 = (
        _batch_rows(jnp.asarray(s, state_dtype), b, hsz, f"initial_state.{name}")
        for s, name in zip(initial_state, "hc", strict=True)
    )
    for m, name in ((input_dropout_mask, "input"), (recurrent_dropout_mask, "recurrent")):
        if m is not None and jnp.result_type(m) == jnp.bool_:
            # A keep mask of bools multiplied without the 1 / keep scaling: training saw smaller inputs
            # than evaluation, with no error.
            raise TypeError(
                f"lstm_layer: {name}_dropout_mask is bool; it is a multiplier already scaled by"
                " 1 / keep: keep.astype(float) / (1 - rate), or use variational_dropout_masks"
            )
    if recurrent_dropout_mask is not None:
        # In the state's dtype, as `h_{t-1}` is (a float32 mask would promote bfloat16 states).
        recurrent_dropout_mask = _batch_rows(
            jnp.asarray(recurrent_dropout_mask, state_dtype), b, hsz, "recurrent_dropout_mask"
        )
    if input_dropout_mask is not None:
        input_dropout_mask = _batch_rows(
            jnp.asarray(input_dropout_mask), b, f, "input_dropout_mask"
        )
    # The native kernel projecting the inputs itself: no [T, B, 4H] projection from XLA at all.
    in_kernel = impl == "native" and compute_dtype is None and _native_projects_inputs(f, hsz)
    fold = (
        embedding is not None
        and impl not in ("per_step", "cudnn")
        and not in_kernel
        and input_dropout_mask is None
        and embedding.shape[0] <= FOLD_EMBEDDING_MAX_ROWS_PER_POSITION * b * t
    )
    # The folded table's rows read by id inside the native forward call: no [T, B, 4H] gather. An empty
    # table goes to jnp.take, which raises as every other impl does (the kernel would read NaN rows).
    by_id = fold and impl == "native" and NATIVE_FOLDED_ROWS_BY_ID and embedding.shape[0] > 0
    real = None if mask is None else mask.astype(bool)  # [batch, time]
    if fold and real is not None:
        # Padding ids may be anything (-1, vocab, ...): one out of range reads a NaN row of the folded
        # table (jnp.take's "fill", the kernel's read by id), whose gates turned every gradient NaN as NaN
        # inputs did (below). Row 0 instead: a masked step's cotangent is exactly zero, so the table's
        # gradient is unchanged. (Unfolded, the gathered rows are zeroed below with the other inputs.)
        xs = jnp.where(real, xs, jnp.zeros((), xs.dtype))
    if embedding is not None and not fold:
        xs = jnp.take(embedding, xs, axis=0)
    if input_dropout_mask is not None:
        # In the promoted dtype, not the inputs': integer inputs (one-hot ids, counts) cast the mask's
        # 1 / keep to 1 (1 / 0.7 -> 1: dropout without its scaling), bfloat16 ones rounded it. Every
        # impl casts the product to the parameters' dtype next.
        xs = xs * input_dropout_mask[:, None, :]
    if real is not None and not fold:
        # Padded inputs may hold anything (NaN, inf: e.g. a feature computed from no data). A masked step
        # keeps the state, but its gates are still computed from x_t, and the backward pass multiplies
        # them (and x_t itself, in the kernel's gradient) by the step's zero cotangent: 0 * NaN = NaN in
        # every gradient. Zeros there instead: the same outputs, and the padded inputs' gradient is zero.
        xs = jnp.where(real[..., None], xs, jnp.zeros((), xs.dtype))
    mask_tm = None if real is None else real.T  # [T, B]

    if impl == "per_step":
        xs = xs.astype(state_dtype)  # as the hoisted impls: the carry keeps the parameters' dtype
        return _per_step_layer(
            params, xs, mask_tm, h0, c0, recurrent_dropout_mask, reverse, unroll, remat
        )
    if impl == "cudnn":
        xs = xs.astype(state_dtype)
        outputs, h, c, ok = _cudnn_layer(kernel, rk, bias, xs, mask, h0, c0, reverse)
        if mask is None:
            return outputs, LSTMState(h, c)

        def scan_layer(_):  # a mask with holes: the reference path, chosen at run time
            zx = jnp.einsum("tbf,fg->tbg", jnp.swapaxes(xs, 0, 1), kernel) + bias
            outs_tm, state, _ = _recurrence_scan(
                rk,
                zx,
                mask_tm,
                h0,
                c0,
                None,
                reverse=reverse,
                unroll=unroll,
                remat=remat,
                compute_dtype=None,
                return_gates=False,
            )
            return jnp.swapaxes(outs_tm, 0, 1), state

        outputs, (h, c) = jax.lax.cond(ok, lambda _: (outputs, (h, c)), scan_layer, None)
        return outputs, LSTMState(h, c)

    # The hoisted input projection: one [T*B, F] @ [F, 4H] matmul. The inputs are made time-major first
    # (F is usually smaller than 4H, and between stacked layers the transposes cancel), so the product
    # comes out time-major in row-major layout with no transpose of the [T, B, 4H] result.
    xs_tm = jnp.swapaxes(xs, 0, 1)
    if fold:
        # [V, F] @ [F, 4H] once, then one [4H] row per (time, batch) position, time-major.
        if compute_dtype is not None:
            table = _low_precision_dot(embedding, kernel, compute_dtype, "vf,fg->vg").astype(
                state_dtype
            )
        else:
            table = embedding.astype(state_dtype) @ kernel
        zx = None if by_id else jnp.take(table, xs_tm, axis=0)
    elif compute_dtype is not None:
        zx = _low_precision_dot(xs_tm, kernel, compute_dtype, "tbf,fg->tbg").astype(state_dtype)
    elif in_kernel:
        zx = None  # projected inside the kernel's per-step matmul: no [T, B, 4H] array from XLA
    elif impl in ("fused", "native"):  # differentiated only in reverse mode, as the recurrence
        zx = _project(xs_tm.astype(state_dtype), kernel)
    else:
        zx = jnp.einsum("tbf,fg->tbg", xs_tm.astype(state_dtype), kernel)

    gates = None
    if by_id:
        outs, (h, c) = _recurrence_native_ids(
            table, xs_tm, rk, bias, mask_tm, h0, c0, recurrent_dropout_mask, reverse
        )
    elif zx is None:
        outs, (h, c) = _recurrence_native_x(
            kernel,
            rk,
            bias,
            xs_tm.astype(state_dtype),
            mask_tm,
            h0,
            c0,
            recurrent_dropout_mask,
            reverse,
        )
    elif impl in ("fused", "native"):
        outs, (h, c) = _recurrence_fused(
            rk,
            bias,
            zx,
            mask_tm,
            h0,
            c0,
            recurrent_dropout_mask,
            reverse,
            unroll,
            remat,
            impl == "native",
        )
    else:
        zx = zx + bias
        outs, (h, c), gates = _recurrence_scan(
            rk,
            zx,
            mask_tm,
            h0,
            c0,
            recurrent_dropout_mask,
            reverse=reverse,
            unroll=unroll,
            remat=remat,
            compute_dtype=compute_dtype,
            return_gates=return_gates,
        )
    outputs = jnp.swapaxes(outs, 0, 1)
    if return_gates:
        gates = Gates(*(jnp.swapaxes(a, 0, 1) for a in gates))
        return outputs, LSTMState(h, c), gates
    return outputs, LSTMState(h, c)


def _batch_rows(a: Array, batch: int, width: int, name: str) -> Array:
    """`a` as `[batch, width]`: as it is, or a `[width]` / `[1, width]` row broadcast over the batch (a
    learned initial state, one dropout mask for every sequence); any other shape is a ValueError."""
    if a.shape == (batch, width):
        return a
    if a.shape in ((width,), (1, width)):
        return jnp.broadcast_to(a.reshape(1, width), (batch, width))
    raise ValueError(
        f"lstm_layer: {name} must be [batch, {width}] = {(batch, width)} (or [{width}] / [1, {width}],"
        f" broadcast over the batch), got shape {tuple(a.shape)}"
    )


def _per_step_layer(params, xs, mask_tm, h0, c0, rmask, reverse, unroll, remat=False):
    """Textbook arrangement: `x_t @ kernel` inside the loop, autodiff gradients (CPU, small H). With
    `remat` the step is a `jax.checkpoint`: the backward pass keeps only each step's carry and input."""
    weights = (params["kernel"], params["recurrent_kernel"], params["bias"])

    def step(carry, inputs):
        x_t, m_t = inputs
        state = LSTMState(*carry)
        if rmask is not None:
            state_in = LSTMState(state.h * rmask, state.c)
            new, _ = _step(*weights, state_in, x_t)
        else:
            new, _ = _step(*weights, state, x_t)
        if m_t is None:
            return tuple(new), new.h
        m = m_t[:, None]
        h = jnp.where(m, new.h, state.h)
        c = jnp.where(m, new.c, state.c)
        return (h, c), jnp.where(m, new.h, jnp.zeros_like(new.h))

    if remat:
        step = jax.checkpoint(step)
    (h, c), outs = jax.lax.scan(
        step, (h0, c0), (jnp.swapaxes(xs, 0, 1), mask_tm), reverse=reverse, unroll=unroll
    )
    return jnp.swapaxes(outs, 0, 1), LSTMState(h, c)


# ---------------------------------------------------------------------------------------------------------
# Dropout, bidirectional and stacked layers.
# ---------------------------------------------------------------------------------------------------------


def variational_dropout_masks(
    key: Array,
    batch_size: int,
    input_size: int,
    hidden_size: int,
    *,
    dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    dtype: Any = jnp.float32,
) -> tuple[Array | None, Array | None]:
    """Draws Keras-style variational dropout masks, one per sequence, outside the scan.

    Returns `(input_mask [batch, input_size] or None, recurrent_mask [batch, hidden_size] or None)`, already
    scaled by `1 / (1 - rate)`, constant over time within a sequence and independent across sequences.
    """
    for name, rate in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {rate}")
    k1, k2 = jax.random.split(key)

    def draw(k, rate, n):
        if rate == 0.0:
            return None
        keep = jax.random.bernoulli(k, 1.0 - rate, (batch_size, n))
        return keep.astype(dtype) / (1.0 - rate)

    return draw(k1, dropout, input_size), draw(k2, recurrent_dropout, hidden_size)


def _merge(a: Array, b: Array, merge: MergeMode) -> Array | tuple[Array, Array]:
    if merge == "concat":
        return jnp.concatenate([a, b], axis=-1)
    if merge == "sum":
        return a + b
    if merge == "ave":
        return (a + b) / 2
    if merge == "mul":
        return a * b
    if merge is None:
        return a, b
    raise ValueError(f"unknown merge mode {merge!r}; use 'concat', 'sum', 'ave', 'mul' or None")


def _direction_states(initial_state: Any, who: str) -> tuple[Any, Any]:
    """`(forward_state, backward_state)` of a bidirectional layer's `initial_state` (None: both None).

    Each direction's state is what `lstm_layer` takes: None, or a pair `(h, c)` (an `LSTMState`, tuple or
    list). One `LSTMState(h, c)` of arrays is refused rather than split into h for the forward direction
    and c for the backward one."""
    if initial_state is None:
        return None, None
    if (
        isinstance(initial_state, (tuple, list))
        and len(initial_state) == 2
        and all(s is None or (isinstance(s, (tuple, list)) and len(s) == 2) for s in initial_state)
    ):
        return initial_state[0], initial_state[1]
    raise ValueError(
        f"{who}: initial_state must be (forward_state, backward_state), a pair of LSTMState(h, c)"
        " (or None for a direction's zero state)"
    )


def _refuse_return_gates(layer_kwargs: dict[str, Any], who: str, how: str) -> None:
    """A ValueError for `return_gates=True` passed through to `lstm_layer`, whose third result the
    wrappers would unpack into two ("too many values to unpack")."""
    if layer_kwargs.get("return_gates"):
        raise ValueError(
            f"{who}: return_gates is not supported; call lstm_layer(..., return_gates=True) per layer"
            f" ({how}) for the Gates"
        )


def bidirectional(
    params_fw: Params,
    params_bw: Params,
    xs: Array,
    *,
    mask: Array | None = None,
    merge: MergeMode = "concat",
    **layer_kwargs: Any,
) -> tuple[Array | tuple[Array, Array], tuple[LSTMState, LSTMState]]:
    """A forward and a backward LSTM (separate parameters) over `xs [batch, time, F]`.

    Outputs are aligned with input positions; with `merge="concat"` they are `[batch, time, 2H]`
    (Keras' `Bidirectional(merge_mode=...)`: concat, sum, ave, mul, or None for the pair). Returns
    `(merged_outputs, (forward_final_state, backward_final_state))`. `initial_state`, when given, is
    the pair `(forward_state, backward_state)` of `LSTMState`s, as `nn.Bidirectional` takes it; the
    other keyword arguments go to both directions' `lstm_layer`.
    """
    if "reverse" in layer_kwargs:
        raise ValueError("bidirectional: do not pass reverse; the wrapper runs both directions")
    _refuse_return_gates(layer_kwargs, "bidirectional", "reverse=True for the backward direction")
    init_f, init_b = _direction_states(layer_kwargs.pop("initial_state", None), "bidirectional")
    out_f, st_f = lstm_layer(
        params_fw, xs, mask=mask, reverse=False, initial_state=init_f, **layer_kwargs
    )
    out_b, st_b = lstm_layer(
        params_bw, xs, mask=mask, reverse=True, initial_state=init_b, **layer_kwargs
    )
    return _merge(out_f, out_b, merge), (st_f, st_b)


def _hidden_sizes(hidden_sizes: Any, who: str) -> tuple[int, ...]:
    """`hidden_sizes` (units per layer, e.g. `(300, 300)`) as a tuple. One int (`4` for `(4,)`, as Keras'
    `LSTM(units)`) is a TypeError naming the tuple: it was "object of type 'int' has no len()" or "'int'
    object is not iterable"."""
    if isinstance(hidden_sizes, (int, float)):
        raise TypeError(
            f"{who}: hidden_sizes must be a sequence of units per layer, got {hidden_sizes!r}; one layer"
            f" is ({hidden_sizes!r},)"
        )
    return tuple(hidden_sizes)


def init_stacked_lstm(
    key: Array, input_size: int, hidden_sizes: Sequence[int], **init_kwargs: Any
) -> list[Params]:
    """Parameters for a stack of LSTM layers with the given hidden sizes (a sequence, e.g. `(32, 32)`)."""
    hidden_sizes = _hidden_sizes(hidden_sizes, "init_stacked_lstm")
    keys = jax.random.split(key, len(hidden_sizes))
    sizes = [input_size, *hidden_sizes]
    return [init_lstm(k, sizes[n], sizes[n + 1], **init_kwargs) for n, k in enumerate(keys)]


def stacked_lstm(
    params: Sequence[Params],
    xs: Array,
    *,
    mask: Array | None = None,
    initial_states: Sequence[LSTMState] | None = None,
    dropout_rate: float = 0.0,
    key: Array | None = None,
    deterministic: bool = True,
    **layer_kwargs: Any,
) -> tuple[Array, list[LSTMState]]:
    """A stack of LSTM layers with (standard, per-element) dropout between layers.

    Args:
      params: one parameter dict per layer.
      xs: `[batch, time, F]`.
      mask: optional `[batch, time]` bool.
      initial_states: optional list of `LSTMState`, one per layer.
      dropout_rate: dropout on each layer's outputs before the next layer (not after the last).
      key: PRNG key for dropout (required when `dropout_rate > 0` and not `deterministic`).
      deterministic: True disables dropout (evaluation).

    Returns:
      `(outputs of the last layer [batch, time, H_last], list of final states)`.
    """
    if isinstance(params, Mapping):
        # One layer's dict was iterated as its keys: "string indices must be integers".
        raise TypeError(
            "stacked_lstm: params must be a list of layers' params dicts (init_stacked_lstm's), got one"
            " dict; pass [params] for one layer, or call lstm_layer"
        )
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"stacked_lstm: dropout_rate must be in [0, 1), got {dropout_rate}")
    _refuse_return_gates(
        layer_kwargs, "stacked_lstm", "each layer's outputs as the next one's inputs"
    )
    use_dropout = dropout_rate > 0.0 and not deterministic
    if use_dropout and key is None:
        raise ValueError("stacked_lstm: a PRNG key is required for dropout in training mode")
    if isinstance(initial_states, LSTMState):
        raise ValueError(
            f"stacked_lstm: initial_states must be a list of one LSTMState per layer ({len(params)}), got"
            " one LSTMState; pass [state] for one layer"
        )
    if initial_states is not None and len(initial_states) != len(params):
        raise ValueError(
            f"stacked_lstm: initial_states must hold one LSTMState per layer ({len(params)}), got"
            f" {len(initial_states)}"
        )
    states = []
    h = xs
    for n, p in enumerate(params):
        init = None if initial_states is None else initial_states[n]
        h, st = lstm_layer(p, h, mask=mask, initial_state=init, **layer_kwargs)
        states.append(st)
        if use_dropout and n < len(params) - 1:
            keep = jax.random.bernoulli(jax.random.fold_in(key, n), 1.0 - dropout_rate, h.shape)
            h = jnp.where(keep, h / (1.0 - dropout_rate), 0.0)
    return h, states
