"""IMDB sentiment experiment: pipeline semantics, end to end on a fixture aclImdb/ folder, predict, CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import engine_fixtures as ef
import fixtures_text
import jax
import numpy as np
import pytest
from flax import nnx

from experiments.imdb_sentiment.configs import test as test_config
from lstm_jax import cli, config_utils, text
from lstm_jax import data as data_lib
from lstm_jax.errors import UserError
from lstm_jax.tasks import classification as clf
from lstm_jax.train import restore_model, saved_results

REPO = Path(__file__).resolve().parents[1]
POS = ["great", "wonderful", "brilliant", "loved", "superb", "moving"]
NEG = ["awful", "terrible", "boring", "hated", "dull", "worst"]
FILLER = ["the", "film", "movie", "plot", "actor", "scene", "story", "was", "a", "this"]


def _review(rng: np.random.Generator, words: list[str]) -> str:
    toks = list(rng.choice(FILLER, 8)) + list(rng.choice(words, 3))
    rng.shuffle(toks)
    return " ".join(toks).capitalize() + ".<br /><br />Really, " + rng.choice(words) + "!"


def make_acl_imdb(root: Path, n: int = 24, seed: int = 0) -> Path:
    """aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt with an easy, learnable signal."""
    rng = np.random.default_rng(seed)
    acl = root / "aclImdb"
    for split in ("train", "test"):
        for label, words, rating in (("pos", POS, 9), ("neg", NEG, 2)):
            d = acl / split / label
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"{i}_{rating}.txt").write_text(_review(rng, words), encoding="utf-8")
    # A word seen only in the test split: must be out-of-vocabulary (vocabulary fitted on train only).
    (acl / "test" / "pos" / f"{n}_10.txt").write_text("zyzzyva great great", encoding="utf-8")
    return acl


def _config(path: Path):
    config = test_config.get_config()
    config.data.path = str(path)
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("imdb")
    acl = make_acl_imdb(root)
    workdir = root / "run"
    results = clf.train(_config(acl), str(workdir))
    return acl, workdir, results


# ------------------------------------------------------------------------------------------------
# Pipeline semantics
# ------------------------------------------------------------------------------------------------


def test_split_vocab_and_padding(tmp_path):
    acl = make_acl_imdb(tmp_path)
    config = _config(acl)
    prepared = clf.prepare_data(config)
    a = prepared.arrays
    # 48 training reviews, 75/25 split with seed 100 exactly as sklearn's train_test_split.
    tr, va = data_lib.train_test_split(48, 0.25, 100)
    assert len(a["train"]["label"]) == len(tr) == 36 and len(a["validation"]["label"]) == 12
    assert len(a["test"]["label"]) == 49  # the official test split, untouched
    raw, _ = data_lib.load_imdb(str(acl))
    np.testing.assert_array_equal(a["train"]["label"], [raw["train"][i][1] for i in tr])
    assert prepared.texts["validation"][0] == raw["train"][va[0]][0]
    enc = prepared.encoder
    vocab = enc.vocab
    # 0 = padding, 1 = OOV; "<br />" and punctuation are gone, words are lowercase.
    assert vocab.oov_id == 1 and vocab.pad_id == 0
    assert "br" not in vocab.token_to_id and "really" in vocab.token_to_id
    assert "zyzzyva" not in vocab.token_to_id  # only in the test split
    # TextVectorization's order: by count, equal counts by token, descending (not by first occurrence).
    counts = Counter(
        w for t in (raw["train"][i][0] for i in tr) for w in text.standardize_imdb(t).split()
    )
    expected = sorted(counts, key=lambda w: (counts[w], w), reverse=True)
    assert len(set(counts.values())) < len(counts)  # the fixture has ties
    assert [vocab.id_to_token(i) for i in range(2, vocab.size)] == expected[: vocab.size - 2]
    ids, mask = enc(["Zyzzyva, GREAT!"])
    assert ids.shape == (1, config.data.maxlen)
    assert ids[0, 0] == 1 and ids[0, 1] == vocab.token_to_id["great"]
    assert ids[0, 2:].tolist() == [0] * (config.data.maxlen - 2)  # post padding
    assert mask[0].tolist() == [True, True] + [False] * (config.data.maxlen - 2)
    # Long reviews are cut at the end (TextVectorization's output_sequence_length).
    long_ids, long_mask = enc([" ".join(["great"] * 40 + ["awful"])])
    assert long_mask.all() and vocab.token_to_id["awful"] not in long_ids[0]
    # The data info records provenance and counts for results.json.
    assert prepared.info["source"] == str(acl)
    assert prepared.info["test"]["examples"] == 49
    # max_train_examples: a prefix of the shuffled training split; validation and test untouched.
    config.data.max_train_examples = 10
    few = clf.prepare_data(config)
    np.testing.assert_array_equal(few.arrays["train"]["label"], a["train"]["label"][:10])
    assert few.texts["train"] == prepared.texts["train"][:10]
    for split in ("validation", "test"):
        assert few.texts[split] == prepared.texts[split]


def test_the_seed_orders_the_training_batches_not_the_held_out_reviews(tmp_path):
    acl = make_acl_imdb(tmp_path)

    def task_of_seed(seed):
        config = _config(acl)
        config.seed = seed
        return clf.make_task(config, str(tmp_path / "run"))[0]

    ef.assert_the_seed_orders_the_training_batches_only(task_of_seed)


def test_encoder_round_trip(tmp_path):
    prepared = clf.prepare_data(_config(make_acl_imdb(tmp_path)))
    enc = prepared.encoder
    back = clf.TextEncoder.from_dict(json.loads(json.dumps(enc.to_dict())))
    texts = prepared.texts["test"][:5] + ["an unseen zyzzyva text"]
    for x, y in zip(enc(texts), back(texts), strict=True):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(UserError, match="not a preprocessing file"):
        clf.TextEncoder.from_dict({"format": "other"})
    # Padding and truncating sides that differ come back each as it was.
    enc.padding, enc.truncating = "pre", "post"
    back = clf.TextEncoder.from_dict(enc.to_dict())
    assert (back.padding, back.truncating) == ("pre", "post")
    for x, y in zip(enc(texts), back(texts), strict=True):
        np.testing.assert_array_equal(x, y)


def test_bad_config_and_data(tmp_path):
    acl = make_acl_imdb(tmp_path)
    config = _config(acl)
    config.data.padding = "middle"
    with pytest.raises(UserError, match=r"config\.data\.padding='middle'"):
        clf.prepare_data(config)
    config = _config(acl)
    config.model.token_dropout = 1.0  # drops every word: an impossible model
    with pytest.raises(UserError, match=r"config\.model\.token_dropout=1\.0 is not a dropout rate"):
        clf.build_model(config, nnx.Rngs(0))
    for field, value in (
        ("maxlen", 0),  # once "every train text of imdb is empty", blaming the data
        ("validation_fraction", 0.0),
        ("validation_fraction", 1.0),
        ("bucket_quantum", -1),
        ("max_train_examples", -1),
    ):
        config = _config(acl)
        config.data[field] = value
        with pytest.raises(UserError) as err:
            clf.prepare_data(config)  # each once went on silently or named no field
        assert str(err.value).startswith(f"config.data.{field}={value} must be"), err.value
        assert f"--config.data.{field}=" in str(err.value)
    for size in (1, 2):  # 1 once named Vocabulary's internal num_words; 2 read every word as OOV
        config = _config(acl)
        config.data.vocab_size = size
        with pytest.raises(UserError, match=rf"^config\.data\.vocab_size={size} leaves no id for"):
            clf.prepare_data(config)
    config = _config(acl)
    config.data.vocab_size = 100000  # ids beyond the embedding are impossible by construction...
    assert clf.embedding_rows(config) == 100000
    # ... a broken label inside a CSV copy names file and line.
    folder = tmp_path / "csv"
    folder.mkdir()
    (folder / "imdb_train.csv").write_text("id,label,text\n0,pos,good\n1,maybe,bad\n")
    (folder / "imdb_test.csv").write_text("id,label,text\n0,neg,bad\n")
    config = _config(folder)
    with pytest.raises(UserError, match=r"imdb_train\.csv: line 3: label 'maybe'"):
        clf.prepare_data(config)
    # Training data of one class: a clear error, not a sklearn traceback after training (or "test
    # accuracy 1.0000" without it).
    one = tmp_path / "one"
    one.mkdir()
    rows = "".join(f"{i},pos,good film number {i}\n" for i in range(40))
    (one / "imdb_train.csv").write_text("id,label,text\n" + rows)
    (one / "imdb_test.csv").write_text("id,label,text\n" + rows)
    with pytest.raises(
        UserError,
        match=r"every training example of imdb \(30\) has the label 'pos'.*check the label column",
    ):
        clf.prepare_data(_config(one))
    (acl / "test" / "neg" / "0_2.txt").write_bytes(b"caf\xe9 awful")
    with pytest.raises(UserError, match="undecodable bytes"):
        clf.prepare_data(_config(acl))


# ------------------------------------------------------------------------------------------------
# End to end: train -> checkpoint -> reports -> predict
# ------------------------------------------------------------------------------------------------


def test_train_writes_reports_and_results(trained):
    _, workdir, results = trained
    saved = json.loads((workdir / "results.json").read_text())
    assert saved["status"] == "finished" and saved["steps"] == results["steps"] == 2 * (36 // 8)
    assert set(saved["reports"]) == {"validation", "test"}
    test_rep = saved["reports"]["test"]
    assert test_rep["labels"] == ["neg", "pos"] and test_rep["examples"] == 49
    assert sum(map(sum, test_rep["confusion_matrix"])) == 49
    # The engine's test accuracy (metric sums) and the report's (predictions) agree.
    assert test_rep["accuracy"] == pytest.approx(saved["metrics"]["final"]["test"]["accuracy"])
    for split in ("validation", "test"):
        assert (workdir / f"confusion_matrix_{split}.png").stat().st_size > 1000
        assert "weighted avg" in (workdir / f"classification_report_{split}.txt").read_text()
    # The TF-IDF baseline separates the fixture's two vocabularies (almost) perfectly.
    assert saved["baseline"]["splits"]["test"]["accuracy"] >= 0.95
    assert saved["baseline"]["method"] == "tfidf+logistic_regression"
    assert saved["class_names"] == ["neg", "pos"]
    assert (workdir / clf.PREPROCESS_FILE).is_file()


def test_final_metrics_come_from_the_report_pass_and_match_the_engine(trained, tmp_path):
    acl, workdir, results = trained
    import dataclasses

    from lstm_jax.train import train_and_evaluate

    # The same run with the engine's own final evaluation: same metrics (summed in another order).
    config = _config(acl)
    task, _ = clf.make_task(config, str(tmp_path / "engine"))
    plain = train_and_evaluate(
        config, str(tmp_path / "engine"), dataclasses.replace(task, final_metrics=None)
    )
    for split in ("validation", "test"):
        ours, engine = results["metrics"]["final"][split], plain["metrics"]["final"][split]
        assert (
            ours["accuracy"] == engine["accuracy"]
            and ours["count"] == engine["count"] == (results["reports"][split]["examples"])
        )
        assert ours["loss"] == pytest.approx(engine["loss"], rel=1e-5)
    assert plain["reports"] == {
        s: {**r, "files": plain["reports"][s]["files"]} for s, r in results["reports"].items()
    }
    # The final probabilities are saved for the checkpoint they came from, with the labels.
    step = (
        results["best_step"]
        if results["metrics"]["evaluated_weights"] == "best"
        else results["steps"]
    )
    saved = clf.load_predictions(str(workdir), step, ("validation", "test"))
    model, restored_step = clf.restore_model(config, str(workdir), clf.build_model)
    assert restored_step == step
    test = clf.prepare_data(config).arrays["test"]
    probs, labels = saved["test"]
    np.testing.assert_array_equal(labels, test["label"])
    np.testing.assert_allclose(
        probs, clf.predict_proba(model, test["ids"], test["mask"]), atol=1e-6
    )
    assert float((probs.argmax(-1) == labels).mean()) == results["reports"]["test"]["accuracy"]
    assert clf.load_predictions(str(workdir), step + 1, ("test",)) is None  # another checkpoint
    assert clf.load_predictions(str(tmp_path), step, ("test",)) is None  # no file


def test_predict_from_workdir_alone(trained):
    _, workdir, _ = trained
    texts = ["A great, wonderful and brilliant movie!", "Awful. Terrible, boring, the worst."]
    out = clf.predict_texts(str(workdir), texts)
    assert [r["text"] for r in out] == texts
    for r in out:
        assert r["label"] in ("neg", "pos")
        assert 0.5 <= r["probability"] <= 1.0
        assert r["probabilities"][r["label"]] == r["probability"]
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert r["tokens"] > 0
    # Same texts, same answers (the checkpoint and preprocessing are fixed).
    again = clf.predict_texts(str(workdir), texts)
    assert [r["probability"] for r in again] == [r["probability"] for r in out]
    with pytest.raises(UserError, match="text 2 is empty"):
        clf.predict_texts(str(workdir), ["fine", "  "])


def test_predict_needs_nothing_but_the_workdir(trained, tmp_path, monkeypatch):
    """Predictions from the saved vocabulary, config and checkpoint: the same in a session where the
    reviews, $LSTM_JAX_DATA and NLTK_DATA are gone or elsewhere."""
    _, workdir, _ = trained
    texts = ["A great, wonderful and brilliant movie!", "Awful. Terrible, boring, the worst."]
    before = clf.predict_texts(str(workdir), texts)
    fixtures_text.forbid_data_reads(monkeypatch, tmp_path)
    assert clf.predict_texts(str(workdir), texts) == before


def test_predict_labels_as_the_engines_accuracy_counts(trained, monkeypatch):
    """A logit just above 0 rounds to p = 0.5, a tie of the two probabilities: predict names the class
    the engine's accuracy and the reports count (logit > 0: positive), not the first of the tie."""
    _, workdir, _ = trained
    # A logit of exactly 0 is not positive (losses.binary_metric_sums: logit > 0).
    assert clf.predicted_classes(np.array([0.0, -0.0, 1e-30], np.float32)).tolist() == [0, 0, 1]
    monkeypatch.setattr(
        clf, "predict_logits", lambda *a, **k: np.array([1e-8, -1e-8, 2.0], np.float32)
    )
    out = clf.predict_texts(str(workdir), ["one", "two", "three"])
    assert [r["label"] for r in out] == ["pos", "neg", "pos"]
    assert out[0]["probability"] == 0.5 and out[0]["probabilities"] == {"neg": 0.5, "pos": 0.5}


def test_eval_mode_rewrites_reports_not_results(trained):
    _, workdir, results = trained
    before = (workdir / "results.json").read_bytes()
    config = saved_results(str(workdir))["config"]
    import ml_collections

    out = clf.evaluate(ml_collections.ConfigDict(config), str(workdir))
    assert (workdir / "eval.json").is_file()
    best = results["metrics"]["best"]["step"]
    assert out["step"] == best
    assert out["reports"]["test"]["examples"] == 49
    assert (workdir / "results.json").read_bytes() == before


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU cannot run impl='cudnn'")
def test_eval_and_predict_of_a_run_trained_with_an_impl_this_machine_lacks(
    trained, tmp_path, caplog
):
    """A run trained with impl="cudnn" (on a GPU) evaluates and predicts here with this machine's impl,
    with a warning: the same numbers as the run itself."""
    import logging

    _, workdir, _ = trained
    copy = tmp_path / "from_gpu"
    shutil.copytree(workdir, copy)
    saved = json.loads((copy / "config.json").read_text())
    saved["model"]["impl"] = "cudnn"
    (copy / "config.json").write_text(json.dumps(saved))
    texts = ["a great movie", "a dull boring film"]
    with caplog.at_level(logging.WARNING):
        got = clf.predict_texts(str(copy), texts)
        evaluated = clf.evaluate(config_utils.load_config(str(copy)), str(copy))  # as the CLI
    assert any("cannot run here" in r.getMessage() for r in caplog.records)
    want = clf.predict_texts(str(workdir), texts)
    assert [r["probability"] for r in got] == pytest.approx([r["probability"] for r in want])
    assert evaluated["step"] == json.loads((workdir / "results.json").read_text())["best_step"]


def _eval_and_predict_errors(config, workdir) -> list[str]:
    """The `UserError` messages of `--mode=eval` and `--mode=predict` on `workdir` with `config` (each
    must refuse it)."""
    messages = []
    for call in (
        lambda: clf.evaluate(config, str(workdir)),
        lambda: clf.predict_texts(str(workdir), ["a great movie"], config),
    ):
        with pytest.raises(UserError) as e:
            call()
        messages.append(str(e.value))
    return messages


def test_eval_and_predict_with_another_model_config_name_the_field(trained):
    """A --config whose model differs from the trained run: one UserError naming the field, not
    orbax's shape error; a config that differs elsewhere (batch size) still predicts."""
    acl, workdir, _ = trained
    files = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
    other = _config(acl)
    other.model.hidden_sizes = (7,)
    other.data.vocab_size = 50
    for msg in _eval_and_predict_errors(other, workdir):
        assert "config.model.hidden_sizes" in msg and "config.data.vocab_size" in msg
        assert msg.index("model.hidden_sizes") < msg.index("data.vocab_size")
        assert "leave out --config" in msg
    same_model = _config(acl)
    same_model.train.eval_batch_size = 3
    out = clf.predict_texts(str(workdir), ["a great movie"], same_model)
    assert out[0]["label"] in ("neg", "pos")
    files.pop("eval.json", None)  # written by the eval test, which may run first or not at all
    assert {n: (workdir / n).read_bytes() for n in files} == files


@pytest.mark.parametrize(("field", "value"), [("split_seed", 5), ("validation_fraction", 0.5)])
def test_eval_refuses_a_config_that_splits_the_data_otherwise(trained, field, value):
    """eval with a --config whose split differs from the trained run's scored a "validation" split
    holding reviews the model trained on, silently; now one error naming the field, nothing written."""
    acl, workdir, _ = trained
    files = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
    other = _config(acl)
    other.data[field] = value
    saved = config_utils.load_config(str(workdir)).data[field]
    with pytest.raises(UserError, match=rf"data.{field}: saved {saved!r}, given {value!r}"):
        clf.evaluate(other, str(workdir))
    assert {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()} == files


@pytest.mark.parametrize(
    ("section", "field", "value"), [("model", "pool", "mean"), ("data", "mask", False)]
)
def test_eval_and_predict_refuse_a_config_computing_another_model_of_the_same_shapes(
    trained, section, field, value
):
    """`--mode=predict --config=... --config.data.mask=False` (or another pooling) once predicted with
    the trained weights under another computation, silently (on a real run: another label for a
    review); the parameter shapes agree, so the shape check let it through."""
    acl, workdir, _ = trained
    other = _config(acl)
    other[section][field] = value
    for msg in _eval_and_predict_errors(other, workdir):
        assert f"{section}.{field}: saved" in msg and "leave out --config" in msg, msg
    fine = _config(acl)
    fine.model.dropout = 0.3  # a training-only setting: predicts as trained
    assert clf.predict_texts(str(workdir), ["a great movie"], fine) == clf.predict_texts(
        str(workdir), ["a great movie"]
    )


def test_resume_returns_saved_results(trained):
    acl, workdir, results = trained
    again = clf.train(_config(acl), str(workdir))
    assert again["steps"] == results["steps"]
    assert again["reports"]["test"]["accuracy"] == results["reports"]["test"]["accuracy"]


def test_a_run_whose_data_moved_resumes_from_the_new_path_checked_by_its_fingerprint(
    trained, tmp_path, monkeypatch
):
    """The reviews moved (another disk, another machine) after a checkpoint: the saved config's path is
    gone, and passing the new one was refused as 'a different run', so the run could not be resumed at
    all. Now `data.path` may change on resume when the data there is the run's (its fingerprint, saved
    with each checkpoint, agrees): the run ends as the uninterrupted one, and config.json names the new
    path. Other data at the new path is still refused."""
    from lstm_jax.checkpoint import CheckpointStore

    _, _, results = trained
    acl = make_acl_imdb(tmp_path / "before")  # the same reviews as the fixture's (same seed)
    real_save = CheckpointStore.save

    def save_then_stop(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        raise KeyboardInterrupt("stopped after the first checkpoint")

    monkeypatch.setattr(CheckpointStore, "save", save_then_stop)
    workdir = str(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        clf.train(_config(acl), workdir)
    monkeypatch.undo()
    moved = tmp_path / "after" / "aclImdb"
    shutil.move(str(acl.parent), str(moved.parent))
    other = make_acl_imdb(tmp_path / "other", seed=1)  # other reviews
    with pytest.raises(UserError, match=r"differs from the data the run in .* trained on"):
        clf.train(_config(other), workdir)
    resumed = clf.train(_config(moved), workdir)
    for key in ("history", "metrics", "reports", "best_step", "steps"):
        assert resumed[key] == results[key], key
    assert config_utils.load_config(workdir).data.path == str(moved)


# Runs the IMDB binary with SIGTERM sent to itself after its STOP_AFTER_STEP-th train step (no timing
# guesswork from outside): the signal reaches the handler training installs, as `kill <pid>` would.
_SIGTERM_AFTER_A_STEP = """
import os, runpy, signal
from lstm_jax import train

compile_train_step = train._Engine.compile_train_step


def compile_and_count(self, state):
    compile_train_step(self, state)
    step, done = self.train_step, [0]

    def counted(*args):
        out = step(*args)
        done[0] += 1
        if done[0] == int(os.environ["STOP_AFTER_STEP"]):
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    self.train_step = counted


train._Engine.compile_train_step = compile_and_count
runpy.run_module("experiments.imdb_sentiment.main", run_name="__main__", alter_sys=True)
"""


def test_cli_sigterm_then_the_workdir_alone_resumes_to_the_uninterrupted_run(trained, tmp_path):
    """The one-command promise across processes: a training process stopped by SIGTERM between
    checkpoints (exit 143), then `--workdir` alone in a new process (the saved config, no flags), ends
    on the results, metrics.jsonl numbers, checkpoints and predictions of the uninterrupted run, bit
    for bit."""
    acl, done, results = trained
    (tmp_path / "launch.py").write_text(_SIGTERM_AFTER_A_STEP)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    workdir = tmp_path / "run"

    def cli(*args, stop_after_step=None):
        start = ["-m", "experiments.imdb_sentiment.main"]
        if stop_after_step is not None:
            start = [str(tmp_path / "launch.py")]
        return subprocess.run(
            [sys.executable, *start, f"--workdir={workdir}", *args],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**env, "STOP_AFTER_STEP": str(stop_after_step)},
            timeout=300,
        )

    config = "experiments/imdb_sentiment/configs/test.py"
    stopped = cli(f"--config={config}", f"--config.data.path={acl}", stop_after_step=6)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert "error: SIGTERM at step 6 of 8" in stopped.stderr
    resumed = cli()
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    again = json.loads((workdir / "results.json").read_text())
    for key in ("history", "metrics", "reports", "best_step", "steps", "config"):
        assert again[key] == results[key], key
    assert again["provenance"]["resumed_from_step"] == 6

    def numbers(run):
        skip = ("time", "examples_per_s")
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [
            {k: v for k, v in r.items() if k not in skip} for r in records if r["kind"] != "resume"
        ]

    assert numbers(workdir) == numbers(done)
    for which in ("latest", "best"):
        models = [
            restore_model(config_utils.load_config(str(w)), str(w), clf.build_model, which=which)
            for w in (done, workdir)
        ]
        assert models[0][1] == models[1][1]
        leaves = [jax.tree.leaves(nnx.state(m, nnx.Param)) for m, _ in models]
        for x, y in zip(*leaves, strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    texts = ["A great, wonderful and brilliant movie!", "Awful. Terrible, boring, the worst."]
    predicted = cli("--mode=predict", *texts)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    expected = [
        f"{r['label']}\t{r['probability']:.4f}\t{r['text']}"
        for r in clf.predict_texts(str(done), texts)
    ]
    assert predicted.stdout.splitlines() == expected


def test_cli_predict_and_user_error(trained, tmp_path):
    _, workdir, _ = trained
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "experiments.imdb_sentiment.main", f"--workdir={workdir}"]
    proc = subprocess.run(
        [*cmd, "--mode=predict"],
        input="A great and wonderful film\n\nawful terrible boring\n!!! ???\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3
    label, prob, text = lines[0].split("\t")
    assert label in ("neg", "pos") and 0.5 <= float(prob) <= 1 and text.startswith("A great")
    assert "skipped 1 empty line" in proc.stderr
    assert "note: text(s) 3 have no token the model reads" in proc.stderr
    # A user error: a workdir that was never trained -> one line on stderr, exit status 2.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.imdb_sentiment.main",
            f"--workdir={tmp_path / 'none'}",
            "--mode=predict",
            "some text",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in proc.stderr


def test_predict_prints_one_line_per_text_whatever_whitespace_it_holds(
    trained, monkeypatch, capsys
):
    """A text with line breaks or tabs (a review pasted with its paragraphs, "\r" or U+0085 inside a
    stdin line) prints as one `label<TAB>probability<TAB>text` line; its raw newlines broke the output
    into lines that no longer lined up with the inputs."""
    _, workdir, _ = trained
    texts = ["A great film.\n\nReally wonderful", "awful\tterrible", "dull\r\nboring\u0085worst"]
    monkeypatch.setattr(cli, "_POSITIONAL", texts)
    results = clf.predict(None, str(workdir))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(texts)
    shown = [line.split("\t") for line in lines]
    assert [s[2] for s in shown] == [
        "A great film. Really wonderful",
        "awful terrible",
        "dull boring worst",
    ]
    assert [s[0] for s in shown] == [r["label"] for r in results]
    assert [r["text"] for r in results] == texts  # the returned texts are the inputs as given


def test_cli_predict_prints_non_ascii_texts_under_an_ascii_locale(trained):
    """Under the C locale a review with characters ASCII lacks prints them escaped (stdout encodes
    ASCII only), not a UnicodeEncodeError traceback after the first lines; under UTF-8 they print as
    they are."""
    _, workdir, _ = trained
    cmd = [sys.executable, "-m", "experiments.imdb_sentiment.main", f"--workdir={workdir}"]
    review = "Un film g\u00e9nial \u2014 great wonderful \U0001f600\n"
    for env, shown in (
        (ef.C_LOCALE, "Un film g\\xe9nial \\u2014 great wonderful \\U0001f600"),
        ({"PYTHONUTF8": "1"}, review.strip()),
    ):
        proc = subprocess.run(
            [*cmd, "--mode=predict"],
            input=review.encode("utf-8"),
            capture_output=True,
            cwd=REPO,
            env={**os.environ, "JAX_PLATFORMS": "cpu", **env},
            timeout=300,
        )
        stderr = proc.stderr.decode("utf-8", "replace")
        assert proc.returncode == 0 and "Traceback" not in stderr, stderr[-2000:]
        label, prob, text = proc.stdout.decode("utf-8").strip().split("\t")
        assert label in ("neg", "pos") and text == shown


@pytest.mark.skipif(
    not (os.environ.get("LSTM_JAX_DATA") and Path(os.environ["LSTM_JAX_DATA"], "imdb").is_dir()),
    reason="real IMDB data not available (set LSTM_JAX_DATA)",
)
def test_real_imdb_encoding_shapes():
    raw, info = data_lib.load_imdb()
    assert info["train"]["examples"] == 25000 and info["test"]["pos"] == 12500
    config = _config(Path(os.environ["LSTM_JAX_DATA"]) / "imdb")
    config.data.vocab_size = 15000
    config.data.maxlen = 228
    config.data.max_train_examples = 2000
    prepared = clf.prepare_data(config)
    assert prepared.arrays["train"]["ids"].shape == (2000, 228)
    assert prepared.arrays["validation"]["ids"].shape == (6250, 228)
    assert prepared.arrays["test"]["ids"].max() < 15000


# ------------------------------------------------------------------------------------------------
# Length bucketing (imdb_best): exact, deterministic, resumable
# ------------------------------------------------------------------------------------------------


def _lengths_fixture(n: int = 70, maxlen: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, maxlen + 1, n)
    mask = np.arange(maxlen)[None, :] < lengths[:, None]
    ids = np.where(mask, rng.integers(2, 50, (n, maxlen)), 0).astype(np.int32)
    return {"ids": ids, "mask": mask, "label": np.arange(n, dtype=np.int32)}  # label = row id


def test_bucketed_batches_cover_once_and_resume():
    arrays = _lengths_fixture()
    kw = dict(seed=3, epoch=1, quantum=8, chunk_batches=3)
    batches = list(clf.bucketed_batches(arrays, 8, start=0, **kw))
    assert len(batches) == 70 // 8
    for b in batches:
        width = b["ids"].shape[1]
        assert width % 8 == 0 or width == 40
        assert b["mask"].sum(1).max() <= width < b["mask"].sum(1).max() + 8
        assert b["ids"].shape == b["mask"].shape and len(b["label"]) == 8
    # Every example at most once, with its own ids and mask.
    rows = np.concatenate([b["label"] for b in batches])
    assert len(rows) == len(set(rows.tolist())) == 64
    for b in batches:
        w = b["ids"].shape[1]
        np.testing.assert_array_equal(b["ids"], arrays["ids"][b["label"], :w])
        assert not arrays["mask"][b["label"], w:].any()  # only padding was cut
    # Deterministic in (seed, epoch); resuming at batch 5 gives the same tail.
    again = list(clf.bucketed_batches(arrays, 8, start=5, **kw))
    for a, b in zip(batches[5:], again, strict=True):
        np.testing.assert_array_equal(a["ids"], b["ids"])
    other = list(clf.bucketed_batches(arrays, 8, start=0, **{**kw, "epoch": 2}))
    assert any(
        a["ids"].shape != b["ids"].shape or (a["ids"] != b["ids"]).any()
        for a, b in zip(batches, other, strict=True)
    )


@pytest.mark.parametrize("quantum", [0, 8])
def test_keeping_the_remainder_trains_every_review_once_an_epoch(trained, tmp_path, quantum):
    acl, _, _ = trained
    config = _config(acl)
    config.train.drop_remainder = False
    config.data.bucket_quantum = quantum
    task, prepared = clf.make_task(config, str(tmp_path))
    bs = config.train.batch_size
    short = ef.epoch_keeping_the_remainder(task, len(prepared.arrays["train"]["label"]), bs)
    assert all(len(b["label"]) == bs for b in task.train_batches(0, 0))
    model = clf.build_model(config, nnx.Rngs(0))
    ef.assert_padding_rows_change_nothing(task.loss_fn, model, short)


def test_bucketed_batches_hold_similar_lengths_in_a_shuffled_order():
    """Within a chunk the examples are sorted by length before they are cut into batches (so the
    batches hold similar lengths and little padding), and the batches come in a shuffled order (not
    shortest first)."""
    arrays = _lengths_fixture()
    batches = list(
        clf.bucketed_batches(arrays, 8, seed=3, epoch=1, start=0, quantum=1, chunk_batches=100)
    )
    lengths = [b["mask"].sum(1) for b in batches]
    by_length = sorted(lengths, key=lambda x: x.min())
    for shorter, longer in zip(by_length, by_length[1:], strict=False):
        assert shorter.max() <= longer.min()
    assert [x.min() for x in lengths] != [x.min() for x in by_length]


def test_bucketed_batches_can_keep_the_remainder():
    arrays = _lengths_fixture()
    kw = dict(seed=3, epoch=1, start=0, quantum=8, chunk_batches=3, drop_remainder=False)
    batches = list(clf.bucketed_batches(arrays, 8, **kw))
    assert len(batches) == 9 and all(len(b["label"]) == 8 for b in batches)
    real = np.concatenate([b["label"][b["weight"] > 0] for b in batches])
    assert sorted(real.tolist()) == list(range(70))  # every review once
    for b in batches:
        assert not b["mask"][b["weight"] == 0].any()  # the padding rows are empty


def test_bucketing_is_exact_for_predictions(trained):
    acl, workdir, _ = trained
    from lstm_jax.train import restore_model

    config = _config(acl)
    model, _ = restore_model(config, str(workdir), clf.build_model)
    arr = clf.prepare_data(config).arrays["test"]
    full = clf.predict_proba(model, arr["ids"], arr["mask"], 16)
    trimmed = clf.predict_proba(model, arr["ids"], arr["mask"], 16, quantum=4)
    np.testing.assert_allclose(trimmed, full, atol=1e-5)
    config.data.padding = "pre"
    config.data.bucket_quantum = 4
    with pytest.raises(UserError, match="bucket_quantum=4 trims padding"):
        clf.bucket_quantum(config)


def test_predictions_reuse_compiled_functions_across_models(trained):
    acl, workdir, _ = trained
    from lstm_jax.train import restore_model

    config = _config(acl)
    model, _ = restore_model(config, str(workdir), clf.build_model)
    arr = clf.prepare_data(config).arrays["test"]
    clf._logits_fn.cache_clear()
    first = clf.predict_proba(model, arr["ids"], arr["mask"], 16, quantum=4)
    fn = clf._logits_fn(nnx.graphdef(model), True, jax.local_device_count())
    compiled = fn._cache_size()
    assert compiled >= 1
    # Another restored model of the same structure (an ensemble member, here with its weights halved):
    # no new compilation, its own weights.
    other, _ = restore_model(config, str(workdir), clf.build_model)
    nnx.update(other, jax.tree.map(lambda w: w * 0.5, nnx.state(other, nnx.Param)))
    second = clf.predict_proba(other, arr["ids"], arr["mask"], 16, quantum=4)
    assert fn._cache_size() == compiled
    assert clf._logits_fn.cache_info().misses == 1
    assert not np.allclose(first, second, atol=1e-3)
    np.testing.assert_array_equal(
        clf.predict_proba(model, arr["ids"], arr["mask"], 16, quantum=4), first
    )


def test_ensemble_mode(trained, tmp_path):
    acl, workdir, results = trained
    # The same run twice (a copy of it): averaging identical probabilities changes nothing.
    same = tmp_path / "same"
    shutil.copytree(workdir, same)
    twice = clf.ensemble(None, str(tmp_path / "ens2"), [str(workdir), str(same)])
    for split in ("validation", "test"):
        assert twice["reports"][split]["accuracy"] == results["reports"][split]["accuracy"]
    assert [m["probabilities"] for m in twice["members"]] == ["saved", "saved"]
    # Without the saved probabilities the members predict again: the same ensemble.
    bare = tmp_path / "bare"
    shutil.copytree(workdir, bare)
    (bare / clf.PREDICTIONS_FILE).unlink()
    again = clf.ensemble(None, str(tmp_path / "ens3"), [str(workdir), str(bare)])
    assert [m["probabilities"] for m in again["members"]] == ["saved", "predicted"]
    assert again["reports"] == {
        s: {**r, "files": again["reports"][s]["files"]} for s, r in twice["reports"].items()
    }
    assert (tmp_path / "ens2" / "ensemble.json").is_file()
    assert (tmp_path / "ens2" / "confusion_matrix_test.png").is_file()
    # A second seed: the ensemble predicts the argmax of the mean of the members' probabilities.
    config = _config(acl)
    config.seed = 1
    other = tmp_path / "seed1"
    clf.train(config, str(other))
    out = clf.ensemble(None, str(tmp_path / "ens"), [str(workdir), str(other)])
    prepared = clf.prepare_data(config)
    test = prepared.arrays["test"]
    probs = []
    for m in (workdir, other):
        model, _ = clf.restore_model(config, str(m), clf.build_model)
        probs.append(clf.predict_proba(model, test["ids"], test["mask"]))
    expected = float((np.mean(probs, axis=0).argmax(-1) == test["label"]).mean())
    assert out["reports"]["test"]["accuracy"] == pytest.approx(expected)
    assert [m["seed"] for m in out["members"]] == [0, 1]
    # Members on different splits, too few members, the output inside a member: clear errors.
    config.data.split_seed = 7
    moved = tmp_path / "split7"
    clf.train(config, str(moved))
    with pytest.raises(UserError, match="different data split"):
        clf.ensemble(None, str(tmp_path / "bad"), [str(workdir), str(moved)])
    with pytest.raises(UserError, match="at least two"):
        clf.ensemble(None, str(tmp_path / "bad"), [str(workdir)])
    with pytest.raises(UserError, match="new directory"):
        clf.ensemble(None, str(workdir), [str(workdir), str(other)])
    # Into another training run's workdir (its reports would be overwritten), or a member given twice.
    before = {p.name: p.read_bytes() for p in same.iterdir() if p.is_file()}
    with pytest.raises(UserError, match="holds a training run"):
        clf.ensemble(None, str(same), [str(workdir), str(other)])
    assert {p.name: p.read_bytes() for p in same.iterdir() if p.is_file()} == before
    with pytest.raises(UserError, match="given twice"):
        clf.ensemble(None, str(tmp_path / "bad"), [str(workdir), str(other), str(workdir) + "/"])
    # A run of another experiment (a language model's config has no data.dataset of ours).
    lm = tmp_path / "lm"
    config_utils.save_config(config_utils.engine_defaults(), str(lm))
    with pytest.raises(UserError, match=r"lm holds a run of another experiment.*imdb_sentiment"):
        clf.ensemble(None, str(tmp_path / "bad"), [str(workdir), str(lm)])
    # Re-running an ensemble into its own directory is fine.
    assert clf.ensemble(None, str(tmp_path / "ens"), [str(workdir), str(other)]) == out


def _saved_member(path: Path, config, probabilities, labels, step: int = 7) -> str:
    """A finished run's workdir as `ensemble` reads it without a model: its config.json and the
    saved probabilities and labels of its checkpoint `step` (tests patch `checkpoint_step`)."""
    config_utils.save_config(config, path)
    arrays = {"step": np.asarray(step, np.int64)}
    for split in labels:
        arrays[f"{split}_probabilities"] = probabilities[split]
        arrays[f"{split}_labels"] = labels[split]
    np.savez(path / clf.PREDICTIONS_FILE, **arrays)
    return str(path)


def test_ensemble_averages_the_members_probabilities(tmp_path, monkeypatch):
    """The ensemble's class is the argmax of the mean of its members' probabilities (here right on
    every example where the most confident member, or the majority, is wrong on half of them); each
    member's accuracy is its own; a member whose saved labels differ, or trained on another split, is
    refused."""
    acl = make_acl_imdb(tmp_path)
    config = _config(acl)
    prepared = clf.prepare_data(config)
    labels = {s: prepared.arrays[s]["label"] for s in ("validation", "test")}
    monkeypatch.setattr(clf, "checkpoint_step", lambda config, workdir: 7)
    # The three members' probability of the true class, on even rows / odd rows.
    right = np.array([[0.05, 0.8, 0.8], [0.45, 0.45, 0.99]])

    def probabilities(k):
        out = {}
        for split, y in labels.items():
            p_true = right[np.arange(len(y)) % 2, k]
            p_pos = np.where(y == 1, p_true, 1.0 - p_true)
            out[split] = np.stack([1.0 - p_pos, p_pos], axis=-1).astype(np.float32)
        return out

    members = [
        _saved_member(tmp_path / f"m{k}", config, probabilities(k), labels) for k in range(3)
    ]
    out = clf.ensemble(None, str(tmp_path / "ens"), members)
    assert [m["probabilities"] for m in out["members"]] == ["saved"] * 3
    for split, y in labels.items():
        assert out["reports"][split]["accuracy"] == 1.0
        for k, member in enumerate(out["members"]):
            own = float((probabilities(k)[split].argmax(-1) == y).mean())
            assert member[split] == pytest.approx(own)
    assert [m["test"] for m in out["members"]][0] == 0.0
    flipped = {s: 1 - y for s, y in labels.items()}
    bad = _saved_member(tmp_path / "bad", config, probabilities(1), flipped)
    with pytest.raises(UserError, match=r"bad: the validation labels differ from the first member"):
        clf.ensemble(None, str(tmp_path / "ens_bad"), [members[0], bad])
    for field, value in (("validation_fraction", 0.5), ("split_seed", 7)):
        other = _config(acl)
        other.data[field] = value
        moved = _saved_member(tmp_path / field, other, probabilities(1), labels)
        with pytest.raises(UserError, match="different data split"):
            clf.ensemble(None, str(tmp_path / "ens_bad"), [members[0], moved])


def test_ensemble_members_without_saved_probabilities_read_with_their_own_preprocessing(
    tmp_path, monkeypatch
):
    """A member that must predict again (no saved probabilities) encodes the texts with its own
    preprocess.json (here a shorter maxlen than the first member's), not the first member's."""
    acl = make_acl_imdb(tmp_path)
    config = _config(acl)
    prepared = clf.prepare_data(config)
    splits = ("validation", "test")
    labels = {s: prepared.arrays[s]["label"] for s in splits}
    monkeypatch.setattr(clf, "checkpoint_step", lambda config, workdir: 7)
    half = {s: np.full((len(y), 2), 0.5, np.float32) for s, y in labels.items()}
    first = _saved_member(tmp_path / "first", config, half, labels)
    own = _config(acl)
    own.data.maxlen = 5
    encoder = clf.prepare_data(own).encoder
    member = tmp_path / "own"
    config_utils.save_config(own, member)
    (member / clf.PREPROCESS_FILE).write_text(json.dumps(encoder.to_dict()))
    seen = []

    def split_logits(model, arr, config):
        seen.append(arr["ids"])
        return np.zeros(len(arr["ids"]), np.float32)

    monkeypatch.setattr(clf, "restore_model", lambda config, workdir, build: (None, 7))
    monkeypatch.setattr(clf, "_split_logits", split_logits)
    out = clf.ensemble(None, str(tmp_path / "ens"), [first, str(member)])
    assert [m["probabilities"] for m in out["members"]] == ["saved", "predicted"]
    for split, ids in zip(splits, seen, strict=True):
        np.testing.assert_array_equal(ids, encoder(prepared.texts[split])[0])


def test_ensemble_members_given_one_folder_by_other_paths_share_their_split(tmp_path, monkeypatch):
    """The data path of a member is compared as the folder it names: relative or absolute, with a
    trailing slash or ~, it is the same split; another folder is not."""
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)

    def signature(path):
        config = _config(Path("."))
        config.data.path = path
        return clf._split_signature(config)

    same = [signature(p) for p in ("data", "data/", str(home / "data"), "~/data", "./x/../data")]
    assert all(s == same[0] for s in same)
    assert signature(str(tmp_path)) != same[0]


def test_ensemble_of_runs_on_the_same_data_found_or_given(trained, tmp_path, monkeypatch):
    """A member that read the data from $LSTM_JAX_DATA (data.path "") and one given the same folder
    (--config.data.path) trained on the same split: the ensemble takes them (it refused them as on a
    "different data split", comparing the path strings); a copy of the data elsewhere is still refused."""
    acl, workdir, _ = trained
    monkeypatch.setenv("LSTM_JAX_DATA", str(acl.parent))  # holds aclImdb/
    config = _config(acl)
    config.data.path = ""
    config.seed = 2
    found = tmp_path / "found"
    assert clf.train(config, str(found))["data"]["source"] == str(acl)
    out = clf.ensemble(None, str(tmp_path / "ens"), [str(workdir), str(found)])
    assert [m["workdir"] for m in out["members"]] == [str(workdir), str(found)]
    copy = tmp_path / "copy" / "aclImdb"
    shutil.copytree(acl, copy)
    monkeypatch.setenv("LSTM_JAX_DATA", str(copy.parent))
    elsewhere = tmp_path / "elsewhere"
    clf.train(config, str(elsewhere))
    with pytest.raises(UserError, match="different data split"):
        clf.ensemble(None, str(tmp_path / "bad"), [str(workdir), str(elsewhere)])


def test_ensemble_reads_a_relative_data_root_from_where_the_member_trained(
    trained, tmp_path, monkeypatch
):
    """A member trained with a relative $LSTM_JAX_DATA (the README's ../shared/data) records a
    relative data source: it is the folder seen from the directory the member was started in, so an
    ensemble run from elsewhere still takes it with a member given the same folder by path."""
    acl, workdir, _ = trained
    monkeypatch.chdir(acl.parent.parent)
    monkeypatch.setenv("LSTM_JAX_DATA", acl.parent.name)  # relative to the directory above
    config = _config(acl)
    config.data.path = ""
    rel = tmp_path / "rel"
    assert not os.path.isabs(clf.train(config, str(rel))["data"]["source"])
    monkeypatch.chdir(tmp_path)
    out = clf.ensemble(None, str(tmp_path / "ens"), [str(workdir), str(rel)])
    assert len(out["members"]) == 2


def test_training_refuses_an_ensembles_directory(trained, tmp_path):
    """As --mode=ensemble refuses a training run's workdir, training refuses an ensemble's directory
    before writing anything: its reports overwrote the ensemble's, which ensemble.json still named."""
    acl, workdir, _ = trained
    same = tmp_path / "same"
    shutil.copytree(workdir, same)
    ens = tmp_path / "ens"
    clf.ensemble(None, str(ens), [str(workdir), str(same)])
    before = {p.name: p.read_bytes() for p in ens.iterdir()}
    with pytest.raises(UserError, match=r"holds an ensemble \(ensemble.json\).*new directory"):
        clf.train(_config(acl), str(ens))
    assert {p.name: p.read_bytes() for p in ens.iterdir()} == before


def test_cli_ensemble_needs_no_config(trained, tmp_path):
    _, workdir, _ = trained
    shutil.copytree(workdir, tmp_path / "copy")

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "experiments.imdb_sentiment.main", *args],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "JAX_PLATFORMS": "cpu"},
            timeout=300,
        )

    ens = f"--workdir={tmp_path / 'ens'}"
    proc = cli("--mode=ensemble", ens, str(workdir), str(tmp_path / "copy"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test accuracy: ensemble" in proc.stdout
    assert (tmp_path / "ens" / "ensemble.json").is_file()
    # Predict from the ensemble's directory, which holds no model: named as such, not as a missing config.
    proc = cli("--mode=predict", ens, "a fine film")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "holds an ensemble (ensemble.json: its reports), not a trained model" in proc.stderr


def test_an_impossible_model_leaves_no_run_directory(tmp_path):
    """The model's settings are checked when it is built, after the workdir was made: an error then
    once left an empty run directory behind."""
    config = _config(make_acl_imdb(tmp_path))
    config.model.dropout = 1.5
    with pytest.raises(UserError, match=r"config\.model\.dropout=1\.5"):
        clf.train(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_stdin_lines_end_at_newlines_only(monkeypatch, capsys):
    """One text per line of stdin: U+0085, U+2028 and form feeds inside a review (IMDB has them) once
    split it into several predictions, shifting every output line after it."""
    import io
    import types

    raw = "a great movie\u0085 really\r\nbad one\x0cawful\u2028end\n\nthird\n".encode()
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(raw)))
    lines = data_lib.read_stdin_lines("texts")
    assert [t for _, t in lines] == [
        "a great movie\u0085 really",
        "bad one\x0cawful\u2028end",
        "third",
    ]
    assert "skipped 1 empty line(s)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: d.pop("maxlen"), "lacks 'maxlen', an integer >= 1"),
        (lambda d: d.update(maxlen="x"), "holds 'maxlen': 'x', not an integer >= 1"),
        (lambda d: d.update(class_names=3), "holds 'class_names': 3, not a list of class names"),
        (lambda d: d.update(vocab_size=None), "holds 'vocab_size': None, not an integer >= 0"),
    ],
)
def test_a_hand_edited_preprocess_json_is_one_error_naming_it(edit, message):
    """preprocess.json read back with a field missing or of another type (hand-edited, damaged) was a
    KeyError, ValueError or TypeError traceback in eval and predict; now a UserError naming the file,
    the field and the fix."""
    from lstm_jax.tasks.classification import TextEncoder

    encoder = TextEncoder(
        dataset="imdb", class_names=("neg", "pos"), maxlen=8, padding="post", truncating="post"
    )
    d = encoder.to_dict()
    assert TextEncoder.from_dict(d, "w/preprocess.json").to_dict() == d
    edit(d)
    with pytest.raises(UserError, match=rf"^w/preprocess.json {re.escape(message)}; .* restore it"):
        TextEncoder.from_dict(d, "w/preprocess.json")


def test_stdin_lines_keep_their_numbers_and_drop_blank_lines_and_a_bom(monkeypatch, capsys):
    """A Windows-saved file piped in (BOM, CRLF): the BOM is not part of the first text; lines of
    spaces count as empty; each text keeps its 1-based line number."""
    import io
    import types

    raw = "\ufefffirst\r\n \t \r\n\r\nfourth\r\n".encode()
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(raw)))
    assert data_lib.read_stdin_lines("texts") == [(1, "first"), (4, "fourth")]
    assert "skipped 2 empty line(s)" in capsys.readouterr().err


def test_predict_of_a_file_name_says_to_pass_the_file_on_stdin(tmp_path, monkeypatch):
    """`--mode=predict reviews.txt` classified the string "reviews.txt" (exit status 0)."""
    reviews = tmp_path / "reviews.txt"
    reviews.write_text("A great film\nAwful\n", encoding="utf-8")
    monkeypatch.setattr(cli, "_POSITIONAL", ["a fine text", str(reviews)])
    with pytest.raises(UserError, match=re.escape(f"{str(reviews)!r} is the name of a file")) as e:
        clf.predict(None, str(tmp_path / "run"))
    assert str(e.value).endswith(f"pass it on stdin: --mode=predict < {reviews}")


def test_baseline_in_a_trained_runs_workdir_refuses_another_split(tmp_path):
    """`--mode=baseline --config=... --config.data.split_seed=7` on a trained run wrote a baseline.json
    of other held-out examples beside the run's results, silently."""
    workdir = tmp_path / "run"
    config = _config(make_acl_imdb(tmp_path))
    config_utils.save_config(config, workdir)
    config.data.split_seed = 7
    with pytest.raises(UserError, match="splits the data otherwise than the run saved in"):
        clf.baseline(config, str(workdir))
    assert not (workdir / "baseline.json").exists()
