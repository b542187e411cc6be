"""The TF-IDF + logistic-regression baseline's result cache (lstm_jax.baselines)."""

import json
import os

import numpy as np
import pytest

from lstm_jax import baselines

GOOD = "great fine superb lovely brilliant moving".split()
BAD = "awful dull boring poor weak clumsy".split()


def _splits(n=40, seed=0):
    rng = np.random.default_rng(seed)

    def split(count):
        labels = rng.integers(0, 2, size=count)
        texts = [" ".join(rng.choice(GOOD if y else BAD, size=6)) + " film" for y in labels]
        return texts, labels

    return {"train": split(n), "validation": split(n // 2), "test": split(n // 2)}


def _numbers(result):
    return {k: v for k, v in result.items() if k not in ("cached", "fit_seconds")}


def test_a_second_run_of_the_same_splits_returns_the_stored_result_without_fitting(
    tmp_path, monkeypatch
):
    splits = _splits()
    fresh = baselines.tfidf_logreg(splits, ["neg", "pos"], seed=0)
    first = baselines.cached_tfidf_logreg(splits, ["neg", "pos"], seed=0, directory=str(tmp_path))
    assert "cached" not in first
    assert len(os.listdir(tmp_path)) == 1

    fits = []
    monkeypatch.setattr(baselines, "tfidf_logreg", lambda *a, **k: fits.append(1))
    # Another seed shares the entry: the lbfgs solver draws no random numbers.
    second = baselines.cached_tfidf_logreg(splits, ["neg", "pos"], seed=3, directory=str(tmp_path))
    assert fits == []
    assert second["cached"] == os.path.join(tmp_path, os.listdir(tmp_path)[0])
    # The numbers a fit computes, exactly (as results.json writes them).
    assert json.dumps(_numbers(second)) == json.dumps(_numbers(first))
    assert json.dumps(_numbers(second)) == json.dumps(_numbers(fresh), default=float)


def test_the_seed_does_not_change_the_fit_so_it_is_not_in_the_key():
    splits = _splits()
    a = baselines.tfidf_logreg(splits, ["neg", "pos"], seed=0)
    b = baselines.tfidf_logreg(splits, ["neg", "pos"], seed=12345)
    assert _numbers(a) == _numbers(b)
    assert baselines.cache_key(splits, ["neg", "pos"], seed=0) == baselines.cache_key(
        splits, ["neg", "pos"], seed=12345
    )


def test_the_key_changes_with_every_input_the_fit_reads():
    splits = _splits()
    key = baselines.cache_key(splits, ["neg", "pos"])
    texts, labels = splits["test"]
    changed_text = {**splits, "test": ([texts[0] + " x", *texts[1:]], labels)}
    changed_label = {**splits, "test": (texts, np.concatenate([1 - labels[:1], labels[1:]]))}
    renamed = {"train": splits["train"], "valid": splits["validation"], "test": splits["test"]}
    others = [
        baselines.cache_key(changed_text, ["neg", "pos"]),
        baselines.cache_key(changed_label, ["neg", "pos"]),
        baselines.cache_key(renamed, ["neg", "pos"]),
        baselines.cache_key(splits, ["pos", "neg"]),
        baselines.cache_key(splits, ["neg", "pos"], min_df=1),
        baselines.cache_key(splits, ["neg", "pos"], c_grid=(1.0,)),
        baselines.cache_key(splits, ["neg", "pos"], preprocessor=str.upper),
    ]
    assert len({key, *others}) == len(others) + 1


def test_the_cache_can_be_turned_off_and_never_fails_a_run(tmp_path, monkeypatch):
    monkeypatch.setenv("LSTM_JAX_BASELINE_CACHE", "off")
    assert baselines.cache_directory() is None
    monkeypatch.setenv("LSTM_JAX_BASELINE_CACHE", str(tmp_path / "c"))
    assert baselines.cache_directory() == str(tmp_path / "c")
    monkeypatch.delenv("LSTM_JAX_BASELINE_CACHE")
    assert baselines.cache_directory() == os.path.expanduser(baselines.DEFAULT_CACHE)

    splits = _splits()
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    result = baselines.cached_tfidf_logreg(splits, ["neg", "pos"], directory=str(blocked))
    assert "cached" not in result and result["splits"]["test"]["accuracy"] >= 0.9

    # A damaged entry is fitted again and replaced.
    cache = tmp_path / "cache"
    baselines.cached_tfidf_logreg(splits, ["neg", "pos"], directory=str(cache))
    (entry,) = cache.iterdir()
    entry.write_text("{not json")
    again = baselines.cached_tfidf_logreg(splits, ["neg", "pos"], directory=str(cache))
    assert "cached" not in again
    assert "cached" in baselines.cached_tfidf_logreg(splits, ["neg", "pos"], directory=str(cache))


@pytest.mark.parametrize("setting", ["0", "OFF", ""])
def test_off_words(monkeypatch, setting):
    monkeypatch.setenv("LSTM_JAX_BASELINE_CACHE", setting)
    assert baselines.cache_directory() is None


def _reference_tfidf_logreg(splits, class_names, max_features, min_df, preprocessor=None):
    """The baseline as it was written before it counted the training texts once: TfidfVectorizer's
    fit_transform for the fit and its transform for every split's scores."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    texts, labels = splits["train"]
    vec = TfidfVectorizer(
        preprocessor=preprocessor,
        ngram_range=(1, 2),
        max_features=max_features,
        min_df=min_df,
        sublinear_tf=True,
        token_pattern=r"(?u)\b\w+\b",
    )
    x_train = vec.fit_transform(list(texts))
    mats = {s: (vec.transform(list(t)), np.asarray(y)) for s, (t, y) in splits.items()}
    best = None
    for c in (0.25, 1.0, 4.0, 16.0):
        clf = LogisticRegression(C=c, max_iter=2000, random_state=0).fit(x_train, labels)
        acc = float((clf.predict(mats["validation"][0]) == mats["validation"][1]).mean())
        if best is None or acc > best[0]:
            best = (acc, c, clf)
    return best[1], {s: best[2].predict(x).tolist() for s, (x, _) in mats.items()}, mats, x_train


@pytest.mark.parametrize("max_features", [200_000, 40])
def test_counting_the_training_texts_once_gives_the_tfidf_vectorizer_numbers_bit_for_bit(
    max_features,
):
    from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer

    splits = _three_way_splits()
    texts = [t for split in ("train", "validation", "test") for t in splits[split][0]]
    chosen, predictions, mats, x_train = _reference_tfidf_logreg(
        splits, ["a", "b", "c"], max_features, min_df=2, preprocessor=str.lower
    )
    # The matrices: the fit's counts (indices sorted) are what `transform` counts, to the bit.
    count = CountVectorizer(
        preprocessor=str.lower,
        ngram_range=(1, 2),
        max_features=max_features,
        min_df=2,
        token_pattern=r"(?u)\b\w+\b",
        dtype=np.float64,
    )
    counts = count.fit_transform(texts[:60])
    tfidf = TfidfTransformer(sublinear_tf=True).fit(counts)
    sorted_counts = counts.copy()
    sorted_counts.sort_indices()
    for mine, theirs in [
        (tfidf.transform(counts, copy=False), x_train),
        (tfidf.transform(sorted_counts), mats["train"][0]),
        (tfidf.transform(count.transform(texts[60:75])), mats["validation"][0]),
    ]:
        for attr in ("data", "indices", "indptr"):
            assert np.array_equal(getattr(mine, attr), getattr(theirs, attr))
            assert getattr(mine, attr).dtype == getattr(theirs, attr).dtype
    # And the whole baseline.
    result = baselines.tfidf_logreg(
        splits, ["a", "b", "c"], max_features=max_features, preprocessor=str.lower
    )
    assert result["chosen_C"] == chosen
    for s, (_, y) in splits.items():
        pred = np.asarray(predictions[s])
        assert result["splits"][s]["accuracy"] == float((pred == y).mean())


def test_every_text_is_tokenised_once():
    seen = []

    def preprocessor(t):
        seen.append(t)
        return t.lower()

    splits = _splits()
    baselines.tfidf_logreg(splits, ["neg", "pos"], preprocessor=preprocessor)
    assert sorted(seen) == sorted(t for texts, _ in splits.values() for t in texts)


def test_the_key_follows_the_code_that_writes_the_report(tmp_path, monkeypatch):
    """The stored result holds `classification_report`'s numbers: a fix there (its F1, say) is a new key,
    not the old numbers read back."""
    splits = _splits()
    key = baselines.cache_key(splits, ["neg", "pos"])
    (tmp_path / "fixed_reports.py").write_text(
        "from lstm_jax.reports import *\n"
        "from lstm_jax.reports import classification_report as _old\n\n\n"
        "def classification_report(y_true, y_pred, class_names):\n"
        "    return {**_old(y_true, y_pred, class_names), 'fixed': True}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import fixed_reports

    monkeypatch.setattr(baselines, "classification_report", fixed_reports.classification_report)
    assert baselines.cache_key(splits, ["neg", "pos"]) != key


def test_the_settings_name_the_min_df_the_fit_used():
    """Under 50 training texts the vectorizer keeps every term (min_df 1): the result's settings said
    min_df 2 (the argument) beside a vocabulary counted with 1."""
    from sklearn.feature_extraction.text import CountVectorizer

    small = _splits(n=40)
    result = baselines.tfidf_logreg(small, ["neg", "pos"], min_df=2)
    every_term = CountVectorizer(ngram_range=(1, 2), token_pattern=r"(?u)\b\w+\b", min_df=1)
    every_term.fit(small["train"][0])
    assert result["settings"]["min_df"] == 1
    assert result["settings"]["vocabulary"] == len(every_term.vocabulary_)
    large = _splits(n=60)
    assert baselines.tfidf_logreg(large, ["neg", "pos"], min_df=2)["settings"]["min_df"] == 2


def test_numpy_settings_are_cached_as_the_numbers_they_hold(tmp_path, monkeypatch):
    """`c_grid=np.array(...)` or a NumPy scalar setting failed the cached baseline with "Object of type
    ndarray is not JSON serializable" in the key (`tfidf_logreg` alone fits them); they key as the
    same Python numbers."""
    splits = _splits()
    grid = np.array([1.0, 4.0])
    first = baselines.cached_tfidf_logreg(
        splits, ["neg", "pos"], c_grid=grid, max_features=np.int64(500), directory=str(tmp_path)
    )
    assert "cached" not in first and first["chosen_C"] in (1.0, 4.0)
    assert baselines.cache_key(splits, ["neg", "pos"], c_grid=grid) == baselines.cache_key(
        splits, ["neg", "pos"], c_grid=(1.0, 4.0)
    )
    assert baselines.cache_key(
        splits, ["neg", "pos"], c_grid=np.float32([1.0])
    ) != baselines.cache_key(splits, ["neg", "pos"], c_grid=grid)
    monkeypatch.setattr(baselines, "tfidf_logreg", lambda *a, **k: pytest.fail("fitted again"))
    again = baselines.cached_tfidf_logreg(
        splits, ["neg", "pos"], c_grid=(1.0, 4.0), max_features=500, directory=str(tmp_path)
    )
    assert again["chosen_C"] == first["chosen_C"] and "cached" in again


def test_the_key_follows_the_module_tables_the_preprocessor_reads(tmp_path, monkeypatch):
    """`text.standardize_imdb` reads the module's `_IMDB_PUNCT`: an edit there changes the baseline's
    numbers, so it is a new key (the key held the function's own source only, and read the old numbers
    back)."""
    body = "\n\ndef preprocess(t):\n    return _DROP.sub('', t.lower())\n"
    for name, drop in (("pre_old", "[!]"), ("pre_new", "[!?]")):
        (tmp_path / f"{name}.py").write_text(f"import re\n\n_DROP = re.compile({drop!r})\n{body}")
    monkeypatch.syspath_prepend(str(tmp_path))
    import pre_new
    import pre_old

    splits = _splits()
    old = baselines.cache_key(splits, ["neg", "pos"], preprocessor=pre_old.preprocess)
    assert old == baselines.cache_key(splits, ["neg", "pos"], preprocessor=pre_old.preprocess)
    assert old != baselines.cache_key(splits, ["neg", "pos"], preprocessor=pre_new.preprocess)
    # A builtin has no source: its name keys it, as before.
    assert baselines.cache_key(splits, ["neg", "pos"], preprocessor=str.lower) == (
        baselines.cache_key(splits, ["neg", "pos"], preprocessor=str.lower)
    )


def test_an_empty_c_grid_is_an_error_naming_it():
    """No C to try ended in a bare AssertionError after the texts were counted."""
    with pytest.raises(ValueError, match=r"c_grid is empty.*c_grid=\(0\.25"):
        baselines.tfidf_logreg(_splits(), ["neg", "pos"], c_grid=())


@pytest.mark.parametrize("empty", ["train", "test"])
def test_an_empty_split_is_an_error_naming_it(empty):
    """An empty split failed inside scikit-learn ("empty vocabulary" for the training split, "Found array
    with 0 sample(s) ... TfidfTransformer" for another), naming no split."""
    splits = {**_splits(), empty: ([], np.zeros(0, np.int64))}
    with pytest.raises(ValueError, match=f"the '{empty}' split has no texts"):
        baselines.tfidf_logreg(splits, ["neg", "pos"])


def test_labels_outside_the_class_names_are_an_error_naming_the_split(monkeypatch):
    """A label without a class name (6-way labels, binary names) was fitted as a class of its own and
    then refused by the report ("y_true has values outside [0, 2)"), naming no split; it is refused
    before the fit."""
    splits = _splits()
    texts, labels = splits["validation"]
    bad = {**splits, "validation": (texts, np.where(np.arange(len(labels)) == 3, 5, labels))}
    fits = []
    monkeypatch.setattr(
        "sklearn.linear_model.LogisticRegression.fit", lambda *a, **k: fits.append(1)
    )
    with pytest.raises(
        ValueError, match=r"'validation' split has labels in \[0, 5\] but 2 class_names"
    ):
        baselines.tfidf_logreg(bad, ["neg", "pos"])
    assert fits == []


def _three_way_splits():
    """90 texts of 3 classes, noisy enough that validation accuracy differs between the Cs."""
    rng = np.random.default_rng(1)
    words = GOOD + BAD + [f"w{i}" for i in range(30)]
    labels = rng.integers(0, 3, size=90)
    texts = [
        " ".join(rng.choice(words, size=rng.integers(3, 40))) + f" {'GOOD' if y else 'BAD'} x{y}"
        for y in labels
    ]
    return {
        "train": (texts[:60], labels[:60]),
        "validation": (texts[60:75], labels[60:75]),
        "test": (texts[75:], labels[75:]),
    }


def test_c_is_chosen_from_the_default_grid_on_validation_and_the_metrics_are_sklearns():
    """`selection` holds the validation accuracy of every C of the default grid, the best (the first
    of ties) is chosen, and each split reports sklearn's accuracy and macro F1 of its predictions;
    without a validation split the training split selects and the settings say so."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    splits = _three_way_splits()
    vec = TfidfVectorizer(
        ngram_range=(1, 2), min_df=2, sublinear_tf=True, token_pattern=r"(?u)\b\w+\b"
    )
    x_train = vec.fit_transform(splits["train"][0])
    y_train = splits["train"][1]
    x_val, y_val = vec.transform(splits["validation"][0]), splits["validation"][1]
    expected, on_train, clfs = {}, {}, {}
    for c in (0.25, 1.0, 4.0, 16.0):
        clfs[c] = LogisticRegression(C=c, max_iter=2000).fit(x_train, y_train)
        expected[str(c)] = float((clfs[c].predict(x_val) == y_val).mean())
        on_train[str(c)] = float((clfs[c].predict(x_train) == y_train).mean())
    assert expected != on_train
    result = baselines.tfidf_logreg(splits, ["a", "b", "c"])
    assert result["selection"] == expected
    assert result["settings"]["selected_on"] == "validation"
    assert result["chosen_C"] == float(max(expected, key=expected.get))
    for s, (texts, y) in splits.items():
        pred = clfs[result["chosen_C"]].predict(vec.transform(texts))
        assert result["splits"][s]["accuracy"] == pytest.approx(accuracy_score(y, pred))
        assert result["splits"][s]["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    no_validation = {s: splits[s] for s in ("train", "test")}
    result = baselines.tfidf_logreg(no_validation, ["a", "b", "c"], c_grid=(0.25, 16.0))
    assert result["settings"]["selected_on"] == "train"
    assert result["selection"] == {k: on_train[k] for k in ("0.25", "16.0")}


def test_the_settings_are_the_ones_the_vectorizer_used():
    """Single-character words are tokens; ngram_range and max_features reach the vectorizer and the
    settings; 50 training texts keep min_df (under 50 it is 1)."""
    tiny = {"train": (["a b", "b c", "c a d"], np.array([0, 1, 0]))}
    unigrams = baselines.tfidf_logreg(tiny, ["neg", "pos"], ngram_range=(1, 1))
    assert unigrams["settings"]["vocabulary"] == 4
    assert unigrams["settings"]["ngram_range"] == [1, 1]
    capped = baselines.tfidf_logreg(tiny, ["neg", "pos"], max_features=2)
    assert capped["settings"]["vocabulary"] == 2 and capped["settings"]["max_features"] == 2
    assert baselines.tfidf_logreg(_splits(n=50), ["neg", "pos"])["settings"]["min_df"] == 2


@pytest.mark.parametrize("bad_label", [-1, 2])
def test_labels_just_outside_the_class_ids_are_refused(bad_label):
    splits = _splits()
    texts, labels = splits["train"]
    bad = {**splits, "train": (texts, np.where(np.arange(len(labels)) == 0, bad_label, labels))}
    with pytest.raises(ValueError, match=r"'train' split has labels in .* but 2 class_names"):
        baselines.tfidf_logreg(bad, ["neg", "pos"])


@pytest.mark.parametrize("content", ["[1, 2]", "{}", '{"chosen_C": 1.0}'])
def test_a_cache_entry_that_is_not_a_result_is_fitted_again(tmp_path, content):
    """Valid JSON that is not a stored result (no "splits") is a miss, not returned nor a TypeError."""
    splits = _splits()
    baselines.cached_tfidf_logreg(splits, ["neg", "pos"], c_grid=(1.0,), directory=str(tmp_path))
    (entry,) = tmp_path.iterdir()
    entry.write_text(content)
    again = baselines.cached_tfidf_logreg(
        splits, ["neg", "pos"], c_grid=(1.0,), directory=str(tmp_path)
    )
    assert "cached" not in again and again["splits"]["test"]["accuracy"] >= 0.9
    assert json.loads(entry.read_text())["chosen_C"] == 1.0
