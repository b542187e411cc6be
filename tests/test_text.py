"""Tests of lstm_jax.text against hand-computed examples (and Keras where that is cheap)."""

from __future__ import annotations

import json
import os
import re
import string
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lstm_jax.errors import UserError
from lstm_jax.text import (
    BUILTIN_NLTK_ENGLISH_STOPWORDS,
    BUILTIN_STOPWORDS_SOURCE,
    FakeNewsPreprocessor,
    Vocabulary,
    fake_news_text,
    load_stopwords,
    pad_sequences,
    pad_sequences_with_mask,
    stable_hash_id,
    standardize_imdb,
)

TEXTS = ["The cat sat on the mat.", "The dog ate the cat!"]
# counts: the 4, cat 2, sat 1, on 1, mat 1, dog 1, ate 1 (first-occurrence order for ties)


# ---- Vocabulary: word level ----------------------------------------------------------------------


def test_frequency_order_ties_first_occurrence_and_reserved_zero():
    v = Vocabulary.from_texts(TEXTS)
    assert v.tokens == ["the", "cat", "sat", "on", "mat", "dog", "ate"]
    assert v.token_to_id["the"] == 1 and v.token_to_id["ate"] == 7
    assert v.size == len(v) == 8  # ids 0..7, 0 = padding
    assert v.pad_id == 0 and v.oov_id is None
    assert v.encode("The cat and the bird") == [1, 2, 1]  # unknown words dropped (Keras)
    assert v.encode_batch(["mat, dog", ""]) == [[5, 6], []]


def test_ties_keep_first_occurrence_not_alphabetical():
    v = Vocabulary.from_texts(["zebra apple", "apple zebra"])
    assert v.tokens == ["zebra", "apple"]


def test_filters_lower_and_apostrophes_like_keras():
    v = Vocabulary.from_texts(["Don't STOP--now\tgo\nhome"])
    assert v.tokens == ["don't", "stop", "now", "go", "home"]
    assert Vocabulary.from_texts(["A a"], lower=False).tokens == ["A", "a"]


def test_oov_token_gets_id_one():
    v = Vocabulary.from_texts(TEXTS, oov_token="<OOV>")
    assert v.tokens[:3] == ["<OOV>", "the", "cat"]
    assert v.oov_id == 1 and v.size == 9
    assert v.encode("the bird cat") == [2, 1, 3]


def test_oov_token_in_the_texts_keeps_its_one_id():
    """A text that holds the OOV token's own string counts no second entry for it: the token keeps id 1
    and the words after it are numbered as without it."""
    v = Vocabulary.from_texts(["the unk cat unk unk"], oov_token="unk")
    assert v.tokens == ["unk", "the", "cat"] and v.size == 4
    assert v.encode("unk cat dog") == [1, 3, 1]


def test_num_words_cap_without_and_with_oov():
    v = Vocabulary.from_texts(TEXTS, num_words=4)  # keeps ids 1..3: the, cat, sat
    assert v.size == 4
    assert v.encode("the mat sat cat") == [1, 3, 2]
    assert v.decode([1, 5, 3]) == "the sat"
    w = Vocabulary.from_texts(TEXTS, num_words=4, oov_token="<OOV>")  # ids 1..3: OOV, the, cat
    assert w.encode("the mat sat cat") == [2, 1, 1, 3]
    assert w.decode([2, 6, 3]) == "the <OOV> cat"


def test_decode_caps_at_num_words_itself():
    """The id `num_words` is the first capped id, as in `encode`: decoded as the OOV token, or dropped
    without one; `num_words - 1` is the last id decoded as its word."""
    v = Vocabulary.from_texts(TEXTS, num_words=4)  # ids 1..3: the, cat, sat; 4 is "on"
    assert v.decode([3, 4]) == "sat"
    assert v.decode(v.encode("sat on")) == "sat"
    w = Vocabulary.from_texts(TEXTS, num_words=4, oov_token="<OOV>")  # ids 1..3: OOV, the, cat
    assert w.decode([3, 4]) == "cat <OOV>"


def test_fit_accumulates_counts_like_keras():
    v = Vocabulary().fit(["b"]).fit(["a a"])
    assert v.tokens == ["a", "b"]
    assert dict(v.counts) == {"b": 1, "a": 2}


def test_decode_skips_padding_and_unknown_ids():
    v = Vocabulary.from_texts(TEXTS)
    assert v.decode([0, 0, 1, 2, 99]) == "the cat"
    assert v.id_to_token(0) is None and v.id_to_token(2) == "cat"


def test_strict_encode_names_unknown_words():
    v = Vocabulary.from_texts(TEXTS)
    with pytest.raises(UserError, match="unknown words 'bird', 'fish'"):
        v.encode("the bird fish bird", strict=True)


def test_matches_keras_tokenizer(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    text_mod = pytest.importorskip("keras.src.legacy.preprocessing.text")
    corpus = [
        "It was the best of times, it was the worst of times;",
        "it was the age of wisdom... it was the age of foolishness!",
        "Don't panic: 42 is (the) answer.",
    ]
    for kwargs in ({}, {"oov_token": "<unk>", "num_words": 6}, {"num_words": 5}):
        k = text_mod.Tokenizer(**kwargs)
        k.fit_on_texts(corpus)
        v = Vocabulary.from_texts(corpus, **kwargs)
        assert v.token_to_id == k.word_index
        probe = corpus + ["wisdom of the unknown age"]
        assert v.encode_batch(probe) == k.texts_to_sequences(probe)
        k_char = text_mod.Tokenizer(char_level=True, **kwargs)
        k_char.fit_on_texts(corpus)
        v_char = Vocabulary.from_texts(corpus, char_level=True, **kwargs)
        assert v_char.token_to_id == k_char.word_index
        assert v_char.encode_batch(probe) == k_char.texts_to_sequences(probe)


def test_fit_on_a_single_str_counts_it_as_one_text():
    """`fit("a b a")` is one text of three words, not Keras' iteration over its characters."""
    v = Vocabulary().fit("bb a bb")
    assert v.tokens == ["bb", "a"] and dict(v.counts) == {"bb": 2, "a": 1}


def test_encode_after_a_further_fit_uses_the_new_ids():
    """`encode` caches the capped lookup; a later `fit` that renumbers the words must not reuse it."""
    v = Vocabulary.from_texts(["a a b"])
    assert v.encode("a b c") == [1, 2]
    v.fit(["c c c b b"])  # a 2, b 3, c 3: b and c tie, b seen first
    assert v.tokens == ["b", "c", "a"]
    assert v.encode("a b c") == [3, 1, 2]


def test_standardize_none_splits_on_the_separator_only():
    """`standardize="none"` (the LIAR metadata vocabulary): no lowercasing, no filters, split on
    `split` alone (spaces kept inside a token), empty tokens between separators dropped."""
    sep = "\x1f"
    v = Vocabulary.from_texts(
        [sep.join(["New York", "Dem.", "", "New York"]) + sep], standardize="none", split=sep
    )
    assert v.tokens == ["New York", "Dem."]
    assert v.encode(f"Dem.{sep}{sep}new york") == [2]


def test_oov_id_follows_start_zero():
    """With `start=0` the OOV token takes id 0 (there is no padding id), and unknowns encode to 0."""
    v = Vocabulary.from_texts(["b a b"], oov_token="?", start=0)
    assert v.tokens == ["?", "b", "a"]
    assert v.oov_id == 0 and v.pad_id is None and v.size == 3
    assert v.encode("a z b") == [2, 0, 1]


def test_strict_encode_rejects_words_beyond_num_words():
    """A word past the `num_words` cap is unknown to the model: strict encoding names it too."""
    v = Vocabulary.from_texts(TEXTS, num_words=4)  # ids 1..3: the, cat, sat; "on" (id 4) capped
    with pytest.raises(UserError, match="unknown words 'on'"):
        v.encode("the on", strict=True)
    assert v.encode("the sat", strict=True) == [1, 3]


def test_decode_and_id_to_token_at_the_ends_of_the_id_range():
    v = Vocabulary.from_texts(TEXTS)  # ids 1..7: the ... ate; 8 is one past the last
    assert v.id_to_token(1) == "the" and v.id_to_token(7) == "ate"
    assert v.id_to_token(8) is None and v.id_to_token(-1) is None
    assert v.decode([7, 8, 1]) == "ate the"
    c = Vocabulary.from_texts(["ba"], char_level=True, order="sorted", start=0)
    assert c.id_to_token(0) == "a" and c.id_to_token(2) is None


# ---- Vocabulary: char level ----------------------------------------------------------------------


def test_char_level_frequency_keras():
    v = Vocabulary.from_texts(["abca"], char_level=True)
    assert v.tokens == ["a", "b", "c"] and v.encode("cab") == [3, 1, 2]
    assert v.decode([3, 1, 2]) == "cab"  # characters joined without spaces


def test_char_level_sorted_from_zero_like_macbeth_tutorial():
    text = "Hello World"
    v = Vocabulary.from_texts([text], char_level=True, order="sorted", start=0)
    chars = sorted(set(text.lower()))  # the tutorial: chars = sorted(list(set(raw_text)))
    assert v.tokens == chars == [" ", "d", "e", "h", "l", "o", "r", "w"]
    assert v.size == 8 and v.pad_id is None
    assert v.encode("hold") == [3, 5, 4, 1]
    assert v.decode([3, 2, 4, 4, 5]) == "hello"


def test_char_strict_names_unknown_characters():
    v = Vocabulary.from_texts(["hello"], char_level=True, order="sorted", start=0)
    with pytest.raises(UserError, match=r"unknown characters 'z', '!'"):
        v.encode("hez!z", strict=True)
    assert v.encode("hez!z") == [1, 0]  # non-strict: dropped (Keras)


# ---- Vocabulary: IMDB style ----------------------------------------------------------------------


def test_standardize_imdb():
    assert standardize_imdb("It's <br />GREAT!!") == "its  great"
    assert standardize_imdb("A<br /><br />B-c") == "a  bc"
    # tf.strings.lower lowercases ASCII letters only
    assert standardize_imdb("ÉCOLE Über İSTANBUL<BR />") == "École Über İstanbul "


def test_imdb_vocabulary_padding_oov_and_total_size():
    texts = ["Great movie!<br /><br />Great fun.", "Don't watch this movie."]
    # tokens: great 2, movie 2, fun 1, dont 1, watch 1, this 1
    v = Vocabulary.from_texts(texts, standardize="imdb", oov_token="[UNK]", num_words=5)
    assert v.tokens[:4] == ["[UNK]", "great", "movie", "fun"]
    assert v.size == 5  # 0 pad, 1 OOV, 2..4 most frequent: the total includes pad and OOV
    assert v.encode("Great, dont stop<br />movie") == [2, 1, 1, 3]


def test_textvectorization_order_breaks_ties_by_token_descending():
    texts = ["apple banana", "cherry cherry"]
    assert Vocabulary.from_texts(texts).tokens == ["cherry", "apple", "banana"]
    v = Vocabulary.from_texts(texts, order="textvectorization", oov_token="[UNK]")
    assert v.tokens == ["[UNK]", "cherry", "banana", "apple"]


def test_imdb_tokens_split_on_ascii_whitespace_only():
    v = Vocabulary.from_texts(["a\u00a0b c\td\n"], standardize="imdb")
    assert v.tokens == ["a\u00a0b", "c", "d"]  # tf.strings.split keeps the no-break space
    # str.split() would also split at the ASCII separators \x1c-\x1f; tf.strings.split does not
    assert v.tokenize("x\x1cy z\x1f") == ["x\x1cy", "z\x1f"]


TF_TESTS = pytest.mark.skipif(
    not os.environ.get("LSTM_JAX_TF_TESTS"),
    reason="imports TensorFlow (~15 s on 2 cores); set LSTM_JAX_TF_TESTS=1 to run",
)


@TF_TESTS
def test_imdb_vocabulary_matches_keras_textvectorization():
    tf = pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    texts = (
        [
            "Great movie!<br /><br />Great fun, don't miss it.",
            "Don't watch this movie: dull, dull, DULL.",
            "A fun cast; a dull plot.\tThe end\u00a0credits were fun",
        ]
        * 3
        + ["café naïve fun"]
        + ["CAFÉ École\x1fÜber école"] * 4
    )

    def custom_standardization(x):  # the tutorial's function
        x = tf.strings.regex_replace(tf.strings.lower(x), "<br />", " ")
        return tf.strings.regex_replace(x, f"[{re.escape(string.punctuation)}]", "")

    tv = keras.layers.TextVectorization(
        standardize=custom_standardization, max_tokens=12, output_sequence_length=9
    )
    tv.adapt(texts)
    v = Vocabulary.from_texts(
        texts, standardize="imdb", oov_token="[UNK]", num_words=12, order="textvectorization"
    )
    assert tv.get_vocabulary() == [""] + v.tokens[: v.size - 1]
    ours = pad_sequences(v.encode_batch(texts), 9, padding="post", truncating="post")
    np.testing.assert_array_equal(np.asarray(tv(texts)), ours)


# ---- Vocabulary: JSON ----------------------------------------------------------------------------


def test_json_round_trip(tmp_path):
    v = Vocabulary.from_texts(TEXTS + ["über café"], oov_token="<OOV>", num_words=6)
    path = tmp_path / "vocab.json"
    v.save(path)
    w = Vocabulary.load(path)
    assert w == v
    assert w.encode("the über bird") == v.encode("the über bird") == [2, 1, 1]
    assert json.loads(path.read_text(encoding="utf-8"))["config"]["num_words"] == 6
    assert not list(tmp_path.glob("vocab.json.tmp*"))
    assert Vocabulary.from_json(json.loads(v.to_json())) == v  # an already-parsed dict works too
    c = Vocabulary.from_texts(["ba"], char_level=True, order="sorted", start=0)
    assert Vocabulary.from_json(c.to_json()).encode("ab") == [0, 1]


def test_vocabularies_differ_by_config_tokens_or_counts():
    base = Vocabulary.from_texts(["a b b"])
    assert base != Vocabulary.from_texts(["a b b"], oov_token="<OOV>")  # config (and tokens)
    assert base != Vocabulary.from_texts(["a b b"], num_words=2)  # config only
    reordered = Vocabulary.from_texts(["a b b"])
    reordered.tokens = ["a", "b"]
    assert base != reordered  # tokens only
    recounted = Vocabulary.from_texts(["a b b b"])
    assert recounted.tokens == base.tokens and base != recounted  # counts only


def test_json_keeps_first_occurrence_order_for_a_later_fit():
    """The saved counts keep first-occurrence order, so a loaded vocabulary that fits more text
    breaks ties as the original would (Keras Tokenizer: ties by first occurrence)."""
    v = Vocabulary.from_texts(["zebra apple"])
    w = Vocabulary.from_json(v.to_json())
    assert w.fit(["mango"]).tokens == v.fit(["mango"]).tokens == ["zebra", "apple", "mango"]


def test_json_errors_name_the_file(tmp_path):
    bad = tmp_path / "vocab.json"
    bad.write_text('{"format": "other"}', encoding="utf-8")
    with pytest.raises(UserError, match=re.escape(str(bad))):
        Vocabulary.load(bad)
    with pytest.raises(UserError, match="not found"):
        Vocabulary.load(tmp_path / "missing.json")
    bad.write_bytes(b'{"format": "\xff"}')
    with pytest.raises(UserError, match=re.escape(str(bad)) + ": not UTF-8 text"):
        Vocabulary.load(bad)


def test_bad_options_raise_user_error():
    with pytest.raises(UserError, match="order"):
        Vocabulary(order="alphabetical")
    with pytest.raises(UserError, match="standardize"):
        Vocabulary(standardize="bert")
    with pytest.raises(UserError, match="num_words"):
        Vocabulary(num_words=1)
    with pytest.raises(UserError, match="start=-1"):
        Vocabulary(start=-1)
    with pytest.raises(UserError, match="split"):
        Vocabulary(split="")


# ---- padding -------------------------------------------------------------------------------------

SEQS = [[1, 2, 3], [4], [5, 6, 7, 8, 9]]


@pytest.mark.parametrize(
    ("padding", "truncating", "expected"),
    [
        ("pre", "pre", [[1, 2, 3], [0, 0, 4], [7, 8, 9]]),
        ("post", "post", [[1, 2, 3], [4, 0, 0], [5, 6, 7]]),
        ("pre", "post", [[1, 2, 3], [0, 0, 4], [5, 6, 7]]),
        ("post", "pre", [[1, 2, 3], [4, 0, 0], [7, 8, 9]]),
    ],
)
def test_pad_sequences(padding, truncating, expected):
    out = pad_sequences(SEQS, maxlen=3, padding=padding, truncating=truncating)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, expected)


def test_pad_sequences_default_maxlen_value_and_empty():
    out = pad_sequences([[1, 2], [], [3]], value=-1)
    np.testing.assert_array_equal(out, [[1, 2], [-1, -1], [-1, 3]])
    assert pad_sequences([], maxlen=4).shape == (0, 4)


def test_mask_comes_from_lengths_not_values():
    ids, mask = pad_sequences_with_mask([[0, 5], [7, 8, 9, 10]], maxlen=3)
    np.testing.assert_array_equal(ids, [[0, 0, 5], [8, 9, 10]])
    np.testing.assert_array_equal(mask, [[False, True, True], [True, True, True]])
    _, post = pad_sequences_with_mask([[4]], maxlen=3, padding="post")
    np.testing.assert_array_equal(post, [[True, False, False]])


def test_pad_sequences_zero_lengths():
    """maxlen=0 gives an empty `[batch, 0]` array; the default maxlen of empty sequences is 0, as
    Keras' `max(len(s))`; a negative maxlen is a UserError."""
    ids, mask = pad_sequences_with_mask([[1, 2], [3]], maxlen=0)
    assert ids.shape == mask.shape == (2, 0)
    assert pad_sequences([[], []]).shape == (2, 0)
    assert pad_sequences([]).shape == (0, 0)
    with pytest.raises(UserError, match="maxlen=-1"):
        pad_sequences([[1]], maxlen=-1)


def test_pad_sequences_bad_side():
    with pytest.raises(UserError, match="padding='middle'"):
        pad_sequences(SEQS, maxlen=2, padding="middle")


def test_pad_sequences_matches_keras(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    seq_mod = pytest.importorskip("keras.src.utils.sequence_utils")
    for padding in ("pre", "post"):
        for truncating in ("pre", "post"):
            ref = seq_mod.pad_sequences(SEQS, maxlen=4, padding=padding, truncating=truncating)
            ours = pad_sequences(SEQS, maxlen=4, padding=padding, truncating=truncating)
            np.testing.assert_array_equal(ours, ref)


# ---- fake news -----------------------------------------------------------------------------------

STOP = frozenset(BUILTIN_NLTK_ENGLISH_STOPWORDS)


def _reference_words(text: str, stopwords: frozenset[str]) -> list[str]:
    """The tutorial's loop body, verbatim in spirit (re.sub, lower, split, stopwords, Porter)."""
    from nltk.stem import PorterStemmer

    ps = PorterStemmer()
    review = re.sub("[^a-zA-Z]", " ", text).lower().split()
    return [ps.stem(word) for word in review if word not in stopwords]


def test_fake_news_text_fills_missing_fields_with_space():
    assert fake_news_text("Title", "Ann", "Body") == "Title Ann Body"
    assert fake_news_text("T", "", None) == "T" + " " + " " + " " + " "


def test_fake_news_words_hand_computed():
    p = FakeNewsPreprocessor(STOP)
    words = p.words("The runners were running quickly; 2 cats!")
    assert words == ["runner", "run", "quickli", "cat"]  # the/were are stopwords, 2 and ; dropped


def test_fake_news_words_match_tutorial_on_awkward_text():
    texts = [
        "Café naïve résumé — Kelvin \u212a and İstanbul's 'quotes'",
        "ALL CAPS HEADLINE: Don't believe it!!! e-mail x2y3z",
        "",
        "\t\n   ",
    ]
    p = FakeNewsPreprocessor(STOP)
    for t in texts:
        assert p.words(t) == _reference_words(t, STOP)


def test_fake_news_ids_hand_pinned_and_padding():
    # md5 ids pinned by hand: int(md5(w).hexdigest(), 16) % 9999 + 1
    assert stable_hash_id("run", 10_000) == 4970
    assert stable_hash_id("runner", 10_000) == 4887
    p = FakeNewsPreprocessor(STOP, num_buckets=10_000, maxlen=3)
    assert p.encode("The runner is running") == [4887, 4970]
    out = p(["The runner is running", "runner run run runner"])
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [[0, 4887, 4970], [4970, 4970, 4887]])  # pre pad, pre cut


def test_fake_news_ids_drop_stopwords_before_stemming_as_the_words_do():
    """`encode` (its per-word id cache) drops a word that is a stopword, not a word whose stem is one:
    "owned" and "afters" are kept although their stems "own" and "after" are stopwords, as `words` and
    the tutorial (`stem(w) for w in review if w not in stopwords`) keep them."""
    p = FakeNewsPreprocessor(STOP)
    text = "She owned the afters"
    assert p.words(text) == ["own", "after"]
    assert p.encode(text) == [stable_hash_id(w, 10_000) for w in ("own", "after")]


def test_fake_news_ids_match_keras_md5_hashing_trick(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    text_mod = pytest.importorskip("keras.src.legacy.preprocessing.text")
    p = FakeNewsPreprocessor(STOP, num_buckets=500)
    text = "Senators debated the spending bill for hours, then voted against it."
    joined = " ".join(p.words(text))  # the tutorial's corpus entry
    assert p.encode(text) == text_mod.hashing_trick(joined, 500, hash_function="md5")
    assert all(1 <= i < 500 for i in p.encode(text))


# Child-process preamble: register `lstm_jax` as a bare package so `lstm_jax.text` imports without
# the package __init__ (which pulls in JAX and Flax: seconds per process on 2 cores).
_BARE_PACKAGE = (
    "import sys, types; _p = types.ModuleType('lstm_jax'); "
    f"_p.__path__ = [{str(Path(__file__).resolve().parents[1] / 'lstm_jax')!r}]; "
    "sys.modules['lstm_jax'] = _p; "
)


def _python(code: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _BARE_PACKAGE + code],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        text=True,
    )


def test_fake_news_hash_is_stable_across_processes():
    text = "Breaking news: senators vote on the budget while markets rally"
    p = FakeNewsPreprocessor(STOP)
    ours = p.encode(text)
    assert ours == [stable_hash_id(w, 10_000) for w in p.words(text)]
    # The children hash the same stems (importing only lstm_jax.text, not nltk: ~2 s CPU).
    code = (
        "from lstm_jax.text import stable_hash_id as h;"
        f"print([h(w, 10000) for w in {p.words(text)!r}], '|', hash('budget'))"
    )
    procs = [_python(code, PYTHONHASHSEED=seed) for seed in ("1", "2")]
    outs = [proc.communicate()[0].split("|") for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    (ids1, h1), (ids2, h2) = outs
    assert h1 != h2  # Python's salted hash (Keras one_hot) differs between the processes ...
    assert ids1.strip() == ids2.strip() == str(ours)  # ... our ids do not


def test_fake_news_bad_options():
    with pytest.raises(UserError, match="num_buckets"):
        FakeNewsPreprocessor(STOP, num_buckets=1)
    with pytest.raises(UserError, match="maxlen=0"):
        FakeNewsPreprocessor(STOP, maxlen=0)


# ---- stopwords -----------------------------------------------------------------------------------


def test_stopwords_from_nltk_dir(tmp_path):
    f = tmp_path / "corpora" / "stopwords" / "english"
    f.parent.mkdir(parents=True)
    f.write_text("foo\nbar\n\n", encoding="utf-8")
    words, source = load_stopwords(nltk_dirs=[str(tmp_path / "none"), str(tmp_path)])
    assert words == {"foo", "bar"} and source == f"nltk:{f}"


def test_stopwords_from_nltk_zip(tmp_path):
    z = tmp_path / "corpora" / "stopwords.zip"
    z.parent.mkdir(parents=True)
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("stopwords/english", "alpha\nbeta\n")
    words, source = load_stopwords(nltk_dirs=[str(tmp_path)], data_root="/nonexistent")
    assert words == {"alpha", "beta"} and source.startswith("nltk:") and "stopwords.zip" in source


def test_stopwords_from_data_root(tmp_path):
    f = tmp_path / "stopwords" / "english"
    f.parent.mkdir()
    f.write_text("x\ny\n", encoding="utf-8")
    words, source = load_stopwords(nltk_dirs=[], data_root=str(tmp_path))
    assert words == {"x", "y"} and source == f"lstm_jax_data:{f}"


def test_stopwords_data_root_defaults_to_lstm_jax_data(tmp_path, monkeypatch):
    f = tmp_path / "stopwords" / "english"
    f.parent.mkdir()
    f.write_text("envword\n", encoding="utf-8")
    monkeypatch.setenv("LSTM_JAX_DATA", str(tmp_path))
    assert load_stopwords(nltk_dirs=[]) == (frozenset({"envword"}), f"lstm_jax_data:{f}")


def test_stopwords_builtin_fallback(tmp_path, monkeypatch):
    monkeypatch.delenv("LSTM_JAX_DATA", raising=False)
    words, source = load_stopwords(nltk_dirs=[str(tmp_path)])
    assert source == BUILTIN_STOPWORDS_SOURCE == "builtin:nltk-english-179"
    assert len(words) == 179 and {"i", "wouldn't", "the"} <= words


def test_stopwords_default_search_uses_nltk_data_path(tmp_path, monkeypatch):
    import nltk.data

    f = tmp_path / "corpora" / "stopwords" / "english"
    f.parent.mkdir(parents=True)
    f.write_text("only\n", encoding="utf-8")
    # nltk builds nltk.data.path from $NLTK_DATA (first) and its default folders at import time.
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "empty"), str(tmp_path)])
    assert load_stopwords() == (frozenset({"only"}), f"nltk:{f}")


# ---- real data (skipped without LSTM_JAX_DATA) ---------------------------------------------------


def _real(rel: str) -> Path:
    root = os.environ.get("LSTM_JAX_DATA")
    if not root or not (Path(root) / rel).exists():
        pytest.skip(f"real data $LSTM_JAX_DATA/{rel} not available")
    return Path(root) / rel


def test_builtin_stopwords_equal_staged_nltk_list():
    f = _real("stopwords/english")
    words, source = load_stopwords(nltk_dirs=[], data_root=str(f.parent.parent))
    assert words == frozenset(BUILTIN_NLTK_ENGLISH_STOPWORDS)
    assert source == f"lstm_jax_data:{f}"


def test_macbeth_char_vocabulary_has_67_characters():
    f = _real("shakespeare/macbeth_gutenberg_nltk.txt")
    text = f.read_text(encoding="utf-8")
    v = Vocabulary.from_texts([text], char_level=True, order="sorted", start=0, lower=False)
    assert v.size == 67  # the Macbeth text has 67 distinct characters
    assert v.decode(v.encode(text[:200], strict=True)) == text[:200]
