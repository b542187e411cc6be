"""The fake-news tutorial: hashed stemmed words -> Embedding 300 -> Dropout 0.5 -> LSTM 199 -> Dropout 0.4
-> Dense 399 relu -> Dense 43 relu -> Dense 1 sigmoid, Adam, batch 64, early stopping."""

import ml_collections

from lstm_jax.config_utils import engine_defaults


def get_config() -> ml_collections.ConfigDict:
    config = engine_defaults()
    config.seed = 0  # parameter init, dropout and batch order

    d = config.data
    d.dataset = "fake_news"  # Kaggle columns title, author, text, label (1 = fake)
    d.path = ""  # "" = $LSTM_JAX_DATA/fake_news/articles/fake_real_articles.csv; any such CSV works
    d.test_fraction = 0.33  # train_test_split(test_size=0.33, random_state=42)
    d.split_seed = 42
    d.validation_fraction = 0.2  # fit(validation_split=0.2): the last 20% of the training part
    d.num_buckets = 10000  # one_hot(words, 10000), with a stable md5 hash instead of Python's hash
    d.maxlen = 500  # pad_sequences(maxlen=500) ...
    d.padding = "pre"  # ... with Keras' defaults: zeros in front ...
    d.truncating = "pre"  # ... and the start of long articles cut
    d.mask = False  # the tutorial's Embedding has no mask_zero: the LSTM reads the padding
    d.bucket_quantum = 0  # no trimming: pre-padding is read by the unmasked LSTM
    d.max_train_examples = 0  # 0 = every training row

    m = config.model
    m.embed_dim = 300  # Embedding(10000, 300)
    m.hidden_sizes = (199,)  # LSTM(199)
    m.bidirectional = False
    m.pool = "last"  # final LSTM state
    m.embed_dropout = 0.5  # Dropout(0.5) after the embedding
    m.token_dropout = 0.0  # word dropout (whole embedding vectors); off
    m.dropout = 0.4  # Dropout(0.4) after the LSTM
    m.recurrent_dropout = 0.0
    m.impl = "auto"  # on CPU the native kernel; "cudnn" (opt-in) on NVIDIA GPUs
    m.dense_layers = ((399, "relu"), (43, "relu"))  # Dense(399, relu), Dense(43, relu)

    o = config.optimizer
    o.name = "adam"  # compile(optimizer="adam"), Keras defaults (lr 1e-3)
    o.learning_rate = 1e-3

    t = config.train
    t.batch_size = 64  # the tutorial's batch size
    t.eval_batch_size = 128
    t.num_epochs = 50  # the tutorial's upper bound; early stopping ends sooner
    t.monitor = "val_loss"  # EarlyStopping(monitor="val_loss")
    t.log_every_steps = 10

    es = config.early_stopping
    es.enabled = True  # stop when val_loss stops improving ...
    es.patience = 5  # ... for 5 epochs ...
    es.restore_best_weights = True  # ... and evaluate the best epoch's weights

    config.report = ml_collections.ConfigDict()
    config.report.baseline = True  # TF-IDF + logistic regression on the same splits (seconds)
    return config
