"""End-to-end test config: a tiny word model on a small CSV the test writes, seconds on 2 cores."""

import ml_collections

from experiments.word_textgen.configs import fashion


def get_config() -> ml_collections.ConfigDict:
    config = fashion.get_config()
    config.data.buckets = (4, 8)  # exercise bucketing on short lines
    config.model.embed_dim = 8  # tiny, so the test compiles and trains in seconds
    config.model.hidden_sizes = (16, 8)
    config.model.dense_layers = ((8, "relu"),)
    config.optimizer.learning_rate = 1e-2
    config.train.batch_size = 8
    config.train.eval_batch_size = 8
    config.train.num_epochs = 3
    config.train.log_every_steps = 5
    config.train.prefetch = 0  # no background thread in tests
    config.generate.seed_texts = ("red",)
    config.generate.num_words = 4
    return config
