"""A tiny end-to-end config for tests on a fixture fake-news CSV (pass --config.data.path)."""

import ml_collections

from experiments.fake_news.configs import fake_news


def get_config() -> ml_collections.ConfigDict:
    config = fake_news.get_config()
    config.data.num_buckets = 101  # a small embedding
    config.data.maxlen = 20  # short sequences compile and run fast
    config.model.embed_dim = 8
    config.model.hidden_sizes = (8,)
    config.model.dense_layers = ((6, "relu"), (4, "relu"))  # same shape of head, tiny
    config.train.batch_size = 8
    config.train.eval_batch_size = 16
    config.train.num_epochs = 3  # early stopping may end it first
    config.early_stopping.patience = 1
    config.train.log_every_steps = 2
    config.train.prefetch = 0  # no background thread in tests
    return config
