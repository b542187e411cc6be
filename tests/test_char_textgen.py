"""Char-level text generation: data layouts, train -> checkpoint -> generate, CLI, errors."""

from __future__ import annotations

import json
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

from experiments.char_textgen.configs import macbeth as macbeth_config
from experiments.char_textgen.configs import quick as quick_config
from experiments.char_textgen.configs import test as test_config
from lstm_jax import config_utils, data, losses
from lstm_jax.checkpoint import load_artefact
from lstm_jax.errors import UserError
from lstm_jax.models import LanguageModel
from lstm_jax.tasks import char_lm
from lstm_jax.text import Vocabulary
from lstm_jax.train import restore_model

REPO = Path(__file__).resolve().parents[1]
WORDS = "to be or not that is the question whether tis nobler in the mind".split()


def _write_text(path: Path, lines: int = 150, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    text = "\n".join(" ".join(rng.choice(WORDS, 8)) for _ in range(lines))
    path.write_text(text + "\n", encoding="utf-8")
    return path


def _stream_config(path: Path):
    config = test_config.get_config()
    config.data.path = str(path)
    return config


def _window_config(path: Path):
    """The Macbeth layout (scalar input, windows -> next char), shrunk for a test."""
    config = macbeth_config.get_config()
    config.data.path = str(path)
    config.data.seq_length = 12
    config.data.window_stride = 3
    config.data.validation_fraction = 0.1
    config.model.hidden_sizes = (16, 16)
    config.train.batch_size = 32
    config.train.num_epochs = 1
    config.train.prefetch = 0
    config.generate.length = 50
    return config


@pytest.fixture(scope="module")
def stream_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("char_stream")
    path = _write_text(root / "text.txt")
    config = _stream_config(path)
    workdir = root / "run"
    results = char_lm.train(config, str(workdir))
    return config, workdir, results


# ---------------------------------------------------------------------------------------------------------
# Data layouts.
# ---------------------------------------------------------------------------------------------------------


def test_window_starts_match_the_tutorial_loop():
    # for i in range(0, n_chars - seq_length, 1): X = raw[i:i+seq]; y = raw[i+seq]
    assert char_lm.window_starts(10, 4, 1).tolist() == list(range(0, 6))
    assert char_lm.window_starts(10, 4, 2).tolist() == [0, 2, 4]
    assert char_lm.window_starts(4, 4, 1).tolist() == []


def test_windows_predict_the_character_after_them_and_the_split_is_a_cut(tmp_path):
    """Window `s` is `ids[s : s + T]` and its target the character after it (not its own last one);
    the validation text is the file's tail and the training text all before it, no character in both."""
    lay = char_lm._windows(np.arange(10, dtype=np.int32), np.array([0, 3]), 4)
    np.testing.assert_array_equal(lay["inputs"], [[0, 1, 2, 3], [3, 4, 5, 6]])
    np.testing.assert_array_equal(lay["targets"], [4, 7])
    path = _write_text(tmp_path / "t.txt", lines=20)
    splits, info = char_lm.load_splits(_window_config(path))
    text = path.read_text(encoding="utf-8")
    assert splits["train"] + splits["validation"] == text
    assert len(splits["validation"]) == round(len(text) * 0.1) == info["validation_chars"]


def test_a_validation_text_shorter_than_a_window_and_its_target_is_refused(tmp_path):
    """12 validation characters hold no window of 12 and the character after it: an error naming the
    fix, not an evaluation over no windows."""
    path = tmp_path / "t.txt"
    path.write_text("abcdefghij" * 24, encoding="utf-8")
    config = _window_config(path)
    config.data.validation_fraction = 0.05  # 12 characters
    with pytest.raises(UserError, match="validation text has 12 characters, too few to evaluate"):
        char_lm.make_task(config)
    config.data.validation_fraction = 0.1
    assert char_lm.make_task(config).data_info["validation_windows"] == 12


def test_a_window_model_reads_its_prime_s_last_window_padded_with_spaces(monkeypatch):
    """A prime shorter than the window is pre-padded with spaces (not id 0, here a newline); a longer
    one gives its last `seq_length` characters."""
    seen = []

    def windowed(model, window, num_steps, **kwargs):
        seen.append(np.asarray(window).tolist())
        return np.zeros((len(window), num_steps), np.int32)

    monkeypatch.setattr(char_lm.generate, "generate_windowed", windowed)
    vocab = char_lm.build_vocabulary({"train": "ab\ncd e"}, False)
    space = vocab.token_to_id[" "]
    assert space != 0
    config = _window_config(Path("unused.txt"))
    assert config.data.seq_length == 12
    char_lm.generate_text(None, vocab, config, "ab", 3, num_samples=2)
    char_lm.generate_text(None, vocab, config, "abcde" * 3, 3)
    assert seen[0] == [[space] * 10 + vocab.encode("ab")] * 2
    assert seen[1] == [vocab.encode(("abcde" * 3)[-12:])]


def test_stream_layout_scores_every_character_once():
    ids = np.arange(1, 24, dtype=np.int32)  # 23 ids -> 22 (input, target) pairs
    lay = char_lm.stream_layout(ids, streams=3, seq_length=4)
    assert lay["inputs"].shape == lay["targets"].shape == lay["tmask"].shape == (3, 8)
    real = lay["tmask"] > 0
    assert real.sum() == 22
    np.testing.assert_array_equal(lay["inputs"][real], ids[:-1])
    np.testing.assert_array_equal(lay["targets"][real], ids[1:])
    # padding only at the end of rows: once a row is padded it stays padded
    assert np.all(np.diff(lay["tmask"], axis=1) <= 0)


def _stream_model_and_ids() -> tuple[LanguageModel, np.ndarray]:
    model = LanguageModel(9, (6, 5), rngs=nnx.Rngs(0), embed_dim=4, predict="all")
    ids = np.random.default_rng(0).integers(1, 9, size=(3, 9)).astype(np.int32)
    return model, ids


def _zero_carry(model: LanguageModel, rows: int) -> tuple:
    return tuple(
        (jnp.zeros((rows, layer.hidden_size)), jnp.zeros((rows, layer.hidden_size)))
        for layer in model.lstm.layers
    )


def test_stream_loss_continues_from_the_carried_state():
    """Truncated BPTT: two chunks of 4 steps, the second started from the state the first returns, give
    the sums of the 8 steps run at once, and the carry is the model's final state."""
    model, ids = _stream_model_and_ids()
    inputs, targets = ids[:, :-1], ids[:, 1:]

    def loss(lo, hi, carry):
        batch = {"inputs": inputs[:, lo:hi], "targets": targets[:, lo:hi], "weight": np.ones(3)}
        return char_lm.stream_loss(model, batch, key=None, train=False, carry=carry)[1]

    whole, whole_carry = loss(0, 8, _zero_carry(model, 3))
    first, carry = loss(0, 4, _zero_carry(model, 3))
    second, last_carry = loss(4, 8, carry)
    for k in whole:
        assert float(first[k] + second[k]) == pytest.approx(float(whole[k]), rel=1e-5)
    for (h, c), (hw, cw) in zip(last_carry, whole_carry, strict=True):
        np.testing.assert_allclose(h, hw, atol=1e-5)
        np.testing.assert_allclose(c, cw, atol=1e-5)


def test_stream_loss_scores_only_the_targets_tmask_keeps():
    """The evaluation streams' padding (`tmask` 0 at the ends of rows) is no target: the sums are those of
    the real positions alone."""
    model, ids = _stream_model_and_ids()
    tmask = np.ones((3, 8), np.float32)
    tmask[1, 5:] = tmask[2, 2:] = 0.0
    batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:], "weight": np.ones(3), "tmask": tmask}
    _, (sums, _) = char_lm.stream_loss(
        model, batch, key=None, train=False, carry=_zero_carry(model, 3)
    )
    logits, _ = model(jnp.asarray(ids[:, :-1]))
    want = losses.softmax_metric_sums(logits, jnp.asarray(ids[:, 1:]), jnp.asarray(tmask))
    assert float(sums["count"]) == tmask.sum() == 8 + 5 + 2
    for k in want:
        assert float(sums[k]) == pytest.approx(float(want[k]), rel=1e-5)


def test_stream_batches_continue_each_stream_and_shift_per_epoch(tmp_path):
    config = _stream_config(_write_text(tmp_path / "t.txt"))
    task = char_lm.make_task(config)
    seq = config.data.seq_length
    batches = list(task.train_batches(0, 0))
    assert len(batches) == task.steps_per_epoch
    # the target of the last position is the next batch's first input, row by row
    for a, b in zip(batches, batches[1:], strict=False):
        np.testing.assert_array_equal(a["targets"][:, -1], b["inputs"][:, 0])
        np.testing.assert_array_equal(a["inputs"][:, 1:], a["targets"][:, :-1])
        assert a["inputs"].shape == (config.train.batch_size, seq)
    # resuming at batch k yields exactly the batches an uninterrupted epoch would
    resumed = list(task.train_batches(0, 3))
    np.testing.assert_array_equal(resumed[0]["inputs"], batches[3]["inputs"])
    # the truncation points move from epoch to epoch (offset in [0, seq))
    offsets = {int(np.random.default_rng([config.seed, e, 11]).integers(seq)) for e in range(6)}
    assert len(offsets) > 1


def test_stream_batches_read_the_streams_back_to_back(tmp_path):
    """An epoch's batches are one contiguous slice of the text, stream after stream: the character after
    stream b's last batch is stream b+1's first input, so no character between two streams is skipped
    (the remainder goes to the end of the text). The streams were `(n - (T-1)) // B` long but only
    `steps * T` of it was read, and the characters in between were never inputs or targets."""
    path = _write_text(tmp_path / "t.txt")
    config = _stream_config(path)
    task = char_lm.make_task(config)
    splits, _ = char_lm.load_splits(config)
    ids = char_lm._encode(char_lm.build_vocabulary(splits, False), splits["train"])
    seq, bs = config.data.seq_length, config.train.batch_size
    assert (len(ids) - 1 - (seq - 1)) // bs % seq, "the text must leave a remainder per stream"
    for epoch in range(3):
        batches = list(task.train_batches(epoch, 0))
        inputs = np.concatenate([b["inputs"] for b in batches], axis=1).reshape(-1)
        targets = np.concatenate([b["targets"] for b in batches], axis=1).reshape(-1)
        offset = int(np.random.default_rng([config.seed, epoch, 11]).integers(seq))
        np.testing.assert_array_equal(inputs, ids[offset : offset + len(inputs)])
        np.testing.assert_array_equal(targets, ids[offset + 1 : offset + 1 + len(inputs)])
    assert task.data_info["train_streams"]["stream_length"] == task.steps_per_epoch * seq


def test_the_seed_orders_the_training_windows_not_the_validation_streams(tmp_path):
    path = _write_text(tmp_path / "text.txt")

    def task_of_seed(seed):
        config = _stream_config(path)
        config.seed = seed
        return char_lm.make_task(config)

    ef.assert_the_seed_orders_the_training_batches_only(task_of_seed)


def test_vocabulary_is_the_sorted_character_set(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("Bca AB\n" * 40, encoding="utf-8")
    config = _window_config(path)
    task = char_lm.make_task(config)
    assert config.model.vocab_size == 5  # lowercased: "\n", " ", "a", "b", "c"
    assert task.data_info["vocab_size"] == 5


# ---------------------------------------------------------------------------------------------------------
# Train -> checkpoint -> generate.
# ---------------------------------------------------------------------------------------------------------


def test_train_writes_checkpoint_vocab_and_samples(stream_run):
    config, workdir, results = stream_run
    for name in ("config.json", "vocab.json", "primes.json", "results.json", "training_curves.png"):
        assert (workdir / name).exists(), name
    val = results["metrics"]["final"]["validation"]
    assert val["bits_per_char"] == pytest.approx(val["loss"] / np.log(2))
    first = results["history"][0]["validation"]["loss"]
    assert val["loss"] < first  # it learned something
    assert val["loss"] < np.log(config.model.vocab_size)  # better than uniform
    samples = results["samples"]
    assert len(samples["texts"]) == config.generate.num_samples
    assert all(len(t) == config.generate.length for t in samples["texts"])


def test_rerunning_a_finished_run_changes_nothing(stream_run):
    config, workdir, results = stream_run
    ckpt = workdir / "checkpoints"
    before = {p: p.stat().st_mtime_ns for p in ckpt.rglob("*") if p.is_file()}
    results_mtime = (workdir / "results.json").stat().st_mtime_ns
    again = char_lm.train(_stream_config(Path(config.data.path)), str(workdir))
    assert again["steps"] == results["steps"]
    assert again["metrics"] == results["metrics"]
    after = {p: p.stat().st_mtime_ns for p in ckpt.rglob("*") if p.is_file()}
    assert after == before
    assert (workdir / "results.json").stat().st_mtime_ns == results_mtime


def test_generate_from_workdir_alone_is_deterministic_when_greedy(stream_run):
    _, workdir, _ = stream_run
    a = char_lm.generate_samples(None, str(workdir), prime="to be ", length=30, temperature=0.0)
    b = char_lm.generate_samples(None, str(workdir), prime="to be ", length=30, temperature=0.0)
    assert a["texts"] == b["texts"]
    assert len(a["texts"][0]) == 30
    assert set(a["texts"][0]) <= set("".join(WORDS) + " \n")
    # A --config of another model is overridden by the run's saved config (generation needs the trained
    # model): the same text, not a shape error.
    other = _stream_config(Path("unused.txt"))
    other.model.hidden_sizes = (5,)
    c = char_lm.generate_samples(other, str(workdir), prime="to be ", length=30, temperature=0.0)
    assert c["texts"] == a["texts"]


def test_the_sampling_seed_reaches_the_sampler_and_picks_the_saved_prime(stream_run, monkeypatch):
    """--sample_seed (`seed`) seeds the sampling and, without a prime, picks which saved training
    window primes it; left out, it is the run's config.seed."""
    config, workdir, _ = stream_run
    primes = load_artefact(str(workdir), char_lm.PRIMES_FILE)["primes"]
    assert len({char_lm._saved_prime(primes, seed) for seed in range(20)}) > 1
    calls = []

    def generate_text(model, vocab, config, prime, length, **kwargs):
        calls.append((prime, kwargs["seed"]))
        return ["x"]

    monkeypatch.setattr(char_lm, "generate_text", generate_text)
    for seed in range(4):
        char_lm.generate_samples(None, str(workdir), seed=seed)
    char_lm.generate_samples(None, str(workdir))
    assert calls == [(char_lm._saved_prime(primes, s), s) for s in (0, 1, 2, 3, config.seed)]


def test_generate_needs_nothing_but_the_workdir(stream_run, tmp_path, monkeypatch):
    """The samples of --mode=generate (saved vocabulary, priming windows and config) are the ones training
    printed, in a session where the text file, $LSTM_JAX_DATA and NLTK_DATA are gone or elsewhere."""
    _, workdir, results = stream_run
    fixtures_text.forbid_data_reads(monkeypatch, tmp_path)
    samples = char_lm.generate_samples(None, str(workdir))
    assert samples["texts"] == results["samples"]["texts"]
    assert samples["prime"] == results["samples"]["prime"]


@pytest.mark.parametrize("layout", ["streams", "windows"])
def test_samples_after_training_are_those_generate_gives_when_the_best_is_not_the_last(
    tmp_path, layout
):
    """The samples a run makes at its end come from the weights --mode=generate loads (the best
    checkpoint), not the last ones."""
    path = _write_text(tmp_path / "text.txt")
    config = _stream_config(path) if layout == "streams" else _window_config(path)
    config.train.num_epochs = 2
    config.train.monitor_mode = (
        "max"  # the highest val_loss is "best": the first epoch's checkpoint
    )
    config.generate.temperature = 1.0  # sampled: any change of the probabilities shows
    config.generate.length = 40
    config.generate.num_samples = 1
    results = char_lm.train(config, str(tmp_path / "run"))
    assert results["best_step"] < results["steps"]
    samples = results["samples"]
    again = char_lm.generate_samples(None, str(tmp_path / "run"), prime=samples["prime"])
    assert again["step"] == results["best_step"]
    assert again["texts"] == samples["texts"]


def test_samples_without_a_prime_start_from_the_window_generate_picks(tmp_path):
    """Without a prime (the Macbeth tutorial's random training window) the samples after training and
    --mode=generate from the workdir start from the same saved window (chosen by the seed) and give the
    same text; training took the first window, generate another one."""
    config = _window_config(_write_text(tmp_path / "text.txt"))
    config.generate.prime = ""
    config.generate.length = 20
    results = char_lm.train(config, str(tmp_path / "run"))
    primes = json.loads((tmp_path / "run" / char_lm.PRIMES_FILE).read_text())["primes"]
    assert len(set(primes)) > 1
    again = char_lm.generate_samples(None, str(tmp_path / "run"))
    assert again["prime"] == results["samples"]["prime"]
    assert again["texts"] == results["samples"]["texts"]


def test_generate_takes_the_generate_section_of_a_config_and_names_what_it_ignores(
    stream_run, caplog
):
    """`--config=... --config.generate.length=5 --mode=generate` once printed the saved run's samples
    (length 20, 2 of them), silently; and a --config of another model said nothing either. Now the
    generate section of --config is used (the mode's flags still override it) and the other fields that
    differ from the saved run are named in a warning (the saved values are used)."""
    import logging

    _, workdir, _ = stream_run
    given = _stream_config(Path("unused.txt"))
    given.generate.prime = "to be "
    given.generate.length = 5
    given.generate.num_samples = 3
    given.generate.temperature = 0.0
    with caplog.at_level(logging.WARNING):
        out = char_lm.generate_samples(given, str(workdir))
    assert [len(t) for t in out["texts"]] == [5, 5, 5]
    assert not [r.getMessage() for r in caplog.records if "--config differs" in r.getMessage()]
    assert len(char_lm.generate_samples(given, str(workdir), length=7)["texts"][0]) == 7

    given.model.hidden_sizes = (5,)
    with caplog.at_level(logging.WARNING):
        again = char_lm.generate_samples(given, str(workdir))
    assert again["texts"] == out["texts"]  # the trained model, not one of 5 units
    (warning,) = [r.getMessage() for r in caplog.records if "--config differs" in r.getMessage()]
    assert "config.model.hidden_sizes" in warning and "uses the saved values" in warning
    assert "config.model.vocab_size" not in warning  # filled in from the data: not the user's


def test_top_k_with_greedy_decoding_is_named_in_a_warning(stream_run, caplog):
    """`--top_k=3` at temperature 0 did nothing and said nothing (greedy takes the argmax); now a
    warning names the setting as given (flag or config field) and the fix; sampling does not warn."""
    import logging

    _, workdir, _ = stream_run

    def warnings(**kw):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            char_lm.generate_samples(None, str(workdir), prime="to be ", length=4, **kw)
        return [r.getMessage() for r in caplog.records if "has no effect" in r.getMessage()]

    (w,) = warnings(temperature=0.0, top_k=3)
    assert w.startswith("--top_k=3 has no effect at --temperature=0 (greedy: the most likely")
    assert "pass --temperature > 0 to sample among the 3 most likely" in w
    assert warnings(temperature=0.7, top_k=3) == []
    assert warnings(temperature=0.0, top_k=0) == []
    given = _stream_config(Path("unused.txt"))
    given.generate.temperature, given.generate.top_k = 0.0, 4
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        char_lm.generate_samples(given, str(workdir), prime="to be ", length=4)
    (w,) = [r.getMessage() for r in caplog.records if "has no effect" in r.getMessage()]
    assert w.startswith(
        "--config.generate.top_k=4 has no effect at --config.generate.temperature=0"
    )


def test_the_sample_header_names_top_k_only_where_it_is_used(stream_run, capsys):
    """At temperature 0 (greedy) top_k is not used, which the warning says, yet the header printed
    `top_k 3` above the sample as if it were: now it says greedy; a sampled text's header names its
    top_k."""
    _, workdir, _ = stream_run
    char_lm.generate_samples(None, str(workdir), prime="to be ", length=4, temperature=0.0, top_k=3)
    headers = [x for x in capsys.readouterr().out.splitlines() if x.startswith("--- sample")]
    assert headers and all("top_k" not in h and "greedy" in h for h in headers)
    char_lm.generate_samples(None, str(workdir), prime="to be ", length=4, temperature=0.7, top_k=3)
    headers = [x for x in capsys.readouterr().out.splitlines() if x.startswith("--- sample")]
    assert headers[0] == "--- sample 1 (temperature 0.7, top_k 3) ---"


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("length", 0, r"--config\.generate\.length=0 must be >= 1"),
        ("temperature", -1.0, r"--config\.generate\.temperature=-1\.0 must be"),
        ("top_k", -3, r"--config\.generate\.top_k=-3 must be >= 0"),
        ("num_samples", 0, r"--config\.generate\.num_samples=0 must be between"),
    ],
)
def test_generate_names_a_bad_value_of_the_given_configs_generate_section(
    stream_run, field, value, message
):
    """`--config=... --config.generate.length=0 --mode=generate` once said `--length=0 must be >= 1`,
    a flag nobody passed; the value is named as given, and a flag that overrides it still wins."""
    _, workdir, _ = stream_run
    given = _stream_config(Path("unused.txt"))
    given.generate[field] = value
    with pytest.raises(UserError, match=rf"^{message}"):
        char_lm.generate_samples(given, str(workdir), prime="to")
    fixed = {"length": 3, "temperature": 0.0, "top_k": 0, "num_samples": 1}[field]
    out = char_lm.generate_samples(given, str(workdir), prime="to", **{field: fixed})
    assert out["texts"]
    # A bad flag is named as the flag.
    with pytest.raises(UserError, match=rf"^--{field}=-5(\.0)? must"):
        char_lm.generate_samples(given, str(workdir), prime="to", **{field: -5})


def test_sampling_respects_top_k(stream_run):
    config, workdir, _ = stream_run

    vocab = Vocabulary.load(workdir / "vocab.json")
    saved = config_utils.load_config(str(workdir))
    model, _ = restore_model(saved, str(workdir), char_lm.build_model)
    prime = "whether tis n"
    logits, _ = model(jnp.asarray([vocab.encode(prime)], jnp.int32))
    top2 = set(np.argsort(np.asarray(logits[0, -1]))[-2:].tolist())
    outs = char_lm.generate_text(
        model, vocab, saved, prime, 1, temperature=2.0, top_k=2, num_samples=64, seed=3
    )
    chosen = {vocab.token_to_id[t[0]] for t in outs}
    assert chosen <= top2
    # top_k=1 sampling is greedy
    greedy = char_lm.generate_text(model, vocab, saved, prime, 20, temperature=0.0)
    top1 = char_lm.generate_text(model, vocab, saved, prime, 20, temperature=1.5, top_k=1, seed=9)
    assert greedy == top1
    assert config.data.layout == "streams"


def test_unknown_priming_characters_are_named(stream_run):
    _, workdir, _ = stream_run
    # Named with the flag that gave them (it once said only "remove them from the text").
    with pytest.raises(UserError, match=r"^--prime: unknown characters 'Z', '#'"):
        char_lm.generate_samples(None, str(workdir), prime="to Z#", length=5)
    for bad in (-1.0, float("nan")):
        with pytest.raises(UserError, match=r"--temperature=.* must be a number >= 0"):
            char_lm.generate_samples(None, str(workdir), prime="to", length=5, temperature=bad)


def test_resume_refusals_name_the_real_cause(stream_run, tmp_path):
    """The streams' eval_batch_size is their number of validation streams (it changes the validation
    loss), so it may not change on resume; new characters in the data file are named as changed data,
    not as a model.vocab_size override nobody gave. Neither touches the run."""
    config, workdir, _ = stream_run
    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    more = _stream_config(Path(config.data.path))
    more.train.num_epochs = 3
    more.train.eval_batch_size = 2 * int(config.train.eval_batch_size)
    with pytest.raises(
        UserError, match=r"config\.train\.eval_batch_size differs from the run saved"
    ):
        char_lm.train(more, str(run))
    # A changed setting that also changes a data-derived field (model.vocab_size) is named itself.
    cased = tmp_path / "cased.txt"
    cased.write_text("To Be Or Not\n" * 200, encoding="utf-8")
    first = _stream_config(cased)
    char_lm.train(first, str(tmp_path / "cased_run"))
    lowered = _stream_config(cased)
    lowered.data.lower = not first.data.lower
    lowered.train.num_epochs = 3
    with pytest.raises(UserError, match=r"^config\.data\.lower.* differs? from the run saved"):
        char_lm.train(lowered, str(tmp_path / "cased_run"))
    edited = tmp_path / "text.txt"
    edited.write_text(Path(config.data.path).read_text() + "XYZ\n", encoding="utf-8")
    saved = json.loads((run / "config.json").read_text())
    saved["data"]["path"] = str(edited)  # as if that file had been edited in place
    (run / "config.json").write_text(json.dumps(saved))
    before[run / "config.json"] = (run / "config.json").read_bytes()
    with pytest.raises(UserError, match=r"the data differs from the run saved .*model\.vocab_size"):
        char_lm.train(_stream_config(edited), str(run))
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("content", ["{}", '{"primes": []}', '{"primes": [3]}', "[]"])
def test_a_damaged_primes_file_is_one_error_naming_it(stream_run, tmp_path, content):
    _, workdir, _ = stream_run
    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    (run / "primes.json").write_text(content)
    with pytest.raises(UserError, match=r"primes\.json holds no list of priming texts.*--prime"):
        char_lm.generate_samples(None, str(run), length=5)
    assert char_lm.generate_samples(None, str(run), prime="to be", length=5)["texts"]


def test_window_layout_trains_and_generates_greedily(tmp_path):
    config = _window_config(_write_text(tmp_path / "t.txt", lines=60))
    workdir = tmp_path / "run"
    results = char_lm.train(config, str(workdir))
    assert results["data"]["layout"] == "windows"
    assert "validation" in results["metrics"]["final"]
    # default prime: a saved random training window of seq_length characters
    primes = load_artefact(str(workdir), char_lm.PRIMES_FILE)["primes"]
    assert all(len(p) == config.data.seq_length for p in primes)
    a = char_lm.generate_samples(None, str(workdir))
    b = char_lm.generate_samples(None, str(workdir))
    assert a == b
    assert a["prime"] in primes and len(a["texts"][0]) == 50
    # a short prime is pre-padded with spaces to the window
    short = char_lm.generate_samples(None, str(workdir), prime="to", length=5)
    assert len(short["texts"][0]) == 5


def test_windows_keep_the_remainder_as_a_padded_last_batch(tmp_path):
    config = _window_config(_write_text(tmp_path / "t.txt", lines=60))
    config.train.drop_remainder = False
    task = char_lm.make_task(config)
    bs = config.train.batch_size
    short = ef.epoch_keeping_the_remainder(task, task.data_info["train_windows"], bs)
    batches = list(task.train_batches(0, 0))
    assert all(b["inputs"].shape == (bs, config.data.seq_length) for b in batches)
    np.testing.assert_array_equal(batches[-1]["weight"], short["weight"])  # the last one
    model = char_lm.build_model(config, nnx.Rngs(0))
    ef.assert_padding_rows_change_nothing(char_lm.window_loss, model, short)


def test_streams_refuse_to_keep_a_remainder(tmp_path):
    config = _stream_config(_write_text(tmp_path / "t.txt"))
    config.train.drop_remainder = False
    with pytest.raises(UserError, match="drop_remainder=False needs config.data.layout='windows'"):
        char_lm.make_task(config)


def test_window_model_is_the_tutorials_architecture(tmp_path):
    config = macbeth_config.get_config()
    config.model.vocab_size = 60
    model = char_lm.build_model(config, nnx.Rngs(0))
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    # Keras: LSTM(300) on 1 feature: 4*300*(1+300+1); LSTM(300): 4*300*(300+300+1); Dense(60): 300*60+60
    assert n_params == 4 * 300 * 302 + 4 * 300 * 601 + 300 * 60 + 60
    logits, _ = model(jnp.zeros((2, 50), jnp.int32))
    assert logits.shape == (2, 60)


# ---------------------------------------------------------------------------------------------------------
# Errors.
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"   \n", b"abc\x00def\n"])
def test_empty_or_binary_text_is_a_user_error(tmp_path, content):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=str(path)):
        char_lm.make_task(_stream_config(path))


def test_too_short_text_is_a_user_error(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("abc", encoding="utf-8")
    with pytest.raises(UserError, match="too few|too short"):
        char_lm.make_task(_stream_config(path))


def test_quick_config_without_data_names_both_fixes(tmp_path, monkeypatch):
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setattr(data, "_network_reachable", lambda *a, **k: False)
    with pytest.raises(UserError) as err:
        char_lm.make_task(quick_config.get_config())
    msg = str(err.value)
    assert "--config.data.path" in msg and "LSTM_JAX_DATA" in msg and "TFDS" in msg
    assert "\n" not in msg


def test_streams_without_validation_and_malformed_sizes(tmp_path):
    """validation_fraction=0 on Macbeth in the streams layout trains without validation (it was a
    reshape error); hidden_sizes that are not integers are named (they were a ValueError)."""
    config = _stream_config(_write_text(tmp_path / "t.txt"))
    config.data.dataset = (
        "macbeth"  # a text split by validation_fraction (tiny-shakespeare's is fixed)
    )
    config.data.validation_fraction = 0.0
    task = char_lm.make_task(config)
    assert task.periodic_eval == () and task.eval_batches == {}
    config.early_stopping.enabled = True  # watching val_loss, which this run cannot report
    with pytest.raises(
        UserError, match=r"early stopping watches .*'val_loss', but this run has no"
    ):
        char_lm.train(config, str(tmp_path / "run"))
    assert not list((tmp_path / "run").glob("checkpoints/[0-9]*"))  # refused before any step
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    for bad in ("abc", (16, "a"), ((16,),)):
        with config.ignore_type():  # as a saved config.json or a flag can give them
            config.model.hidden_sizes = bad
        with pytest.raises(UserError, match=r"config\.model\.hidden_sizes=.* one positive integer"):
            char_lm.make_task(config)


def test_a_setting_the_layout_or_input_mode_never_reads_is_a_warning(tmp_path, caplog):
    """--config.data.window_stride=5 on tiny_shakespeare (streams) and --config.model.embed_dim=64 on
    Macbeth (scalar input) did nothing, silently."""
    import logging

    streams = _stream_config(tmp_path / "unused.txt")
    streams.data.window_stride = 5
    windows = _window_config(tmp_path / "unused.txt")
    windows.model.embed_dim = 64
    with caplog.at_level(logging.WARNING):
        char_lm._check_data_config(streams)
        char_lm._check_data_config(windows)
        char_lm._check_data_config(_stream_config(tmp_path / "unused.txt"))  # the shipped: quiet
    messages = [r.getMessage() for r in caplog.records if "has no effect" in r.getMessage()]
    assert messages == [
        "config.data.window_stride=5 has no effect with config.data.layout='streams' (only 'windows'"
        " reads it); pass --config.data.layout=windows to use it, or set it to 1",
        "config.model.embed_dim=64 has no effect with config.model.input_mode='scalar' (each"
        " character is one number); pass --config.model.input_mode=embed to use it, or set it to 1",
    ]


def test_bad_layout_is_a_user_error(tmp_path):
    config = _stream_config(_write_text(tmp_path / "t.txt"))
    config.data.layout = "bogus"
    with pytest.raises(UserError, match="config.data.layout"):
        char_lm.make_task(config)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("temperature", -1.0, r"--config\.generate\.temperature=-1\.0 must be a number >= 0"),
        ("length", 0, r"--config\.generate\.length=0 must be >= 1"),
        ("top_k", -2, r"--config\.generate\.top_k=-2 must be >= 0"),
        ("num_samples", 0, r"--config\.generate\.num_samples=0 must be between 1 and 10,000"),
        ("length", 10**9, r"--config\.generate\.length=1000000000 is over the 1,000,000 char"),
        ("prime", "to be \u20ac", r"config\.generate\.prime: unknown .*\u20ac"),
    ],
)
def test_bad_generate_settings_fail_before_training(tmp_path, field, value, message):
    """The samples a run makes at its end: a bad setting is named before any step (it once failed
    only after training, so a finished run could never write its results)."""
    config = _stream_config(_write_text(tmp_path / "t.txt"))
    config.generate[field] = value
    with pytest.raises(UserError, match=message):
        char_lm.train(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_samples_times_length_is_capped_as_well_as_each(tmp_path):
    """Each of --num_samples and --length has its cap, and so has their product (the ids one call
    holds): 10,000 samples of 1,000,000 characters passed both caps and asked for 40 GB of ids."""
    char_lm.check_sampling(1_000_000, 0.0, 0, 10)  # 10,000,000: the most one call generates
    with pytest.raises(UserError, match=r"num_samples=11 x length=1000000 is 11,000,000 char"):
        char_lm.check_sampling(1_000_000, 0.0, 0, 11)
    config = _stream_config(_write_text(tmp_path / "t.txt"))
    config.generate.num_samples, config.generate.length = 10_000, 10_000
    with pytest.raises(UserError, match=r"100,000,000 characters, over the 10,000,000"):
        char_lm.train(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------------
# The real entry point, in a subprocess.
# ---------------------------------------------------------------------------------------------------------


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != data.DATA_ENV}
    return subprocess.run(
        [sys.executable, "-m", "experiments.char_textgen.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _the_one_error_line(proc: subprocess.CompletedProcess) -> str:
    """A user error's exit: status 2, no traceback, exactly one `error:` line on stderr (returned)."""
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_cli_generate_from_workdir_and_exit_status_2_on_errors(stream_run, tmp_path):
    _, workdir, _ = stream_run
    ok = _cli(
        f"--workdir={workdir}", "--mode=generate", "--prime=the ", "--length=12", "--temperature=0"
    )
    assert ok.returncode == 0, ok.stderr
    assert "--- sample 1" in ok.stdout and "the " in ok.stdout

    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\x00\x01\x02")
    bad = _cli(
        "--config=experiments/char_textgen/configs/test.py",
        f"--workdir={tmp_path / 'run'}",
        f"--config.data.path={binary}",
    )
    assert "binary file" in _the_one_error_line(bad)

    unknown = _cli(f"--workdir={workdir}", "--mode=generate", "--prime=Q", "--length=3")
    assert "unknown characters 'Q'" in _the_one_error_line(unknown)

    # An impossible dropout rate: one line naming the field, not the layer's ValueError traceback.
    rate = _cli(
        "--config=experiments/char_textgen/configs/test.py",
        f"--workdir={tmp_path / 'rate'}",
        f"--config.data.path={workdir.parent / 'text.txt'}",
        "--config.model.recurrent_dropout=1.5",
    )
    assert _the_one_error_line(rate) == (
        "error: config.model.recurrent_dropout=1.5 is not a dropout rate; pass a value in [0, 1),"
        " e.g. --config.model.recurrent_dropout=0.2"
    )
    assert not os.path.exists(tmp_path / "rate" / "checkpoints")

    if jax.default_backend() == "cpu":  # an impl this machine cannot run: one line, nothing written
        cudnn = _cli(
            "--config=experiments/char_textgen/configs/test.py",
            f"--workdir={tmp_path / 'cudnn'}",
            f"--config.data.path={workdir.parent / 'text.txt'}",
            "--config.model.impl=cudnn",
        )
        line = _the_one_error_line(cudnn)
        assert line.startswith(
            "error: config.model.impl='cudnn' cannot run here: it needs an NVIDIA GPU"
        )
        assert line.endswith(
            "pass --config.model.impl=auto (the fastest implementation this machine has)"
        )
        assert not os.path.exists(tmp_path / "cudnn")


def test_cli_generate_prints_non_ascii_text_under_an_ascii_locale(tmp_path):
    """Generated text with characters ASCII lacks, under the C locale (stdout encodes ASCII only):
    printed with those characters escaped, not a UnicodeEncodeError traceback; under UTF-8 as it is."""
    words = ["caf\u00e9", "na\u00efve", "\u00fcber", "\u2014", "s\u00e9ance", "fa\u00e7ade"]
    rng = np.random.default_rng(0)
    path = tmp_path / "text.txt"
    path.write_text(
        "\n".join(" ".join(rng.choice(words, 8)) for _ in range(60)) + "\n", encoding="utf-8"
    )
    workdir = tmp_path / "run"
    char_lm.train(_stream_config(path), str(workdir))
    args = [f"--workdir={workdir}", "--mode=generate", "--length=30", "--num_samples=1"]
    env = {k: v for k, v in os.environ.items() if k != data.DATA_ENV}
    out = {}
    for name, extra in (("c", ef.C_LOCALE), ("utf8", {"PYTHONUTF8": "1"})):
        proc = subprocess.run(
            [sys.executable, "-m", "experiments.char_textgen.main", *args],
            cwd=REPO,
            env={**env, **extra},
            capture_output=True,
            timeout=300,
        )
        stderr = proc.stderr.decode("utf-8", "replace")
        assert proc.returncode == 0 and "Traceback" not in stderr, stderr[-2000:]
        out[name] = proc.stdout.decode("utf-8")
    assert out["c"].isascii() and "\\x" in out["c"]
    assert not out["utf8"].isascii()
    # The same text: escaped under C, as it is under UTF-8.
    assert out["utf8"].encode("ascii", "backslashreplace").decode("ascii") == out["c"]


def test_a_sampling_seed_out_of_range_is_one_error_line(stream_run):
    _, workdir, _ = stream_run
    for seed in (
        -1,
        2**32,
        2**64,
    ):  # numpy's ValueError, a seed that is seed 0, jax's OverflowError
        with pytest.raises(UserError, match=rf"--sample_seed={seed} must be between 0 and"):
            char_lm.generate_samples(None, str(workdir), seed=seed, length=3)
    char_lm.generate_samples(None, str(workdir), seed=2**32 - 1, length=3)
    res = _cli(f"--workdir={workdir}", "--mode=generate", "--sample_seed=-1", "--length=3")
    assert _the_one_error_line(res) == "error: --sample_seed=-1 must be between 0 and 4,294,967,295"


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU cannot run impl='cudnn'")
def test_generate_from_a_run_trained_with_an_impl_this_machine_lacks(stream_run, tmp_path):
    """A run trained with impl="cudnn" (on a GPU) generates here with this machine's impl: same text."""
    _, workdir, _ = stream_run
    copy = tmp_path / "from_gpu"
    shutil.copytree(workdir, copy)
    saved = json.loads((copy / config_utils.CONFIG_FILE).read_text())
    saved["model"]["impl"] = "cudnn"
    (copy / config_utils.CONFIG_FILE).write_text(json.dumps(saved))
    kw = {"prime": "the ", "length": 16, "temperature": 0.0}
    got = char_lm.generate_samples(None, str(copy), **kw)
    assert got["texts"] == char_lm.generate_samples(None, str(workdir), **kw)["texts"]


# ---------------------------------------------------------------------------------------------------------
# Real data (skipped without LSTM_JAX_DATA).
# ---------------------------------------------------------------------------------------------------------


def _real(relative: str) -> Path:
    root = os.environ.get(data.DATA_ENV)
    if not root or not (Path(root) / relative).exists():
        pytest.skip(f"needs $LSTM_JAX_DATA/{relative}")
    return Path(root) / relative


def test_real_macbeth_windows():
    _real(char_lm.DATASETS["macbeth"])
    config = macbeth_config.get_config()
    task = char_lm.make_task(config)
    info = task.data_info
    assert info["train_chars"] + info["validation_chars"] == 100_351
    assert info["train_windows"] == info["train_chars"] - 50
    assert task.steps_per_epoch == info["train_windows"] // 40
    assert config.model.vocab_size == len(
        set(Path(info["source"]).read_text(encoding="utf-8").lower())
    )


def test_real_tiny_shakespeare_split():
    _real(char_lm.DATASETS["tiny_shakespeare"])
    config = quick_config.get_config()
    task = char_lm.make_task(config)
    assert config.model.vocab_size == 65
    assert task.data_info["train_chars"] == int(1_115_394 * 0.9)
    # docs/experiments.md: every validation character but the first is predicted once, 111,539 in all
    scored = sum(float(b["tmask"].sum()) for b in task.eval_batches["validation"]())
    assert scored == task.data_info["validation_chars"] - 1 == 111_539
    assert "111,539 predictions" in (REPO / "docs" / "experiments.md").read_text(encoding="utf-8")
