"""A TF-IDF + logistic-regression baseline (scikit-learn) on the same splits as the LSTM.

The point is a reference line next to the LSTM's numbers: if a bag of n-grams does as well, the recurrent
model has not learnt much beyond word presence. The baseline is fitted on the training split only, its
regularisation strength is chosen on the validation split, and the chosen model is scored on every split.

`cached_tfidf_logreg` keeps each result in a cache directory (`cache_directory`: by default
``~/.cache/lstm_jax/baselines``; ``LSTM_JAX_BASELINE_CACHE=<dir>`` moves it, ``=off`` disables it), keyed on
everything the fit reads (see `cache_key`), so runs of the same splits (other seeds, other models, a
settings sweep) return the result the first one computed instead of fitting again (LIAR 6-way: 85 of a
run's 136 s on the shared 2-core machine, 2026-12-06).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from lstm_jax.reports import classification_report

__all__ = ["cache_directory", "cache_key", "cached_tfidf_logreg", "tfidf_logreg"]

DEFAULT_CACHE = os.path.join("~", ".cache", "lstm_jax", "baselines")
_OFF_WORDS = ("0", "false", "no", "off", "")
# The solver `tfidf_logreg` fits with: lbfgs draws no random numbers (scikit-learn uses `random_state` only for
# sag, saga and liblinear), so the seed is not part of the cache key and every seed shares one result.
_SOLVER = "lbfgs"


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
      ngram_range, max_features, min_df: `TfidfVectorizer` settings; `min_df` is 1 when the training
        split has fewer than 50 texts (the result's ``settings["min_df"]`` is the one used).
      c_grid: inverse regularisation strengths tried; the best on `select_split` (train accuracy when
        that split is absent) is kept.
      train_split, select_split: split names.
      seed: solver seed.

    Returns:
      ``{"method", "settings", "chosen_C", "selection": {C: accuracy}, "splits": {split: {"accuracy",
      "macro_f1", "report"}}, "fit_seconds"}``.
    """
    from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer
    from sklearn.linear_model import LogisticRegression

    if len(c_grid) == 0:
        raise ValueError(
            "tfidf_logreg: c_grid is empty; give at least one inverse regularisation strength C, e.g."
            " c_grid=(0.25, 1.0, 4.0, 16.0)"
        )
    for name, (split_texts, split_labels) in splits.items():
        if len(split_texts) == 0:  # scikit-learn's "Found array with 0 sample(s)" names no split
            raise ValueError(
                f"tfidf_logreg: the {name!r} split has no texts; leave it out of splits or fill it"
            )
        y = np.asarray(split_labels)
        # Checked before the fit: the report of the fitted model refused them after it, naming no split.
        if y.dtype.kind in "iuf" and y.size and (y.min() < 0 or y.max() >= len(class_names)):
            raise ValueError(
                f"tfidf_logreg: the {name!r} split has labels in [{y.min()}, {y.max()}] but"
                f" {len(class_names)} class_names ({', '.join(map(str, class_names))}); labels must"
                f" be class ids in [0, {len(class_names)})"
            )
    t0 = time.time()
    texts, labels = splits[train_split]
    used_min_df = min_df if len(texts) >= 50 else 1
    # TfidfVectorizer(...) is CountVectorizer then TfidfTransformer (scikit-learn's own fit_transform and
    # transform are those two steps); they are run apart here so that the training split is tokenised once:
    # `transform` of the training texts gave the fitted counts with their column indices sorted (the fit
    # leaves them in the order the vocabulary was sorted into), so sorting a copy gives the same matrix
    # without counting the texts again (IMDB: 18,750 of the 68,750 texts counted). Tested bit for bit
    # against the TfidfVectorizer pipeline in tests/test_baselines.py.
    count = CountVectorizer(
        preprocessor=preprocessor,
        ngram_range=tuple(ngram_range),
        max_features=max_features,
        min_df=used_min_df,
        token_pattern=r"(?u)\b\w+\b",
        dtype=np.float64,
    )
    tfidf = TfidfTransformer(norm="l2", use_idf=True, smooth_idf=True, sublinear_tf=True)
    counts = count.fit_transform(list(texts))
    tfidf.fit(counts)
    train_counts = counts.copy()
    train_counts.sort_indices()
    x_train = tfidf.transform(counts, copy=False)  # what TfidfVectorizer.fit_transform returns
    y_train = np.asarray(labels)
    mats = {
        s: (
            tfidf.transform(train_counts if s == train_split else count.transform(list(t))),
            np.asarray(y),
        )
        for s, (t, y) in splits.items()
    }
    sel = select_split if select_split in mats else train_split
    selection: dict[str, float] = {}
    best: tuple[float, float, Any] | None = None
    for c in c_grid:
        clf = LogisticRegression(C=float(c), max_iter=2000, random_state=seed, solver=_SOLVER)
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
            "min_df": used_min_df,
            "sublinear_tf": True,
            "vocabulary": len(count.vocabulary_),
            "selected_on": sel,
        },
        "chosen_C": chosen,
        "selection": selection,
        "splits": out_splits,
        "fit_seconds": round(time.time() - t0, 2),
    }


def cache_directory() -> str | None:
    """The baseline cache's directory (`$LSTM_JAX_BASELINE_CACHE`, else `DEFAULT_CACHE` in the home), or
    None when the variable is off, 0 or empty."""
    setting = os.environ.get("LSTM_JAX_BASELINE_CACHE")
    if setting is not None and setting.strip().lower() in _OFF_WORDS:
        return None
    return os.path.abspath(os.path.expanduser(setting or DEFAULT_CACHE))


def _numeric_libraries() -> list[dict[str, Any]]:
    """The BLAS/OpenMP libraries the fit runs on, with their kernels (architecture) and thread counts: the
    solver's dot products split their sums by thread, so another count can round differently."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover (a dependency of scikit-learn)
        return [{"threadpoolctl": None}]
    keys = ("internal_api", "version", "architecture", "num_threads", "threading_layer")
    return sorted(({k: info.get(k) for k in keys} for info in threadpool_info()), key=json.dumps)


def _source(fn: Callable[..., Any]) -> str:
    """`fn`'s source and its module's (the code, so an edited preprocessor misses the cache, and so does
    one whose helpers or module-level tables changed: `text.standardize_imdb` reads `_IMDB_PUNCT`), or
    its name for a builtin."""
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        module = getattr(fn, "__module__", None) or type(fn).__module__
        return f"{module}.{getattr(fn, '__qualname__', repr(fn))}"
    try:
        return source + "\0" + inspect.getsource(inspect.getmodule(fn))
    except (OSError, TypeError):  # defined where no module file is (a notebook, `python -c`)
        return source


def _plain(v: Any) -> Any:
    """A NumPy array or scalar as the list or Python number JSON writes; anything else as its repr."""
    if isinstance(v, np.ndarray | np.generic):
        return v.tolist()
    return repr(v)


def cache_key(
    splits: Mapping[str, tuple[Sequence[str], Any]],
    class_names: Sequence[str],
    *,
    preprocessor: Callable[[str], str] | None = None,
    **settings: Any,
) -> str:
    """A hex digest of everything `tfidf_logreg` reads: every split's texts and labels, the class names,
    the settings, the preprocessor's (its module's too), this module's and the report's
    (`lstm_jax.reports`) source, the library versions and the numeric libraries' kernels and thread
    counts (`_numeric_libraries`). Not the seed (see `_SOLVER`)."""
    import numpy
    import scipy
    import sklearn

    settings = {k: v for k, v in settings.items() if k != "seed"}
    h = hashlib.sha256()
    head = {
        "class_names": list(class_names),
        "settings": {
            k: list(v) if isinstance(v, tuple) else v for k, v in sorted(settings.items())
        },
        "preprocessor": None if preprocessor is None else _source(preprocessor),
        # This module's code and the report's (`classification_report` writes every split's numbers).
        "module": inspect.getsource(inspect.getmodule(cache_key)),
        "report": inspect.getsource(inspect.getmodule(classification_report)),
        "versions": [sklearn.__version__, scipy.__version__, numpy.__version__],
        "machine": platform.machine(),
        "libraries": _numeric_libraries(),
    }
    # NumPy settings (`c_grid=np.logspace(...)`, `max_features=np.int64(...)`) as the numbers they hold: a
    # TypeError here failed the run that `tfidf_logreg` alone fits.
    h.update(json.dumps(head, sort_keys=True, default=_plain).encode())
    for name in sorted(splits):
        texts, labels = splits[name]
        h.update(f"\0split {name} {len(texts)}\0".encode())
        for t in texts:
            b = t.encode("utf-8", "surrogatepass")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
        h.update(np.ascontiguousarray(np.asarray(labels, np.int64)).tobytes())
    return h.hexdigest()


def cached_tfidf_logreg(
    splits: Mapping[str, tuple[Sequence[str], Any]],
    class_names: Sequence[str],
    *,
    directory: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """`tfidf_logreg`, through the cache in `directory` (default `cache_directory()`; None there: no cache).

    A hit returns the stored result with ``"cached": <file>`` added (its ``fit_seconds`` are the fit that
    made it); a miss fits and stores the result. An unreadable entry is fitted again and an unwritable
    directory only skips the store: the cache never fails a run.
    """
    from lstm_jax.logging_utils import write_json

    directory = cache_directory() if directory is None else directory
    if directory is None:
        return tfidf_logreg(splits, class_names, **kwargs)
    path = os.path.join(directory, f"tfidf_logreg-{cache_key(splits, class_names, **kwargs)}.json")
    try:
        with open(path, encoding="utf-8") as f:
            stored = json.load(f)
        if isinstance(stored, dict) and "splits" in stored:
            return {**stored, "cached": path}
    except (OSError, ValueError):
        pass
    result = tfidf_logreg(splits, class_names, **kwargs)
    try:
        write_json(path, result)
    except OSError:
        pass
    return result
