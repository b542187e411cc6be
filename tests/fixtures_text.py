"""Builders of small text-dataset fixtures in a tmp folder (real layouts, made-up rows).

Shared by tests/test_data.py and the experiments' end-to-end tests:
`make_acl_imdb`, `make_imdb_csv_dir`, `make_fake_news_csv`, `make_liar_dir`, `write_csv`.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Sequence
from pathlib import Path

IMDB_REVIEWS = {
    "train": {
        "pos": ["A wonderful film.<br /><br />Great acting!", "Loved it, great fun."],
        "neg": ["Dull and far too long.", "Terrible plot; awful acting."],
    },
    "test": {
        "pos": ["Great movie, wonderful cast."],
        "neg": ["Awful. Just awful.", "Boring film, dull story."],
    },
}


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    """Write an RFC-4180 CSV (gzip-compressed when `path` ends in .gz); returns `path`."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    data = buf.getvalue().encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def make_acl_imdb(root: Path) -> Path:
    """Write an `aclImdb/` tree (`train|test/pos|neg/<id>_<rating>.txt`) of `IMDB_REVIEWS`."""
    acl = root / "aclImdb"
    for split, by_label in IMDB_REVIEWS.items():
        for label, texts in by_label.items():
            d = acl / split / label
            d.mkdir(parents=True)
            for i, text in enumerate(texts):
                rating = 9 if label == "pos" else 2
                (d / f"{i}_{rating}.txt").write_text(text, encoding="utf-8")
    return acl


def make_imdb_csv_dir(root: Path, gz: bool = True) -> Path:
    """A folder with `imdb_train.csv(.gz)` and `imdb_test.csv(.gz)` (id,rating,label,text)."""
    suffix = ".csv.gz" if gz else ".csv"
    for split, by_label in IMDB_REVIEWS.items():
        rows = [
            [i, 9 if label == "pos" else 2, label, text]
            for label, texts in by_label.items()
            for i, text in enumerate(texts)
        ]
        write_csv(root / f"imdb_{split}{suffix}", ["id", "rating", "label", "text"], rows)
    return root


FAKE_NEWS_ROWS = [
    [
        0,
        "Aliens endorse candidate",
        "['Jane Roe', 'Max Mustermann']",
        "Shocking claims, 100% true!",
        1,
    ],
    [1, "Senate passes budget", "John Smith", "The senate passed the budget on Tuesday.", 0],
    [2, "", "", "Miracle cure found by doctors", 1],
    [3, "Markets rise", "[]", "Stocks rose modestly.", 0],
]


def make_fake_news_csv(path: Path, rows: Sequence[Sequence[object]] = FAKE_NEWS_ROWS) -> Path:
    """A Kaggle-style fake-news CSV (id,title,author,text,label; 1 = fake)."""
    return write_csv(path, ["id", "title", "author", "text", "label"], rows)


LIAR_HEADER = [
    "id", "label", "statement", "subject", "speaker", "speaker_job_title", "state_info",
    "party_affiliation", "barely_true_counts", "false_counts", "half_true_counts",
    "mostly_true_counts", "pants_on_fire_counts", "context", "binary_label",
]  # fmt: skip
LIAR_ROWS = {
    "train": [
        ("pants-fire", "The moon is made of cheese."),
        ("false", "Taxes doubled last year."),
        ("barely-true", "Crime is up everywhere."),
        ("half-true", "Unemployment fell a bit."),
        ("mostly-true", "The bill passed with 60 votes."),
        ("true", "The state has 10 counties."),
    ],
    "valid": [("true", "Water is wet."), ("false", "Cats can fly.")],
    "test": [("half-true", "Prices rose 3%."), ("pants-fire", "Nobody pays taxes.")],
}


def make_liar_dir(root: Path) -> Path:
    """A folder with `liar_{train,valid,test}.csv` in the staged LIAR CSV layout."""
    root.mkdir(parents=True, exist_ok=True)
    for split, items in LIAR_ROWS.items():
        rows = []
        for i, (label, statement) in enumerate(items):
            binary = "fake" if label in ("pants-fire", "false", "barely-true") else "real"
            rows.append(
                [f"{i}", label, statement, "economy", "someone", "", "Texas", "none"]
                + [0, 0, 0, 0, 0, "a speech", binary]
            )
        write_csv(root / f"liar_{split}.csv", LIAR_HEADER, rows)
    return root


def forbid_data_reads(monkeypatch, tmp_path: Path) -> None:
    """Every way lstm_jax reads a dataset (or the environment's stopword list) fails from here on, and
    $LSTM_JAX_DATA and NLTK_DATA name an empty folder: for the modes that must need nothing but the
    workdir (generate, predict), as after the data moved or the shell changed."""
    from lstm_jax import data, text

    def refuse(*args, **kwargs):
        raise AssertionError(f"read the data or the environment: {args} {kwargs}")

    for name in (
        "load_text",
        "load_tiny_shakespeare",
        "load_csv_texts",
        "load_imdb",
        "load_fake_news_csv",
        "load_liar",
        "resolve_path",
        "data_root",
    ):
        monkeypatch.setattr(data, name, refuse)
    monkeypatch.setattr(text, "load_stopwords", refuse)
    empty = tmp_path / "no_data"
    empty.mkdir()
    monkeypatch.setenv(data.DATA_ENV, str(empty))
    monkeypatch.setenv("NLTK_DATA", str(empty))
