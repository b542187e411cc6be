"""lstm_jax: a functional, jit-compiled LSTM core in JAX with Flax NNX layers.

The public API of the core::

    from lstm_jax import init_lstm, LSTMState, lstm_step, lstm_layer

See `lstm_jax.core` for the equations and layouts, `lstm_jax.nn` for the NNX modules and
`lstm_jax.convert` for weight import from Keras, PyTorch and Flax.
"""

from lstm_jax.convert import from_flax, from_keras, from_torch, from_torch_lstm, to_keras
from lstm_jax.core import (
    Gates,
    LSTMState,
    bidirectional,
    init_lstm,
    init_stacked_lstm,
    lstm_layer,
    lstm_step,
    stacked_lstm,
    variational_dropout_masks,
    zero_state,
)
from lstm_jax.errors import UserError
from lstm_jax.runtime import tune_malloc

# XLA:CPU's per-step buffers stay in the heap (left alone on GPU/TPU); LSTM_JAX_TUNE_MALLOC=0 opts out.
tune_malloc()

__version__ = "0.1.0"

__all__ = [
    "Gates",
    "LSTMState",
    "UserError",
    "bidirectional",
    "from_flax",
    "from_keras",
    "from_torch",
    "from_torch_lstm",
    "init_lstm",
    "init_stacked_lstm",
    "lstm_layer",
    "lstm_step",
    "stacked_lstm",
    "to_keras",
    "tune_malloc",
    "variational_dropout_masks",
    "zero_state",
]
