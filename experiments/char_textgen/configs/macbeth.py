"""Macbeth, faithful to the Keras char-level tutorial: lowercased text, windows of 50 characters (stride 1)
each predicting the next one, every character fed as one scalar `index / vocab_size`,
LSTM(300) -> Dropout(0.2) -> LSTM(300) -> Dropout(0.2) -> Dense softmax, Adam, batch 40."""

import ml_collections

from lstm_jax.config_utils import engine_defaults


def get_config() -> ml_collections.ConfigDict:
    config = engine_defaults()
    config.seed = 0

    d = config.data
    d.dataset = (
        "macbeth"  # $LSTM_JAX_DATA/shakespeare/macbeth_gutenberg_nltk.txt (or --config.data.path)
    )
    d.layout = "windows"  # the tutorial's "50 characters -> next character" examples
    d.seq_length = 50  # the tutorial's seq_length
    d.window_stride = 1  # every position starts a window, as range(0, n_chars - seq_length, 1)
    d.lower = True  # the tutorial lowercases the text
    d.validation_fraction = (
        0.05  # the tutorial has no validation set; hold out the last 5% to monitor
    )

    m = config.model
    m.vocab_size = 0  # filled in from the data (the sorted character set)
    m.input_mode = "scalar"  # X / float(n_vocab): one feature per character
    m.embed_dim = 1  # unused with scalar input
    m.hidden_sizes = (300, 300)  # LSTM(300, return_sequences=True) -> LSTM(300)
    m.dropout = 0.2  # Dropout(0.2) after each LSTM
    m.recurrent_dropout = 0.0  # the tutorial has none
    m.unroll = 1  # scan unroll factor
    m.impl = "auto"  # on CPU: the native kernel (lstm_jax.native), else the XLA impls by size

    o = config.optimizer
    o.name = "adam"  # Keras Adam with its defaults (lr 1e-3, eps 1e-7)

    t = config.train
    t.batch_size = 40  # the tutorial's batch_size
    t.eval_batch_size = 256  # evaluation only: bigger batches, same numbers (windows layout)
    t.num_epochs = 200  # the tutorial's; override with --config.train.num_epochs on 2 cores
    t.log_every_steps = 200
    t.monitor = "val_loss"

    g = config.generate = ml_collections.ConfigDict()
    g.prime = ""  # empty = a random training window, as the tutorial
    g.length = 50  # the tutorial generates 50 characters
    g.temperature = 0.0  # greedy (the tutorial's argmax)
    g.top_k = 0
    g.num_samples = 1
    return config
