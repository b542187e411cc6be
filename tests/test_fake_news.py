"""Fake-news and LIAR experiments: preprocessing, splits, end to end on fixture CSVs, predict, bad input."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import engine_fixtures as ef
import fixtures_text
import numpy as np
import pytest

from experiments.fake_news.configs import test as test_config
from experiments.fake_news.configs import test_liar as test_liar_config
from lstm_jax import data as data_lib
from lstm_jax import text
from lstm_jax.errors import UserError
from lstm_jax.tasks import classification as clf

REPO = Path(__file__).resolve().parents[1]
FAKE = ["shocking", "hoax", "secret", "exposed", "miracle", "conspiracy"]
REAL = ["senate", "budget", "committee", "reported", "officials", "quarterly"]
FILLER = ["the", "news", "today", "people", "city", "year", "said", "about", "and", "of"]
COLUMNS = ["id", "title", "author", "text", "label"]


def _article(rng, words):
    body = list(rng.choice(FILLER, 12)) + list(rng.choice(words, 4))
    rng.shuffle(body)
    return " ".join(rng.choice(words, 2)).title(), " ".join(body) + "."


def write_csv(path: Path, rows: list[dict], columns=COLUMNS) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in columns})
    return path


def make_articles(path: Path, n: int = 60, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = i % 2
        title, body = _article(rng, FAKE if label else REAL)
        author = "['Jane Doe']" if i % 3 == 0 else ("" if i % 3 == 1 else "John Roe")
        rows.append({"id": i, "title": title, "author": author, "text": body, "label": label})
    return write_csv(path, rows)


LIAR_HEADER = [
    "id",
    "label",
    "statement",
    "subject",
    "speaker",
    "speaker_job_title",
    "state_info",
    "party_affiliation",
    "barely_true_counts",
    "false_counts",
    "half_true_counts",
    "mostly_true_counts",
    "pants_on_fire_counts",
    "context",
    "binary_label",
]


def make_liar(folder: Path, seed: int = 0) -> Path:
    """liar_{train,valid,test}.csv; the verdict is readable from one keyword and the party."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    keywords = ["fire", "wrong", "barely", "half", "mostly", "right"]
    for split, n in (("train", 72), ("valid", 24), ("test", 24)):
        rows = []
        for i in range(n):
            k = i % 6
            words = list(rng.choice(FILLER, 6)) + [keywords[k]]
            rows.append(
                {
                    "id": f"{i}",
                    "label": data_lib.LIAR_LABELS[k],
                    "statement": "Says " + " ".join(words) + ".",
                    "subject": "economy,taxes" if k % 2 else "health-care",
                    "speaker": f"speaker-{k}",
                    "speaker_job_title": "",
                    "state_info": "Texas",
                    "party_affiliation": "republican" if k < 3 else "democrat",
                    "context": "a speech",
                    "binary_label": "fake" if k < 3 else "real",
                }
            )
        write_csv(folder / f"liar_{split}.csv", rows, LIAR_HEADER)
    return folder


def _config(path: Path):
    config = test_config.get_config()
    config.data.path = str(path)
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake")
    path = make_articles(root / "articles.csv")
    workdir = root / "run"
    results = clf.train(_config(path), str(workdir))
    return path, workdir, results


# ------------------------------------------------------------------------------------------------
# Fake-news preprocessing and splits
# ------------------------------------------------------------------------------------------------


def test_splits_follow_the_tutorial(tmp_path):
    path = make_articles(tmp_path / "a.csv")
    prepared = clf.prepare_data(_config(path))
    a = prepared.arrays
    train_full, test_idx = data_lib.train_test_split(60, 0.33, 42)
    assert len(a["test"]["label"]) == len(test_idx) == 20
    # validation = the last 20% of the training part (Keras validation_split), train = the rest.
    assert len(a["validation"]["label"]) == int(len(train_full) * 0.2) == 8
    assert len(a["train"]["label"]) == 32
    labels = np.arange(60) % 2
    np.testing.assert_array_equal(a["test"]["label"], labels[test_idx])
    np.testing.assert_array_equal(a["validation"]["label"], labels[train_full[-8:]])
    # max_train_examples: a prefix of the training part; validation and test stay as they are.
    config = _config(path)
    config.data.max_train_examples = 5
    few = clf.prepare_data(config).arrays
    np.testing.assert_array_equal(few["train"]["label"], labels[train_full[:5]])
    for split in ("validation", "test"):
        np.testing.assert_array_equal(few[split]["label"], a[split]["label"])


def test_validation_split_rounds_as_keras(tmp_path):
    # Keras `fit(validation_split=0.2)` trains on the first floor(n * 0.8) rows and validates on the
    # rest: 8 training rows -> floor(6.4) = 6 train, 2 validation (not int(8 * 0.2) = 1).
    path = make_articles(tmp_path / "a.csv", n=12)
    a = clf.prepare_data(_config(path)).arrays
    train_full, test_idx = data_lib.train_test_split(12, 0.33, 42)
    assert (len(train_full), len(test_idx)) == (8, 4)
    assert (len(a["train"]["label"]), len(a["validation"]["label"])) == (6, 2)
    labels = np.arange(12) % 2
    np.testing.assert_array_equal(a["train"]["label"], labels[train_full[:6]])
    np.testing.assert_array_equal(a["validation"]["label"], labels[train_full[6:]])


def test_the_seed_orders_the_training_batches_not_the_held_out_articles(tmp_path):
    path = make_articles(tmp_path / "articles.csv")

    def task_of_seed(seed):
        config = _config(path)
        config.seed = seed
        return clf.make_task(config, str(tmp_path / "run"))[0]

    ef.assert_the_seed_orders_the_training_batches_only(task_of_seed)


def test_a_run_split_by_an_earlier_version_is_not_blamed_on_its_file(tmp_path, monkeypatch):
    # A finished run trained before the split rounded as Keras' (its validation one row shorter): re-running
    # its command said the unchanged CSV "was changed, or another file has its name".
    path = make_articles(tmp_path / "a.csv", n=70)  # 46 training rows: int(46 * 0.2) = 9, not 10
    config = _config(path)
    config.train.num_epochs = 1
    config.report.baseline = False
    with monkeypatch.context() as m:  # the rounding before 2026-12-05: n_val = int(n * 0.2)
        old_floor = lambda x: round(x / 0.8) - int(round(x / 0.8) * 0.2)  # noqa: E731
        m.setattr(clf, "math", types.SimpleNamespace(floor=old_floor))
        clf.train(config, str(tmp_path / "run"))
    with pytest.raises(UserError, match="splits or encodes it differently") as e:
        clf.train(config, str(tmp_path / "run"))
    assert "--mode=eval" in str(e.value)
    clf.evaluate(config, str(tmp_path / "run"))


def test_encoding_is_the_tutorial_pipeline(tmp_path):
    path = make_articles(tmp_path / "a.csv")
    config = _config(path)
    prepared = clf.prepare_data(config)
    enc = prepared.encoder
    assert prepared.info["stopwords_source"] == enc.stopwords_source
    assert prepared.info["stopwords"] == len(enc.stopwords) >= 150
    n, maxlen = config.data.num_buckets, config.data.maxlen
    ids, mask = enc(["The Running runners ran, 2024! and the"])
    # letters only, lowercase, stopwords dropped, Porter stems, stable md5 buckets, pre-padding.
    expect = [text.stable_hash_id(w, n) for w in ("run", "runner", "ran")]
    assert ids[0].tolist() == [0] * (maxlen - 3) + expect
    assert mask[0].tolist() == [False] * (maxlen - 3) + [True] * 3
    # Long texts keep their end (truncating="pre").
    ids, _ = enc([" ".join(["hoax"] * 30 + ["senate"])])
    assert ids[0, -1] == text.stable_hash_id("senat", n)
    # The title + author + text concatenation is what gets encoded.
    doc = prepared.texts["train"][0]
    assert doc.count(" ") >= 2
    # The mask is not given to the LSTM in the tutorial's config (its Embedding has no mask_zero).
    assert config.data.mask is False


def test_stable_hash_across_processes(tmp_path):
    code = (
        "from lstm_jax.text import stable_hash_id; "
        "print([stable_hash_id(w, 10000) for w in ('hoax', 'senat', 'trump')])"
    )
    outs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO
        )
        assert proc.returncode == 0, proc.stderr
        outs.add(proc.stdout.strip())
    assert len(outs) == 1
    assert outs.pop() == str([text.stable_hash_id(w, 10000) for w in ("hoax", "senat", "trump")])


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


def test_bad_inputs_name_file_row_and_fix(tmp_path):
    missing = write_csv(
        tmp_path / "m.csv", [{"title": "t", "author": "x"}], ["title", "author", "label"]
    )
    with pytest.raises(UserError, match=r"m\.csv: missing column\(s\) 'text'.*rename them to"):
        clf.prepare_data(_config(missing))
    rows = [{"title": "a", "author": "b", "text": "c", "label": 1}] * 5
    rows.append({"title": "a", "author": "b", "text": "c", "label": 2})
    with pytest.raises(UserError, match=r"bad\.csv: line 7: label '2' is not 0 \(real\) or 1"):
        clf.prepare_data(_config(write_csv(tmp_path / "bad.csv", rows)))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(UserError, match=r"empty\.csv: file is empty"):
        clf.prepare_data(_config(empty))
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"id,title,author,text,label\n1,caf\xe9,a,b,0\n")
    with pytest.raises(UserError, match=r"latin\.csv: undecodable bytes at line 2"):
        clf.prepare_data(_config(latin))
    with pytest.raises(UserError, match="fake-news CSV not found|not found"):
        clf.prepare_data(_config(tmp_path / "nope.csv"))
    for field in ("test_fraction", "validation_fraction"):  # checked before the file is read
        config = _config(tmp_path / "nope.csv")
        config.data[field] = 1.0
        with pytest.raises(UserError, match=rf"^config\.data\.{field}=1\.0 must be in \(0, 1\)"):
            clf.prepare_data(config)


def test_empty_rows_are_skipped_and_counted(tmp_path):
    path = make_articles(tmp_path / "a.csv")
    with open(path, "a", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([[100, "", "", "", 1], [101, " ", "", "  ", 0]])
    prepared = clf.prepare_data(_config(path))
    assert prepared.info["skipped_empty"] == 2
    assert sum(len(a["label"]) for a in prepared.arrays.values()) == 60


# ------------------------------------------------------------------------------------------------
# End to end
# ------------------------------------------------------------------------------------------------


def test_train_reports_and_predict(trained, monkeypatch):
    path, workdir, results = trained
    assert results["stopped_early"] in (True, False)
    assert results["steps"] >= 4  # 32 training rows / batch 8 = 4 steps per epoch
    assert results["data"]["stopwords_source"]
    assert results["data"]["source"] == str(path)
    rep = results["reports"]["test"]
    assert rep["labels"] == ["real", "fake"] and rep["examples"] == 20
    assert (workdir / "confusion_matrix_test.png").is_file()
    assert results["baseline"]["splits"]["test"]["accuracy"] >= 0.9
    if results["stopped_early"] or results["metrics"]["evaluated_weights"] == "best":
        assert results["best_step"] is not None
    out = clf.predict_texts(
        str(workdir), ["Shocking hoax exposed: secret miracle", "Senate budget"]
    )
    assert all(r["label"] in ("real", "fake") and 0.5 <= r["probability"] <= 1 for r in out)
    # Prediction re-applies the saved stopword list (not whatever this machine has).
    enc = clf.TextEncoder.from_dict(
        __import__("json").loads((workdir / clf.PREPROCESS_FILE).read_text())
    )
    assert "the" in enc.stopwords
    with pytest.raises(
        UserError, match=r"was trained without any \(only LIAR configs use metadata\)"
    ):
        clf.predict_texts(str(workdir), ["Senate budget"], meta=[{"speaker": "x"}])
    # An article as JSON, as its CSV row: the same as the composed text.
    from lstm_jax import cli

    row = {"title": "Shocking hoax exposed", "author": "['Jane Roe']", "text": "Senate budget"}
    composed = text.fake_news_text(row["title"], "Jane Roe", row["text"])
    monkeypatch.setattr(cli, "_POSITIONAL", [json.dumps(row)])
    (as_json,) = clf.predict(None, str(workdir))
    (plain,) = clf.predict_texts(str(workdir), [composed])
    assert as_json["text"] == composed and as_json["probabilities"] == plain["probabilities"]


def test_predict_needs_nothing_but_the_workdir(trained, tmp_path, monkeypatch):
    """Predictions use the stopwords, hashing and config saved in the workdir: the same in a session
    where the CSV, $LSTM_JAX_DATA and NLTK_DATA (where the stopword list is looked up) are gone or
    elsewhere."""
    _, workdir, _ = trained
    texts = ["The shocking secret hoax about the city", "Officials reported the quarterly budget"]
    before = clf.predict_texts(str(workdir), texts)
    fixtures_text.forbid_data_reads(monkeypatch, tmp_path)
    assert clf.predict_texts(str(workdir), texts) == before


def test_cli_bad_csv_exit_2(tmp_path):
    bad = write_csv(
        tmp_path / "bad.csv", [{"title": "a", "author": "b", "text": "c", "label": "x"}]
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.fake_news.main",
            "--config=experiments/fake_news/configs/test.py",
            f"--config.data.path={bad}",
            f"--workdir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=300,
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "bad.csv: line 2: label 'x'" in last
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------------
# LIAR
# ------------------------------------------------------------------------------------------------


def _liar_config(folder: Path, label: str = "six"):
    config = test_liar_config.get_config()
    config.data.path = str(folder)
    config.data.label = label
    return config


def test_liar_metadata_tokens_and_labels(tmp_path):
    folder = make_liar(tmp_path / "liar")
    config = _liar_config(folder)
    prepared = clf.prepare_data(config)
    enc = prepared.encoder
    assert prepared.class_names == data_lib.LIAR_LABELS
    assert len(prepared.arrays["validation"]["label"]) == 24  # the official valid split
    assert prepared.arrays["train"]["label"].tolist()[:6] == [0, 1, 2, 3, 4, 5]
    ids, mask = enc(["Says wrong"], [["party_affiliation=republican", "speaker=speaker-1"]])
    v = config.data.vocab_size
    meta = ids[0, :2]
    assert (meta >= v).all() and (meta < clf.embedding_rows(config)).all()
    assert enc.meta_vocab.decode((meta - v).tolist()).split() == [
        "party_affiliation=republican",
        "speaker=speaker-1",
    ]
    assert enc.vocab.decode(ids[0, 2:4].tolist()) == "says wrong"
    assert mask[0, :4].all() and not mask[0, 4:].any()
    # Subject lists become one token per subject.
    assert clf._meta_tokens({"subject": "Economy, Taxes"}, ["subject"]) == [
        "subject=economy",
        "subject=taxes",
    ]
    binary = clf.prepare_data(_liar_config(folder, "binary"))
    assert binary.class_names == ("real", "fake")
    np.testing.assert_array_equal(
        binary.arrays["test"]["label"], (prepared.arrays["test"]["label"] < 3).astype(np.int32)
    )
    assert clf.num_outputs(_liar_config(folder, "binary")) == 1
    assert clf.num_outputs(config) == 6


def test_meta_tokens_normalise_values_and_drop_empty_ones():
    """A value is lowercased with its whitespace runs made single spaces (as the same speaker written
    with two spaces in a CSV cell is one token); an empty value or subject gives no token."""
    row = {"speaker": "  Barack   Obama ", "state_info": "  ", "subject": "Economy,, jobs ,"}
    assert clf._meta_tokens(row, ["speaker", "state_info", "context", "subject"]) == [
        "speaker=barack obama",
        "subject=economy",
        "subject=jobs",
    ]


def test_liar_vocabularies_come_from_the_training_split_and_the_baseline_reads_the_metadata(
    tmp_path,
):
    """A word or metadata value seen only in the test split is out of vocabulary (both vocabularies are
    fitted on the training statements); the TF-IDF baseline's texts are the metadata tokens then the
    statement, as the model's inputs; max_train_examples keeps a prefix of the training file only."""
    folder = make_liar(tmp_path / "liar")
    test_csv = folder / "liar_test.csv"
    test_csv.write_text(
        test_csv.read_text()
        .replace("Says ", "Zyzzyva says ", 1)
        .replace("speaker-0", "speaker-new")
    )
    config = _liar_config(folder)
    prepared = clf.prepare_data(config)
    enc = prepared.encoder
    assert "zyzzyva" not in enc.vocab.token_to_id
    assert "speaker=speaker-new" not in enc.meta_vocab.token_to_id
    assert "speaker=speaker-0" in enc.meta_vocab.token_to_id
    raw, _ = data_lib.load_liar(str(folder))
    train = raw["train"]
    meta = clf._meta_tokens({f: train[f][0] for f in config.data.metadata}, config.data.metadata)
    assert "speaker=speaker-0" in meta
    assert prepared.texts["train"][0] == " ".join([*meta, train["statement"][0]])
    config.data.max_train_examples = 10
    few = clf.prepare_data(config)
    assert few.arrays["train"]["label"].tolist() == prepared.arrays["train"]["label"][:10].tolist()
    assert len(few.arrays["validation"]["label"]) == len(prepared.arrays["validation"]["label"])
    # Without metadata, meta_vocab_size is not read (the fix the meta_vocab_size error names).
    config = _liar_config(folder)
    config.data.metadata = ()
    config.data.meta_vocab_size = 2
    assert clf.prepare_data(config).encoder.meta_vocab is None


def test_eval_reencodes_with_the_configs_label_set_and_dataset(tmp_path):
    """`_reencode` (eval, and ensemble members predicting again) reads LIAR's labels of the run's label
    set (binary: real/fake), and refuses an encoder of another dataset."""
    folder = make_liar(tmp_path / "liar")
    config = _liar_config(folder, "binary")
    prepared = clf.prepare_data(config)
    labels = {s: prepared.arrays[s]["label"].copy() for s in ("validation", "test")}
    clf._reencode(prepared, prepared.encoder, config)
    for split, y in labels.items():
        np.testing.assert_array_equal(prepared.arrays[split]["label"], y)
    imdb = clf.TextEncoder(
        dataset="imdb", class_names=("neg", "pos"), maxlen=8, padding="post", truncating="post"
    )
    with pytest.raises(UserError, match="trained on imdb but config.data.dataset is liar"):
        clf._reencode(prepared, imdb, config)


def test_liar_bad_verdict(tmp_path):
    folder = make_liar(tmp_path / "liar")
    p = folder / "liar_valid.csv"
    p.write_text(p.read_text().replace("half-true", "sort-of-true", 1))
    with pytest.raises(UserError, match=r"liar_valid\.csv: line \d+: label 'sort-of-true'"):
        clf.prepare_data(_liar_config(folder))


def test_liar_files_without_the_metadata_columns_are_an_error_naming_the_fix(tmp_path):
    """They once trained silently on the statements alone while results.json listed the metadata."""
    folder = make_liar(tmp_path / "liar")
    for split in ("train", "valid", "test"):
        p = folder / f"liar_{split}.csv"
        p.write_text(p.read_text().replace("speaker,", "Speaker,", 1))
    with pytest.raises(UserError, match=r"missing column\(s\) 'speaker'.*metadata='\(\)'"):
        clf.prepare_data(_liar_config(folder))
    config = _liar_config(folder)
    config.data.metadata = ("subject", "party_affiliation")  # the columns it has
    assert len(clf.prepare_data(config).arrays["train"]["label"]) > 0


def test_switching_the_dataset_by_flag_names_the_config_to_use(tmp_path):
    config = _liar_config(tmp_path)
    config.data.dataset = "fake_news"
    with pytest.raises(UserError, match=r"needs config\.data\.test_fraction.*fake_news\.py"):
        clf.prepare_data(config)
    config = _config(tmp_path / "a.csv")
    config.data.dataset = "imdb"
    with pytest.raises(UserError, match=r"needs config\.data\.vocab_size.*configs/imdb\.py"):
        clf.prepare_data(config)
    config = _config(tmp_path / "a.csv")
    config.data.dataset = "liar"
    with pytest.raises(UserError, match=r"needs config\.data\.label.*configs/liar\.py"):
        clf.prepare_data(config)


def test_texts_empty_after_preprocessing(tmp_path, caplog):
    """All of them: an error before training (it trained on padding, then the baseline crashed);
    some: kept, counted in the data info, and said."""
    rows = [
        {"id": i, "title": "the", "author": "", "text": "and of the 123 !!!", "label": i % 2}
        for i in range(30)
    ]
    with pytest.raises(UserError, match=r"every train text of fake_news .* is empty after"):
        clf.prepare_data(_config(write_csv(tmp_path / "stop.csv", rows)))
    path = make_articles(tmp_path / "a.csv")
    with open(path, "a", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([[100 + i, "the", "", "of and ...", i % 2] for i in range(10)])
    with caplog.at_level(logging.WARNING):
        prepared = clf.prepare_data(_config(path))
    empty = sum(prepared.info[s]["empty_after_preprocessing"] for s in prepared.arrays)
    assert empty == 10
    assert any("empty after preprocessing" in r.getMessage() for r in caplog.records)


def test_liar_end_to_end_six_way(tmp_path):
    folder = make_liar(tmp_path / "liar")
    workdir = tmp_path / "run"
    results = clf.train(_liar_config(folder), str(workdir))
    rep = results["reports"]["test"]
    assert rep["labels"] == list(data_lib.LIAR_LABELS)
    assert len(rep["confusion_matrix"]) == 6 and rep["examples"] == 24
    assert results["baseline"]["splits"]["test"]["accuracy"] >= 0.9
    out = clf.predict_texts(str(workdir), ["Says the budget is mostly right"])
    assert out[0]["label"] in data_lib.LIAR_LABELS
    assert len(out[0]["probabilities"]) == 6
    assert sum(out[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)

    # Predict with each statement's metadata (as the CSV gives it) is the evaluation's prediction: the
    # same accuracy as the report; without metadata the model sees fewer known tokens.
    raw, _ = data_lib.load_liar(str(folder))
    test = raw["test"]
    fields = data_lib.LIAR_META
    meta = [{f: test[f][i] for f in fields} for i in range(len(test["statement"]))]
    with_meta = clf.predict_texts(str(workdir), list(test["statement"]), meta=meta)
    labels = [data_lib.LIAR_LABELS[k] for k in test["label"]]
    accuracy = np.mean([r["label"] == y for r, y in zip(with_meta, labels, strict=True)])
    assert accuracy == pytest.approx(rep["accuracy"], abs=1e-9)
    bare = clf.predict_texts(str(workdir), list(test["statement"]))
    assert all(m["tokens"] > b["tokens"] for m, b in zip(with_meta, bare, strict=True))
    with pytest.raises(UserError, match=r"text 1: unknown metadata field\(s\) \['speakr'\]"):
        clf.predict_texts(str(workdir), ["Says so"], meta=[{"speakr": "x"}])


def test_predict_inputs_and_meta_flags():
    assert clf.parse_meta(["speaker=barack-obama", "subject=economy,jobs", "context="]) == {
        "speaker": "barack-obama",
        "subject": "economy,jobs",
        "context": "",
    }
    with pytest.raises(UserError, match=r"--meta=speaker: expected field=value"):
        clf.parse_meta(["speaker"])
    with pytest.raises(UserError, match=r"--meta=subject=\.\.\. is given twice"):
        clf.parse_meta(["subject=economy", "subject=jobs"])
    with pytest.raises(UserError, match=r"--meta==x: expected field=value"):
        clf.parse_meta(["=x"])
    assert clf.parse_meta([" speaker =x"]) == {"speaker": "x"}
    fields = clf._input_fields
    assert fields("A plain {braced} text", 1) == {"text": "A plain {braced} text"}
    assert fields('{"statement": "Says so.", "speaker": "x"}', 1) == {
        "statement": "Says so.",
        "speaker": "x",
    }
    with pytest.raises(UserError, match=r"input 3: looks like a JSON object but does not parse"):
        fields('{"statement": "a", speaker}', 3)
    with pytest.raises(UserError, match=r"input 2: looks like a JSON object but does not parse"):
        fields('{"statement": "Taxes went up.", "speaker": "barack-obama"', 2)  # cut short
    assert fields("{A plain text starting with a brace", 1) == {
        "text": "{A plain text starting with a brace"
    }
    with pytest.raises(UserError, match=r"input 1: field\(s\) \['speaker'\] must be strings"):
        fields('{"statement": "a", "speaker": 3}', 1)

    def encoder(dataset):
        return clf.TextEncoder(
            dataset=dataset,
            class_names=("real", "fake"),
            maxlen=8,
            padding="pre",
            truncating="pre",
            num_buckets=16 if dataset == "fake_news" else 0,
            stopwords=["the"] if dataset == "fake_news" else None,
        )

    liar, news, imdb = encoder("liar"), encoder("fake_news"), encoder("imdb")
    compose = clf._compose_input
    assert compose(liar, {"statement": "Says so.", "speaker": "x"}, 1) == (
        "Says so.",
        {"speaker": "x"},
    )
    assert compose(liar, {"text": "Says so."}, 1) == ("Says so.", {})
    # "statement" is the statement; a "text" beside it is left as a field (refused as metadata later).
    assert compose(liar, {"statement": "Says so.", "text": "Other"}, 1) == (
        "Says so.",
        {"text": "Other"},
    )
    with pytest.raises(
        UserError, match=r'input 2: a JSON input needs the statement under "statement"'
    ):
        compose(liar, {"speaker": "x"}, 2)
    # A fake-news article as its CSV row: title + author + text, the author list normalised as on load.
    row = {"title": "Big news", "author": "['A B', 'C']", "text": "Body."}
    assert compose(news, row, 1) == (text.fake_news_text("Big news", "A B, C", "Body."), {})
    assert compose(news, {"title": "Only a title"}, 1)[0] == text.fake_news_text(
        "Only a title", "", ""
    )
    assert compose(news, {"text": "Plain."}, 1) == ("Plain.", {})
    with pytest.raises(UserError, match=r"\['speaker'\] are not inputs of this fake_news model"):
        compose(news, {"text": "a", "speaker": "x"}, 1)
    assert compose(imdb, {"text": "A review"}, 1) == ("A review", {})
    with pytest.raises(UserError, match=r"its JSON inputs take text"):
        compose(imdb, {"review": "A review"}, 1)


def _liar_encoder() -> clf.TextEncoder:
    """A LIAR encoder with metadata (speaker, party_affiliation), fitted on one made-up row."""
    vocab = text.Vocabulary(num_words=20, oov_token="[UNK]", standardize="imdb", lower=True)
    vocab.fit(["says the budget is right"])
    meta_vocab = text.Vocabulary(
        num_words=20, oov_token="[UNK]", standardize="none", split=clf._META_SEP
    )
    meta_vocab.fit([clf._META_SEP.join(["speaker=a", "party_affiliation=b"])])
    return clf.TextEncoder(
        dataset="liar",
        class_names=("real", "fake"),
        maxlen=8,
        padding="pre",
        truncating="pre",
        vocab=vocab,
        vocab_size=20,
        meta_vocab=meta_vocab,
        meta_fields=("speaker", "party_affiliation"),
    )


def test_predict_a_json_field_overrides_the_meta_flag(monkeypatch, capsys):
    """--meta gives every text its fields; a JSON input's own field wins over the flag's."""
    from lstm_jax import cli

    given = {}

    def predict_with(encoder, workdir, texts, config=None, meta=None):
        given["texts"], given["meta"] = list(texts), list(meta)
        return [{"text": t, "label": "real", "probability": 0.9, "tokens": 3} for t in texts]

    monkeypatch.setattr(clf, "_load_encoder", lambda workdir: _liar_encoder())
    monkeypatch.setattr(clf, "_predict_with", predict_with)
    inputs = ['{"statement": "Says so", "speaker": "a"}', "Says the budget"]
    monkeypatch.setattr(cli, "_POSITIONAL", inputs)
    clf.predict(None, "w", meta=["speaker=z", "party_affiliation=b"])
    assert given["texts"] == ["Says so", "Says the budget"]
    assert given["meta"] == [
        {"speaker": "a", "party_affiliation": "b"},
        {"speaker": "z", "party_affiliation": "b"},
    ]
    assert "speaker=z" in capsys.readouterr().err  # a value the vocabulary lacks is named


def _small_encoder(**kwargs) -> clf.TextEncoder:
    """A fake-news TextEncoder of 6 pre-padded, pre-truncated ids; `kwargs` fill in the rest."""
    return clf.TextEncoder(
        dataset="fake_news",
        class_names=clf.FAKE_CLASSES,
        maxlen=6,
        padding="pre",
        truncating="pre",
        **kwargs,
    )


def test_the_mask_reaches_the_model_only_where_the_config_masks_it(tmp_path, monkeypatch):
    """The fake-news tutorial runs its LSTM over the padding (config.data.mask=False): the reports'
    logits (`_split_logits`) and predict get no mask then, as training had none; with mask=True they
    get the encoder's."""
    masks = []

    def logits(model, ids, mask, batch_size=256, quantum=0):
        masks.append(mask)
        return np.zeros(len(ids), np.float32)

    monkeypatch.setattr(clf, "predict_logits", logits)
    monkeypatch.setattr(clf, "restore_model", lambda config, workdir, build: (None, 1))
    config = _config(tmp_path / "a.csv")
    assert config.data.mask is False
    encoder = _small_encoder(stopwords=["the"], num_buckets=16)
    ids, mask = encoder(["Senate budget passed", "hoax"])
    arr = {"ids": ids, "mask": mask, "label": np.array([0, 1])}
    clf._split_logits(None, arr, config)
    out = clf._predict_with(encoder, "w", ["Senate budget passed"], config)
    assert masks == [None, None] and out[0]["tokens"] == 3
    config.data.mask = True
    clf._split_logits(None, arr, config)
    clf._predict_with(encoder, "w", ["Senate budget passed"], config)
    np.testing.assert_array_equal(masks[2], mask)
    np.testing.assert_array_equal(masks[3], mask[:1])
    with pytest.raises(UserError, match="no texts to classify"):
        clf._predict_with(encoder, "w", [], config)


def test_saved_stopwords_are_those_of_a_run_to_resume_only(tmp_path):
    """A workdir with checkpoints resumes with the stopwords of its preprocess.json; one without (a
    run stopped before its first checkpoint: it starts again) takes this environment's."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    encoder = _small_encoder(
        stopwords=["the", "of"],
        stopwords_source="nltk:/x",
        num_buckets=16,
    )
    (workdir / clf.PREPROCESS_FILE).write_text(json.dumps(encoder.to_dict()))
    assert clf.saved_stopwords(str(workdir)) is None
    (workdir / "checkpoints").mkdir()
    assert clf.saved_stopwords(str(workdir)) is None
    (workdir / "checkpoints" / "4").mkdir()
    assert clf.saved_stopwords(str(workdir)) == (["of", "the"], "nltk:/x")


def test_predict_mode_with_meta_flag_and_json_inputs(tmp_path, monkeypatch, capsys):
    """Mode predict: --meta for every text, JSON inputs per text (overriding --meta), and a note on
    stderr for the texts a metadata model gets none for."""
    from lstm_jax import cli

    folder = make_liar(tmp_path / "liar")
    workdir = tmp_path / "run"
    config = _liar_config(folder)
    config.report.baseline = False
    clf.train(config, str(workdir))
    capsys.readouterr()
    inputs = [
        '{"statement": "Says the budget is mostly right", "speaker": "speaker-4"}',
        "Says the budget is mostly right",
    ]
    monkeypatch.setattr(cli, "_POSITIONAL", inputs)
    out = clf.predict(config, str(workdir), meta=["party_affiliation=democrat"])
    printed = capsys.readouterr()
    assert "note:" not in printed.err  # every text has metadata (the flag's, at least)
    assert [line.split("\t")[2] for line in printed.out.splitlines()] == [
        "Says the budget is mostly right"
    ] * 2
    # The same statement; the first also has its speaker's token (both have the flag's party).
    assert out[0]["tokens"] == out[1]["tokens"] + 1
    monkeypatch.setattr(cli, "_POSITIONAL", inputs[1:])
    clf.predict(config, str(workdir))
    assert "1 of 1 text(s) have none" in capsys.readouterr().err
    # A misspelt --meta field is the flag's mistake; a value training never saw is said.
    with pytest.raises(UserError, match=r"--meta: unknown metadata field\(s\) \['speakr'\]"):
        clf.predict(config, str(workdir), meta=["speakr=speaker-4"])
    assert capsys.readouterr().out == ""  # nothing printed before the error
    clf.predict(config, str(workdir), meta=["speaker=Speaker 4"])
    assert "read as unknown: speaker=speaker 4" in capsys.readouterr().err
    # Errors about stdin inputs name the line (empty lines are skipped, not renumbered).
    import io
    import types

    stdin = b'\nSays the budget is right\n{"statement": "cut short"\n'
    monkeypatch.setattr(cli, "_POSITIONAL", [])
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(stdin)))
    with pytest.raises(UserError, match=r"^stdin line 3: looks like a JSON object"):
        clf.predict(config, str(workdir))
    stdin = b'{"statement": "ok"}\n\n{"statement": "Jobs grew", "speeker": "x"}\n'
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(stdin)))
    with pytest.raises(
        UserError, match=r"^stdin line 3: unknown metadata field\(s\) \['speeker'\]"
    ):
        clf.predict(config, str(workdir))


def test_resuming_on_a_data_file_changed_in_place_is_an_error(tmp_path):
    """The CSV edited between two runs of the same command (labels flipped): the data's fingerprint
    saved with the checkpoints no longer matches, so the run stops before touching the workdir."""
    path = make_articles(tmp_path / "mine.csv")
    workdir = tmp_path / "run"
    config = _config(path)
    config.train.num_epochs = 1
    config.report.baseline = False
    clf.train(config, str(workdir))
    config.train.num_epochs = 2
    clf.train(config, str(workdir))  # the same data: resumes
    text = path.read_text()
    path.write_text(text.replace(",1\n", ",X\n").replace(",0\n", ",1\n").replace(",X\n", ",0\n"))

    def files():  # the run's files (not the lock, which names the process holding it)
        return {
            p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file() and p.name[0] != "."
        }

    before = files()
    config.train.num_epochs = 3
    with pytest.raises(
        UserError, match=r"mine\.csv differs from the data the run in .* trained on"
    ):
        clf.train(config, str(workdir))
    assert files() == before


def test_a_run_resumes_with_its_saved_stopwords_whatever_this_environment_finds(
    tmp_path, monkeypatch
):
    """The stopword list comes from the environment (an NLTK data folder, $LSTM_JAX_DATA, else the
    built-in copy) and is saved in preprocess.json. A run resumed where another list is found (another
    shell without NLTK_DATA, say) was refused as trained on other data, blaming its unchanged CSV;
    it now resumes with the list it trained with, and ends as the uninterrupted run."""
    from lstm_jax.checkpoint import CheckpointStore

    path = make_articles(tmp_path / "articles.csv")
    config = _config(path)
    config.report.baseline = False
    few = (frozenset({"the", "and", "of"}), "nltk:/somewhere/corpora/stopwords/english")
    monkeypatch.setattr(text, "load_stopwords", lambda *a, **k: few)
    straight = clf.train(config, str(tmp_path / "a"))

    real_save = CheckpointStore.save

    def save_then_stop(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        raise KeyboardInterrupt("stopped after the first checkpoint")

    monkeypatch.setattr(CheckpointStore, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        clf.train(config, str(tmp_path / "b"))
    monkeypatch.undo()  # the built-in list from here on
    assert text.load_stopwords(nltk_dirs=[], data_root="")[0] != few[0]
    resumed = clf.train(config, str(tmp_path / "b"))
    assert resumed["data"]["stopwords_source"] == few[1]
    assert resumed["history"] == straight["history"]
    assert resumed["metrics"] == straight["metrics"]
    saved = json.loads((tmp_path / "b" / "preprocess.json").read_text())
    assert sorted(saved["stopwords"]) == sorted(few[0])


def test_eval_baseline_and_ensemble_of_trained_runs_use_their_saved_stopwords(
    tmp_path, monkeypatch
):
    """eval, baseline and ensemble of trained runs encode with the stopword list they trained with (in
    preprocess.json), as resume and predict do; they looked the environment's list up first and encoded
    every split with it (eval then re-encoded its splits with the saved one, so its numbers stood; the
    TF-IDF baseline reads the texts, not the ids)."""
    path = make_articles(tmp_path / "articles.csv")
    config = _config(path)
    few = (frozenset({"the", "and", "of"}), "nltk:/somewhere/corpora/stopwords/english")
    monkeypatch.setattr(text, "load_stopwords", lambda *a, **k: few)
    trained = clf.train(config, str(tmp_path / "run"))
    config.seed = 1
    clf.train(config, str(tmp_path / "run1"))
    config.seed = 0

    def refuse(*args, **kwargs):
        raise AssertionError("looked the stopwords up in the environment")

    monkeypatch.setattr(text, "load_stopwords", refuse)
    out = clf.evaluate(config, str(tmp_path / "run"))
    for split in ("validation", "test"):
        assert out["reports"][split]["accuracy"] == pytest.approx(
            trained["metrics"]["final"][split]["accuracy"]
        )
    base = clf.baseline(config, str(tmp_path / "run"))
    assert base["splits"] == trained["baseline"]["splits"]
    ens = clf.ensemble(None, str(tmp_path / "ens"), [str(tmp_path / "run"), str(tmp_path / "run1")])
    assert ens["members"][0]["test"] == pytest.approx(out["reports"]["test"]["accuracy"])


def test_a_file_too_small_for_its_splits_is_named_as_such_not_as_one_class(tmp_path):
    """Three articles of both classes: the test and validation splits took every example of one class
    from training. The error said to check the label column (the fix for a file of one class)."""
    path = make_articles(tmp_path / "three.csv", n=3)
    with pytest.raises(UserError) as error:
        clf.prepare_data(_config(path))
    message = str(error.value)
    assert message.startswith("every training example of fake_news (1) has the label")
    assert (
        "the held-out splits took every example of the others; give the data more rows" in message
    )
    assert "config.data.validation_fraction or config.data.test_fraction" in message
    assert "check the label column" not in message
