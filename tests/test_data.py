"""Tests of lstm_jax.data on fixture files built in tmp_path (real data only where marked)."""

from __future__ import annotations

import csv
import gzip
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from fixtures_text import (
    FAKE_NEWS_ROWS,
    IMDB_REVIEWS,
    make_acl_imdb,
    make_fake_news_csv,
    make_imdb_csv_dir,
    make_liar_dir,
    write_csv,
)

from lstm_jax import data as D
from lstm_jax.errors import UserError


@pytest.fixture
def no_data_env(monkeypatch, tmp_path):
    """No $LSTM_JAX_DATA, an empty TFDS data_dir and no network: only explicit paths work."""
    monkeypatch.delenv("LSTM_JAX_DATA", raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds_empty"))
    monkeypatch.setattr(D, "_network_reachable", lambda *a, **k: False)


def _named(path: Path) -> str:
    return re.escape(str(path))


# ---- paths ---------------------------------------------------------------------------------------


def test_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("LSTM_JAX_DATA", str(tmp_path))
    assert D.data_root() == tmp_path
    monkeypatch.setenv("LSTM_JAX_DATA", "")
    assert D.data_root() is None


def test_resolve_path_explicit_wins(monkeypatch, tmp_path):
    (tmp_path / "env" / "x.txt").parent.mkdir()
    (tmp_path / "env" / "x.txt").write_text("env")
    mine = tmp_path / "mine.txt"
    mine.write_text("mine")
    monkeypatch.setenv("LSTM_JAX_DATA", str(tmp_path / "env"))
    assert D.resolve_path(mine, "x.txt") == mine
    assert D.resolve_path(None, "x.txt") == tmp_path / "env" / "x.txt"
    with pytest.raises(UserError, match=_named(tmp_path / "nope.txt")):
        D.resolve_path(tmp_path / "nope.txt", "x.txt")


def test_resolve_path_missing_names_both_fixes(no_data_env):
    with pytest.raises(UserError) as e:
        D.resolve_path(None, "imdb", what="IMDB reviews", tfds_name="imdb_reviews")
    msg = str(e.value)
    assert "--config.data.path=" in msg and "export LSTM_JAX_DATA=" in msg
    assert "TFDS 'imdb_reviews' needs network access" in msg
    assert "\n" not in msg


# ---- text files ----------------------------------------------------------------------------------


def test_load_text_plain_and_gz(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("To be,\nor not.\n", encoding="utf-8")
    text, info = D.load_text(f)
    assert text == "To be,\nor not.\n"
    assert info == {"source": str(f), "chars": 15, "distinct_chars": 11}
    g = tmp_path / "t.txt.gz"
    g.write_bytes(gzip.compress("über".encode()))
    assert D.load_text(g)[0] == "über"


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (b"", "file is empty"),
        (b"  \n\t\n", "file is empty"),
        (b"abc\n\x00\x01", r"binary file \(NUL byte at line 2"),
        (b"abc\ndef\n\xff\xfeok", r"undecodable bytes at line 3 .*not UTF-8"),
    ],
)
def test_load_text_bad_files_name_the_file(tmp_path, content, pattern):
    f = tmp_path / "bad.txt"
    f.write_bytes(content)
    with pytest.raises(UserError, match=_named(f) + ".*" + pattern):
        D.load_text(f)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (
            gzip.compress(b"a,b\n1,2\n", mtime=0),
            "gzip-compressed, not text; rename it to end in .gz",
        ),
        (b"PK\x03\x04\x14\x00\x00\x00", "a zip archive, not text; unzip it"),
        (b"BZh91AY&SY\x00\x01", "bzip2-compressed, not text"),
        (b"\xfd7zXZ\x00\x00\x04", "xz-compressed, not text"),
    ],
    # Named ids: pytest-xdist's workers must collect the same ids (gzip's header holds a time).
    ids=["gzip", "zip", "bzip2", "xz"],
)
def test_a_compressed_file_without_its_extension_is_named_as_such(tmp_path, content, pattern):
    """A gzipped or zipped CSV saved as .csv (a Kaggle download) was "binary file (NUL byte ...); pass a
    UTF-8 text file", which does not say what the file is or how to fix it."""
    for name in ("data.csv", "data.txt"):
        f = tmp_path / name
        f.write_bytes(content)
        load = D.load_text if name.endswith(".txt") else D.load_fake_news_csv
        with pytest.raises(UserError, match=_named(f) + ": the file is " + pattern):
            load(f)


def test_load_text_windows_copy_gives_the_original_text(tmp_path, no_data_env):
    """A CRLF copy (Notepad, git autocrlf) once added '\\r' to the character vocabulary and moved the split."""
    original = (
        "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
    )
    lf, crlf = tmp_path / "input.txt", tmp_path / "input_crlf.txt"
    lf.write_bytes(original.encode("utf-8"))
    crlf.write_bytes(b"\xef\xbb\xbf" + original.replace("\n", "\r\n").encode("utf-8"))
    assert D.load_text(crlf)[0] == D.load_text(lf)[0] == original
    assert D.load_tiny_shakespeare(crlf)[0] == D.load_tiny_shakespeare(lf)[0]


def test_load_text_missing_and_directory(tmp_path):
    with pytest.raises(UserError, match=_named(tmp_path / "gone.txt") + ".*not found"):
        D.load_text(tmp_path / "gone.txt")
    with pytest.raises(UserError, match="is a directory"):
        D.load_text(tmp_path)


def test_load_text_bad_gzip(tmp_path):
    f = tmp_path / "t.txt.gz"
    f.write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match=_named(f) + ".*not a valid gzip"):
        D.load_text(f)


def test_load_text_gzip_with_a_damaged_body(tmp_path):
    """A valid gzip header over damaged deflate data raises zlib.error, not OSError."""
    body = bytearray(gzip.compress(("to be or not to be " * 200).encode()))
    for i in range(20, 60):
        body[i] ^= 0xFF
    f = tmp_path / "t.txt.gz"
    f.write_bytes(bytes(body))
    with pytest.raises(UserError, match=_named(f) + ".*not a valid gzip"):
        D.load_text(f)


def test_an_unclosed_quote_is_an_error_naming_its_line_not_the_rest_of_the_file(tmp_path):
    """A lenient csv reader returns everything after an unclosed quote as one field of one last row
    (69 of 80 rows silently became one "description")."""
    lines = [f'{i},"row {i}"' for i in range(1, 30)]
    lines[9] = '10,"row 10 with an unclosed quote'
    f = tmp_path / "q.csv"
    f.write_text("id,text\n" + "\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=_named(f) + r": malformed CSV in the row that starts at"):
        D._read_csv(f, ["text"])  # line 11's quote closes at line 12's first quote
    f.write_text("id,text\n" + "\n".join(lines[:10]) + "\n11,unquoted\n", encoding="utf-8")
    with pytest.raises(
        UserError, match=_named(f) + r": line 11 opens a quoted field that is never"
    ):
        D._read_csv(f, ["text"])  # the file ends inside it
    ok = (
        tmp_path / "ok.csv"
    )  # quotes inside an unquoted field stay as they are, as in any CSV reader
    ok.write_text('id,text\n1,a "quoted" word\n2,"a ""doubled"" quote"\n', encoding="utf-8")
    _, rows = D._read_csv(ok, ["text"])
    assert [r["text"] for _, r in rows] == ['a "quoted" word', 'a "doubled" quote']


def test_blank_lines_around_csv_rows_are_skipped(tmp_path):
    """Blank lines before the header (once: "columns found: ;") and whitespace-only lines (once: "line N
    has 1 fields") are skipped; a file of nothing but empty fields has no header."""
    f = tmp_path / "b.csv"
    f.write_text("\n\nid,text\n1,a\n   \n2,b\n \t\n", encoding="utf-8")
    header, rows = D._read_csv(f, ["text"])
    assert header == ["id", "text"] and [(n, r["text"]) for n, r in rows] == [(4, "a"), (6, "b")]
    f.write_text(",,\n , \n", encoding="utf-8")
    with pytest.raises(UserError, match=_named(f) + ": no header row"):
        D._read_csv(f, ["text"])


# ---- tiny-shakespeare ----------------------------------------------------------------------------


def test_tiny_shakespeare_split_90_10(tmp_path, no_data_env):
    f = tmp_path / "shake.txt"
    text = "abcdefghij" * 10 + "xyz"  # 103 chars: int(0.9 * 103) = 92
    f.write_text(text, encoding="utf-8")
    splits, info = D.load_tiny_shakespeare(f)
    assert splits["train"] == text[:92] and splits["validation"] == text[92:]
    assert info["train_chars"] == 92 and info["validation_chars"] == 11
    assert info["source"] == str(f)


def test_tiny_shakespeare_from_data_root(monkeypatch, tmp_path):
    f = tmp_path / "shakespeare" / "tinyshakespeare.txt"
    f.parent.mkdir()
    f.write_text("First Citizen:\nBefore we proceed\n", encoding="utf-8")
    monkeypatch.setenv("LSTM_JAX_DATA", str(tmp_path))
    splits, info = D.load_tiny_shakespeare()
    assert info["source"] == str(f)
    assert splits["train"] + splits["validation"] == f.read_text()


def test_tiny_shakespeare_offline_fails_fast_with_both_fixes(no_data_env):
    t0 = time.perf_counter()
    with pytest.raises(UserError) as e:
        D.load_tiny_shakespeare()
    assert time.perf_counter() - t0 < 2.0  # never reaches tfds.load's minutes of retries
    msg = str(e.value)
    assert "--config.data.path=" in msg and "LSTM_JAX_DATA" in msg and "network" in msg


def test_network_check_is_bounded():
    t0 = time.perf_counter()
    assert D._network_reachable("https://nonexistent.invalid/", timeout=0.5) is False
    assert D._network_reachable("https://10.255.255.1:9/", timeout=0.5) is False
    assert time.perf_counter() - t0 < 2.0


def test_tfds_prepared_detection(tmp_path):
    assert not D._tfds_prepared("imdb_reviews", str(tmp_path))
    d = tmp_path / "imdb_reviews" / "plain_text" / "1.0.0"
    d.mkdir(parents=True)
    (d / "dataset_info.json").write_text("{}")
    assert D._tfds_prepared("imdb_reviews", str(tmp_path))


# ---- CSV texts -----------------------------------------------------------------------------------


def test_load_csv_texts_skips_and_counts_empty_and_handles_big_fields(tmp_path):
    big = "long " * 40_000  # 200k chars > csv's default 131,072 field limit
    f = write_csv(
        tmp_path / "cat.csv",
        ["ProductID", "Description", "Price"],
        [[1, "Red cotton shirt,\nslim fit", 10], [2, "", 5], [3, "  ", 6], [4, big, 7]],
    )
    texts, info = D.load_csv_texts(f, "Description")
    assert texts == ["Red cotton shirt,\nslim fit", big]
    assert info == {
        "source": str(f),
        "column": "Description",
        "rows": 4,
        "texts": 2,
        "skipped_empty": 2,
    }


def test_load_csv_texts_missing_column_names_file_column_and_columns(tmp_path):
    f = write_csv(tmp_path / "cat.csv", ["ProductID", "description"], [[1, "x"]])
    with pytest.raises(UserError) as e:
        D.load_csv_texts(f, "Description")
    msg = str(e.value)
    assert str(f) in msg and "'Description'" in msg and "'ProductID', 'description'" in msg


def test_load_csv_texts_bad_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match=_named(empty) + ".*empty"):
        D.load_csv_texts(empty, "text")
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("text\nok\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match=_named(latin) + ".*line 3"):
        D.load_csv_texts(latin, "text")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,text\n1,x\n2,y,extra\n", encoding="utf-8")
    with pytest.raises(UserError, match=_named(ragged) + ".*line 3 has 3 fields"):
        D.load_csv_texts(ragged, "text")
    blank = write_csv(tmp_path / "blank.csv", ["text"], [[""], [" "]])
    with pytest.raises(UserError, match="no non-empty texts"):
        D.load_csv_texts(blank, "text")
    # A header alone: the column is the right one, so the fix is rows, not another column.
    header_only = write_csv(tmp_path / "header_only.csv", ["text"], [])
    with pytest.raises(UserError, match=_named(header_only) + ": .*only the header row; add rows"):
        D.load_csv_texts(header_only, "text")


def test_load_csv_texts_windows_copy_gives_the_same_words(tmp_path):
    """A CRLF-saved catalogue (Excel on Windows) once gave words like 'closure\\r' and a '\\r' token."""
    from lstm_jax.text import Vocabulary

    rows = [["1", "Black shirt, has a\nbutton closure"], ["2", 'Blue "slim" jeans']]
    lf = write_csv(tmp_path / "lf.csv", ["ProductID", "Description"], rows)
    crlf = tmp_path / "crlf.csv"
    # BOM, CRLF row ends and a CRLF inside the quoted description.
    crlf.write_bytes(b"\xef\xbb\xbf" + lf.read_bytes().replace(b"\n", b"\r\n"))
    texts, _ = D.load_csv_texts(crlf, "Description")
    assert texts == D.load_csv_texts(lf, "Description")[0]
    assert not any("\r" in w for w in Vocabulary.from_texts(texts).token_to_id)


# ---- IMDB ----------------------------------------------------------------------------------------


def _expected_imdb(split: str) -> list[tuple[str, int]]:
    by_label = IMDB_REVIEWS[split]
    return [(t, 1) for t in by_label["pos"]] + [(t, 0) for t in by_label["neg"]]


def test_load_imdb_acl_tree(tmp_path, no_data_env):
    acl = make_acl_imdb(tmp_path)
    for p in (acl, tmp_path):  # the aclImdb/ folder itself or its parent
        data, info = D.load_imdb(p)
        assert data["train"] == _expected_imdb("train")
        assert data["test"] == _expected_imdb("test")
        assert info["train"] == {"examples": 4, "pos": 2, "neg": 2}
        assert info["test"] == {"examples": 3, "pos": 1, "neg": 2}
        assert info["source"] == str(acl)


def test_an_acl_imdb_file_named_with_a_superscript_digit_sorts_last_not_a_traceback(
    tmp_path, no_data_env
):
    """The order key read `<id>_<rating>.txt`'s id with str.isdigit, which takes "²", and then int(),
    which refuses it: a ValueError traceback. Such a name now sorts after the numbered files."""
    acl = make_acl_imdb(tmp_path)
    (acl / "train" / "pos" / "\u00b2_9.txt").write_text(
        "An odd name, great film.", encoding="utf-8"
    )
    data, _ = D.load_imdb(acl)
    pos = [t for t, label in data["train"] if label == 1]
    assert pos[-1] == "An odd name, great film."


def test_load_imdb_csv_gz_and_plain_csv_match_acl(tmp_path, no_data_env):
    acl_data, _ = D.load_imdb(make_acl_imdb(tmp_path / "a"))
    for gz in (True, False):
        data, info = D.load_imdb(make_imdb_csv_dir(tmp_path / f"csv{gz}", gz=gz))
        assert data == acl_data
        assert info["skipped_empty"] == 0


def test_load_imdb_acl_tree_in_the_csvs_order(tmp_path, no_data_env):
    """Reviews come in id order (the CSVs' order), not file-name order ('10_7' before '2_9'): the order
    decides the validation split, so the two sources once gave different training examples."""
    texts = {i: f"review number {i}" for i in (0, 1, 2, 10, 11)}
    rows = [
        [i, 9 if label == "pos" else 2, label, t]
        for label in ("pos", "neg")
        for i, t in texts.items()
    ]
    for split in ("train", "test"):
        for i, rating, label, t in rows:
            d = tmp_path / "aclImdb" / split / label
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{i}_{rating}.txt").write_text(t, encoding="utf-8")
    write_csv(tmp_path / "csv" / "imdb_train.csv", ["id", "rating", "label", "text"], rows)
    write_csv(tmp_path / "csv" / "imdb_test.csv", ["id", "rating", "label", "text"], rows)
    acl, _ = D.load_imdb(tmp_path / "aclImdb")
    from_csv, _ = D.load_imdb(tmp_path / "csv")
    assert [t for t, _ in acl["train"][:5]] == [texts[i] for i in (0, 1, 2, 10, 11)]
    assert acl["train"] == from_csv["train"] and acl["test"] == from_csv["test"]


def test_load_imdb_from_data_root(monkeypatch, tmp_path):
    make_imdb_csv_dir(tmp_path / "imdb")
    monkeypatch.setenv("LSTM_JAX_DATA", str(tmp_path))
    data, info = D.load_imdb()
    assert info["source"] == str(tmp_path / "imdb") and len(data["train"]) == 4


def test_load_imdb_acl_tree_under_data_root(monkeypatch, tmp_path):
    acl = make_acl_imdb(tmp_path)
    monkeypatch.setenv("LSTM_JAX_DATA", str(tmp_path))
    data, info = D.load_imdb()
    assert info["source"] == str(acl) and data["test"] == _expected_imdb("test")


def test_load_imdb_empty_imdb_folder_does_not_hide_acl_tree_under_data_root(monkeypatch, tmp_path):
    """An $LSTM_JAX_DATA/imdb folder without the CSVs was read as the source, and its 'no IMDB data
    found' error hid the $LSTM_JAX_DATA/aclImdb tree the documented order reads next."""
    (tmp_path / "imdb").mkdir()
    acl = make_acl_imdb(tmp_path)
    monkeypatch.setenv("LSTM_JAX_DATA", str(tmp_path))
    data, info = D.load_imdb()
    assert info["source"] == str(acl) and data["train"] == _expected_imdb("train")


def test_load_imdb_bad_label_names_file_and_line(tmp_path):
    write_csv(
        tmp_path / "imdb_train.csv", ["id", "label", "text"], [[0, "pos", "ok"], [1, "meh", "x"]]
    )
    write_csv(tmp_path / "imdb_test.csv", ["id", "label", "text"], [[0, "neg", "ok"]])
    with pytest.raises(
        UserError, match=_named(tmp_path / "imdb_train.csv") + ": line 3: label 'meh'"
    ):
        D.load_imdb(tmp_path)


def test_load_imdb_missing_column_and_empty_text_skipped(tmp_path):
    write_csv(tmp_path / "imdb_train.csv", ["id", "label", "review"], [[0, "pos", "ok"]])
    write_csv(tmp_path / "imdb_test.csv", ["id", "label", "text"], [[0, "neg", "ok"]])
    with pytest.raises(
        UserError, match="missing column.*'text'.*columns found: 'id', 'label', 'review'"
    ):
        D.load_imdb(tmp_path)
    write_csv(tmp_path / "imdb_train.csv", ["label", "text"], [["pos", "good"], ["neg", " "]])
    data, info = D.load_imdb(tmp_path)
    assert data["train"] == [("good", 1)] and info["skipped_empty"] == 1


def test_load_imdb_csv_label_spellings(tmp_path):
    """Labels pos/neg, 1/0 and positive/negative, in any case and with spaces around them."""
    rows = [["POS", "a"], [" Negative ", "b"], ["positive", "c"], ["Neg", "d"], ["1", "e"]]
    write_csv(tmp_path / "imdb_train.csv", ["label", "text"], rows)
    write_csv(tmp_path / "imdb_test.csv", ["label", "text"], [["0", "f"]])
    data, _ = D.load_imdb(tmp_path)
    assert data["train"] == [("a", 1), ("b", 0), ("c", 1), ("d", 0), ("e", 1)]


def test_load_imdb_undecodable_review_names_the_file(tmp_path):
    acl = make_acl_imdb(tmp_path)
    bad = acl / "test" / "neg" / "7_1.txt"
    bad.write_bytes(b"Bad \xff bytes")
    with pytest.raises(UserError, match=_named(bad) + ".*undecodable"):
        D.load_imdb(acl)


def test_load_imdb_incomplete_tree_and_wrong_folder(tmp_path):
    acl = make_acl_imdb(tmp_path)
    for f in (acl / "test" / "neg").iterdir():
        f.unlink()
    (acl / "test" / "neg").rmdir()
    with pytest.raises(UserError, match=_named(acl / "test" / "neg") + ": folder missing"):
        D.load_imdb(acl)
    (tmp_path / "other").mkdir()
    with pytest.raises(UserError, match="no IMDB data found"):
        D.load_imdb(tmp_path / "other")


def test_load_imdb_offline_without_data(no_data_env):
    with pytest.raises(UserError, match="TFDS 'imdb_reviews' needs network access"):
        D.load_imdb()


# ---- fake news -----------------------------------------------------------------------------------


def test_load_fake_news_csv(tmp_path):
    f = make_fake_news_csv(tmp_path / "news.csv")
    data, info = D.load_fake_news_csv(f)
    assert data["author"] == ["Jane Roe, Max Mustermann", "John Smith", "", ""]
    assert data["title"][2] == "" and data["text"][2] == "Miracle cure found by doctors"
    np.testing.assert_array_equal(data["label"], [r[4] for r in FAKE_NEWS_ROWS])
    assert data["label"].dtype == np.int32
    assert info["fake"] == 2 and info["real"] == 2 and info["examples"] == 4
    assert "dup_text" not in info


def test_load_fake_news_csv_skips_all_empty_rows_and_counts_dups(tmp_path):
    f = write_csv(
        tmp_path / "n.csv",
        ["id", "title", "author", "text", "label", "dup_text"],
        [[0, "T", "A", "x", 1, 0], [1, "", "", " ", 0, 0], [2, "T", "A", "x", 1, 1]],
    )
    data, info = D.load_fake_news_csv(f)
    assert len(data["label"]) == 2
    assert info["skipped_empty"] == 1 and info["dup_text"] == 1 and info["rows"] == 3


def test_load_fake_news_csv_reads_float_labels(tmp_path):
    """Labels written as floats ("1.0", "0.0": a label column that went through pandas with a missing
    value) are the same 1 = fake, 0 = real."""
    rows = [list(r) for r in FAKE_NEWS_ROWS]
    for r in rows:
        r[4] = f"{r[4]}.0"
    data, _ = D.load_fake_news_csv(make_fake_news_csv(tmp_path / "news.csv", rows))
    np.testing.assert_array_equal(data["label"], [r[4] for r in FAKE_NEWS_ROWS])


def test_csv_errors_name_the_first_line_of_a_multiline_row(tmp_path):
    rows = [[0, "T", "A", "line one\nline two\nline three", 1], [1, "T", "A", "x", 7]]
    f = make_fake_news_csv(tmp_path / "news.csv", rows)
    with pytest.raises(UserError, match=_named(f) + ": line 5: label '7'"):
        D.load_fake_news_csv(f)


def test_a_bad_label_in_a_multiline_row_names_its_first_line(tmp_path):
    rows = [[0, "T", "A", "line one\nline two\nline three", 7]]  # lines 2 to 4
    f = make_fake_news_csv(tmp_path / "news.csv", rows)
    with pytest.raises(UserError, match=_named(f) + ": line 2: label '7'"):
        D.load_fake_news_csv(f)


def test_csv_header_names_are_stripped(tmp_path):
    f = tmp_path / "news.csv"
    f.write_text("id, title , author,text,label\n0,T,A,x,1\n", encoding="utf-8")
    data, _ = D.load_fake_news_csv(f)
    assert data["title"] == ["T"] and data["label"].tolist() == [1]


def test_load_fake_news_csv_counts_empty_texts_and_numbers_rows_without_an_id(tmp_path):
    """No `id` column: each article's id is its CSV line; an article with a title but no text is
    kept and counted in `empty_text`."""
    f = write_csv(
        tmp_path / "n.csv",
        ["title", "text", "label"],
        [["T1", "x", 1], ["T2", " ", 0], ["", "y", 0]],
    )
    data, info = D.load_fake_news_csv(f)
    assert data["id"] == ["2", "3", "4"]
    assert info["empty_text"] == 1 and info["examples"] == 3 and info["skipped_empty"] == 0


def test_normalise_author_list_literals():
    assert D.normalise_author("['Jane Roe', ' Max ']") == "Jane Roe, Max"
    assert D.normalise_author("['Jane Roe', '', ' ']") == "Jane Roe"
    assert D.normalise_author("[]") == ""
    assert D.normalise_author("[Jane") == "[Jane"  # not a list: unchanged
    assert D.normalise_author("[1, 2]") == "[1, 2]"  # not a list of names: unchanged
    assert D.normalise_author(" Jane Roe ") == " Jane Roe "


@pytest.mark.parametrize("bad_label", ["2", "maybe", ""])
def test_load_fake_news_csv_bad_label_names_file_and_line(tmp_path, bad_label):
    rows = [list(r) for r in FAKE_NEWS_ROWS]
    rows[1][4] = bad_label
    f = make_fake_news_csv(tmp_path / "news.csv", rows)
    with pytest.raises(UserError, match=_named(f) + f": line 3: label '{bad_label}' is not 0"):
        D.load_fake_news_csv(f)


def test_load_fake_news_csv_without_author_and_with_fake_real_names(tmp_path):
    """Kaggle's other fake-news file: `title,text,label` with FAKE / REAL (any case), no author."""
    f = write_csv(
        tmp_path / "fake_or_real.csv",
        ["", "title", "text", "label"],
        [[8476, "T1", "x y", "FAKE"], [10294, "T2", "z", "REAL"], [3608, "T3", "w", "fake"]],
    )
    data, info = D.load_fake_news_csv(f)
    np.testing.assert_array_equal(data["label"], [1, 0, 1])
    assert data["author"] == ["", "", ""]
    assert info["author_column"] is False and info["fake"] == 2
    assert D.load_fake_news_csv(make_fake_news_csv(tmp_path / "k.csv"))[1]["author_column"] is True


def test_load_fake_news_csv_string_labels_say_how_to_fix_the_column(tmp_path):
    rows = [list(r) for r in FAKE_NEWS_ROWS]
    rows[0][4] = "True"
    f = make_fake_news_csv(tmp_path / "news.csv", rows)
    with pytest.raises(UserError, match=r"line 2: label 'True' is not .*map them to 0 and 1"):
        D.load_fake_news_csv(f)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (["id", "title", "author", "text", "label", "text"], r"column 'text' appears 2 times"),
        (["id", "title", "author", "text", "label", "author"], r"column 'author' appears 2 times"),
        (["id", "Title", "author", "text", "label"], r"'Title' differs from 'title' only in case"),
        (["id;title;author;text;label"], r"separated by ';', not commas"),
    ],
)
def test_csv_header_mistakes_are_named(tmp_path, header, message):
    f = write_csv(tmp_path / "h.csv", header, [["1"] * len(header)])
    with pytest.raises(UserError, match=_named(f) + ".*" + message):
        D.load_fake_news_csv(f)


def test_load_csv_texts_missing_column_names_the_flag(tmp_path):
    f = write_csv(tmp_path / "c.csv", ["desc"], [["a red shirt"]])
    with pytest.raises(UserError, match=r"pass --config\.data\.text_column="):
        D.load_csv_texts(f, "Description")


def test_load_fake_news_csv_missing_label_column(tmp_path):
    f = write_csv(tmp_path / "test.csv", ["id", "title", "author", "text"], [[0, "t", "a", "x"]])
    with pytest.raises(
        UserError, match=_named(f) + r": missing column\(s\) 'label'.*test\.csv has no"
    ):
        D.load_fake_news_csv(f)
    # ISOT's Fake.csv / True.csv: no label column at all (the label is the file); renaming cannot fix it.
    isot = write_csv(
        tmp_path / "Fake.csv", ["title", "text", "subject", "date"], [["t", "x", "News", "d"]]
    )
    with pytest.raises(UserError, match=r"'label'.*'date'; .*label 1 for Fake\.csv's rows") as e:
        D.load_fake_news_csv(isot)
    assert "rename" not in str(e.value) and "\n" not in str(e.value)
    # A differently cased Label is still named as such.
    cased = write_csv(tmp_path / "c.csv", ["title", "text", "Label"], [["t", "x", "1"]])
    with pytest.raises(UserError, match="'Label' differs from 'label' only in case"):
        D.load_fake_news_csv(cased)


# ---- LIAR ----------------------------------------------------------------------------------------


def test_load_liar(tmp_path, no_data_env):
    root = make_liar_dir(tmp_path / "liar")
    data, info = D.load_liar(root)
    np.testing.assert_array_equal(data["train"]["label"], [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(data["train"]["binary_label"], [1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(data["valid"]["label"], [5, 1])
    np.testing.assert_array_equal(data["test"]["binary_label"], [0, 1])
    assert data["valid"]["statement"] == ["Water is wet.", "Cats can fly."]
    assert data["train"]["state_info"][0] == "Texas"
    assert info["train"]["label_counts"]["half-true"] == 1
    assert (info["test"]["fake"], info["test"]["real"]) == (1, 1)


def test_load_liar_official_tsvs_give_the_staged_csvs_examples(tmp_path, no_data_env):
    """liar_dataset.zip holds train/valid/test.tsv: no header, 14 tab-separated columns, ids
    `<n>.json`, statements with unbalanced quotes. They once failed with 'liar_train.csv: not found'."""
    csv_dir = make_liar_dir(tmp_path / "csv")
    csv_dir_data, csv_info = D.load_liar(csv_dir, D.LIAR_META)
    tsv_dir = tmp_path / "liar_dataset"
    tsv_dir.mkdir()
    for split in ("train", "valid", "test"):
        with open(csv_dir / f"liar_{split}.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))[1:]
        if split == "train":  # an unbalanced quote, as in the real statements
            rows[0][2] = 'Says "the moon is made of cheese.'
            csv_dir_data["train"]["statement"][0] = rows[0][2]
        lines = ["\t".join([f"{r[0]}.json", *r[1:14]]) for r in rows]
        end = "\r\n" if split == "test" else "\n"  # a copy saved on Windows
        (tsv_dir / f"{split}.tsv").write_bytes((end.join(lines) + end).encode("utf-8"))
    data, info = D.load_liar(tsv_dir, D.LIAR_META)
    for split, cols in csv_dir_data.items():
        for k, v in cols.items():
            assert (
                np.array_equal(data[split][k], v)
                if isinstance(v, np.ndarray)
                else data[split][k] == v
            )
    assert {k: v for k, v in info.items() if k != "source"} == {
        k: v for k, v in csv_info.items() if k != "source"
    }
    (tsv_dir / "valid.tsv").write_text("1.json\tfalse\tToo few fields\n", encoding="utf-8")
    with pytest.raises(UserError, match=_named(tsv_dir / "valid.tsv") + ": line 1 has 3 tab-sep"):
        D.load_liar(tsv_dir)


def _liar_csvs(root, rows_by_split, header=None):
    header = header or ["id", "label", "statement", "subject", "context"]
    for split in ("train", "valid", "test"):
        rows = rows_by_split.get(split, [["9", "true", "s"]])
        rows = [[*r, *[""] * (len(header) - len(r))] for r in rows]  # absent cells: empty
        write_csv(root / f"liar_{split}.csv", header, rows)
    return root


def test_load_liar_verdict_case_empty_statements_and_absent_metadata(tmp_path):
    """Verdicts in any case; an empty statement is skipped and counted; metadata columns the files
    lack are read as "" (only those config.data.metadata names must exist)."""
    rows = [
        ["1", "TRUE", "Sky is blue.", "weather", "tv"],
        ["2", " Pants-Fire ", "Moon is cheese.", "space", "blog"],
        ["3", "false", "  ", "x", "y"],
        ["4", "Half-True", "Mixed.", "z", "w"],
    ]
    root = _liar_csvs(tmp_path / "liar", {"train": rows})
    data, info = D.load_liar(root, ["subject"])
    train = data["train"]
    assert train["id"] == ["1", "2", "4"] and train["label"].tolist() == [5, 0, 3]
    assert train["binary_label"].tolist() == [0, 1, 0]
    assert train["subject"] == ["weather", "space", "z"] and train["speaker"] == ["", "", ""]
    assert info["skipped_empty"] == 1
    assert (info["train"]["fake"], info["train"]["real"]) == (1, 2)


def test_load_liar_prefers_the_staged_csv_to_the_official_tsv(tmp_path):
    root = _liar_csvs(tmp_path / "liar", {"train": [["1", "true", "From the CSV."]]})
    cols = ["1.json", "false", "From the TSV."] + [""] * 11
    (root / "train.tsv").write_text("\t".join(cols) + "\n", encoding="utf-8")
    data, _ = D.load_liar(root)
    assert data["train"]["statement"] == ["From the CSV."]
    (root / "liar_train.csv").unlink()
    data, _ = D.load_liar(root)
    assert data["train"]["statement"] == ["From the TSV."] and data["train"]["id"] == ["1"]


def test_load_liar_bad_label_and_missing_split(tmp_path):
    root = make_liar_dir(tmp_path / "liar")
    text = (root / "liar_valid.csv").read_text().replace("true,Water", "maybe,Water")
    (root / "liar_valid.csv").write_text(text)
    with pytest.raises(
        UserError, match=_named(root / "liar_valid.csv") + ": line 2: label 'maybe'"
    ):
        D.load_liar(root)
    (root / "liar_test.csv").unlink()
    (root / "liar_valid.csv").unlink()
    with pytest.raises(UserError, match=_named(root / "liar_valid.csv") + ".*not found"):
        D.load_liar(root)


def test_load_liar_given_a_file_asks_for_the_folder(tmp_path):
    root = make_liar_dir(tmp_path / "liar")
    with pytest.raises(UserError, match=r"liar_train\.csv is a file; pass the folder"):
        D.load_liar(root / "liar_train.csv")


def test_load_liar_without_data_names_both_fixes(no_data_env):
    with pytest.raises(UserError, match="fake_news/liar.*LSTM_JAX_DATA"):
        D.load_liar()


# ---- splits --------------------------------------------------------------------------------------


def test_train_test_split_matches_sklearn_on_data():
    from sklearn.model_selection import train_test_split as sk

    x = np.arange(50) * 10
    y = np.arange(50) % 2
    x_tr, x_te, y_tr, _ = sk(x, y, test_size=0.33, random_state=42)
    tr, te = D.train_test_split(50, 0.33, seed=42)
    np.testing.assert_array_equal(x[tr], x_tr)
    np.testing.assert_array_equal(x[te], x_te)
    np.testing.assert_array_equal(y[tr], y_tr)
    assert len(te) == 17 and sorted(np.concatenate([tr, te]).tolist()) == list(range(50))
    tr2, _ = D.train_test_split(50, 0.33, seed=100)
    assert not np.array_equal(tr, tr2)


def test_train_test_split_stratified_and_bad_input():
    y = np.array([0] * 8 + [1] * 4)
    tr, te = D.train_test_split(12, 0.25, seed=0, stratify=y)
    assert y[te].tolist().count(1) == 1 and len(te) == 3
    with pytest.raises(UserError, match="test fraction 1.5"):
        D.train_test_split(10, 1.5, seed=0)
    with pytest.raises(UserError, match="cannot split 1 example.*provide more data"):
        D.train_test_split(1, 0.5, seed=0)
    for bad in (0.0, 1.0):  # the ends of (0, 1) are named as such, not passed on to sklearn
        with pytest.raises(UserError, match=rf"test fraction {bad} is not in \(0, 1\)"):
            D.train_test_split(10, bad, seed=0)
    with pytest.raises(UserError, match=r"config\.data\.validation_fraction=1\.0 must be in"):
        D.check_fraction(1.0, "config.data.validation_fraction")


def test_train_test_split_stratified_matches_sklearn():
    from sklearn.model_selection import train_test_split as sk

    y = np.array([0, 1, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0])
    x = np.arange(16)
    x_tr, x_te = sk(x, test_size=0.25, random_state=3, stratify=y)
    tr, te = D.train_test_split(16, 0.25, seed=3, stratify=y)
    np.testing.assert_array_equal(tr, x_tr)
    np.testing.assert_array_equal(te, x_te)
    plain_tr, _ = D.train_test_split(16, 0.25, seed=3)
    assert not np.array_equal(plain_tr, tr)  # stratifying changes the split for this seed


# ---- TFDS path (real code, mocked data) ----------------------------------------------------------


def _fake_tfds_load(name, splits, what, default_relative):
    """What `tfds.as_numpy` yields: dicts of numpy bytes / int64 (no TF import, milliseconds)."""
    if name == "tiny_shakespeare":
        return [[{"text": np.bytes_(t.encode())}] for t in ("First Citizen:\n", "Be", "fore")]
    return [
        [{"text": np.bytes_(b"Great <br />film"), "label": np.int64(1)}],
        [{"text": np.bytes_(b"Dull"), "label": np.int64(0)}],
    ]


def test_tfds_branch_converts_to_the_local_types(monkeypatch, tmp_path):
    monkeypatch.delenv("LSTM_JAX_DATA", raising=False)
    monkeypatch.setattr(D, "_tfds_load", _fake_tfds_load)
    splits, info = D.load_tiny_shakespeare()
    assert splits == {"train": "First Citizen:\n", "validation": "Before"}  # valid + test
    assert info["source"] == "tfds:tiny_shakespeare" and info["chars"] == 21
    data, info = D.load_imdb()
    assert data == {"train": [("Great <br />film", 1)], "test": [("Dull", 0)]}
    assert type(data["train"][0][0]) is str and type(data["train"][0][1]) is int
    assert info["source"] == "tfds:imdb_reviews"


@pytest.mark.skipif(
    not os.environ.get("LSTM_JAX_TF_TESTS"),
    reason="imports TensorFlow (~15 s on 2 cores); set LSTM_JAX_TF_TESTS=1 to run",
)
def test_tfds_path_with_mock_data_returns_the_local_types(monkeypatch, tmp_path):
    monkeypatch.delenv("LSTM_JAX_DATA", raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(D, "_network_reachable", lambda *a, **k: True)
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=3, data_dir=str(tmp_path)):
        splits, info = D.load_tiny_shakespeare()
        data, imdb_info = D.load_imdb()
    assert info["source"] == "tfds:tiny_shakespeare"
    assert isinstance(splits["train"], str) and isinstance(splits["validation"], str)
    assert imdb_info["source"] == "tfds:imdb_reviews" and len(data["train"]) == 3
    text, label = data["test"][0]
    assert isinstance(text, str) and label in (0, 1) and isinstance(label, int)


# ---- real data (skipped without LSTM_JAX_DATA) ---------------------------------------------------


def _real(rel: str) -> Path:
    root = os.environ.get("LSTM_JAX_DATA")
    if not root or not (Path(root) / rel).exists():
        pytest.skip(f"real data $LSTM_JAX_DATA/{rel} not available")
    return Path(root) / rel


def test_real_tiny_shakespeare_matches_nanogpt_split():
    _real("shakespeare/tinyshakespeare.txt")
    splits, info = D.load_tiny_shakespeare()
    assert info["chars"] == 1_115_394 and info["distinct_chars"] == 65
    assert len(splits["train"]) == 1_003_854 and len(splits["validation"]) == 111_540


def test_real_macbeth_and_fashion():
    text, info = D.load_text(_real("shakespeare/macbeth_gutenberg_nltk.txt"))
    assert info["distinct_chars"] == 67 and text.count("\n") == 3286
    texts, info = D.load_csv_texts(_real("fashion/myntra_products_catalog.csv"), "Description")
    assert info["rows"] == info["texts"] == 12_491


def test_real_imdb_counts():
    _real("imdb/imdb_train.csv.gz")
    data, info = D.load_imdb()
    for split in ("train", "test"):
        assert info[split] == {"examples": 25_000, "pos": 12_500, "neg": 12_500}
    with_br = sum("<br />" in t for t, _ in data["train"] + data["test"])
    assert with_br == 29_200  # reviews with <br /> tags


def test_real_fake_news_and_liar_counts():
    data, info = D.load_fake_news_csv(_real("fake_news/articles/fake_real_articles.csv"))
    assert (info["examples"], info["fake"], info["real"], info["dup_text"]) == (1651, 822, 829, 15)
    assert data["author"][0] == "Wendy Gittleson"
    liar, info = D.load_liar()
    assert [info[s]["examples"] for s in ("train", "valid", "test")] == [10_269, 1_284, 1_283]
    assert [(info[s]["fake"], info[s]["real"]) for s in ("train", "valid", "test")] == [
        (4497, 5772),
        (616, 668),
        (556, 727),
    ]
    assert info["train"]["label_counts"]["pants-fire"] == 842


def test_fingerprint_digests_values_dtypes_and_structure():
    import jax.numpy as jnp

    ids = np.arange(2000, dtype=np.int32).reshape(40, 50)
    base = D.fingerprint({"train": {"ids": ids, "label": ids[:, 0]}}, "x")
    assert base == D.fingerprint({"train": {"label": ids[:, 0], "ids": ids.copy()}}, "x")
    flipped = ids.copy()
    flipped[20, 25] += 1  # one value in the middle (a repr would elide it)
    assert base != D.fingerprint({"train": {"ids": flipped, "label": ids[:, 0]}}, "x")
    assert base != D.fingerprint({"train": {"ids": ids.astype(np.int64), "label": ids[:, 0]}}, "x")
    assert base != D.fingerprint({"train": {"ids": ids.reshape(50, 40), "label": ids[:, 0]}}, "x")
    assert D.fingerprint(jnp.asarray(flipped)) == D.fingerprint(flipped)  # values, not the repr
    assert D.fingerprint(jnp.asarray(flipped)) != D.fingerprint(ids)
    assert D.fingerprint(["ab", "c"]) != D.fingerprint(["a", "bc"])
    assert D.fingerprint([["a"], "b"]) != D.fingerprint(["a", ["b"]])  # nesting is structure
    zeros = np.zeros(4, np.int32)
    assert D.fingerprint(zeros) != D.fingerprint(zeros.view(np.float32))  # same bytes, other dtype
    with pytest.raises(TypeError, match="cannot digest a object"):
        D.fingerprint(object())


@pytest.mark.parametrize("split", ["test", "train"])
def test_an_acl_imdb_tree_missing_a_split_names_that_folder(tmp_path, no_data_env, split):
    """aclImdb/ without test/ was "no IMDB data found", while one without train/neg named the folder."""
    acl = make_acl_imdb(tmp_path)
    shutil.rmtree(acl / split)
    for given in (acl, tmp_path):
        with pytest.raises(UserError, match=_named(acl / split) + ": folder missing"):
            D.load_imdb(given)
