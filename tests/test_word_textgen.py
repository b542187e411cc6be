"""Word-level text generation: prefixes, the whole-line equivalence, train -> generate, CLI, errors."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import engine_fixtures as ef
import fixtures_text
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.word_textgen.configs import fashion as fashion_config
from experiments.word_textgen.configs import test as test_config
from lstm_jax import config_utils, data
from lstm_jax.errors import UserError
from lstm_jax.logging_utils import read_jsonl
from lstm_jax.tasks import word_lm
from lstm_jax.text import Vocabulary
from lstm_jax.train import restore_model

REPO = Path(__file__).resolve().parents[1]
COLORS = ["red", "blue", "black", "white", "green"]
ITEMS = ["shirt", "dress", "kurta", "jeans", "top"]


def _write_csv(path: Path, rows: int = 120, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["ProductID", "Description"])
        for i in range(rows):
            desc = f"{rng.choice(COLORS)} {rng.choice(ITEMS)} has a round neck and short sleeves"
            w.writerow([i, " ".join([desc] * int(rng.integers(1, 3)))])
        w.writerow([rows, "single"])  # one word: no example, skipped
    return path


def _config(path: Path, **data_fields):
    config = test_config.get_config()
    config.data.path = str(path)
    config.data.update(data_fields)
    return config


@pytest.fixture(scope="module")
def lines_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("word_lines")
    config = _config(_write_csv(root / "f.csv"))
    workdir = root / "run"
    results = word_lm.train(config, str(workdir))
    return config, workdir, results


# ---------------------------------------------------------------------------------------------------------
# Data.
# ---------------------------------------------------------------------------------------------------------


def test_prefix_examples_are_the_tutorials_ngrams():
    # token_list [4, 2, 7] -> [4, 2], [4, 2, 7]; X pre-padded to max_len - 1, y = last token
    ex = word_lm.prefix_examples([[4, 2, 7], [5, 3]], max_len=4)
    np.testing.assert_array_equal(ex["inputs"], [[0, 0, 4], [0, 4, 2], [0, 0, 5]])
    np.testing.assert_array_equal(ex["targets"], [2, 7, 3])
    # max_len == the longest line is the tutorial's max_sequence_len: the longest prefix fills the row
    ex = word_lm.prefix_examples([[4, 2, 7]], max_len=3)
    np.testing.assert_array_equal(ex["inputs"], [[0, 4], [4, 2]])


def test_prefix_examples_reject_a_max_len_that_would_cut_prefixes():
    with pytest.raises(ValueError, match=r"max_len=3 is shorter than the longest line \(4 words\)"):
        word_lm.prefix_examples([[4, 2], [1, 2, 3, 4]], max_len=3)


def test_line_batch_and_buckets():
    b = word_lm.line_batch([[4, 2, 7], [5, 3]], rows=3, length=4)
    np.testing.assert_array_equal(b["inputs"], [[4, 2, 0, 0], [5, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(b["targets"], [[2, 7, 0, 0], [3, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(b["tmask"].sum(1), [2, 1, 0])
    np.testing.assert_array_equal(b["weight"], [1, 1, 0])
    assert word_lm.bucket_length(5, (4, 8, 20)) == 8
    assert word_lm.bucket_length(4, (4, 8, 20)) == 4
    with pytest.raises(ValueError):
        word_lm.bucket_length(21, (4, 8, 20))


def test_split_is_seeded_and_by_line(tmp_path):
    config = _config(_write_csv(tmp_path / "f.csv"))
    seqs, vocab, info = word_lm.load_lines(config)
    assert info["skipped_short"] == 1 and vocab.size == len(vocab.tokens) + 1
    a = word_lm.split_lines(seqs, 0.2, 0)
    b = word_lm.split_lines(seqs, 0.2, 0)
    assert a == b and len(a[1]) == int(np.ceil(0.2 * len(seqs)))
    assert word_lm.split_lines(seqs, 0.2, 1) != a


def test_line_epochs_are_resumable_and_bucketed(tmp_path):
    config = _config(_write_csv(tmp_path / "f.csv"))
    task = word_lm.make_task(config)
    full = list(task.train_batches(1, 0))
    assert len(full) == task.steps_per_epoch
    rest = list(task.train_batches(1, 2))
    for x, y in zip(full[2:], rest, strict=True):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])
    lengths = {b["inputs"].shape[1] for b in full}
    assert lengths <= {4, 8, config.data.max_len - 1}
    assert all(b["inputs"].shape[0] == config.train.batch_size for b in full)
    # every validation target is scored exactly once
    val = list(task.eval_batches["validation"]())
    total = sum(float((b["weight"][:, None] * b["tmask"]).sum()) for b in val)
    assert total == task.data_info["validation_targets"]


def test_line_epochs_sort_lines_by_length_and_shuffle_the_batches():
    """An epoch's batches hold lines of similar length (sorted before they are cut, so little
    padding) and come in a shuffled order, not shortest first; every line once (remainder kept)."""
    rng = np.random.default_rng(0)
    lines = [[2] * int(n) for n in rng.integers(2, 40, 70)]
    batches = word_lm._line_epoch(lines, 8, 3, 1, (8, 16, 39), drop_remainder=False)
    assert sorted(np.concatenate(batches).tolist()) == list(range(70))
    lengths = [np.asarray([len(lines[i]) for i in b]) for b in batches]
    by_length = sorted(lengths, key=lambda x: x.min())
    for shorter, longer in zip(by_length, by_length[1:], strict=False):
        assert shorter.max() <= longer.min()
    assert [x.min() for x in lengths] != [x.min() for x in by_length]


def test_max_len_is_that_of_the_longest_line_of_either_split(tmp_path):
    """The longest description lies in the validation split: max_len (the prefixes' width, the last
    bucket) is still its length, and both forms score every validation target."""
    path = _write_csv(tmp_path / "f.csv")
    config = _config(path)
    seqs, _, _ = word_lm.load_lines(config)
    fraction, split_seed = float(config.data.validation_fraction), int(config.data.split_seed)
    _, val_idx = data.train_test_split(len(seqs), fraction, split_seed)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    rows[1 + val_idx[0]][1] = " ".join(["red shirt"] * 20)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    for form in word_lm.FORMS:
        config = _config(path, form=form)
        task = word_lm.make_task(config)
        assert config.data.max_len == task.data_info["max_len"] == 40
        scored = 0.0
        for b in task.eval_batches["validation"]():
            w = b["weight"] if form == "prefixes" else b["weight"][:, None] * b["tmask"]
            scored += float(w.sum())
        assert scored == task.data_info["validation_targets"]


def test_the_seed_orders_the_training_batches_not_the_validation_lines(tmp_path):
    path = _write_csv(tmp_path / "f.csv")

    def task_of_seed(seed):
        config = _config(path)
        config.seed = seed
        return word_lm.make_task(config)

    ef.assert_the_seed_orders_the_training_batches_only(task_of_seed)


# ---------------------------------------------------------------------------------------------------------
# The whole-line form computes the tutorial's prefix loss (same model, same weights, masked padding).
# ---------------------------------------------------------------------------------------------------------


def test_line_loss_equals_prefix_loss_with_masked_padding(tmp_path):
    config = _config(_write_csv(tmp_path / "f.csv", rows=30))
    seqs, vocab, _ = word_lm.load_lines(config)
    seqs = seqs[:12]
    max_len = max(len(s) for s in seqs)
    config.model.vocab_size = vocab.size

    config.data.form = "lines"
    line_model = word_lm.build_model(config, nnx.Rngs(3))
    config.data.form = "prefixes"
    prefix_model = word_lm.build_model(config, nnx.Rngs(3))
    # same weights: the two forms differ only in which positions the head reads
    la, lb = (jax.tree.leaves(nnx.state(m, nnx.Param)) for m in (line_model, prefix_model))
    assert all(np.array_equal(x, y) for x, y in zip(la, lb, strict=True))

    key = jax.random.key(0)
    batch = {k: jnp.asarray(v) for k, v in word_lm.line_batch(seqs, 16, max_len - 1).items()}
    line_loss, (line_sums, _) = word_lm.line_loss(
        line_model, batch, key=key, train=False, carry=None
    )
    ex = word_lm.prefix_examples(seqs, max_len)
    pb = {
        "inputs": jnp.asarray(ex["inputs"]),
        "targets": jnp.asarray(ex["targets"]),
        "weight": jnp.ones(len(ex["targets"])),
    }
    prefix_loss, (prefix_sums, _) = word_lm.prefix_loss(
        prefix_model, pb, key=key, train=False, carry=None, mask_padding=True
    )
    assert float(line_sums["count"]) == float(prefix_sums["count"]) == len(ex["targets"])
    np.testing.assert_allclose(float(line_loss), float(prefix_loss), rtol=1e-5)
    np.testing.assert_allclose(
        float(line_sums["accuracy"]), float(prefix_sums["accuracy"]), atol=1e-6
    )
    # and the tutorial's unmasked prefixes differ (the padding goes through the LSTM)
    unmasked, _ = word_lm.prefix_loss(
        prefix_model, pb, key=key, train=False, carry=None, mask_padding=False
    )
    assert abs(float(unmasked) - float(prefix_loss)) > 1e-6


@pytest.mark.parametrize("train", [False, True])
def test_chunked_output_layer_gives_the_same_loss_and_gradients(tmp_path, train):
    config = _config(_write_csv(tmp_path / "f.csv", rows=30))
    seqs, vocab, _ = word_lm.load_lines(config)
    config.model.vocab_size = vocab.size
    config.model.dropout = 0.3  # the same key drops the same units in both paths
    model = word_lm.build_model(config, nnx.Rngs(1))
    graphdef, params = nnx.split(model)
    batch = {
        k: jnp.asarray(v)
        for k, v in word_lm.line_batch(seqs[:6], 8, max(len(s) for s in seqs[:6]) - 1).items()
    }

    def loss(p, chunk):
        m = nnx.merge(graphdef, p)
        value, (sums, _) = word_lm.line_loss(
            m, batch, key=jax.random.key(4), train=train, carry=None, logits_chunk=chunk
        )
        return value, sums

    (plain, plain_sums), g_plain = jax.value_and_grad(loss, has_aux=True)(params, 0)
    (chunked, chunk_sums), g_chunk = jax.value_and_grad(loss, has_aux=True)(params, 5)
    np.testing.assert_allclose(float(chunked), float(plain), rtol=1e-5)
    for key in plain_sums:
        np.testing.assert_allclose(float(chunk_sums[key]), float(plain_sums[key]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_chunk), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_prefix_form_trains_and_generates(tmp_path):
    config = _config(_write_csv(tmp_path / "f.csv", rows=40), form="prefixes")
    config.train.batch_size = 32
    config.train.num_epochs = 1
    workdir = tmp_path / "run"
    results = word_lm.train(config, str(workdir))
    assert results["data"]["form"] == "prefixes"
    assert results["data"]["train_examples"] == results["data"]["train_targets"]
    out = word_lm.generate_samples(None, str(workdir), seed_text="red shirt", num_words=3)
    assert len(out) == 1 and len(out[0]["generated"].split()) <= 3


@pytest.mark.parametrize("form", ["prefixes", "lines"])
def test_keeping_the_remainder_trains_every_example_once_an_epoch(tmp_path, form):
    config = _config(_write_csv(tmp_path / "f.csv", rows=43), form=form)
    config.train.drop_remainder = False
    task = word_lm.make_task(config)
    bs = config.train.batch_size
    short = ef.epoch_keeping_the_remainder(task, task.data_info["train_examples"], bs)
    assert all(b["inputs"].shape[0] == bs for b in task.train_batches(0, 0))
    model = word_lm.build_model(config, nnx.Rngs(0))
    ef.assert_padding_rows_change_nothing(task.loss_fn, model, short)


def test_fashion_model_is_the_tutorials_architecture():
    config = fashion_config.get_config()
    config.model.vocab_size = 1000
    model = word_lm.build_model(config, nnx.Rngs(0))
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    keras = (
        1000 * 64  # Embedding
        + 4 * 128 * (64 + 128 + 1)  # LSTM(128)
        + 4 * 64 * (128 + 64 + 1)  # LSTM(64)
        + 64 * 64
        + 64  # Dense(64, relu)
        + 64 * 1000
        + 1000  # Dense(total_words, softmax)
    )
    assert n == keras


# ---------------------------------------------------------------------------------------------------------
# Train -> checkpoint -> generate.
# ---------------------------------------------------------------------------------------------------------


def test_train_writes_curves_vocab_and_samples(lines_run):
    config, workdir, results = lines_run
    for name in ("config.json", "vocab.json", "results.json", "training_curves.png"):
        assert (workdir / name).exists(), name
    hist = [r["validation"]["loss"] for r in results["history"]]
    assert len(hist) == config.train.num_epochs and hist[-1] < hist[0]
    assert results["samples"]["texts"][0]["seed_text"] == "red"
    val = results["history"][-1]["validation"]  # perplexity per word, as the char LM reports it
    assert val["perplexity"] == pytest.approx(math.exp(val["loss"]), rel=1e-6)


def test_rerunning_a_finished_run_changes_nothing(lines_run):
    config, workdir, results = lines_run
    files = [p for p in (workdir / "checkpoints").rglob("*") if p.is_file()]
    before = {p: p.stat().st_mtime_ns for p in files}
    again = word_lm.train(_config(Path(config.data.path)), str(workdir))
    assert again["steps"] == results["steps"] and again["metrics"] == results["metrics"]
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_greedy_generation_is_deterministic_and_learned(lines_run):
    _, workdir, _ = lines_run
    a = word_lm.generate_samples(None, str(workdir), seed_text="blue dress has a", num_words=5)
    b = word_lm.generate_samples(None, str(workdir), seed_text="blue dress has a", num_words=5)
    assert a == b
    assert a[0]["generated"].split()[0] == "round"  # the only continuation in the corpus


def test_generate_needs_nothing_but_the_workdir(lines_run, tmp_path, monkeypatch):
    """Generation from the workdir (saved vocabulary and config) gives the samples training wrote, in a
    session where the CSV, $LSTM_JAX_DATA and NLTK_DATA are gone or elsewhere."""
    _, workdir, results = lines_run
    fixtures_text.forbid_data_reads(monkeypatch, tmp_path)
    seed_text = results["samples"]["texts"][0]["seed_text"]
    out = word_lm.generate_samples(None, str(workdir), seed_text=seed_text)
    assert out == results["samples"]["texts"]


def test_sampling_respects_top_k(lines_run):
    _, workdir, _ = lines_run
    config = config_utils.load_config(str(workdir))
    vocab = Vocabulary.load(workdir / "vocab.json")
    model, _ = restore_model(config, str(workdir), word_lm.build_model)
    seed = "white top has"
    logits, _ = model(jnp.asarray([vocab.encode(seed)], jnp.int32))
    top3 = {vocab.id_to_token(i) for i in np.argsort(np.asarray(logits[0, -1]))[-3:]}
    firsts = set()
    for s in range(12):
        words, _ = word_lm.generate_words(
            model, vocab, config, seed, 1, temperature=3.0, top_k=3, seed=s
        )
        firsts.add(words)
    assert firsts <= top3


def test_generation_stops_at_a_non_word(lines_run):
    _, workdir, _ = lines_run
    config = config_utils.load_config(str(workdir))
    vocab = Vocabulary.load(workdir / "vocab.json")
    model, _ = restore_model(config, str(workdir), word_lm.build_model)
    bias = np.array(model.head.bias[...])
    bias[0] = 1e4  # force id 0 (padding, no word) at the first step
    model.head.bias[...] = jnp.asarray(bias)
    words, _ = word_lm.generate_words(model, vocab, config, "red", 5)
    assert words == ""


def test_generation_stops_at_the_first_non_word(monkeypatch):
    """The words after an id that is no word (0) are dropped with it: the tutorial's loop stops there."""
    vocab = Vocabulary.from_texts(["red shirt has sleeves"])
    red, shirt = vocab.token_to_id["red"], vocab.token_to_id["shirt"]
    out = lambda *args, **kwargs: np.array([[shirt, 0, red]], np.int32)  # noqa: E731
    monkeypatch.setattr(word_lm.generate, "generate_stateful", out)
    monkeypatch.setattr(word_lm.generate, "generate_windowed", out)
    for form in word_lm.FORMS:
        config = _config(Path("unused.csv"), form=form, max_len=10)
        assert word_lm.generate_words(None, vocab, config, "red", 3) == ("shirt", [])


def test_line_model_reads_the_last_max_len_minus_1_words_as_the_tutorial(lines_run):
    """The tutorial re-encodes the growing text for every word and keeps its last max_len - 1 words
    (pad_sequences' "pre" truncation); a line model must too once the text outgrows that window."""
    config, workdir, _ = lines_run
    config = config_utils.load_config(str(workdir))
    vocab = Vocabulary.load(workdir / "vocab.json")
    model = word_lm.build_model(config, nnx.Rngs(0))
    model.head.kernel[...] = 4 * model.head.kernel[...]
    model.embed.embedding[...] = 3 * jax.random.normal(
        jax.random.key(2), model.embed.embedding.shape
    )
    for layer in model.dense.layers:  # varied logits, so equal words mean something
        layer.kernel[...] = 3 * jax.random.normal(jax.random.key(3), layer.kernel.shape)
    width = int(config.data.max_len) - 1
    words = "red shirt has a round neck and short sleeves blue dress has a round neck".split()
    for seed in (" ".join(words[:4]), " ".join(words[:11]), " ".join(words * 2)):
        text = seed
        for _ in range(12):
            ids = vocab.encode(text)[-width:]
            logits, _ = model(jnp.asarray([ids], jnp.int32))
            text += " " + (vocab.id_to_token(int(jnp.argmax(logits[0, -1]))) or "")
        want = text[len(seed) :].split()
        got, _ = word_lm.generate_words(model, vocab, config, seed, 12)
        assert got.split() == want, seed


def test_unknown_seed_words_are_dropped_or_rejected(lines_run, capsys):
    _, workdir, _ = lines_run
    out = word_lm.generate_samples(None, str(workdir), seed_text="red zebra shirt", num_words=2)
    assert out[0]["seed_text"] == "red zebra shirt"
    assert "zebra" in capsys.readouterr().err
    with pytest.raises(UserError, match="no word of the training vocabulary"):
        word_lm.generate_samples(None, str(workdir), seed_text="zebra giraffe", num_words=2)
    for bad in (-1.0, float("nan")):  # NaN once generated an empty text silently
        with pytest.raises(UserError, match=r"--temperature=.* must be a number >= 0"):
            word_lm.generate_samples(None, str(workdir), seed_text="red", temperature=bad)
    # A mistyped huge count is refused before anything is compiled (it once ate the memory).
    for bad, message in ((0, "must be >= 1"), (10**9, "is over the 1,000,000 words")):
        with pytest.raises(UserError, match=rf"--num_words={bad} {message}"):
            word_lm.generate_samples(None, str(workdir), seed_text="red", num_words=bad)


def test_bad_generate_settings_fail_before_training(tmp_path):
    config = _config(_write_csv(tmp_path / "f.csv"))
    config.generate.temperature = -1.0
    with pytest.raises(UserError, match=r"--config\.generate\.temperature=-1\.0 must be"):
        word_lm.train(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_seed_texts_with_no_word_of_another_csv_are_skipped_not_fatal(tmp_path, capsys):
    """Any CSV works: the config's seed texts (the tutorial's fashion words) may share no word with it.
    Their samples are skipped with a warning before training and a note in results.json; the others
    are generated."""
    config = _config(_write_csv(tmp_path / "f.csv"))
    config.generate.seed_texts = ["zebra giraffe", "red"]
    config.train.num_epochs = 1
    results = word_lm.train(config, str(tmp_path / "run"))
    texts = results["samples"]["texts"]
    assert texts[0] == {
        "seed_text": "zebra giraffe",
        "generated": None,
        "skipped": "no word of the vocabulary",
    }
    assert texts[1]["seed_text"] == "red" and texts[1]["generated"]
    assert "zebra giraffe -> (skipped: no word of the vocabulary)" in capsys.readouterr().out
    with pytest.raises(UserError, match=r"its most frequent words: '.+'\); use words"):
        word_lm.generate_samples(None, str(tmp_path / "run"), seed_text="zebra", num_words=2)


def test_generate_from_the_workdir_skips_the_seed_texts_training_skipped(tmp_path, capsys):
    """`--mode=generate` without --seed_text off a terminal samples the config's seed texts: one with no
    word of the vocabulary is skipped as after training (it was an error, and no sample was printed)."""
    config = _config(_write_csv(tmp_path / "f.csv"))
    config.generate.seed_texts = ["zebra giraffe", "red"]
    config.train.num_epochs = 1
    trained = word_lm.train(config, str(tmp_path / "run"))["samples"]["texts"]
    capsys.readouterr()
    out = word_lm.generate_samples(None, str(tmp_path / "run"), interactive=False)
    assert out == trained
    captured = capsys.readouterr()
    assert "zebra giraffe -> (skipped: no word of the vocabulary)" in captured.out
    assert "'zebra giraffe' has no word of the training vocabulary" in captured.err
    config.generate.seed_texts = ["zebra giraffe"]  # none usable: still an error
    with pytest.raises(UserError, match="'zebra giraffe' has no word"):
        word_lm.generate_samples(config, str(tmp_path / "run"), interactive=False)
    config.generate.seed_texts = []  # none at all: an error naming --seed_text (it printed nothing)
    with pytest.raises(UserError, match=r"generate.seed_texts is empty.*pass --seed_text="):
        word_lm.generate_samples(config, str(tmp_path / "run"), interactive=False)


def test_samples_after_training_are_those_generate_gives_when_the_best_is_not_the_last(
    tmp_path, capsys
):
    """The samples a run prints at its end come from the weights --mode=generate loads (the best
    checkpoint), not the last ones: with the best checkpoint before the last step they differed."""
    config = _config(_write_csv(tmp_path / "f.csv"))
    config.train.num_epochs = 3
    config.train.monitor_mode = (
        "max"  # the highest val_loss is "best": the first epoch's checkpoint
    )
    config.generate.seed_texts = ["red", "blue dress"]
    config.generate.num_words = 6
    results = word_lm.train(config, str(tmp_path / "run"))
    assert results["best_step"] < results["steps"]
    printed = capsys.readouterr().out
    out = word_lm.generate_samples(None, str(tmp_path / "run"), interactive=False)
    assert out == results["samples"]["texts"]
    assert all(f"{s['seed_text']} -> {s['generated']}" in printed for s in out)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("num_words", 0, r"--config\.generate\.num_words=0 must be >= 1"),
        ("temperature", -1.0, r"--config\.generate\.temperature=-1\.0 must be"),
        ("top_k", -3, r"--config\.generate\.top_k=-3 must be >= 0"),
    ],
)
def test_generate_names_a_bad_value_of_the_given_configs_generate_section(
    lines_run, field, value, message
):
    """`--config=... --config.generate.num_words=0 --mode=generate` once said `--num_words=0 must be
    >= 1`, a flag nobody passed; the value is named as given, and a flag that overrides it still wins."""
    config, workdir, _ = lines_run
    given = _config(Path(config.data.path))
    given.generate[field] = value
    with pytest.raises(UserError, match=rf"^{message}"):
        word_lm.generate_samples(given, str(workdir), seed_text="red")
    fixed = {"num_words": 2, "temperature": 0.0, "top_k": 0}[field]
    out = word_lm.generate_samples(given, str(workdir), seed_text="red", **{field: fixed})
    assert out[0]["seed_text"] == "red"
    # A bad flag is named as the flag.
    with pytest.raises(UserError, match=rf"^--{field}=-5(\.0)? must"):
        word_lm.generate_samples(given, str(workdir), seed_text="red", **{field: -5})


def test_top_k_with_greedy_decoding_is_named_in_a_warning(lines_run, caplog):
    """Greedy decoding ignores --top_k: once silently, now with a warning naming it (before training
    too, for the config's generate section)."""
    import logging

    config, workdir, _ = lines_run
    with caplog.at_level(logging.WARNING):
        word_lm.generate_samples(
            None, str(workdir), seed_text="red", num_words=2, temperature=0.0, top_k=5
        )
    (w,) = [r.getMessage() for r in caplog.records if "has no effect" in r.getMessage()]
    assert w.startswith("--top_k=5 has no effect at --temperature=0 (greedy: the most likely word)")
    # --top_k alone, the saved config's temperature 0: the fix is generate's --temperature flag
    # (--config.generate.temperature from --workdir alone is refused without a --config file).
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        word_lm.generate_samples(None, str(workdir), seed_text="red", num_words=2, top_k=5)
    (w,) = [r.getMessage() for r in caplog.records if "has no effect" in r.getMessage()]
    assert "pass --temperature > 0 to sample among the 5 most likely" in w, w
    given = _config(Path(config.data.path))
    given.generate.temperature, given.generate.top_k = 0.0, 2
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        word_lm.make_task(given)
    (w,) = [r.getMessage() for r in caplog.records if "has no effect" in r.getMessage()]
    assert w.startswith(
        "--config.generate.top_k=2 has no effect at --config.generate.temperature=0"
    )


def test_interactive_prompt_reads_until_empty_line(lines_run, monkeypatch):
    _, workdir, _ = lines_run
    answers = iter(["red shirt", "zebra", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    out = word_lm.generate_samples(None, str(workdir), num_words=2, interactive=True)
    assert [s["seed_text"] for s in out] == [
        "red shirt"
    ]  # "zebra" reported, then the prompt goes on


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"num_words": 0}, r"--num_words=0 must be >= 1"),
        ({"temperature": -1.0}, r"--temperature=-1\.0 must be a number >= 0"),
        ({"top_k": -2}, r"--top_k=-2 must be >= 0"),
    ],
)
def test_interactive_prompt_refuses_bad_settings_before_prompting(
    lines_run, monkeypatch, kw, message
):
    """A bad --num_words/--temperature/--top_k once printed an error after every seed text typed at the
    prompt, and the prompt went on (exit status 0 on an empty line); now it is one error before any
    prompt."""
    _, workdir, _ = lines_run
    prompts = []

    def answer(prompt=""):
        prompts.append(prompt)
        return "red shirt" if len(prompts) == 1 else ""

    monkeypatch.setattr("builtins.input", answer)
    with pytest.raises(UserError, match=message):
        word_lm.generate_samples(None, str(workdir), interactive=True, **kw)
    assert prompts == []


# ---------------------------------------------------------------------------------------------------------
# Errors and the CLI.
# ---------------------------------------------------------------------------------------------------------


def test_missing_column_and_bad_form_are_user_errors(tmp_path):
    path = _write_csv(tmp_path / "f.csv")
    with pytest.raises(UserError, match="'Text'"):
        word_lm.make_task(_config(path, text_column="Text"))
    with pytest.raises(UserError, match="config.data.form"):
        word_lm.make_task(_config(path, form="bogus"))
    for bad in (1.0, -0.2):  # a negative one trained without validation, silently
        with pytest.raises(
            UserError, match=rf"^config\.data\.validation_fraction={bad} must be in"
        ):
            word_lm.make_task(_config(path, validation_fraction=bad))
    with pytest.raises(UserError, match=r"config\.data\.buckets=\('a',\) must be a tuple"):
        word_lm.make_task(_config(path, buckets=("a",)))


def test_a_given_value_of_a_data_filled_field_is_named_as_unused(tmp_path, caplog):
    """--config.model.vocab_size=100 / --config.data.max_len=7 were overwritten from the data, silently."""
    import logging

    config = _config(_write_csv(tmp_path / "f.csv"))
    config.model.vocab_size = 100
    config.data.max_len = 7
    with caplog.at_level(logging.WARNING):
        word_lm.make_task(config)
    messages = [r.getMessage() for r in caplog.records if "is not used" in r.getMessage()]
    assert messages == [
        f"config.model.vocab_size=100 is not used: it is filled in from the data"
        f" ({config.model.vocab_size} here); leave it at 0",
        f"config.data.max_len=7 is not used: it is filled in from the data ({config.data.max_len}"
        " here); leave it at 0",
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        word_lm.make_task(config)  # filled already (a notebook's second call): the same values
    assert not [r for r in caplog.records if "is not used" in r.getMessage()]


@pytest.mark.parametrize(
    ("section", "field", "value", "expected"),
    [
        (
            "data",
            "buckets",
            (0,),
            r"^config\.data\.buckets=\(0,\) must be a tuple of input lengths",
        ),
        ("data", "buckets", (-3, 8), r"^config\.data\.buckets=\(-3, 8\) must be a tuple"),
        ("train", "logits_chunk", -5, r"^config\.train\.logits_chunk=-5 must be an integer >= 0"),
    ],
)
def test_impossible_buckets_and_logits_chunk_fail_before_reading_data(
    tmp_path, section, field, value, expected
):
    """A bucket length < 1 and a negative logits_chunk were dropped or read as 0, silently."""
    config = _config(tmp_path / "no_such.csv")  # the check comes before the data is read
    config[section][field] = value
    with pytest.raises(UserError, match=expected):
        word_lm.make_task(config)


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """The entry point in a subprocess; `stdin` is piped to it (else it reads /dev/null, never the
    runner's own stdin, which may be a pipe)."""
    env = {k: v for k, v in os.environ.items() if k != data.DATA_ENV}
    return subprocess.run(
        [sys.executable, "-m", "experiments.word_textgen.main", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
    )


@pytest.mark.parametrize("content", [b"", b"Description\n\x00\x01binary\n"])
def test_cli_empty_or_binary_csv_exits_2_with_one_line(tmp_path, content):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    res = _cli(
        "--config=experiments/word_textgen/configs/test.py",
        f"--workdir={tmp_path / 'run'}",
        f"--config.data.path={path}",
    )
    assert res.returncode == 2
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(path) in errors[0]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_sampling_seed_out_of_range_is_a_user_error(lines_run):
    _, workdir, _ = lines_run
    for seed in (-1, 2**32, 2**64):
        with pytest.raises(UserError, match=rf"--sample_seed={seed} must be between 0 and"):
            word_lm.generate_samples(None, str(workdir), seed_text="red", num_words=2, seed=seed)


def test_cli_generate_from_workdir(lines_run):
    _, workdir, _ = lines_run
    res = _cli(
        f"--workdir={workdir}", "--mode=generate", "--seed_text=green jeans", "--num_words=3"
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("green jeans -> ")


def test_cli_generate_reads_seed_texts_piped_on_stdin(lines_run):
    """`cat seeds.txt | ... --mode=generate` generated from the config's seed texts and ignored the
    pipe (predict mode reads its texts from stdin); now each non-empty line is a seed text, one with
    no known word skipped with a note; an empty pipe falls back to the config's seed texts."""
    config, workdir, _ = lines_run
    res = _cli(
        f"--workdir={workdir}",
        "--mode=generate",
        "--num_words=3",
        stdin="green jeans\n\nzebra\nred\n",
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert [line.split(" -> ")[0] for line in lines] == ["green jeans", "zebra", "red"]
    assert lines[1] == "zebra -> (skipped: no word of the vocabulary)"
    assert "skipped 1 empty line(s) of stdin" in res.stderr
    res = _cli(f"--workdir={workdir}", "--mode=generate", "--num_words=3", stdin="")
    assert res.returncode == 0, res.stderr
    assert "no seed text on stdin" in res.stderr
    seeds = [line.split(" -> ")[0] for line in res.stdout.splitlines()]
    assert seeds == list(config.generate.seed_texts)
    res = _cli(f"--workdir={workdir}", "--mode=generate", stdin="zebra\n")  # none usable: an error
    assert res.returncode == 2 and "'zebra' has no word" in res.stderr


def test_stdin_piped_only_for_pipes_and_files(tmp_path, monkeypatch):
    """/dev/null and a stdin without a file descriptor (pytest's) are not input to read."""
    with open(os.devnull) as null:
        monkeypatch.setattr(sys, "stdin", null)
        assert not data.stdin_piped()
    f = tmp_path / "seeds.txt"
    f.write_text("red\n")
    with open(f) as fh:
        monkeypatch.setattr(sys, "stdin", fh)
        assert data.stdin_piped()
    r, w = os.pipe()
    with os.fdopen(r) as rh, os.fdopen(w, "w"):
        monkeypatch.setattr(sys, "stdin", rh)
        assert data.stdin_piped()
    monkeypatch.setattr(sys, "stdin", None)
    assert not data.stdin_piped()


# ---------------------------------------------------------------------------------------------------------
# Real data (skipped without LSTM_JAX_DATA).
# ---------------------------------------------------------------------------------------------------------


def test_real_fashion_catalogue():
    root = os.environ.get(data.DATA_ENV)
    if not root or not (Path(root) / word_lm.DEFAULT_PATH).exists():
        pytest.skip(f"needs $LSTM_JAX_DATA/{word_lm.DEFAULT_PATH}")
    config = fashion_config.get_config()
    task = word_lm.make_task(config)
    info = task.data_info
    assert info["rows"] == 12_491
    assert info["train_lines"] + info["validation_lines"] == info["lines"]
    assert config.data.max_len == max(info["buckets"]) + 1
    assert task.steps_per_epoch == info["train_lines"] // 128


def test_validation_split_is_fixed_by_split_seed_not_the_training_seed(tmp_path):
    """The tutorial's split is fixed (`random_state=0`, docs/experiments.md): `--config.seed` (init,
    shuffling, dropout) must not move descriptions between training and validation; `data.split_seed` does."""
    path = _write_csv(tmp_path / "f.csv")

    def fingerprint(**fields):
        config = _config(path)
        config.update_from_flattened_dict(fields)
        return word_lm.make_task(config).data_fingerprint

    base = fingerprint()
    assert fingerprint(seed=1) == base
    assert test_config.get_config().data.split_seed == 0
    assert fingerprint(**{"data.split_seed": 1}) != base


def test_a_run_split_with_its_seed_before_split_seed_existed_is_told_the_override(tmp_path):
    """A run trained with config.seed=1 before `data.split_seed` (its split took the seed; its config.json
    has no split_seed), resumed with today's config (split_seed=0): the data-fingerprint refusal names
    the override that restores its split, read from its config.json, and that override resumes it. A
    data file changed in place is not blamed on the split."""
    path = _write_csv(tmp_path / "f.csv")

    def config(num_epochs, **data_fields):
        c = _config(path, **data_fields)
        c.seed = 1
        c.train.num_epochs = num_epochs
        return c

    old = config(1)
    del old.data["split_seed"]  # a version before the field: the split took config.seed
    workdir = tmp_path / "run"
    word_lm.train(old, str(workdir))
    assert "split_seed" not in json.loads((workdir / "config.json").read_text())["data"]
    shutil.copytree(workdir, tmp_path / "changed")

    assert config(2).data.split_seed == 0
    with pytest.raises(UserError) as err:
        word_lm.train(config(2), str(workdir))
    message = str(err.value)
    assert message.startswith("the data loaded now from ") and "differs from the data" in message
    assert message.endswith(
        ": the run was trained before config.data.split_seed existed, when the validation split took"
        " config.seed=1 as its seed (now config.data.split_seed=0); pass"
        " --config.data.split_seed=1 to resume it with its own split"
    ), message

    results = word_lm.train(config(2, split_seed=1), str(workdir))  # the override resumes it
    steps = word_lm.make_task(config(2, split_seed=1)).steps_per_epoch
    assert results["steps"] == 2 * steps
    kinds = [r["kind"] for r in read_jsonl(str(workdir / "metrics.jsonl"))]
    assert "resume" in kinds

    # The same run on a file since changed: the split is not the reason, the generic message.
    _write_csv(path, seed=5)
    with pytest.raises(UserError, match="splits or encodes it differently") as err:
        word_lm.train(config(2), str(tmp_path / "changed"))
    assert "--config.data.split_seed" not in str(err.value)


@pytest.mark.parametrize("split_seed", [-1, 2**32])
def test_a_split_seed_sklearn_cannot_take_names_the_field_before_the_data_is_read(
    tmp_path, split_seed
):
    """As `seed` and the classification splits' `data.split_seed`: checked by name (was: sklearn's
    InvalidParameterError from train_test_split, after the CSV was read)."""
    config = _config(tmp_path / "missing.csv", split_seed=split_seed)
    with pytest.raises(UserError) as err:
        word_lm.make_task(config)
    assert str(err.value).startswith(f"config.data.split_seed={split_seed} must be"), err.value
