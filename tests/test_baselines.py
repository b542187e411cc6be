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
