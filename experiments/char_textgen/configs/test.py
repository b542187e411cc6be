"""End-to-end test config: a tiny stream model on a small text file, seconds on 2 cores."""

import ml_collections

from experiments.char_textgen.configs import tiny_shakespeare


def get_config() -> ml_collections.ConfigDict:
    config = tiny_shakespeare.get_config()
    config.data.path = ""  # the test passes --config.data.path=<fixture text file>
    config.data.seq_length = 16  # short truncated-BPTT windows
    config.model.embed_dim = 8  # tiny, so the test compiles and trains in seconds
    config.model.hidden_sizes = (16,)
    config.model.dropout = 0.1  # exercise the dropout path
    config.optimizer.learning_rate = 1e-2  # learn something from a few steps
    config.optimizer.schedule = "constant"
    config.optimizer.warmup_steps = 0
    config.optimizer.min_lr_ratio = 0.0  # read by the cosine schedules only
    config.train.batch_size = 4
    config.train.eval_batch_size = 4
    config.train.num_epochs = 2
    config.train.log_every_steps = 5
    config.train.prefetch = 0  # no background thread in tests
    config.generate.prime = ""  # a saved training window
    config.generate.length = 20
    config.generate.num_samples = 2
    return config
