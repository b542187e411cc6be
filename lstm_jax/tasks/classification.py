"""Text classification task shared by IMDB sentiment, fake-news articles and LIAR statements.

One module turns any of the three datasets into padded id arrays with masks, builds the `TextClassifier`,
defines the loss (sigmoid BCE for binary labels, softmax CE for LIAR's six verdicts) and provides the modes
of the experiments' entry points:

* ``train``: `train_and_evaluate` with the engine, then reports (classification report per split, confusion
  heatmaps, optional TF-IDF baseline) in ``results.json``;
* ``eval``: reports of the best checkpoint again, into ``eval.json`` (results.json is left as it is);
* ``predict``: label and probability for texts given as arguments or one per line on stdin, using only
  the workdir (saved config, preprocessing artefact and checkpoint);
* ``baseline``: the TF-IDF + logistic-regression baseline alone, into ``baseline.json``;
* ``ensemble``: the averaged probabilities of several trained runs (e.g. seeds), reports into
  ``ensemble.json``.

Config (``config.data``):
  dataset: "imdb", "fake_news" or "liar".
  path: the data (IMDB: an aclImdb/ folder or a folder with imdb_{train,test}.csv(.gz); fake news: a CSV
    with the Kaggle columns; LIAR: the folder with liar_{train,valid,test}.csv); "" = $LSTM_JAX_DATA.
  maxlen, padding, truncating, mask: sequence length, Keras `pad_sequences` sides, masked padding.
  IMDB/LIAR: vocab_size (ids incl. 0 = padding and 1 = OOV). Fake news: num_buckets (hashing).
  IMDB: validation_fraction, split_seed (a split of the official training set; test = official test).
  Fake news: test_fraction, split_seed, validation_fraction (the tail of the training part, Keras'
    `validation_split`).
  LIAR: label ("six" or "binary"), metadata (columns added as tokens), meta_vocab_size.
  max_train_examples: 0 = all; else a prefix of the shuffled training split (quick experiments).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, get_args

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lstm_jax import config_utils, losses, metrics, reports, text
from lstm_jax import data as data_lib
from lstm_jax.baselines import cached_tfidf_logreg
from lstm_jax.checkpoint import has_checkpoints, load_artefact
from lstm_jax.errors import UserError
from lstm_jax.logging_utils import atomic_write, json_int, read_json, write_json
from lstm_jax.models import ACTIVATIONS, Pool, TextClassifier
from lstm_jax.train import (
    RESULTS_FILE,
    LossFn,
    Task,
    check_run,
    checkpoint_step,
    data_parallel_map,
    epoch_permutation,
    pad_batch,
    padded_batches,
    restore_model,
    shuffled_batches,
    steps_per_epoch,
    train_and_evaluate,
)

__all__ = [
    "DATASETS",
    "PREPROCESS_FILE",
    "PREDICTIONS_FILE",
    "TextEncoder",
    "PreparedData",
    "prepare_data",
    "build_model",
    "num_outputs",
    "embedding_rows",
    "make_loss_fn",
    "make_task",
    "predict_logits",
    "predict_proba",
    "probabilities",
    "predicted_classes",
    "metrics_from_logits",
    "evaluate_reports",
    "save_predictions",
    "load_predictions",
    "train",
    "evaluate",
    "predict",
    "predict_texts",
    "baseline",
    "ensemble",
]

DATASETS = ("imdb", "fake_news", "liar")
PREPROCESS_FILE = "preprocess.json"
# The final model's validation/test probabilities, labels and checkpoint step (read by `ensemble`).
PREDICTIONS_FILE = "predictions.npz"
ENSEMBLE_FILE = "ensemble.json"  # what --mode=ensemble writes, beside its reports
IMDB_CLASSES = ("neg", "pos")  # label 1 = positive review
FAKE_CLASSES = ("real", "fake")  # label 1 = fake (Kaggle's convention; LIAR's binary label too)
_META_SEP = "\x1f"  # joins metadata tokens; never occurs in a CSV cell after our normalisation


# ---------------------------------------------------------------------------------------------------------
# Preprocessing: raw text -> ids [T] + mask, identical at training and prediction time.
# ---------------------------------------------------------------------------------------------------------


def _meta_tokens(row: Mapping[str, str], fields: Sequence[str]) -> list[str]:
    """LIAR metadata as tokens ``field=value`` (lowercased; `subject` split on commas)."""
    out = []
    for field in fields:
        raw = (row.get(field) or "").strip().lower()
        values = raw.split(",") if field == "subject" else [raw]
        for v in values:
            v = " ".join(v.split())
            if v:
                out.append(f"{field}={v}")
    return out


class TextEncoder:
    """Turns raw texts into `(ids [n, maxlen] int32, mask [n, maxlen] bool)` the way training did.

    Kinds:
      * ``vocab`` (IMDB, LIAR): a `text.Vocabulary` (IMDB standardisation), plus for LIAR an optional
        metadata vocabulary whose ids follow the text ids (``text vocab_size + meta id``); metadata tokens
        come first, then the statement.
      * ``hash`` (fake news): `text.FakeNewsPreprocessor` (letters only, stopwords, Porter stems, stable
        md5 buckets) with the stopword list saved alongside, so prediction uses the same words.

    `to_dict`/`from_dict` round-trip through the ``preprocess.json`` artefact.
    """

    def __init__(
        self,
        *,
        dataset: str,
        class_names: Sequence[str],
        maxlen: int,
        padding: str,
        truncating: str,
        vocab: text.Vocabulary | None = None,
        vocab_size: int = 0,
        meta_vocab: text.Vocabulary | None = None,
        meta_fields: Sequence[str] = (),
        stopwords: Iterable[str] | None = None,
        stopwords_source: str = "",
        num_buckets: int = 0,
    ) -> None:
        self.dataset = dataset
        self.class_names = tuple(class_names)
        self.maxlen = int(maxlen)
        self.padding, self.truncating = padding, truncating
        self.vocab, self.vocab_size = vocab, int(vocab_size)
        self.meta_vocab, self.meta_fields = meta_vocab, tuple(meta_fields)
        self.stopwords = sorted(stopwords) if stopwords is not None else None
        self.stopwords_source = stopwords_source
        self.num_buckets = int(num_buckets)
        self._hasher = (
            text.FakeNewsPreprocessor(self.stopwords, num_buckets, maxlen)
            if dataset == "fake_news"
            else None
        )

    def token_ids(self, texts: Sequence[str], meta: Sequence[Sequence[str]] | None = None) -> list:
        """Unpadded id lists, one per text (`meta`: metadata token lists per text, LIAR only)."""
        if self._hasher is not None:
            return [self._hasher.encode(t) for t in texts]
        assert self.vocab is not None
        seqs = self.vocab.encode_batch(texts)
        if self.meta_vocab is not None and meta is not None:
            offset = self.vocab_size
            seqs = [
                [offset + i for i in self.meta_vocab.encode(_META_SEP.join(m))] + s
                for m, s in zip(meta, seqs, strict=True)
            ]
        return seqs

    def __call__(
        self, texts: Sequence[str], meta: Sequence[Sequence[str]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`(ids [n, maxlen] int32, mask [n, maxlen] bool)`; mask is True at real tokens."""
        seqs = self.token_ids(texts, meta)
        return text.pad_sequences_with_mask(seqs, self.maxlen, self.padding, self.truncating)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "lstm_jax.TextEncoder/1",
            "dataset": self.dataset,
            "class_names": list(self.class_names),
            "maxlen": self.maxlen,
            "padding": self.padding,
            "truncating": self.truncating,
            "vocab": None if self.vocab is None else json.loads(self.vocab.to_json()),
            "vocab_size": self.vocab_size,
            "meta_vocab": None
            if self.meta_vocab is None
            else json.loads(self.meta_vocab.to_json()),
            "meta_fields": list(self.meta_fields),
            "stopwords": self.stopwords,
            "stopwords_source": self.stopwords_source,
            "num_buckets": self.num_buckets,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = PREPROCESS_FILE) -> TextEncoder:
        if not isinstance(d, Mapping) or d.get("format") != "lstm_jax.TextEncoder/1":
            raise UserError(
                f"{source}: not a preprocessing file written by lstm_jax.tasks.classification;"
                " pass the workdir of a classification run"
            )

        def strings(v: Any) -> bool:
            return isinstance(v, list) and all(isinstance(x, str) for x in v)

        # What each field must hold (a hand-edited or damaged file was a KeyError, ValueError or TypeError).
        fields = {
            "dataset": (lambda v: isinstance(v, str), "a string"),
            "class_names": (lambda v: strings(v) and len(v) >= 2, "a list of class names"),
            "maxlen": (lambda v: json_int(v) and v >= 1, "an integer >= 1"),
            "padding": (lambda v: isinstance(v, str), "a string"),
            "truncating": (lambda v: isinstance(v, str), "a string"),
            "vocab": (lambda v: v is None or isinstance(v, dict), "a vocabulary object or null"),
            "vocab_size": (lambda v: json_int(v) and v >= 0, "an integer >= 0"),
            "meta_vocab": (
                lambda v: v is None or isinstance(v, dict),
                "a vocabulary object or null",
            ),
            "meta_fields": (strings, "a list of field names"),
            "stopwords": (lambda v: v is None or strings(v), "a list of words or null"),
            "stopwords_source": (lambda v: isinstance(v, str), "a string"),
            "num_buckets": (lambda v: json_int(v) and v >= 0, "an integer >= 0"),
        }
        for key, (ok, want) in fields.items():
            if key not in d or not ok(d[key]):
                held = f"holds {key!r}: {d[key]!r:.60}, not" if key in d else f"lacks {key!r},"
                raise UserError(
                    f"{source} {held} {want}; the file was edited or is damaged: restore it, or"
                    " train again in a new --workdir"
                )

        def vocab(key: str) -> text.Vocabulary | None:
            v = d.get(key)
            return None if v is None else text.Vocabulary.from_json(json.dumps(v), source)

        return cls(
            dataset=d["dataset"],
            class_names=d["class_names"],
            maxlen=d["maxlen"],
            padding=d["padding"],
            truncating=d["truncating"],
            vocab=vocab("vocab"),
            vocab_size=d["vocab_size"],
            meta_vocab=vocab("meta_vocab"),
            meta_fields=d["meta_fields"],
            stopwords=d["stopwords"],
            stopwords_source=d["stopwords_source"],
            num_buckets=d["num_buckets"],
        )


# ---------------------------------------------------------------------------------------------------------
# Data: load, split, encode.
# ---------------------------------------------------------------------------------------------------------


class PreparedData:
    """Encoded splits and what produced them.

    Attributes:
      arrays: ``{split: {"ids": int32 [n, T], "mask": bool [n, T], "label": int32 [n]}}`` for
        "train", "validation" and "test".
      texts: ``{split: list of the raw texts}`` (for the TF-IDF baseline).
      encoder: the `TextEncoder` (saved as ``preprocess.json``).
      info: data provenance and counts for results.json.
    """

    def __init__(
        self,
        arrays: dict[str, dict[str, np.ndarray]],
        texts: dict[str, list[str]],
        encoder: TextEncoder,
        info: dict[str, Any],
    ):
        self.arrays: dict[str, dict[str, np.ndarray]] = arrays
        self.texts: dict[str, list[str]] = texts
        self.encoder: TextEncoder = encoder
        self.info: dict[str, Any] = info

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.encoder.class_names


def _check_choice(field: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise UserError(
            f"config.{field}={value!r} is not one of {', '.join(choices)}; pass"
            f" --config.{field}=<one of them>"
        )


def _check_data_config(d: ml_collections.ConfigDict) -> None:
    _check_choice("data.dataset", d.dataset, DATASETS)
    _check_choice("data.padding", d.padding, ("pre", "post"))
    _check_choice("data.truncating", d.truncating, ("pre", "post"))
    if int(d.maxlen) < 1:
        raise UserError(
            f"config.data.maxlen={d.maxlen} must be >= 1; pass e.g. --config.data.maxlen=228"
        )
    if int(d.get("vocab_size", 3)) < 3:
        raise UserError(
            f"config.data.vocab_size={d.vocab_size} leaves no id for a word (0 is padding, 1 the"
            " out-of-vocabulary id); pass e.g. --config.data.vocab_size=15000"
        )
    if d.dataset == "liar" and len(d.get("metadata", ())) and int(d.get("meta_vocab_size", 3)) < 3:
        raise UserError(
            f"config.data.meta_vocab_size={d.meta_vocab_size} leaves no id for a metadata token"
            " (0 is unused, 1 the out-of-vocabulary id); pass e.g."
            " --config.data.meta_vocab_size=4000, or --config.data.metadata='()'"
        )
    if int(d.get("max_train_examples", 0)) < 0:
        raise UserError(
            f"config.data.max_train_examples={d.max_train_examples} must be >= 0 (0 = every training"
            " example); pass e.g. --config.data.max_train_examples=0"
        )
    _bucket_quantum(d)
    fractions = {
        "imdb": ("validation_fraction",),
        "fake_news": ("test_fraction", "validation_fraction"),
    }
    needs = {
        "imdb": ("validation_fraction", "split_seed", "vocab_size"),
        "fake_news": ("test_fraction", "validation_fraction", "num_buckets"),
        "liar": ("label", "metadata", "meta_vocab_size", "vocab_size"),
    }[d.dataset]
    lacking = [f for f in needs if f not in d]
    if lacking:  # data.dataset switched by flag in another dataset's config
        config_file = {
            "imdb": "imdb_sentiment/configs/imdb.py",
            "fake_news": "fake_news/configs/fake_news.py",
        }
        where = config_file.get(d.dataset, "fake_news/configs/liar.py")
        raise UserError(
            f"config.data.dataset={d.dataset!r} needs config.data.{lacking[0]}, which this config"
            f" lacks: pass a config made for it (experiments/{where}) instead of switching"
            " data.dataset by flag"
        )
    for field in fractions.get(d.dataset, ()):
        data_lib.check_fraction(float(d[field]), f"config.data.{field}")
    config_utils.check_split_seed(d)
    if d.dataset == "fake_news" and int(d.num_buckets) < 2:
        raise UserError(
            f"config.data.num_buckets={d.num_buckets} leaves no id for a word (0 is padding); pass"
            " e.g. --config.data.num_buckets=10000"
        )
    if d.dataset == "liar":
        _check_choice("data.label", d.label, ("six", "binary"))
        unknown = [f for f in d.metadata if f not in data_lib.LIAR_META]
        if unknown:
            raise UserError(
                f"config.data.metadata has unknown LIAR column(s) {unknown}; use some of"
                f" {', '.join(data_lib.LIAR_META)}, as a tuple: e.g."
                " --config.data.metadata='(\"speaker\", \"party_affiliation\")', or '()' for none"
                " (speaker,party_affiliation unquoted is one name)"
            )


def _take(columns: Mapping[str, Any], idx: np.ndarray) -> dict[str, Any]:
    return {
        k: (np.asarray(v)[idx] if isinstance(v, np.ndarray) else [v[i] for i in idx])
        for k, v in columns.items()
    }


def _limit(n: int, d: ml_collections.ConfigDict) -> int:
    m = int(d.get("max_train_examples", 0))
    return n if m == 0 else min(n, m)


def _encode_split(encoder: TextEncoder, texts, labels, meta=None) -> dict[str, np.ndarray]:
    ids, mask = encoder(texts, meta)
    return {"ids": ids, "mask": mask, "label": np.asarray(labels, np.int32)}


def _prepare_imdb(d: ml_collections.ConfigDict, seed: int) -> PreparedData:
    raw, info = data_lib.load_imdb(d.path or None)
    train_items, test_items = raw["train"], raw["test"]
    tr_idx, va_idx = data_lib.train_test_split(
        len(train_items),
        float(d.validation_fraction),
        int(d.split_seed),
        field="config.data.validation_fraction",
    )
    tr_idx = tr_idx[: _limit(len(tr_idx), d)]
    split_items = {
        "train": [train_items[i] for i in tr_idx],
        "validation": [train_items[i] for i in va_idx],
        "test": test_items,
    }
    t0 = time.time()
    # The tutorial's TextVectorization: adapted on the training texts only, 0 = pad, 1 = OOV, equal counts
    # ordered as it orders them (by token, descending), so the ids and the words kept are its own.
    vocab = text.Vocabulary(
        num_words=int(d.vocab_size),
        oov_token="[UNK]",
        standardize="imdb",
        lower=True,
        order="textvectorization",
    )
    vocab.fit(t for t, _ in split_items["train"])
    encoder = TextEncoder(
        dataset="imdb",
        class_names=IMDB_CLASSES,
        maxlen=d.maxlen,
        padding=d.padding,
        truncating=d.truncating,
        vocab=vocab,
        vocab_size=int(d.vocab_size),
    )
    texts = {s: [t for t, _ in items] for s, items in split_items.items()}
    arrays = {
        s: _encode_split(encoder, texts[s], [y for _, y in items])
        for s, items in split_items.items()
    }
    info = dict(info)
    info["split"] = {
        "validation": f"{d.validation_fraction} of the official training set (sklearn"
        f" train_test_split, random_state={d.split_seed})",
        "test": "official test set",
    }
    info["vocabulary"] = {"tokens_seen": len(vocab.tokens), "size": vocab.size}
    info["encode_seconds"] = round(time.time() - t0, 2)
    return PreparedData(arrays, texts, encoder, info)


def _prepare_fake_news(
    d: ml_collections.ConfigDict,
    seed: int,
    stopwords: tuple[Iterable[str], str] | None = None,
) -> PreparedData:
    path = data_lib.resolve_path(
        d.path or None, "fake_news/articles/fake_real_articles.csv", what="fake-news CSV"
    )
    cols, info = data_lib.load_fake_news_csv(path)
    n = len(cols["label"])
    train_full, test_idx = data_lib.train_test_split(
        n, float(d.test_fraction), int(d.split_seed), field="config.data.test_fraction"
    )
    # Keras `fit(validation_split=f)`: it trains on the first floor(n * (1 - f)) rows of the (already
    # shuffled) training part and validates on the rest (so 1106 rows give 884 / 222, not 885 / 221).
    n_val = len(train_full) - math.floor(len(train_full) * (1.0 - float(d.validation_fraction)))
    if n_val < 1 or n_val >= len(train_full):
        raise UserError(
            f"{path}: {len(train_full)} training rows leave no validation or no training rows with"
            f" config.data.validation_fraction={d.validation_fraction}; use more rows or another fraction"
        )
    tr_idx, va_idx = train_full[: len(train_full) - n_val], train_full[len(train_full) - n_val :]
    tr_idx = tr_idx[: _limit(len(tr_idx), d)]
    stopwords, source = stopwords or text.load_stopwords()
    encoder = TextEncoder(
        dataset="fake_news",
        class_names=FAKE_CLASSES,
        maxlen=d.maxlen,
        padding=d.padding,
        truncating=d.truncating,
        stopwords=stopwords,
        stopwords_source=source,
        num_buckets=int(d.num_buckets),
    )
    docs = [
        text.fake_news_text(t, a, x)
        for t, a, x in zip(cols["title"], cols["author"], cols["text"], strict=True)
    ]
    t0 = time.time()
    arrays, texts = {}, {}
    for split, idx in (("train", tr_idx), ("validation", va_idx), ("test", test_idx)):
        texts[split] = [docs[i] for i in idx]
        arrays[split] = _encode_split(encoder, texts[split], cols["label"][idx])
    info = dict(info)
    info["stopwords_source"] = source
    info["stopwords"] = len(stopwords)
    info["split"] = {
        "test": f"{d.test_fraction} (sklearn train_test_split, random_state={d.split_seed})",
        "validation": f"the last {d.validation_fraction} of the rest (Keras validation_split)",
    }
    info["encode_seconds"] = round(time.time() - t0, 2)
    return PreparedData(arrays, texts, encoder, info)


def _prepare_liar(d: ml_collections.ConfigDict, seed: int) -> PreparedData:
    raw, info = data_lib.load_liar(d.path or None, metadata=tuple(d.metadata))
    label_key = "label" if d.label == "six" else "binary_label"
    class_names = data_lib.LIAR_LABELS if d.label == "six" else FAKE_CLASSES
    fields = tuple(d.metadata)
    splits = {"train": raw["train"], "validation": raw["valid"], "test": raw["test"]}
    keep = _limit(len(splits["train"]["label"]), d)
    splits["train"] = _take(splits["train"], np.arange(keep))

    def meta_of(cols: Mapping[str, Any]) -> list[list[str]]:
        n = len(cols["statement"])
        return [_meta_tokens({f: cols[f][i] for f in fields}, fields) for i in range(n)]

    metas = {s: meta_of(c) for s, c in splits.items()}
    vocab = text.Vocabulary(
        num_words=int(d.vocab_size), oov_token="[UNK]", standardize="imdb", lower=True
    )
    vocab.fit(splits["train"]["statement"])
    meta_vocab = None
    if fields:
        meta_vocab = text.Vocabulary(
            num_words=int(d.meta_vocab_size), oov_token="[UNK]", standardize="none", split=_META_SEP
        )
        meta_vocab.fit(_META_SEP.join(m) for m in metas["train"])
    encoder = TextEncoder(
        dataset="liar",
        class_names=class_names,
        maxlen=d.maxlen,
        padding=d.padding,
        truncating=d.truncating,
        vocab=vocab,
        vocab_size=int(d.vocab_size),
        meta_vocab=meta_vocab,
        meta_fields=fields,
    )
    arrays = {
        s: _encode_split(encoder, c["statement"], c[label_key], metas[s]) for s, c in splits.items()
    }
    texts = {
        s: [" ".join([*m, st]) for m, st in zip(metas[s], c["statement"], strict=True)]
        for s, c in splits.items()
    }
    info = dict(info)
    info["label"] = d.label
    info["metadata"] = list(fields)
    info["split"] = "official LIAR train/valid/test"
    info["vocabulary"] = {
        "tokens_seen": len(vocab.tokens),
        "size": vocab.size,
        "meta_tokens_seen": 0 if meta_vocab is None else len(meta_vocab.tokens),
    }
    return PreparedData(arrays, texts, encoder, info)


def prepare_data(
    config: ml_collections.ConfigDict, *, stopwords: tuple[Iterable[str], str] | None = None
) -> PreparedData:
    """Loads, splits and encodes `config.data.dataset`; the splits are "train", "validation", "test".

    `stopwords`: `(words, source)` for fake news instead of those `text.load_stopwords` finds (a resumed
    run's own, `saved_stopwords`)."""
    d = config.data
    _check_data_config(d)
    if d.dataset == "fake_news":
        prepared = _prepare_fake_news(d, int(config.seed), stopwords)
    else:
        prep = {"imdb": _prepare_imdb, "liar": _prepare_liar}
        prepared = prep[d.dataset](d, int(config.seed))
    rows = embedding_rows(config)
    for split, arr in prepared.arrays.items():
        if len(arr["label"]) == 0:
            raise UserError(
                f"the {split} split of {d.dataset} is empty; check config.data.path and the split"
                " fractions"
            )
        top = int(arr["ids"].max(initial=0))
        if top >= rows:
            raise UserError(
                f"token id {top} in the {split} split does not fit the embedding of {rows} rows;"
                " raise config.data.vocab_size / meta_vocab_size consistently"
            )
        k = len(prepared.class_names)
        if arr["label"].min() < 0 or arr["label"].max() >= k:
            raise UserError(
                f"the {split} split has labels outside 0..{k - 1}; check the label column"
            )
        # Texts with no token left after preprocessing (only punctuation, only stop words, ...).
        empty = int((arr["mask"].sum(1) == 0).sum())
        if empty == len(arr["label"]):
            raise UserError(
                f"every {split} text of {d.dataset} ({empty}) is empty after preprocessing (no word"
                " is left once punctuation, markup and, for fake news, stop words and non-letters"
                " are removed); check config.data.path and the text column(s)"
            )
        if empty:
            logging.warning(
                "%d of the %d %s texts are empty after preprocessing; they are kept (all padding),"
                " as Keras would keep them",
                empty,
                len(arr["label"]),
                split,
            )
        prepared.info.setdefault(split, {})
        if isinstance(prepared.info[split], dict):
            prepared.info[split]["empty_after_preprocessing"] = empty
            prepared.info[split]["examples_used"] = len(arr["label"])
            prepared.info[split]["mean_tokens"] = round(float(arr["mask"].sum(1).mean()), 1)
            prepared.info[split]["full_length"] = int(arr["mask"].all(axis=1).sum())
    for split, arr in prepared.arrays.items():
        present = np.unique(arr["label"])
        if len(present) > 1:
            continue
        only = prepared.class_names[int(present[0])]
        if split == "train":
            n = len(arr["label"])
            labels = np.concatenate([a["label"] for a in prepared.arrays.values()])
            fractions = " or ".join(
                f"config.data.{f}" for f in ("validation_fraction", "test_fraction") if f in d
            )
            fix = (
                # Both classes are in the data: the held-out splits took every example of the other.
                "the held-out splits took every example of the others; give the data more rows"
                + (f" (or a smaller {fractions})" if fractions else "")
                if len(np.unique(labels)) > 1
                else "check the label column and config.data.path"
            )
            raise UserError(
                f"every training example of {d.dataset} ({n}) has the label {only!r}; a classifier"
                f" needs examples of at least two classes: {fix}"
            )
        logging.warning("every %s example has the label %r: its accuracy says little", split, only)
    return prepared


# ---------------------------------------------------------------------------------------------------------
# Model and loss.
# ---------------------------------------------------------------------------------------------------------


def num_outputs(config: ml_collections.ConfigDict) -> int:
    """1 (one sigmoid logit) for binary labels, 6 for LIAR's six verdicts."""
    if config.data.dataset == "liar" and config.data.label == "six":
        return len(data_lib.LIAR_LABELS)
    return 1


def embedding_rows(config: ml_collections.ConfigDict) -> int:
    """Rows of the embedding table implied by the data config (ids of every kind of token)."""
    d = config.data
    if d.dataset == "fake_news":
        return int(d.num_buckets)
    rows = int(d.vocab_size)
    if d.dataset == "liar" and len(d.metadata):
        rows += int(d.meta_vocab_size)
    return rows


def build_model(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> TextClassifier:
    """The `TextClassifier` of `config.model` (embed_dim, hidden_sizes, bidirectional, pool, ...)."""
    m = config.model
    rates = config_utils.dropout_rates(
        m,
        ("embed_dropout", "dropout", "recurrent_dropout"),
        optional={"token_dropout": 0.0},  # absent in configs saved before it existed
    )
    return TextClassifier(
        embedding_rows(config),
        config_utils.positive_int(m, "embed_dim"),
        config_utils.layer_sizes(m),
        num_outputs=num_outputs(config),
        rngs=rngs,
        bidirectional=bool(m.bidirectional),
        pool=config_utils.choice(m, "pool", get_args(Pool), "a pooling"),
        dense_layers=config_utils.dense_layers(m, ACTIVATIONS),
        # Runs saved before model.impl existed build with "auto".
        impl=config_utils.lstm_impl(m) if "impl" in m else "auto",
        **rates,
    )


def make_loss_fn(config: ml_collections.ConfigDict) -> LossFn:
    """The engine's loss: sigmoid BCE (binary) or softmax CE (multi-class), weighted by ``batch["weight"]``.

    Batches hold ``ids [B, T]``, ``mask [B, T]``, ``label [B]`` and ``weight [B]``; the mask is passed to the
    LSTM only when ``config.data.mask`` is True (the fake-news tutorial ran the LSTM over its padding).
    """
    binary = num_outputs(config) == 1
    use_mask = bool(config.data.mask)

    def loss_fn(model, batch, *, key, train, carry):
        mask = batch["mask"] if use_mask else None
        logits = model(batch["ids"], mask=mask, deterministic=not train, key=key)
        if binary:
            sums = losses.binary_metric_sums(logits, batch["label"], batch["weight"])
        else:
            sums = losses.softmax_metric_sums(logits, batch["label"], batch["weight"])
        return sums["loss"] / jnp.maximum(sums["count"], 1e-9), (sums, None)

    return loss_fn


@functools.lru_cache(maxsize=8)
def _logits_fn(graphdef: nnx.GraphDef, use_mask: bool, devices: int):
    """The jitted `(state, {"ids": [B, T], "mask": [B, T]}) -> float32 logits [B] or [B, classes]` of one
    model structure, data-parallel over this process's `devices` when there are several (B a multiple).

    Cached on the graph definition, so every `predict_logits` call for models of the same structure (the
    final metrics, the validation and test reports, the members of an ensemble) reuses the executables
    compiled per batch shape instead of tracing and compiling them again.
    """

    def logits(state, batch):
        m = nnx.merge(graphdef, state)
        mask = batch["mask"] if use_mask else None
        return m(batch["ids"], mask=mask, deterministic=True).astype(jnp.float32)

    if devices > 1:
        logits = data_parallel_map(logits, _local_mesh(devices))
    return jax.jit(logits)


def _local_mesh(devices: int) -> Mesh:
    return Mesh(np.asarray(jax.local_devices()[:devices]), ("data",))


@jax.jit
def _probabilities(logits: jax.Array) -> jax.Array:
    if logits.ndim == 1:
        p = jax.nn.sigmoid(logits)
        return jnp.stack([1.0 - p, p], axis=-1)
    return jax.nn.softmax(logits, axis=-1)


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Class probabilities `[n, classes]` from `predict_logits` output (binary: `[n, 2]` = (1 - p, p))."""
    if len(logits) == 0:
        return np.zeros((0, 2 if logits.ndim == 1 else logits.shape[-1]), np.float32)
    return np.asarray(_probabilities(jnp.asarray(logits)))


def predict_logits(
    model: TextClassifier,
    ids: np.ndarray,
    mask: np.ndarray | None,
    batch_size: int = 256,
    quantum: int = 0,
) -> np.ndarray:
    """Float32 logits in evaluation mode: `[n]` for a binary classifier, else `[n, classes]`.

    Batches are padded to `batch_size` so one compiled function serves every call; with `quantum` > 0
    (post-padded, masked inputs) examples are sorted by length and each batch trimmed to a multiple of
    `quantum` columns, which gives the same logits with less work.
    """
    graphdef, state = nnx.split(model)
    use_mask = mask is not None
    devices = jax.local_device_count()
    fn = _logits_fn(graphdef, use_mask, devices)
    if devices > 1:  # a restored model lives on one device; the sharded call needs all of them
        state = jax.device_put(state, NamedSharding(_local_mesh(devices), P()))
    n = len(ids)
    if n == 0:
        shape = (0,) if model.num_outputs == 1 else (0, model.num_outputs)
        return np.zeros(shape, np.float32)
    quantum = quantum if use_mask else 0
    if mask is None:
        mask = np.ones_like(ids, dtype=bool)
    order = np.argsort(mask.sum(axis=1), kind="stable") if quantum else np.arange(n)
    arrays = {"ids": np.asarray(ids)[order], "mask": np.asarray(mask)[order]}
    batch_size = -(-min(batch_size, n) // devices) * devices  # equal slices for every device
    out = np.concatenate(
        [
            np.asarray(fn(state, {"ids": b["ids"], "mask": b["mask"]}))
            for b in _eval_batches(arrays, batch_size, quantum)
        ]
    )[:n]
    result = np.empty_like(out)
    result[order] = out
    return result


def predict_proba(
    model: TextClassifier,
    ids: np.ndarray,
    mask: np.ndarray | None,
    batch_size: int = 256,
    quantum: int = 0,
) -> np.ndarray:
    """Class probabilities `[n, classes]` (binary: `[n, 2]` = (1 - p, p)) in evaluation mode (see
    `predict_logits` for the batching)."""
    return probabilities(predict_logits(model, ids, mask, batch_size, quantum))


def predicted_classes(logits: np.ndarray) -> np.ndarray:
    """The predicted class `[n]` of `predict_logits` output, counted as the engine's accuracy counts it:
    logit > 0 for a binary classifier (`losses.binary_metric_sums`; p > 0.5), else the argmax of the
    logits (`losses.softmax_metric_sums`). The float32 probabilities can tie where the logits do not (a
    logit of 1e-8 is p = 0.5 once rounded), so their argmax would score other predictions."""
    z = np.asarray(logits)
    return (z > 0).astype(np.int64) if z.ndim == 1 else z.argmax(-1)


def metrics_from_logits(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The engine's evaluation averages (`loss`, `accuracy`, `count`) from a whole split's logits `[n]`
    (binary) or `[n, classes]` and integer `labels [n]`."""
    fn = losses.binary_metric_sums if logits.ndim == 1 else losses.softmax_metric_sums
    return metrics.compute(fn(jnp.asarray(logits), jnp.asarray(labels)))


def _split_logits(
    model: TextClassifier, arr: Mapping[str, np.ndarray], config: ml_collections.ConfigDict
) -> np.ndarray:
    bs = int(config.train.eval_batch_size) or int(config.train.batch_size)
    mask = arr["mask"] if config.data.mask else None
    return predict_logits(model, arr["ids"], mask, bs, quantum=bucket_quantum(config))


def save_predictions(
    workdir: str, step: int, logits: Mapping[str, np.ndarray], prepared: PreparedData
) -> str:
    """Writes `PREDICTIONS_FILE`: the class probabilities of the checkpoint at `step` and the labels, per
    split (``<split>_probabilities [n, classes]``, ``<split>_labels [n]``), atomically. `ensemble` reads
    them instead of predicting again."""
    arrays: dict[str, np.ndarray] = {"step": np.asarray(step, np.int64)}
    for split, z in logits.items():
        arrays[f"{split}_probabilities"] = probabilities(z)
        arrays[f"{split}_labels"] = np.asarray(prepared.arrays[split]["label"])
    path = os.path.join(workdir, PREDICTIONS_FILE)
    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def load_predictions(
    workdir: str, step: int, splits: Sequence[str]
) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """`{split: (probabilities [n, classes], labels [n])}` from `workdir`'s `PREDICTIONS_FILE` if it was written for the
    checkpoint at `step` and holds every split; else None (absent, older checkpoint, unreadable)."""
    path = os.path.join(workdir, PREDICTIONS_FILE)
    try:
        with np.load(path) as f:
            if int(f["step"]) != int(step):
                return None
            return {s: (f[f"{s}_probabilities"], f[f"{s}_labels"]) for s in splits}
    except (OSError, KeyError, ValueError):
        return None


def evaluate_reports(
    model: TextClassifier,
    prepared: PreparedData,
    config: ml_collections.ConfigDict,
    workdir: str,
    splits: Sequence[str] = ("validation", "test"),
    logits: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Classification report, confusion matrix and heatmap PNG per split (files in `workdir`).

    `logits` may hold the model's `predict_logits` output (`[n]` binary or `[n, classes]`) for some splits already (they are not predicted
    again).
    """
    out: dict[str, Any] = {}
    for split in splits:
        arr = prepared.arrays[split]
        z = logits[split] if logits and split in logits else _split_logits(model, arr, config)
        pred = predicted_classes(z)
        rep = reports.classification_report(arr["label"], pred, prepared.class_names)
        files = reports.write_report(
            rep,
            workdir,
            split,
            title=f"{config.data.dataset} {split}: accuracy {rep['accuracy']:.4f}",
        )
        out[split] = {**rep, "files": files}
        logging.info("%s classification report:\n%s", split, reports.format_report(rep))
    return out


def _run_baseline(prepared: PreparedData, config: ml_collections.ConfigDict) -> dict[str, Any]:
    splits = {s: (prepared.texts[s], prepared.arrays[s]["label"]) for s in prepared.texts}
    pre = text.standardize_imdb if config.data.dataset == "imdb" else None
    result = cached_tfidf_logreg(
        splits, prepared.class_names, preprocessor=pre, seed=int(config.seed)
    )
    logging.info(
        "TF-IDF + logistic regression: %s%s",
        ", ".join(f"{s} {v['accuracy']:.4f}" for s, v in result["splits"].items()),
        f" (from {result['cached']})" if "cached" in result else "",
    )
    return result


# ---------------------------------------------------------------------------------------------------------
# The engine task and the modes.
# ---------------------------------------------------------------------------------------------------------


def _trim(batch: dict[str, np.ndarray], quantum: int) -> dict[str, np.ndarray]:
    """Cuts trailing all-padding columns of a post-padded, masked batch (to a multiple of `quantum`).

    Exact for a masked LSTM: padded steps change no state, so the shorter batch gives the same results.
    """
    maxlen = batch["ids"].shape[1]
    longest = int(batch["mask"].sum(axis=1).max(initial=1))
    keep = min(maxlen, max(quantum, -(-longest // quantum) * quantum))
    return {k: (v[:, :keep] if k in ("ids", "mask") else v) for k, v in batch.items()}


def bucketed_batches(
    arrays: Mapping[str, np.ndarray],
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    start: int,
    quantum: int,
    chunk_batches: int = 50,
    drop_remainder: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
    """Training batches of similar length, trimmed to their longest review (rounded up to `quantum`).

    `arrays`: ``ids [n, maxlen]``, ``mask [n, maxlen]``, ``label [n]`` (and any other `[n, ...]`); each
    batch holds them as `[batch_size, T]` with `T <= maxlen` a multiple of `quantum` (or `maxlen`), plus
    ``weight [batch_size]``.

    The epoch's permutation (`epoch_permutation(seed, epoch)`, its remainder dropped, or with
    `drop_remainder=False` kept as a short batch padded with weight-0 rows) is cut into chunks of
    `chunk_batches` batches; each chunk is sorted by length and cut into batches, and the batch order is
    shuffled with (seed, epoch), so an epoch is a function of (seed, epoch) only and resumes exactly at
    `start`. Shapes vary by multiples of `quantum` (a few compilations) instead of always `maxlen`.
    """
    n = len(arrays["label"])
    steps = steps_per_epoch(n, batch_size, drop_remainder)
    order = epoch_permutation(seed, epoch, n)[: steps * batch_size]
    lengths = arrays["mask"].sum(axis=1)
    batches = []
    for lo in range(0, len(order), batch_size * chunk_batches):
        part = order[lo : lo + batch_size * chunk_batches]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    shuffle = np.random.default_rng([int(seed), int(epoch), 1]).permutation(len(batches))
    for b in shuffle[start:]:
        idx = batches[b]
        yield pad_batch(
            _trim({k: np.asarray(v)[idx] for k, v in arrays.items()}, quantum), batch_size
        )


def _eval_batches(arrays: Mapping[str, np.ndarray], batch_size: int, quantum: int):
    """`padded_batches`, or with `quantum` > 0 sorted by length and trimmed (metric sums do not
    depend on the order)."""
    if quantum <= 0:
        yield from padded_batches(arrays, batch_size)
        return
    order = np.argsort(arrays["mask"].sum(axis=1), kind="stable")
    for b in padded_batches({k: np.asarray(v)[order] for k, v in arrays.items()}, batch_size):
        yield _trim(b, quantum)


def bucket_quantum(config: ml_collections.ConfigDict) -> int:
    """`config.data.bucket_quantum` (0 = fixed `maxlen` shapes); needs post-padding and the mask."""
    return _bucket_quantum(config.data)


def _bucket_quantum(d: ml_collections.ConfigDict) -> int:
    q = int(d.get("bucket_quantum", 0))
    if q < 0:
        raise UserError(
            f"config.data.bucket_quantum={q} must be >= 0 (0 = fixed maxlen shapes); pass e.g."
            " --config.data.bucket_quantum=32"
        )
    if q > 0 and not (d.mask and d.padding == "post"):
        raise UserError(
            f"config.data.bucket_quantum={q} trims padding, which needs config.data.mask=True and"
            " config.data.padding='post'; set --config.data.bucket_quantum=0"
        )
    return q


def make_task(
    config: ml_collections.ConfigDict, workdir: str, prepared: PreparedData | None = None
) -> tuple[Task, PreparedData]:
    """The engine `Task` for `config` (data loaded and encoded here unless `prepared` is given; a run
    resumed in `workdir` encodes with its saved stopwords, `saved_stopwords`)."""
    prepared = prepared or prepare_data(config, stopwords=saved_stopwords(workdir))
    train_arr = prepared.arrays["train"]
    batch_size = int(config.train.batch_size)
    eval_bs = int(config.train.eval_batch_size) or batch_size
    seed = int(config.seed)
    quantum = bucket_quantum(config)
    drop = config_utils.drop_remainder(config)

    def train_batches(epoch: int, start: int):
        if quantum:
            return bucketed_batches(
                train_arr,
                batch_size,
                seed=seed,
                epoch=epoch,
                start=start,
                quantum=quantum,
                drop_remainder=drop,
            )
        return shuffled_batches(
            train_arr, batch_size, seed=seed, epoch=epoch, start=start, drop_remainder=drop
        )

    def eval_split(split: str):
        return lambda: _eval_batches(prepared.arrays[split], eval_bs, quantum)

    # The final model's logits per split: `final_metrics` computes them, the reports and the saved
    # predictions reuse them, so the test split is predicted once at the end instead of twice.
    final_logits: dict[str, np.ndarray] = {}

    def final_metrics(model, splits):
        final_logits.clear()
        out = {}
        for split in splits:
            arr = prepared.arrays[split]
            final_logits[split] = _split_logits(model, arr, config)
            out[split] = metrics_from_logits(final_logits[split], arr["label"])
        return out

    def extra_results(model, results):
        logits = dict(final_logits)
        final_logits.clear()
        for split in ("validation", "test"):
            if split not in logits:
                logits[split] = _split_logits(model, prepared.arrays[split], config)
        extra: dict[str, Any] = {
            "reports": evaluate_reports(model, prepared, config, workdir, logits=logits)
        }
        if jax.process_index() == 0:
            step = (
                results["best_step"]
                if results["metrics"]["evaluated_weights"] == "best"
                else results["steps"]
            )
            save_predictions(workdir, int(step), logits, prepared)
        if bool(config.report.baseline):
            extra["baseline"] = _run_baseline(prepared, config)
        extra["class_names"] = list(prepared.class_names)
        return extra

    task = Task(
        build_model=build_model,
        loss_fn=make_loss_fn(config),
        train_batches=train_batches,
        steps_per_epoch=steps_per_epoch(len(train_arr["label"]), batch_size, drop),
        eval_batches={"validation": eval_split("validation"), "test": eval_split("test")},
        periodic_eval=("validation",),
        artefacts={PREPROCESS_FILE: prepared.encoder.to_dict()},
        data_info=prepared.info,
        data_fingerprint=data_lib.fingerprint(prepared.arrays),
        extra_results=extra_results,
        # One process sees all the data here; with several, the engine's sharded evaluation is needed.
        final_metrics=final_metrics if jax.process_count() == 1 else None,
    )
    return task, prepared


def saved_stopwords(workdir: str) -> tuple[list[str], str] | None:
    """`(words, source)` of the stopword list in ``<workdir>/preprocess.json`` when `workdir` holds a
    fake-news run with checkpoints (to resume, evaluate, ensemble or run the baseline beside), else None.

    The list is found in the environment at the start (an NLTK data folder, ``$LSTM_JAX_DATA``, else the
    built-in copy, `text.load_stopwords`), so a run resumed elsewhere (another shell without NLTK_DATA)
    would encode its unchanged CSV otherwise and be refused as trained on other data; it resumes with
    the list it trained with instead, as ``--mode=eval`` and ``--mode=predict`` use it. A file that
    cannot be read gives None: the environment's list, and the data check then says what differs."""
    path = os.path.join(workdir, PREPROCESS_FILE)
    if not has_checkpoints(workdir) or not os.path.exists(path):
        return None
    with contextlib.suppress(UserError, OSError, ValueError, TypeError, AttributeError):
        saved = read_json(path)
        words, source = saved.get("stopwords"), saved.get("stopwords_source")
        if (
            saved.get("dataset") == "fake_news"
            and isinstance(words, list)
            and all(isinstance(w, str) for w in words)
        ):
            logging.info("using the stopwords saved in %s (%s)", path, source)
            return list(words), str(source or "")
    return None


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Mode ``train``: trains (or resumes) in `workdir`; returns the results (also results.json)."""
    check_run(config, workdir)
    if os.path.exists(os.path.join(workdir, ENSEMBLE_FILE)):
        # The mirror of ensemble's refusal of a training run's workdir: the run's reports would
        # overwrite the ensemble's (ensemble.json would then name files holding the run's numbers).
        raise UserError(
            f"--workdir={workdir} holds an ensemble ({ENSEMBLE_FILE}), whose reports training would"
            " overwrite; pass a new directory for the training run"
        )
    task, _ = make_task(config, workdir)
    results = train_and_evaluate(config, workdir, task)
    _print_summary(results)
    return results


def _print_summary(results: Mapping[str, Any]) -> None:
    final = results.get("metrics", {}).get("final", {})
    # A saved run's results.json holds null for a number that was not finite.
    parts = [
        f"{s} accuracy {float('nan') if m.get('accuracy') is None else m['accuracy']:.4f}"
        for s, m in final.items()
    ]
    base = results.get("baseline")
    if base:
        parts.append(f"TF-IDF+LR test accuracy {base['splits']['test']['accuracy']:.4f}")
    print("; ".join(parts))


def _load_encoder(workdir: str) -> TextEncoder:
    return TextEncoder.from_dict(
        load_artefact(workdir, PREPROCESS_FILE), os.path.join(workdir, PREPROCESS_FILE)
    )


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Mode ``eval``: reloads the data and the best checkpoint, writes reports and ``eval.json``.

    The data are re-encoded with the saved preprocessing (not refitted), so the numbers are those of the
    trained model. results.json is not modified.
    """
    encoder = _load_encoder(workdir)
    checkpoint_step(config, workdir)  # no checkpoint: say so before loading the data
    _check_held_out_split(config, workdir)
    prepared = _reencode(prepare_data(config, stopwords=saved_stopwords(workdir)), encoder, config)
    model, step = restore_model(config, workdir, build_model)
    out = {"step": step, "reports": evaluate_reports(model, prepared, config, workdir)}
    write_json(os.path.join(workdir, "eval.json"), out)
    for split, rep in out["reports"].items():
        print(f"== {split} (checkpoint step {step}) ==")
        print(reports.format_report(rep), end="")
    return out


# The data fields that choose which examples a run held out of training (with data.path, which may name
# other data to evaluate on).
_HELD_OUT_FIELDS = ("split_seed", "validation_fraction", "test_fraction")


def _check_held_out_split(config: ml_collections.ConfigDict, workdir: str) -> None:
    """`UserError` when `config` (a ``--config`` for eval) splits the data otherwise than the run saved
    in `workdir` did: its validation (and a split file's test) examples would include ones the model
    trained on, and the report would score them as held out."""
    if not os.path.exists(os.path.join(workdir, config_utils.CONFIG_FILE)):
        return
    saved = config_utils.load_config(workdir).get("data", {})
    given = config.data
    differ = [
        f"data.{k}: saved {saved.get(k)!r}, given {given.get(k)!r}"
        for k in _HELD_OUT_FIELDS
        if (k in saved or k in given) and saved.get(k) != given.get(k)
    ]
    if differ:
        raise UserError(
            f"this config splits the data otherwise than the run saved in {workdir} ("
            + "; ".join(differ)
            + "): its held-out examples would include ones the model trained on; leave out --config"
            " to use the run's saved config.json, or pass the split it was trained with"
        )


def _reencode(
    prepared: PreparedData, encoder: TextEncoder, config: ml_collections.ConfigDict
) -> PreparedData:
    """Re-encodes the evaluation splits with the saved encoder (vocabularies fitted at training time)."""
    if encoder.dataset != config.data.dataset:
        raise UserError(
            f"the workdir was trained on {encoder.dataset} but config.data.dataset is"
            f" {config.data.dataset}; use the saved config (omit --config)"
        )
    if encoder.dataset == "liar":
        raw, _ = data_lib.load_liar(config.data.path or None, metadata=encoder.meta_fields)
        key = "label" if config.data.label == "six" else "binary_label"
        for split, name in (("validation", "valid"), ("test", "test")):
            cols = raw[name]
            meta = [
                _meta_tokens({f: cols[f][i] for f in encoder.meta_fields}, encoder.meta_fields)
                for i in range(len(cols["statement"]))
            ]
            prepared.arrays[split] = _encode_split(encoder, cols["statement"], cols[key], meta)
    else:
        for split in ("validation", "test"):
            prepared.arrays[split] = _encode_split(
                encoder, prepared.texts[split], prepared.arrays[split]["label"]
            )
    prepared.encoder = encoder
    return prepared


def _where(number: int | str) -> str:
    """How an error names a predict input: ``input 3`` (the third argument) or a given label such as
    ``stdin line 5``."""
    return number if isinstance(number, str) else f"input {number}"


def parse_meta(pairs: Sequence[str]) -> dict[str, str]:
    """``field=value`` strings (the ``--meta`` flag) as a dict; a string without ``=`` is a UserError."""
    out = {}
    for pair in pairs:
        field, sep, value = pair.partition("=")
        if not sep or not field.strip():
            raise UserError(
                f"--meta={pair}: expected field=value, e.g. --meta=speaker=barack-obama"
            )
        if field.strip() in out:
            raise UserError(
                f"--meta={field.strip()}=... is given twice; pass each field once (several subjects"
                " as one comma-separated value: --meta=subject=economy,jobs)"
            )
        out[field.strip()] = value
    return out


def _input_fields(line: str, number: int | str) -> dict[str, str]:
    """One predict input as fields: plain text is ``{"text": line}``; a line that is a JSON object gives
    its fields (all strings), e.g. ``{"statement": "...", "speaker": "..."}`` for a LIAR model or
    ``{"title": ..., "author": ..., "text": ...}`` for a fake-news one (see `_compose_input`)."""
    stripped = line.strip()
    # An object ({...}), or the start of one cut short ({"statement": ... without its closing brace).
    if not (stripped.startswith("{") and stripped.endswith("}")) and not re.match(
        r'\{\s*"', stripped
    ):
        return {"text": line}
    try:
        obj = json.loads(stripped)
    except json.JSONDecodeError as e:
        raise UserError(
            f"{_where(number)}: looks like a JSON object but does not parse ({e.msg}, column"
            f" {e.colno}); fix the JSON, or give the text without the surrounding braces"
        ) from None
    bad = [k for k, v in obj.items() if not isinstance(v, str)]
    if bad:
        raise UserError(f"{_where(number)}: field(s) {bad} must be strings")
    return obj


def _compose_input(
    encoder: TextEncoder, fields: Mapping[str, str], number: int | str
) -> tuple[str, dict[str, str]]:
    """`(text, metadata)` of one predict input, composed as training composed its rows: IMDB a review
    (``text``); fake news ``title + " " + author + " " + text`` (any of them); LIAR the ``statement``
    (or ``text``), its other fields metadata (checked against the model's by `_predict_meta`)."""
    fields = dict(fields)
    if encoder.dataset == "liar":
        statement = fields.pop("statement", None)
        statement = fields.pop("text", None) if statement is None else statement
        if statement is None:
            raise UserError(f'{_where(number)}: a JSON input needs the statement under "statement"')
        if encoder.meta_vocab is not None:
            _check_meta_fields(encoder, fields, _where(number))
        return statement, fields
    allowed = ("title", "author", "text") if encoder.dataset == "fake_news" else ("text",)
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise UserError(
            f"{_where(number)}: field(s) {unknown} are not inputs of this {encoder.dataset} model; its"
            f" JSON inputs take {', '.join(allowed)}"
        )
    if encoder.dataset == "fake_news" and set(fields) != {"text"}:
        author = data_lib.normalise_author(fields.get("author", ""))
        return text.fake_news_text(fields.get("title"), author, fields.get("text")), {}
    return fields.get("text", ""), {}


def _predict_meta(
    encoder: TextEncoder, meta: Sequence[Mapping[str, str]]
) -> list[list[str]] | None:
    """Per-text metadata tokens for an encoder trained with metadata (LIAR); None for the others."""
    if encoder.meta_vocab is None:
        if any(meta):
            raise UserError(
                "metadata was given (--meta), but this workdir's model was trained without any (only"
                " LIAR configs use metadata); leave --meta out"
            )
        return None
    tokens = []
    for i, m in enumerate(meta, 1):
        _check_meta_fields(encoder, m, f"text {i}")
        tokens.append(_meta_tokens(m, encoder.meta_fields))
    return tokens


def _check_meta_fields(encoder: TextEncoder, fields: Iterable[str], where: str) -> None:
    """`UserError` naming `where` (``--meta``, ``stdin line 3``, ``text 2``) when `fields` holds a
    metadata field the model (trained with metadata) does not use."""
    unknown = sorted(set(fields) - set(encoder.meta_fields))
    if unknown:
        raise UserError(
            f"{where}: unknown metadata field(s) {unknown}; this model uses"
            f" {', '.join(encoder.meta_fields)}"
        )


def predict_texts(
    workdir: str,
    texts: Sequence[str],
    config: ml_collections.ConfigDict | None = None,
    meta: Sequence[Mapping[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """Label and probability of each text with the model and preprocessing saved in `workdir`.

    `meta`: per text, metadata ``{field: value}`` for models trained with metadata (LIAR: subject,
    speaker, ...; preprocessed as in training, unknown values count as out-of-vocabulary); None or
    empty dicts: none (such a model then sees the statement alone, as it never did in training).

    Returns one ``{"text", "label", "probability", "probabilities": {class: p}, "tokens"}`` per text;
    ``probability`` is that of the predicted label, ``tokens`` the number of known tokens kept
    (metadata tokens included).
    """
    return _predict_with(_load_encoder(workdir), workdir, texts, config, meta)


def _predict_with(
    encoder: TextEncoder,
    workdir: str,
    texts: Sequence[str],
    config=None,
    meta: Sequence[Mapping[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """`predict_texts` with the workdir's encoder already loaded."""
    for i, t in enumerate(texts, 1):
        if not t.strip():
            raise UserError(f"text {i} is empty; give a non-empty text to classify")
    if not texts:
        raise UserError("no texts to classify; pass them as arguments or one per line on stdin")
    meta = [{} for _ in texts] if meta is None else list(meta)
    if len(meta) != len(texts):
        raise ValueError(f"predict_texts: {len(texts)} texts but {len(meta)} metadata entries")
    config = config if config is not None else config_utils.load_config(workdir)
    ids, mask = encoder(list(texts), _predict_meta(encoder, meta))
    model, _ = restore_model(config, workdir, build_model)
    logits = predict_logits(
        model, ids, mask if config.data.mask else None, 64, quantum=bucket_quantum(config)
    )
    probs = probabilities(logits)
    out = []
    # The label as the engine's accuracy and the reports count it (`predicted_classes`: logit > 0 for a
    # binary classifier), not the argmax of the rounded probabilities (a logit of 1e-8 is p = 0.5).
    for t, p, k, m in zip(texts, probs, predicted_classes(logits), mask, strict=True):
        k = int(k)
        out.append(
            {
                "text": t,
                "label": encoder.class_names[k],
                "probability": float(p[k]),
                "probabilities": {c: float(v) for c, v in zip(encoder.class_names, p, strict=True)},
                "tokens": int(m.sum()),
            }
        )
    return out


def predict(
    config: ml_collections.ConfigDict, workdir: str, meta: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Mode ``predict``: texts from the positional arguments, else one per line on stdin.

    An input may be a JSON object (one line): ``{"statement": "...", "speaker": "...", ...}`` gives a
    LIAR model each statement's metadata, ``{"title": ..., "author": ..., "text": ...}`` a fake-news
    model an article as its CSV row would (see `_compose_input`). `meta` (the ``--meta=field=value``
    flags) applies to every text (a JSON field overrides it). A LIAR model given no metadata says so
    on stderr.
    Prints ``<label>\\t<probability>\\t<text>`` per text (probability of the printed label).
    """
    from lstm_jax import cli

    args = cli.positional_args()
    for arg in args:
        # `--mode=predict reviews.txt` classified the file's name, as a one-word text.
        if arg.strip() == arg and " " not in arg and os.path.isfile(arg):
            raise UserError(
                f"{arg!r} is the name of a file, and an argument is a text to classify (its name);"
                f" to classify the file's lines, pass it on stdin: --mode=predict < {arg}"
            )
    common = parse_meta(meta)
    encoder = _load_encoder(workdir)
    if encoder.meta_vocab is not None:
        _check_meta_fields(encoder, common, "--meta")
    numbered = (
        list(enumerate(args, 1))
        if args
        else [(f"stdin line {n}", t) for n, t in data_lib.read_stdin_lines("texts")]
    )
    pairs = [_compose_input(encoder, _input_fields(line, n), n) for n, line in numbered]
    texts = [t for t, _ in pairs]
    metas = [{**common, **m} for _, m in pairs]
    meta_tokens = _predict_meta(encoder, metas)  # checks every input's fields before any output
    unseen = sorted(
        {t for row in meta_tokens or [] for t in row if t not in encoder.meta_vocab.token_to_id}
    )
    if unseen:
        print(
            f"note: metadata the model's vocabulary lacks, read as unknown: {', '.join(unseen[:5])}"
            f"{' ...' if len(unseen) > 5 else ''} (values as in the training files, e.g."
            " speaker=barack-obama)",
            file=sys.stderr,
        )
    if encoder.meta_vocab is not None and not all(metas):
        print(
            f"note: this model was trained with metadata ({', '.join(encoder.meta_fields)}) and"
            f" {sum(not m for m in metas)} of {len(metas)} text(s) have none; give it with"
            ' --meta=<field>=<value> or JSON inputs {"statement": ..., "<field>": ...}',
            file=sys.stderr,
        )
    results = _predict_with(encoder, workdir, texts, config, metas)
    empty = [str(i) for i, r in enumerate(results, 1) if r["tokens"] == 0]
    if empty:
        print(
            f"note: text(s) {', '.join(empty[:10])} have no token the model reads (no word after"
            " preprocessing): their label is the model's guess for an empty input",
            file=sys.stderr,
        )
    for r in results:
        # One output line per text: line breaks and tabs inside it (a review pasted with its paragraphs,
        # a "\r" or U+0085 on a stdin line) are shown as single spaces, as every whitespace run.
        shown = " ".join(r["text"].split())
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        print(f"{r['label']}\t{r['probability']:.4f}\t{shown}")
    return results


def baseline(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Mode ``baseline``: TF-IDF + logistic regression on the same splits, into ``baseline.json``."""
    # In a trained run's workdir, baseline.json stands beside its results: the same held-out examples.
    _check_held_out_split(config, workdir)
    prepared = prepare_data(config, stopwords=saved_stopwords(workdir))
    result = _run_baseline(prepared, config)
    os.makedirs(workdir, exist_ok=True)
    write_json(os.path.join(workdir, "baseline.json"), result)
    for s, v in result["splits"].items():
        print(f"{s}: accuracy {v['accuracy']:.4f}, macro F1 {v['macro_f1']:.4f}")
    return result


# Data settings that must agree between ensemble members: they fix the validation and test examples.
_SPLIT_FIELDS = ("dataset", "path", "label", "split_seed", "validation_fraction", "test_fraction")


def _split_signature(
    config: ml_collections.ConfigDict, workdir: str | None = None
) -> dict[str, Any]:
    """The data settings that fix a run's validation and test examples. The path is the data the run
    read: its results.json's ``data.source`` when it finished (an empty ``data.path`` resolved under
    $LSTM_JAX_DATA then), else ``data.path``; resolved to a real path, so that runs of the same files
    agree whether the path was given or found, and runs of other copies do not."""
    d = config.data
    sig = {k: d[k] for k in _SPLIT_FIELDS if k in d}
    source = None
    if workdir is not None:
        with contextlib.suppress(UserError, OSError, AttributeError, TypeError, ValueError):
            results = read_json(os.path.join(workdir, RESULTS_FILE))
            source = results.get("data", {}).get("source")
            # A relative $LSTM_JAX_DATA gave a source relative to the directory the run was started in.
            cwd = results.get("provenance", {}).get("cwd")
            if isinstance(source, str) and isinstance(cwd, str) and not source.startswith("tfds:"):
                source = os.path.join(cwd, source)
    path = source if isinstance(source, str) and source else sig.get("path")
    if path and not str(path).startswith("tfds:"):
        path = os.path.realpath(os.path.expanduser(str(path)))
    if "path" in sig or path:
        sig["path"] = path
    return sig


def ensemble(
    config: ml_collections.ConfigDict | None, workdir: str, members: Sequence[str] | None = None
) -> dict[str, Any]:
    """Mode ``ensemble``: averages the class probabilities of trained runs on validation and test.

    The members are `members`, else the workdirs given as positional arguments (at least two), typically the same config
    trained with different ``--config.seed``. They must share the data split (dataset, path, label set,
    split seed and fractions); each encodes the texts with its own saved preprocessing and best
    checkpoint, or, when the member saved the probabilities of that checkpoint at the end of training
    (`PREDICTIONS_FILE`) with the same labels, those are used without loading the model. Writes a
    classification report and confusion heatmap per split and ``ensemble.json`` (each member's accuracy
    and the ensemble's reports) into `workdir`, which holds no model of its own.
    `config` is unused (the members' saved configs are read).
    """
    from lstm_jax import cli

    del config
    members = list(members) if members is not None else cli.positional_args()
    if len(members) < 2:
        raise UserError(
            "--mode=ensemble needs at least two trained workdirs as arguments, e.g."
            " --mode=ensemble --workdir=runs/ens runs/seed0 runs/seed1"
        )
    if any(os.path.abspath(m) == os.path.abspath(workdir) for m in members):
        raise UserError(
            "--workdir must be a new directory for the ensemble, not one of its members"
        )
    if os.path.exists(os.path.join(workdir, config_utils.CONFIG_FILE)):
        raise UserError(
            f"--workdir={workdir} holds a training run, whose reports the ensemble's would overwrite;"
            " pass a new directory (or an earlier ensemble's) for the ensemble"
        )
    seen: set[str] = set()
    for m in members:
        if os.path.abspath(m) in seen:
            raise UserError(f"{m} is given twice; pass each trained workdir once")
        seen.add(os.path.abspath(m))
    configs = []
    for m in members:
        if not os.path.exists(os.path.join(m, config_utils.CONFIG_FILE)):
            raise UserError(f"{m} has no config.json; pass the workdirs of finished training runs")
        c = config_utils.load_config(m)
        if c.get("data", {}).get("dataset") not in DATASETS:
            raise UserError(
                f"{m} holds a run of another experiment (its config.json has no config.data.dataset"
                f" among {', '.join(DATASETS)}); an ensemble takes runs of imdb_sentiment or fake_news"
            )
        configs.append(c)
    first = _split_signature(configs[0], members[0])
    for m, c in zip(members[1:], configs[1:], strict=True):
        if _split_signature(c, m) != first:
            raise UserError(
                f"{m} was trained on a different data split ({_split_signature(c, m)}) than"
                f" {members[0]} ({first}); ensemble runs that differ only in model settings or seed"
            )
    prepared = prepare_data(configs[0], stopwords=saved_stopwords(members[0]))
    splits = ("validation", "test")
    labels = {s: prepared.arrays[s]["label"].copy() for s in splits}
    probs: dict[str, list[np.ndarray]] = {s: [] for s in splits}
    member_acc = []
    for m, c in zip(members, configs, strict=True):
        step = checkpoint_step(c, m)  # the checkpoint `restore_model` loads
        saved = load_predictions(m, step, splits)
        if saved is None:  # predict with the member's own preprocessing and checkpoint
            _reencode(prepared, _load_encoder(m), c)
            model, step = restore_model(c, m, build_model)
        acc = {"workdir": m, "step": step, "seed": int(c.seed)}
        acc["probabilities"] = "saved" if saved is not None else "predicted"
        for s in splits:
            if saved is not None:
                p, member_labels = saved[s]
            else:
                p = probabilities(_split_logits(model, prepared.arrays[s], c))
                member_labels = prepared.arrays[s]["label"]
            if not np.array_equal(member_labels, labels[s]):
                raise UserError(
                    f"{m}: the {s} labels differ from the first member's; check its data"
                )
            probs[s].append(p)
            acc[s] = float((p.argmax(-1) == labels[s]).mean())
        member_acc.append(acc)
        logging.info("member %s: %s", m, acc)
    out: dict[str, Any] = {"members": member_acc, "reports": {}}
    for s in splits:
        pred = np.mean(probs[s], axis=0).argmax(-1)
        rep = reports.classification_report(labels[s], pred, prepared.class_names)
        title = f"{configs[0].data.dataset} {s}, ensemble of {len(members)}: accuracy {rep['accuracy']:.4f}"
        out["reports"][s] = {**rep, "files": reports.write_report(rep, workdir, s, title=title)}
        print(f"== {s}: ensemble of {len(members)} ==")
        print(reports.format_report(rep), end="")
    write_json(os.path.join(workdir, ENSEMBLE_FILE), out)
    for s in splits:
        each = ", ".join(f"{a[s]:.4f}" for a in member_acc)
        print(f"{s} accuracy: ensemble {out['reports'][s]['accuracy']:.4f}; members {each}")
    return out


ensemble.needs_config = False  # type: ignore[attr-defined]  # cli: run without --config
baseline.starts_run = True  # type: ignore[attr-defined]  # cli: a --config on a new workdir, as train
ensemble.takes_arguments = True  # type: ignore[attr-defined]  # cli: the members' workdirs
predict.takes_arguments = True  # type: ignore[attr-defined]  # cli: the texts
