"""The Keras IMDB tutorial: TextVectorization(15,000, 228) -> Embedding 16 -> LSTM 32 -> Dense 1 sigmoid."""

import ml_collections

from lstm_jax.config_utils import engine_defaults


def get_config() -> ml_collections.ConfigDict:
    config = engine_defaults()
    config.seed = 0  # parameter init, dropout and batch order

    d = config.data
    d.dataset = "imdb"  # selects the loader and preprocessing in lstm_jax.tasks.classification
    d.path = (
        ""  # "" = $LSTM_JAX_DATA/imdb (CSV.gz); or an aclImdb/ folder; TFDS when neither exists
    )
    d.validation_fraction = 0.25  # the tutorial's 75/25 split of the official training set
    d.split_seed = 100  # the tutorial's split seed
    d.vocab_size = 15000  # TextVectorization(max_tokens=15000): 0 = padding, 1 = OOV, 14,998 words
    d.maxlen = 228  # TextVectorization(output_sequence_length=228)
    d.padding = "post"  # TextVectorization pads at the end ...
    d.truncating = "post"  # ... and cuts the end of longer reviews
    d.mask = True  # Embedding(mask_zero=True): the LSTM skips padding
    d.bucket_quantum = 0  # 0: [batch, maxlen] batches as the tutorial; >0 trims padding (exact)
    d.max_train_examples = 0  # 0 = every training review (a prefix, for quick experiments)

    m = config.model
    m.embed_dim = 16  # Embedding(15000, 16)
    m.hidden_sizes = (32,)  # one LSTM(32)
    m.bidirectional = False  # the tutorial's LSTM is unidirectional
    m.pool = "last"  # the LSTM's final state feeds the classifier (return_sequences=False)
    m.embed_dropout = 0.0  # the tutorial has no dropout
    m.token_dropout = 0.0  # word dropout (whole embedding vectors); off
    m.dropout = 0.0
    m.recurrent_dropout = 0.0
    m.impl = "auto"  # on CPU the native kernel; "cudnn" (opt-in) on NVIDIA GPUs
    m.dense_layers = ()  # straight to Dense(1, sigmoid)

    o = config.optimizer
    o.name = "rmsprop"  # model.compile(optimizer="rmsprop"): Keras defaults lr 1e-3, rho 0.9
    o.learning_rate = 1e-3

    t = config.train
    t.batch_size = 100  # the tutorial's batch size
    t.eval_batch_size = 500  # evaluation only: larger batches, fewer calls
    t.num_epochs = 10  # the tutorial's 10 epochs
    t.monitor = (
        "val_accuracy"  # the best checkpoint (predict/eval) is the most accurate on validation
    )
    t.log_every_steps = 50

    config.report = ml_collections.ConfigDict()
    config.report.baseline = (
        True  # also fit TF-IDF + logistic regression on the same splits (~1 min)
    )
    return config
