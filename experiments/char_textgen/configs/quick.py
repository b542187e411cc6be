"""The README's main job (`make run`): a short tiny-shakespeare char model, a few minutes on 2 CPU cores,
then printed samples. Same data and layout as tiny_shakespeare.py, a smaller model and 1,500 steps."""

import ml_collections

from experiments.char_textgen.configs import tiny_shakespeare


def get_config() -> ml_collections.ConfigDict:
    config = tiny_shakespeare.get_config()
    config.model.embed_dim = 32  # small model: this config is a demo, not the benchmark
    config.model.hidden_sizes = (256,)  # one layer of 256 runs ~4x faster than 2x512 on CPU
    config.model.dropout = 0.0  # less than one epoch: nothing to regularise
    config.optimizer.learning_rate = 3e-3  # a short run tolerates a higher peak rate
    config.optimizer.warmup_steps = 30
    config.train.num_steps = 1500  # about 3 epochs of 490 steps: a few minutes on 2 cores
    config.train.log_every_steps = 25
    config.generate.length = 300  # characters per printed sample
    return config
