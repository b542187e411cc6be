"""A TF-IDF + logistic-regression baseline (scikit-learn) on the same splits as the LSTM.

The point is a reference line next to the LSTM's numbers: if a bag of n-grams does as well, the recurrent
model has not learnt much beyond word presence. The baseline is fitted on the training split only, its
regularisation strength is chosen on the validation split, and the chosen model is scored on every split.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from lstm_jax.reports import classification_report

__all__ = ["tfidf_logreg"]


def tfidf_logreg(
    splits: Mapping[str, tuple[Sequence[str], Any]],
    class_names: Sequence[str],
    *,
    preprocessor: Callable[[str], str] | None = None,
    ngram_range: tuple[int, int] = (1, 2),
    max_features: int = 200_000,
    min_df: int = 2,
    c_grid: Sequence[float] = (0.25, 1.0, 4.0, 16.0),
    train_split: str = "train",
    select_split: str = "validation",
    seed: int = 0,
) -> dict[str, Any]:
    """Fits TF-IDF (word n-grams, sublinear tf) + logistic regression and reports every split.

    Args:
      splits: ``{split: (texts [n], labels [n] int)}``; must contain `train_split`.
      class_names: names of the label ids (2 for binary, 6 for LIAR).
      preprocessor: text -> text applied before tokenisation (e.g. the IMDB standardisation); default
        sklearn's lowercasing.
      ngram_range, max_features, min_df: `TfidfVectorizer` settings.
      c_grid: inverse regularisation strengths tried; the best on `select_split` (train accuracy when
        that split is absent) is kept.
      train_split, select_split: split names.
      seed: solver seed.

    Returns:
      ``{"method", "settings", "chosen_C", "selection": {C: accuracy}, "splits": {split: {"accuracy",
      "macro_f1", "report"}}, "fit_seconds"}``.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    t0 = time.time()
    texts, labels = splits[train_split]
    vec = TfidfVectorizer(
        preprocessor=preprocessor,
        ngram_range=tuple(ngram_range),
        max_features=max_features,
        min_df=min_df if len(texts) >= 50 else 1,
        sublinear_tf=True,
        token_pattern=r"(?u)\b\w+\b",
    )
    x_train = vec.fit_transform(list(texts))
    y_train = np.asarray(labels)
    mats = {s: (vec.transform(list(t)), np.asarray(y)) for s, (t, y) in splits.items()}
    sel = select_split if select_split in mats else train_split
    selection: dict[str, float] = {}
    best: tuple[float, float, Any] | None = None
    for c in c_grid:
        clf = LogisticRegression(C=float(c), max_iter=2000, random_state=seed)
        clf.fit(x_train, y_train)
        acc = float((clf.predict(mats[sel][0]) == mats[sel][1]).mean())
        selection[str(c)] = acc
        if best is None or acc > best[0]:
            best = (acc, float(c), clf)
    assert best is not None
    _, chosen, clf = best
    out_splits = {}
    for s, (x, y) in mats.items():
        pred = clf.predict(x)
        rep = classification_report(y, pred, class_names)
        out_splits[s] = {
            "accuracy": rep["accuracy"],
            "macro_f1": rep["macro avg"]["f1"],
            "report": rep,
        }
    return {
        "method": "tfidf+logistic_regression",
        "settings": {
            "ngram_range": list(ngram_range),
            "max_features": max_features,
            "min_df": min_df,
            "sublinear_tf": True,
            "vocabulary": len(vec.vocabulary_),
            "selected_on": sel,
        },
        "chosen_C": chosen,
        "selection": selection,
        "splits": out_splits,
        "fit_seconds": round(time.time() - t0, 2),
    }
