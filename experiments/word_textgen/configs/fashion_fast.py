"""The fashion tutorial's model (`fashion.py`: Embedding 64 -> LSTM 128 -> LSTM 64 -> Dense 64 relu ->
softmax, whole-line form) with a faster optimiser setting: Adam at 1e-2 instead of Keras' 1e-3, gradients
clipped to global norm 1, batches of 64 descriptions instead of 128, 16 epochs instead of 80.

Measured on the Myntra catalogue (2 CPU cores, 2026-12-04): validation loss 2.385 nats per word and
accuracy 0.616 after the 16 epochs, in 10 minutes, against 2.639 and 0.609 for `fashion.py`'s 80 epochs
(76 minutes); after 8 epochs 2.705 (5 minutes). The same validation split and model as `fashion.py`.
"""

import ml_collections

from experiments.word_textgen.configs import fashion


def get_config() -> ml_collections.ConfigDict:
    config = fashion.get_config()
    config.optimizer.learning_rate = 1e-2  # 10x Keras' Adam default
    config.optimizer.clip_norm = 1.0  # global gradient norm; keeps the large rate stable
    config.train.batch_size = 64  # twice the updates per epoch
    config.train.num_epochs = 16
    return config
