"""The strongest from-scratch LSTM for IMDB we found. One run takes about 4 minutes on an idle 2-core CPU
with the native CPU kernel (seed 2 alone: 247 s, 2026-12-02; 11-14 minutes before the kernel).
Three runs with seeds 0-2 averaged by `--mode=ensemble` reach the issue's 0.89 test accuracy; `make
imdb-best` runs that recipe in 11-13 minutes (timed end to end: 658 s on 2026-12-02, 745 s on 2026-12-06;
30 minutes, 1,792 s, before the native kernel) by
training seeds 0 and 1 side by side, one core each (`--cpus=1/2`, `--cpus=2/2`), then seed 2 on both cores;
the ensemble reuses the probabilities each run saved (`predictions.npz`) and takes seconds.

Changes from the tutorial, each measured on the validation split: a bidirectional LSTM, a larger
vocabulary and embedding, longer sequences that keep the END of long reviews (where the verdict usually
is), mean+max pooling over all time steps, dropout and word dropout, Adam with warmup + cosine decay,
gradient clipping, and the most accurate validation epoch kept. No pretrained embeddings, no unlabelled data.
"""

import ml_collections

from experiments.imdb_sentiment.configs import imdb


def get_config() -> ml_collections.ConfigDict:
    config = imdb.get_config()

    d = config.data
    d.validation_fraction = 0.1  # 22,500 reviews to train on, 2,500 to pick the epoch
    d.vocab_size = 30000  # more of the long tail of sentiment words (ids: 0 pad, 1 OOV)
    d.maxlen = 800  # whole reviews but the longest ~3% (mean length ~230 tokens); 400 tested 0.8772
    d.truncating = "pre"  # cut the START of long reviews: their conclusion carries the verdict
    d.bucket_quantum = 32  # similar-length batches cut to multiples of 32 tokens (~2x faster)

    m = config.model
    m.embed_dim = 128  # richer word vectors (learnt from scratch)
    m.hidden_sizes = (128,)  # one bidirectional layer, 128 units per direction (64: val 0.8956)
    m.bidirectional = True  # both directions see every word in context
    m.pool = "mean_max"  # mean and max over every time step, not just the last state
    m.embed_dropout = 0.5  # dropout on word vectors: the main regulariser (0.3 overfit sooner)
    # Word dropout: each token's whole vector zeroed with this probability. Three-seed ensembles, validation
    # accuracy: 0.9064 with 0.2, 0.9020 without (single runs: mean 0.8971 vs 0.8992, loss 0.265 vs 0.269).
    m.token_dropout = 0.2
    m.dropout = 0.5  # dropout on the pooled features
    m.recurrent_dropout = 0.0  # off: it forces a slower per-step mask and did not help here

    o = config.optimizer
    o.name = "adam"
    o.learning_rate = 2e-3  # peak rate after warmup
    o.schedule = "warmup_cosine"  # linear warmup then cosine decay over the run
    o.warmup_steps = 100
    o.min_lr_ratio = 0.05
    o.clip_norm = 1.0  # guards the early, large LSTM gradients

    t = config.train
    t.batch_size = 128  # the step cost is mostly per-time-step overhead: bigger batches are ~free
    t.eval_batch_size = 250
    t.num_epochs = 3  # ~4 minutes on an idle 2-core machine; the best validation epoch is kept
    t.monitor = "val_accuracy"  # keep the most accurate epoch

    es = config.early_stopping
    es.enabled = True  # stop once validation accuracy has not improved for 2 epochs ...
    es.patience = 2
    es.restore_best_weights = True  # ... and test the best epoch's weights

    config.report.baseline = False  # the tutorial config already reports the TF-IDF baseline
    return config
