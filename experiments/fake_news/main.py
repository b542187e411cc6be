"""Fake-news detection: Kaggle-style article CSVs (binary) and the LIAR benchmark (6-way or binary).

Usage:
  python -m experiments.fake_news.main --config=experiments/fake_news/configs/fake_news.py \
      --workdir=/tmp/fake_news                              # train, then reports in the workdir
  python -m experiments.fake_news.main --config=experiments/fake_news/configs/liar.py --workdir=/tmp/liar
  python -m experiments.fake_news.main --workdir=/tmp/fake_news --mode=eval
  python -m experiments.fake_news.main --workdir=/tmp/fake_news --mode=predict "Some article text"
  echo '{"title": "...", "author": "...", "text": "..."}' | python -m experiments.fake_news.main \
      --workdir=/tmp/fake_news --mode=predict                # an article as its CSV row, one JSON line
  python -m experiments.fake_news.main --workdir=/tmp/liar --mode=predict --meta=speaker=barack-obama \
      --meta=party_affiliation=democrat "Says the economy added jobs."   # or, per statement on stdin:
      {"statement": "Says the economy added jobs.", "speaker": "barack-obama", "subject": "economy,jobs"}
  python -m experiments.fake_news.main --config=... --workdir=/tmp/fn_tfidf --mode=baseline
  python -m experiments.fake_news.main --mode=ensemble --workdir=/tmp/liar_ens /tmp/liar_s0 /tmp/liar_s1

Data: any CSV with the columns title, author, text, label (1 = fake) via --config.data.path, default
$LSTM_JAX_DATA/fake_news/articles/fake_real_articles.csv; LIAR from $LSTM_JAX_DATA/fake_news/liar.
All logic lives in `lstm_jax.tasks.classification`.
"""

from typing import Any

import ml_collections
from absl import flags

from lstm_jax import cli
from lstm_jax.tasks import classification

flags.DEFINE_multi_string(
    "meta",
    [],
    "predict (LIAR models): metadata of every text as field=value, repeatable (subject, speaker,"
    " speaker_job_title, state_info, party_affiliation, context)",
)
FLAGS = flags.FLAGS


def predict(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
    return classification.predict(config, workdir, meta=FLAGS.meta)


predict.takes_arguments = True  # the texts to classify


MODES = {
    "train": classification.train,
    "eval": classification.evaluate,
    "predict": predict,
    "baseline": classification.baseline,
    "ensemble": classification.ensemble,
}

if __name__ == "__main__":
    cli.run(MODES)
