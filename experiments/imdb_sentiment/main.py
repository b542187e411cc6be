"""IMDB sentiment (binary) with an LSTM classifier.

Usage:
  python -m experiments.imdb_sentiment.main --config=experiments/imdb_sentiment/configs/imdb.py \
      --workdir=/tmp/imdb                                   # train, then reports in the workdir
  python -m experiments.imdb_sentiment.main --workdir=/tmp/imdb --mode=eval
  python -m experiments.imdb_sentiment.main --workdir=/tmp/imdb --mode=predict "A great movie!"
  echo "Terrible acting." | python -m experiments.imdb_sentiment.main --workdir=/tmp/imdb --mode=predict
  python -m experiments.imdb_sentiment.main --config=... --workdir=/tmp/imdb_tfidf --mode=baseline
  python -m experiments.imdb_sentiment.main --mode=ensemble --workdir=/tmp/imdb_ens /tmp/imdb_s0 /tmp/imdb_s1

Data: $LSTM_JAX_DATA/imdb (imdb_{train,test}.csv.gz), an aclImdb/ folder via --config.data.path, or TFDS
`imdb_reviews` when online. All logic lives in `lstm_jax.tasks.classification`.
"""

from lstm_jax import cli
from lstm_jax.tasks import classification

MODES = {
    "train": classification.train,
    "eval": classification.evaluate,
    "predict": classification.predict,
    "baseline": classification.baseline,
    "ensemble": classification.ensemble,
}

if __name__ == "__main__":
    cli.run(MODES)
