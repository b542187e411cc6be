"""Fashion descriptions, the Keras word-level tutorial: Keras-Tokenizer words, Embedding 64 -> LSTM 128
(sequences) -> LSTM 64 -> Dense 64 relu -> Dense vocab softmax, Adam, batch 128, 80 epochs, 20% validation.

Trained in the whole-line form by default (the same loss as the tutorial's pre-padded prefixes with masked
padding, about 23x less work per epoch); `--config.data.form=prefixes` is the tutorial's literal form."""

import ml_collections

from lstm_jax.config_utils import engine_defaults


def get_config() -> ml_collections.ConfigDict:
    config = engine_defaults()
    config.seed = 0  # initialisation, shuffling and dropout (not the validation split)

    d = config.data
    d.path = ""  # empty = $LSTM_JAX_DATA/fashion/myntra_products_catalog.csv; any CSV works
    d.text_column = "Description"  # the Myntra catalogue's text column
    d.form = "lines"  # "lines" (every position predicts the next word) or "prefixes" (the tutorial)
    d.validation_fraction = 0.2  # the tutorial's 20% validation split, by description, seeded
    d.split_seed = 0  # the split's train_test_split random_state, fixed whatever config.seed is
    d.buckets = (
        16,
        32,
        64,
        128,
        256,
    )  # line batches are padded to one of these lengths (or the longest)
    d.max_len = 0  # filled in from the data: the longest description in words

    m = config.model
    m.vocab_size = 0  # filled in from the data: len(word_index) + 1
    m.embed_dim = 64  # Embedding(total_words, 64)
    m.hidden_sizes = (128, 64)  # LSTM(128, return_sequences=True) -> LSTM(64)
    m.dense_layers = ((64, "relu"),)  # Dense(64, activation="relu") before the softmax layer
    m.dropout = 0.0  # the tutorial has no dropout
    m.mask_padding = False  # prefixes form only: the tutorial's Embedding has no mask_zero
    m.unroll = 1  # scan unroll factor
    m.impl = "auto"  # on CPU: the native kernel (lstm_jax.native), else the XLA impls by size

    o = config.optimizer
    o.name = "adam"  # Keras Adam defaults

    t = config.train
    t.batch_size = 128  # the tutorial's batch_size (lines here, prefixes in the prefixes form)
    t.eval_batch_size = 256  # evaluation only
    t.num_epochs = 80  # the tutorial's epochs
    t.log_every_steps = 100
    # The output layer and softmax are applied 1,024 positions at a time (`losses.chunked_softmax_metric_sums`):
    # the same loss and gradients without [128, T, 9259] logits; 1.6-2.2x faster steps here. 0 = all at once.
    t.logits_chunk = 1024
    t.monitor = "val_loss"  # the best checkpoint is the one generation uses

    g = config.generate = ml_collections.ConfigDict()
    g.seed_texts = (
        "women black",
        "men blue slim fit",
        "printed cotton kurta",
    )  # samples after training
    g.num_words = 12  # words generated per seed text
    g.temperature = 0.0  # greedy, as the tutorial's argmax
    g.top_k = 0
    return config
