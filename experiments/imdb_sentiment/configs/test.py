"""A tiny end-to-end config for tests: fixture aclImdb/ folder (pass --config.data.path), seconds on CPU."""

import ml_collections

from experiments.imdb_sentiment.configs import imdb


def get_config() -> ml_collections.ConfigDict:
    config = imdb.get_config()
    config.data.vocab_size = 200  # fixture reviews have a few dozen distinct words
    config.data.maxlen = 24  # short sequences compile and run fast
    config.data.validation_fraction = 0.25  # same split rule as the tutorial
    config.model.embed_dim = 8  # tiny model
    config.model.hidden_sizes = (8,)
    config.train.batch_size = 8  # a few steps per epoch on ~40 fixture reviews
    config.train.eval_batch_size = 16
    config.train.num_epochs = 2  # enough to checkpoint twice and exercise the best-checkpoint logic
    config.train.log_every_steps = 2
    config.train.prefetch = 0  # no background thread in tests
    config.report.baseline = True  # exercise the baseline path too (fast on tiny data)
    return config
