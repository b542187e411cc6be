"""A tiny end-to-end LIAR config for tests on fixture liar_{train,valid,test}.csv (pass --config.data.path)."""

import ml_collections

from experiments.fake_news.configs import liar


def get_config() -> ml_collections.ConfigDict:
    config = liar.get_config()
    config.data.vocab_size = 100  # fixture statements use a few dozen words
    config.data.meta_vocab_size = 50
    config.data.maxlen = 16
    config.model.embed_dim = 8
    config.model.hidden_sizes = (8,)
    config.train.batch_size = 8
    config.train.eval_batch_size = 16
    config.train.num_epochs = 2
    config.train.log_every_steps = 2
    config.train.prefetch = 0  # no background thread in tests
    return config
