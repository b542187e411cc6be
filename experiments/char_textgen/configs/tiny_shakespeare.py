"""tiny-shakespeare, papers style: embedding input, every position predicts the next character, truncated
BPTT with the state carried across batches (char-rnn), 90/10 split (TFDS train vs. validation + test)."""

import ml_collections

from lstm_jax.config_utils import engine_defaults


def get_config() -> ml_collections.ConfigDict:
    config = engine_defaults()
    config.seed = 0

    d = config.data
    d.dataset = (
        "tiny_shakespeare"  # TFDS when online, else $LSTM_JAX_DATA/shakespeare/tinyshakespeare.txt
    )
    d.layout = "streams"  # contiguous streams, state carried between consecutive batches
    d.seq_length = (
        64  # truncated-BPTT length (char-rnn uses 50-100); shorter = more updates per hour
    )
    d.window_stride = 1  # unused by the streams layout
    d.lower = False  # keep case: the published char-level figures use the raw 65-character text
    d.validation_fraction = 0.0  # 0 = the standard 90/10 split of load_tiny_shakespeare

    m = config.model
    m.vocab_size = 0  # filled in from the data (65 characters)
    m.input_mode = "embed"  # a learned character embedding
    m.embed_dim = 64  # small: 65 characters carry little information per symbol
    m.hidden_sizes = (512, 512)  # char-rnn's 2x512
    m.dropout = 0.35  # between the layers and before the softmax; 1M chars overfit 2x512 (0.2 at 4 epochs: 1.488)
    m.recurrent_dropout = (
        0.0  # variational dropout on h_{t-1}; unused (slower on CPU, no gain measured)
    )
    m.unroll = 1  # scan unroll factor; 1 was fastest on CPU (FACTS.md)
    m.impl = "auto"  # on CPU: the native kernel (lstm_jax.native), else the XLA impls by size

    o = config.optimizer
    o.name = "adam"
    o.learning_rate = 2e-3  # char-rnn's 2e-3 with Adam
    o.schedule = "warmup_cosine"  # short warmup, cosine decay to the end of the run
    o.warmup_steps = 100
    o.min_lr_ratio = 0.05
    o.clip_norm = 5.0  # char-rnn clips gradients at 5

    t = config.train
    t.batch_size = 32  # parallel streams
    t.eval_batch_size = 32
    t.num_epochs = 13  # 490 steps each, ~3.6 min per epoch on the idle 2 cores: ~50 minutes in all
    t.eval_every_steps = 0  # evaluate (and checkpoint) at the end of every epoch
    t.log_every_steps = 50
    t.monitor = "val_loss"  # keep the best checkpoint by validation loss

    g = config.generate = ml_collections.ConfigDict()
    g.prime = "ROMEO:\n"  # printed samples start from this text
    g.length = 400  # characters per sample
    g.temperature = 0.8  # sampled, slightly sharpened
    g.top_k = 0  # no top-k limit
    g.num_samples = 2
    return config
