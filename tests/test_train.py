"""The training engine: learning, exact resume, determinism, NaN stop, early stopping, outputs, optimizers."""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time

import engine_fixtures as ef
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from lstm_jax import config_utils, optim
from lstm_jax import train as train_mod
from lstm_jax.errors import Interrupted, UserError
from lstm_jax.logging_utils import read_event_scalars, read_jsonl, read_run_scalars
from lstm_jax.train import (
    epoch_permutation,
    pad_batch,
    padded_batches,
    restore_model,
    saved_results,
    shuffled_batches,
    steps_per_epoch,
    train_and_evaluate,
)


def _params(workdir, config, which="latest"):
    model, step = restore_model(config, str(workdir), ef.build_model, which=which)
    leaves = jax.tree.leaves(jax.tree.map(np.asarray, nnx.state(model)))
    return leaves, step


def _assert_same_run(results_a, results_b, workdir_a, workdir_b, config, *, steps: int) -> None:
    """Two runs' histories equal and their last checkpoints' parameters equal bit for bit."""
    assert results_a["history"] == results_b["history"]
    a, step_a = _params(workdir_a, config)
    b, step_b = _params(workdir_b, config)
    assert step_a == step_b == steps
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_tiny_model_overfits_a_tiny_batch(tmp_path):
    config = ef.base_config(num_epochs=1, log_every_steps=10)
    config.model.dropout = 0.0
    config.optimizer.learning_rate = 0.05
    data = ef.classification_data(8)
    data["label"] = np.array(
        [0, 1, 2, 0, 1, 2, 0, 1], np.int32
    )  # arbitrary: only memorisation fits it
    repeated = {k: np.tile(v, (40,) + (1,) * (v.ndim - 1)) for k, v in data.items()}  # 40 steps
    task = ef.classification_task(config, train=repeated, valid=data)
    results = train_and_evaluate(config, str(tmp_path), task)
    train_lines = [x for x in read_jsonl(str(tmp_path / "metrics.jsonl")) if x["kind"] == "train"]
    assert train_lines[0]["loss"] > 0.5 and train_lines[-1]["loss"] < 0.05
    assert results["metrics"]["final"]["validation"]["accuracy"] == 1.0
    assert results["metrics"]["final"]["validation"]["loss"] < 0.05
    assert results["steps"] == 40


def test_resume_is_exact(tmp_path):
    config = ef.base_config(num_epochs=2)  # 5 steps per epoch, dropout on
    straight = train_and_evaluate(config, str(tmp_path / "a"), ef.classification_task(config))
    config.train.prefetch = 2  # the interrupted run reads through the background thread
    with pytest.raises(KeyboardInterrupt):  # stops during epoch 2, after the checkpoint at step 5
        train_and_evaluate(config, str(tmp_path / "b"), ef.classification_task(config, stop_at=7))
    assert sorted(os.listdir(tmp_path / "b" / "checkpoints")) == ["5"]
    resumed = train_and_evaluate(config, str(tmp_path / "b"), ef.classification_task(config))
    _assert_same_run(straight, resumed, tmp_path / "a", tmp_path / "b", config, steps=10)
    kinds = [line["kind"] for line in read_jsonl(str(tmp_path / "b" / "metrics.jsonl"))]
    assert "resume" in kinds


def _logged_steps(workdir, kind="train"):
    return [r["step"] for r in read_jsonl(str(workdir / "metrics.jsonl")) if r["kind"] == kind]


def test_a_crash_after_the_checkpoint_leaves_one_history_in_the_logs_and_the_plot(
    tmp_path, monkeypatch
):
    """A run that dies without saving its last steps (a crash, kill -9, a full disk) logged records past
    its checkpoint, which the resumed run logs again: they move, verbatim, to metrics.orphaned.jsonl, a
    TensorBoard SessionLog START drops them there, and metrics.jsonl, TensorBoard and the curves' history
    each hold the uninterrupted run's one history."""
    config = ef.base_config(num_steps=10, eval_every_steps=5)  # log every 2 steps, checkpoint at 5
    plotted = []
    real_plot = train_mod.plot_training_curves

    def plot(history, path, **kw):
        plotted.append([r["step"] for r in history])
        return real_plot(history, path, **kw)

    monkeypatch.setattr(train_mod, "plot_training_curves", plot)
    straight = train_and_evaluate(config, str(tmp_path / "a"), ef.classification_task(config))
    workdir = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):  # dies in step 10: no checkpoint after step 5
        train_and_evaluate(config, str(workdir), ef.classification_task(config, stop_at=9))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["5"]
    lines = (workdir / "metrics.jsonl").read_text().splitlines(keepends=True)
    past = [x for x in lines if json.loads(x)["step"] > 5]
    assert [json.loads(x)["step"] for x in past] == [6, 8]

    resumed = train_and_evaluate(config, str(workdir), ef.classification_task(config))
    _assert_same_run(straight, resumed, tmp_path / "a", workdir, config, steps=10)
    assert _logged_steps(workdir) == _logged_steps(tmp_path / "a") == [2, 4, 5, 6, 8, 10]
    assert _logged_steps(workdir, "validation") == [5, 10]
    assert _logged_steps(workdir, "resume") == [5]
    assert (workdir / "metrics.orphaned.jsonl").read_text() == "".join(past)
    assert (workdir / "metrics.jsonl").read_text().startswith("".join(lines[: -len(past)]))

    def board(run):
        return [
            (step, value)
            for step, tag, value in read_run_scalars(str(run / "tensorboard"))
            if tag == "train/loss"
        ]

    assert board(workdir) == board(tmp_path / "a")  # bit for bit: the same values at the same steps
    assert plotted == [[5, 10], [5, 10]]  # the curves: the checkpoint's history, then one history


class _KilledAfterTheSave(BaseException):
    """A kill -9 (or a full disk at the next write) just after a checkpoint was written whole."""


def _records_without_times(workdir):
    skip = ("time", "examples_per_s")
    return [
        {k: v for k, v in r.items() if k not in skip}
        for r in read_jsonl(str(workdir / "metrics.jsonl"))
        if r["kind"] != "resume"
    ]


@pytest.mark.parametrize("killed_after_save", [1, 2])  # mid-run, and the last step's checkpoint
def test_a_kill_between_a_checkpoint_and_its_evaluation_records_logs_them_on_resume(
    tmp_path, monkeypatch, killed_after_save
):
    """The evaluation records are logged once their checkpoint is saved; a run killed in between (kill -9,
    the OOM killer, a full disk at that write) left a checkpoint whose evaluation metrics.jsonl and
    TensorBoard never got, and the resumed run went on from it without them: its metrics.jsonl lacked
    the validation record of that step for good. Now the resumed run logs them from the checkpoint's
    history, and metrics.jsonl holds the uninterrupted run's records, in its order."""
    from lstm_jax.checkpoint import CheckpointStore

    config = ef.base_config(num_steps=10, eval_every_steps=5)
    train_and_evaluate(config, str(tmp_path / "a"), ef.classification_task(config))
    real_save, saves = CheckpointStore.save, []

    def save(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        saves.append(args[0])
        if len(saves) == killed_after_save:
            raise _KilledAfterTheSave

    monkeypatch.setattr(CheckpointStore, "save", save)
    with pytest.raises(_KilledAfterTheSave):
        train_and_evaluate(config, str(tmp_path / "b"), ef.classification_task(config))
    monkeypatch.undo()
    assert 5 * killed_after_save not in _logged_steps(tmp_path / "b", "validation")
    train_and_evaluate(config, str(tmp_path / "b"), ef.classification_task(config))
    assert _records_without_times(tmp_path / "b") == _records_without_times(tmp_path / "a")
    assert _logged_steps(tmp_path / "b", "validation") == [5, 10]

    def board(run):
        return sorted(
            (step, tag, value)
            for step, tag, value in read_run_scalars(str(run / "tensorboard"))
            if tag.startswith("validation/")
        )

    assert board(tmp_path / "b") == board(tmp_path / "a")


def test_a_crash_in_the_final_evaluation_leaves_its_records_once(tmp_path):
    """Killed after the final evaluation's records but before results.json (in the task's reports): the
    re-run evaluates again, and the first attempt's final_* records are set aside."""
    config = ef.base_config(num_epochs=1)

    def crash(model, results):
        raise KeyboardInterrupt("simulated kill in the reports")

    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(
            config, str(tmp_path), ef.classification_task(config, extra_results=crash)
        )
    assert _logged_steps(tmp_path, "final_test") == [5]
    train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert _logged_steps(tmp_path, "final_test") == [5]
    assert [r["kind"] for r in read_jsonl(str(tmp_path / "metrics.orphaned.jsonl"))] == [
        "final_test"
    ]


def test_a_final_evaluation_done_again_shows_once_in_tensorboard(tmp_path):
    """Killed after the final evaluation's records: TensorBoard showed both attempts' final_* scalars
    at the last step (its SessionLog START was put at step + 1, which drops nothing at that step). Now
    the START is at the step itself and the records kept there (the last train and validation ones)
    are written again: TensorBoard shows what a run that was never stopped shows."""
    config = ef.base_config(num_epochs=1)
    config.train.eval_every_steps = 3  # the final evaluation is not the last periodic one (step 3)
    straight = tmp_path / "a"
    train_and_evaluate(config, str(straight), ef.classification_task(config))

    def crash(model, results):
        raise KeyboardInterrupt("simulated kill in the reports")

    workdir = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(
            config, str(workdir), ef.classification_task(config, extra_results=crash)
        )
    train_and_evaluate(config, str(workdir), ef.classification_task(config))

    def board(run):
        return sorted((step, tag) for step, tag, _ in read_run_scalars(str(run / "tensorboard")))

    shown = board(workdir)
    assert shown.count((5, "final_test/loss")) == 1
    assert (5, "train/loss") in shown
    assert shown == board(straight)

    def values(run):  # the same values (but the timings)
        scalars = read_run_scalars(str(run / "tensorboard"))
        return {(s, t): v for s, t, v in scalars if not t.endswith("examples_per_s")}

    assert values(workdir) == values(straight)


def test_setting_aside_orphaned_records_is_atomic_and_a_retry_copies_nothing_twice(
    tmp_path, monkeypatch
):
    """The rewrite of metrics.jsonl goes through a temp file renamed over it: a failure (a full disk,
    a crash) leaves it whole, with every record, and the retry leaves each record in exactly one file."""
    from lstm_jax import logging_utils

    lines = [
        json.dumps({"kind": "train", "step": s, "time": s, "loss": 1.0}) + "\n" for s in (2, 4, 6)
    ]
    lines.insert(2, json.dumps({"kind": "validation", "step": 4, "time": 5, "loss": 1.0}) + "\n")
    text = "".join(lines)
    (tmp_path / "metrics.jsonl").write_text(text)
    real_replace = os.replace

    def replace(src, dst):
        if os.path.basename(dst) == "metrics.jsonl":
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(logging_utils.os, "replace", replace)
    logger = logging_utils.MetricsLogger(str(tmp_path))
    with pytest.raises(OSError, match="No space left on device"):
        logger.restart_at(4)
    assert (tmp_path / "metrics.jsonl").read_text() == text  # whole, as it was
    assert sorted(os.listdir(tmp_path)) == [
        "metrics.jsonl",
        "metrics.orphaned.jsonl",
    ]  # no temp file
    monkeypatch.undo()
    moved = logger.restart_at(4)
    assert [r["step"] for r in moved] == [6]
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(lines[:3])
    assert (tmp_path / "metrics.orphaned.jsonl").read_text() == lines[3]  # copied once
    logger.write("train", 6, {"loss": 0.5})
    logger.close()
    assert [r["step"] for r in read_jsonl(str(tmp_path / "metrics.jsonl"))] == [2, 4, 4, 6]
    assert logger.restart_at(6) == []  # nothing past the step: the file is left as it is
    logger.close()
    assert [r["step"] for r in read_jsonl(str(tmp_path / "metrics.jsonl"))] == [2, 4, 4, 6]


def test_a_kept_record_that_lost_its_newline_is_not_followed_on_its_line(tmp_path):
    """A power cut can leave the last record whole but without its newline; nothing past the checkpoint
    to set aside, yet the next record must start a line of its own."""
    from lstm_jax import logging_utils

    text = "".join(
        json.dumps({"kind": "train", "step": s, "time": s, "loss": 1.0}) + "\n" for s in (2, 4)
    )
    (tmp_path / "metrics.jsonl").write_text(text[:-1])
    logger = logging_utils.MetricsLogger(str(tmp_path))
    assert logger.restart_at(4) == []
    logger.write("train", 6, {"loss": 0.5})
    logger.close()
    assert [r["step"] for r in read_jsonl(str(tmp_path / "metrics.jsonl"))] == [2, 4, 6]


def test_restart_at_sets_aside_a_half_record_and_a_line_whose_step_is_not_an_integer(tmp_path):
    """A half record (no newline: the run was killed mid-write) and a hand-edited line whose step is a
    string are records that do not parse: both go aside, no TypeError comparing the string step, and the
    set-aside file ends each of them with its own newline, so a record added after them starts a line."""
    from lstm_jax import logging_utils

    good = json.dumps({"kind": "train", "step": 2, "time": 2, "loss": 1.0}) + "\n"
    odd = json.dumps({"kind": "train", "step": "9", "time": 9, "loss": 1.0}) + "\n"
    half = '{"kind": "train", "st'
    # A blank line is no record to set aside: it stays.
    (tmp_path / "metrics.jsonl").write_text(good + "\n" + odd + half)
    logger = logging_utils.MetricsLogger(str(tmp_path))
    moved = logger.restart_at(4)
    logger.close()
    assert moved == [{"line": odd}, {"line": half}]
    assert (tmp_path / "metrics.jsonl").read_text() == good + "\n"
    assert (tmp_path / "metrics.orphaned.jsonl").read_text() == odd + half + "\n"


def test_a_null_kept_at_a_redone_final_step_is_shown_again_in_tensorboard(tmp_path):
    """A final evaluation done again drops every TensorBoard value at its step and writes the records
    kept there again: a metric logged as null (a NaN loss) comes back as NaN, as the run first showed it."""
    import math

    from lstm_jax import logging_utils

    records = [
        {"kind": "train", "step": 4, "time": 1, "loss": None},
        {"kind": "validation", "step": 4, "time": 2, "loss": 1.0},
        {"kind": "final_test", "step": 4, "time": 3, "loss": 0.5},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    logger = logging_utils.MetricsLogger(str(tmp_path))
    assert [r["kind"] for r in logger.restart_at(4, redo_final=True)] == ["final_test"]
    logger.close()
    shown = read_run_scalars(str(tmp_path / "tensorboard"))
    assert [(s, t) for s, t, _ in shown] == [(4, "train/loss"), (4, "validation/loss")]
    assert math.isnan(shown[0][2]) and shown[1][2] == 1.0


def test_a_disabled_metrics_logger_writes_nothing(tmp_path):
    """Processes other than 0 of a multi-process run log nothing: no metrics.jsonl, no event file."""
    from lstm_jax import logging_utils

    logger = logging_utils.MetricsLogger(str(tmp_path / "run"), enabled=False)
    assert logger.restart_at(0) == []
    logger.write("train", 1, {"loss": 0.5})
    logger.close()
    assert not (tmp_path / "run").exists()


def test_json_ready_makes_numpy_values_and_tuples_strict_json(tmp_path):
    """NumPy scalars and arrays become Python numbers and lists (a non-finite one null), tuples lists:
    a NumPy NaN metric is written as null, not refused by the strict dump."""
    from lstm_jax import logging_utils

    got = logging_utils.json_ready(
        {"a": np.float32("nan"), "b": (1, 2.5), "c": np.array([1.5, np.inf]), "d": np.int64(3)}
    )
    assert got == {"a": None, "b": [1, 2.5], "c": [1.5, None], "d": 3}
    # Keys JSON cannot hold become their str: the dump does not fail on them.
    assert logging_utils.json_ready({(1, 2): 1.0, 3: 2}) == {"(1, 2)": 1.0, 3: 2}
    assert type(got["d"]) is int
    logger = logging_utils.MetricsLogger(str(tmp_path))
    logger.write("train", 1, {"loss": np.float32("nan"), "shape": (2, 3)})
    logger.close()
    (record,) = read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert record["loss"] is None and record["shape"] == [2, 3]


def test_a_restart_after_records_were_written_goes_on_in_the_rewritten_file(tmp_path):
    """`restart_at` on a logger that already wrote: metrics.jsonl is replaced by its rewrite, so the next
    record must go to the new file, not to the old one's still open (and now nameless) handle."""
    from lstm_jax import logging_utils

    logger = logging_utils.MetricsLogger(str(tmp_path))
    for step in (2, 4, 6):
        logger.write("train", step, {"loss": 1.0})
    assert [r["step"] for r in logger.restart_at(4)] == [6]
    logger.write("train", 6, {"loss": 0.5})
    logger.close()
    records = read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert [(r["step"], r["loss"]) for r in records] == [(2, 1.0), (4, 1.0), (6, 0.5)]
    assert [r["step"] for r in read_jsonl(str(tmp_path / "metrics.orphaned.jsonl"))] == [6]


def test_only_numbers_not_true_or_false_become_tensorboard_scalars(tmp_path):
    from lstm_jax import logging_utils

    assert logging_utils.json_number(1) and logging_utils.json_number(0.5)
    assert not logging_utils.json_number(True) and not logging_utils.json_int(False)
    assert logging_utils.json_int(3) and not logging_utils.json_int(3.0)
    logger = logging_utils.MetricsLogger(str(tmp_path))
    logger.write("train", 1, {"loss": 0.5, "stopped": True, "note": "x"})
    logger.close()
    tags = [t for _, t, _ in read_run_scalars(str(tmp_path / "tensorboard"))]
    assert tags == ["train/loss"]
    (record,) = read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert record["stopped"] is True and record["note"] == "x"


def test_run_scalars_read_the_event_files_in_start_order_and_a_start_drops_later_steps(
    tmp_path, monkeypatch
):
    """TensorBoard's view of a resumed run: the first run's file, then the resumed run's, whose
    SessionLog START at step 6 drops what the first logged at steps >= 6 but keeps step 5."""
    import types

    from lstm_jax import logging_utils

    now = [1000.0]
    monkeypatch.setattr(logging_utils, "time", types.SimpleNamespace(time=lambda: now[0]))
    first = logging_utils.EventFileWriter(str(tmp_path))
    first.scalars(5, {"loss": 1.5})
    first.scalars(6, {"loss": 1.0})
    first.close()
    now[0] = 1001.0
    resumed = logging_utils.EventFileWriter(str(tmp_path))
    assert resumed.path != first.path
    resumed.session_start(6)
    resumed.scalars(6, {"loss": 2.0})
    resumed.close()
    assert read_run_scalars(str(tmp_path)) == [(5, "loss", 1.5), (6, "loss", 2.0)]


def test_write_json_makes_its_directory_and_writes_strict_json(tmp_path):
    from lstm_jax.logging_utils import read_json, write_json

    path = tmp_path / "new" / "sub" / "results.json"
    write_json(str(path), {"loss": float("nan"), "steps": (1, 2)})
    assert read_json(str(path)) == {"loss": None, "steps": [1, 2]}
    assert path.read_text().endswith("}\n")


def test_read_json_of_a_damaged_file_names_where_it_stops_parsing(tmp_path):
    from lstm_jax.logging_utils import read_json

    path = tmp_path / "vocab.json"
    path.write_text('{"a": 1,\n}\n')
    with pytest.raises(UserError, match=r"vocab\.json is not valid JSON \(.*, line 2 column 1\)"):
        read_json(str(path))


def test_event_file_records_carry_tensorflows_masked_crc32c():
    """TensorBoard refuses a record whose CRC is not TFRecord's masked CRC-32C; the reader here checks
    with the same function, so it is pinned to the standard values (checked against tensorflow's reader)."""
    from lstm_jax import logging_utils

    assert logging_utils._crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert logging_utils._masked_crc(b"123456789") == 0xC78AB0E5
    assert logging_utils._masked_crc(b"") == 0xA282EAD8


def test_reading_an_event_file_checks_every_crc(tmp_path):
    """A damaged byte in a record or in its length is an error naming the file, not a wrong value."""
    from lstm_jax import logging_utils

    writer = logging_utils.EventFileWriter(str(tmp_path))
    writer.scalars(3, {"loss": 0.25})
    writer.close()
    data = open(writer.path, "rb").read()
    assert logging_utils.read_event_scalars(writer.path) == [(3, "loss", 0.25)]
    damaged = bytearray(data)
    damaged[-6] ^= 0x01  # in the scalar's record, before its CRC
    open(writer.path, "wb").write(bytes(damaged))
    with pytest.raises(ValueError, match="corrupt record at byte"):
        logging_utils.read_event_scalars(writer.path)
    first_length = bytearray(data)
    first_length[0] ^= 0x01
    open(writer.path, "wb").write(bytes(first_length))
    with pytest.raises(ValueError, match="corrupt record header at byte 0"):
        logging_utils.read_event_scalars(writer.path)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_after_the_step_saves_and_the_run_resumes_exactly(tmp_path, sig):
    """Ctrl-C (or SIGTERM) mid-epoch, between evaluations: the step in flight finishes, a checkpoint of it
    is saved with the train sums since the last evaluation, `Interrupted` names the step and the fix; the
    resumed run equals an uninterrupted one (history, parameters); a second signal stops at once."""
    config = ef.base_config(num_steps=12, eval_every_steps=4)
    config.model.classes = 12
    before = signal.getsignal(sig)

    def run(workdir, signal_at=None, times=1):
        task = ef.lm_task(config)
        if signal_at is not None:
            inner = task.train_batches

            def train_batches(epoch, start):
                for n, b in enumerate(inner(epoch, start), start=start):
                    if n == signal_at:
                        for _ in range(times):
                            signal.raise_signal(sig)  # handled before the batch reaches the step
                    yield b

            task.train_batches = train_batches
        return train_and_evaluate(config, str(workdir), task)

    straight = run(tmp_path / "a")
    with pytest.raises(Interrupted) as err:
        run(
            tmp_path / "b", signal_at=6
        )  # the 6th batch: step 6, between the evaluations at 4 and 8
    assert err.value.exit_status == 128 + int(sig)
    assert str(err.value).startswith(f"{sig.name} at step 7 of 12 (epoch 1): saved a checkpoint in")
    assert "run the same command again to resume" in str(err.value)
    assert sorted(int(d) for d in os.listdir(tmp_path / "b" / "checkpoints")) == [4, 7]
    assert signal.getsignal(sig) == before
    logged = (tmp_path / "b" / "metrics.jsonl").read_bytes()
    resumed = run(tmp_path / "b")
    _assert_same_run(straight, resumed, tmp_path / "a", tmp_path / "b", config, steps=12)
    # Nothing was logged past the checkpoint: the records are kept as they were, none is set aside.
    assert (tmp_path / "b" / "metrics.jsonl").read_bytes().startswith(logged)
    assert not (tmp_path / "b" / "metrics.orphaned.jsonl").exists()
    assert _logged_steps(tmp_path / "b") == _logged_steps(tmp_path / "a")

    with pytest.raises(KeyboardInterrupt):  # the second signal does not wait for the step
        run(tmp_path / "c", signal_at=5, times=2)
    assert sorted(int(d) for d in os.listdir(tmp_path / "c" / "checkpoints")) == [4]
    assert signal.getsignal(sig) == before


def test_a_signal_during_an_evaluation_saves_its_checkpoint_once_and_resumes_exactly(
    tmp_path, monkeypatch
):
    """SIGTERM while a mid-run evaluation is computed: the evaluation finishes, its checkpoint (the only
    one of that step) and records are written, `Interrupted` names the step; the resumed run equals an
    uninterrupted one."""
    config = ef.base_config(num_epochs=3)  # 5 steps an epoch: evaluations at 5, 10, 15
    straight = train_and_evaluate(config, str(tmp_path / "a"), ef.classification_task(config))
    evaluate, calls = train_mod._Engine.evaluate, []

    def evaluate_with_a_signal(self, params, split):
        calls.append(split)
        if len(calls) == 2:  # the second periodic evaluation (step 10), before it is computed
            signal.raise_signal(signal.SIGTERM)
        return evaluate(self, params, split)

    monkeypatch.setattr(train_mod._Engine, "evaluate", evaluate_with_a_signal)
    with pytest.raises(Interrupted) as err:
        train_and_evaluate(config, str(tmp_path / "b"), ef.classification_task(config))
    monkeypatch.undo()
    assert str(err.value).startswith("SIGTERM at step 10 of 15 (epoch 2): saved a checkpoint")
    assert sorted(int(d) for d in os.listdir(tmp_path / "b" / "checkpoints")) == [5, 10]
    assert _logged_steps(tmp_path / "b", "validation") == [5, 10]
    resumed = train_and_evaluate(config, str(tmp_path / "b"), ef.classification_task(config))
    _assert_same_run(straight, resumed, tmp_path / "a", tmp_path / "b", config, steps=15)
    assert resumed["metrics"] == straight["metrics"]
    assert _records_without_times(tmp_path / "b") == _records_without_times(tmp_path / "a")


class _Killed(Exception):
    """What the test's own signal handler raises: the signal reached the handler the run found (for
    SIGTERM, the default one, which kills the process without a word)."""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_after_the_last_step_stops_at_once_and_says_the_command_finishes(tmp_path, sig):
    """Ctrl-C (or SIGTERM) after the last step, during the final evaluation and reports (the task's
    `extra_results`), or during the last step: `Interrupted` at once, saying results.json was not written
    and that the same command finishes from the last step's checkpoint (intact); it does, with the
    results of an uninterrupted run, training no further."""
    config = ef.base_config(num_epochs=2)  # 5 steps per epoch

    def kill(signum, frame):
        raise _Killed(signum)

    before = signal.signal(sig, kill)
    try:

        def run(workdir, *, in_reports=False, at_batch=None):
            def extra_results(model, results):
                if in_reports:
                    signal.raise_signal(sig)
                return {"reported": True}

            task = ef.classification_task(config, extra_results=extra_results)
            if at_batch is not None:
                inner = task.train_batches

                def train_batches(epoch, start):
                    for n, b in enumerate(inner(epoch, start), start=start):
                        if epoch * 5 + n == at_batch:
                            signal.raise_signal(sig)  # handled before the batch reaches the step
                        yield b

                task.train_batches = train_batches
            return train_and_evaluate(config, str(workdir), task)

        straight = run(tmp_path / "a")
        for name, kw in (("reports", {"in_reports": True}), ("last_step", {"at_batch": 9})):
            workdir = tmp_path / name
            with pytest.raises(Interrupted) as err:
                run(workdir, **kw)
            assert err.value.exit_status == 128 + int(sig)
            assert str(err.value) == (
                f"{sig.name} after the last step (step 10 of 10), during the final evaluation and"
                f" reports: results.json was not written; the checkpoint of step 10 in"
                f" {workdir / 'checkpoints'} is intact; run the same command again to finish from it"
                " (no more training: it redoes the final evaluation, reports and results.json)"
            )
            assert not (workdir / "results.json").exists()
            assert 10 in [int(d) for d in os.listdir(workdir / "checkpoints")]
            assert signal.getsignal(sig) is kill  # the handler the run found, back
            resumed = run(workdir)
            assert resumed["reported"] and resumed["steps"] == 10
            assert resumed["metrics"] == straight["metrics"]
            _assert_same_run(straight, resumed, tmp_path / "a", workdir, config, steps=10)
            kinds = [r["kind"] for r in read_jsonl(str(workdir / "metrics.jsonl"))]
            assert "train" not in kinds[kinds.index("final_test") :]  # no training on the rerun
            assert json.loads((workdir / "results.json").read_text())["steps"] == 10
    finally:
        signal.signal(sig, before)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_just_after_results_json_is_written_leaves_the_run_finished(
    tmp_path, sig, monkeypatch
):
    """A signal between writing results.json and marking the run done said "results.json was not
    written" (exit 130/143) of a run whose results were whole on disk; now the run returns them, and the
    signal is only logged (a second one too: it does not stop the finished run at once)."""
    from lstm_jax import train as train_module

    config = ef.base_config(num_epochs=1)
    write = train_module.write_json

    def write_then_signal(path, obj, *args, **kwargs):
        write(path, obj, *args, **kwargs)
        if os.path.basename(path) == "results.json":
            signal.raise_signal(sig)
            signal.raise_signal(sig)

    monkeypatch.setattr(train_module, "write_json", write_then_signal)
    before = signal.getsignal(sig)
    results = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert results["status"] == "finished" and results["steps"] == 5
    assert json.loads((tmp_path / "results.json").read_text())["steps"] == 5
    assert signal.getsignal(sig) == before


def test_resume_mid_epoch_restores_the_carried_state(tmp_path):
    config = ef.base_config(num_steps=12, eval_every_steps=4)
    config.model.classes = 12

    def run(workdir, stop_at=None):
        task = ef.lm_task(config)
        if stop_at is not None:
            inner = task.train_batches

            def train_batches(epoch, start):
                for n, b in enumerate(inner(epoch, start), start=start):
                    if n >= stop_at:
                        raise KeyboardInterrupt
                    yield b

            task.train_batches = train_batches
        return train_and_evaluate(config, str(workdir), task)

    straight = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", stop_at=10)  # checkpoints at 4 and 8, both mid-epoch
    resumed = run(tmp_path / "b")
    assert straight["history"] == resumed["history"]
    assert straight["history"][-1]["validation"]["bits_per_token"] > 0
    a, _ = _params(tmp_path / "a", config)
    b, _ = _params(tmp_path / "b", config)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_the_carry_starts_at_zero_each_epoch_and_evaluation_and_runs_on_between(tmp_path):
    """A task's carry (truncated BPTT) is reset to zeros at the start of every epoch and of every
    evaluation, and each batch starts from the state the batch before it ended in, in training and in
    evaluation: a metric reporting the size of the carry each batch starts from shows both."""

    def loss_reporting_the_carry(model, batch, *, key, train, carry):
        loss, (sums, new_carry) = ef.lm_loss(model, batch, key=key, train=train, carry=carry)
        per_row = jnp.abs(carry[0]).mean(axis=-1) * batch["targets"].shape[1]  # count: tokens
        return loss, (dict(sums, carried=jnp.sum(batch["weight"] * per_row)), new_carry)

    config = ef.base_config(num_epochs=2, log_every_steps=1)
    config.model.classes = 12
    task = dataclasses.replace(ef.lm_task(config, length=200), loss_fn=loss_reporting_the_carry)
    assert task.steps_per_epoch == 4
    results = train_and_evaluate(config, str(tmp_path), task)
    carried = [
        r["carried"] for r in read_jsonl(str(tmp_path / "metrics.jsonl")) if r["kind"] == "train"
    ]
    assert len(carried) == 8
    assert [c == 0 for c in carried] == [True, False, False, False] * 2
    # An evaluation's 4 batches: the first from zeros, the others from the states before them.
    for record in results["history"]:
        assert record["validation"]["carried"] > 0


def test_same_seed_gives_identical_runs(tmp_path):
    config = ef.base_config(num_epochs=1)
    r1 = train_and_evaluate(config, str(tmp_path / "1"), ef.classification_task(config))
    r2 = train_and_evaluate(config, str(tmp_path / "2"), ef.classification_task(config))
    assert r1["history"] == r2["history"]
    a, _ = _params(tmp_path / "1", config)
    b, _ = _params(tmp_path / "2", config)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_the_seed_reaches_the_initial_weights_and_the_dropout_masks(tmp_path, dropout):
    """`config.seed` draws the initial weights, and the train state's key from which every step's dropout
    key comes (the batch order is each task's, checked in the experiments' tests): the first step on the
    same weights and batch with seed 1's key instead of seed 0's gives another loss, with dropout only."""

    def engine(seed):
        config = ef.base_config(num_epochs=1)
        config.seed, config.model.dropout = seed, dropout
        return train_mod._Engine(config, str(tmp_path / str(seed)), ef.classification_task(config))

    zero, one = engine(0), engine(1)
    state, other = zero.init_state(), one.init_state()
    pairs = list(
        zip(jax.tree.leaves(state["params"]), jax.tree.leaves(other["params"]), strict=True)
    )
    # Every drawn array differs (the biases start as constants under any seed).
    drawn = [(np.asarray(x), np.asarray(y)) for x, y in pairs if np.unique(np.asarray(x)).size > 2]
    assert len(drawn) >= 3 and not any(np.array_equal(x, y) for x, y in drawn)
    assert not np.array_equal(np.asarray(state["rng"]), np.asarray(other["rng"]))
    batch = zero.put_batch(next(iter(zero.task.train_batches(0, 0))))

    def first_loss(rng):
        fresh = dict(jax.tree.map(jnp.array, zero.init_state()), rng=rng)  # donated by the step
        zero.compile_train_step(fresh)
        acc = zero.zero_acc(zero.sums_shape(fresh, batch, train=True))
        return float(zero.train_step(fresh, batch, acc)[1]["last_loss"])

    same, swapped = first_loss(jnp.array(state["rng"])), first_loss(jnp.array(other["rng"]))
    assert (same != swapped) == (dropout > 0)
    assert first_loss(jnp.array(state["rng"])) == same


def _poisoned_task(config, poison_from_step):
    task = ef.classification_task(config)
    inner_batches, inner_loss = task.train_batches, task.loss_fn

    def train_batches(epoch, start):
        for n, b in enumerate(inner_batches(epoch, start), start=start):
            step = epoch * task.steps_per_epoch + n + 1
            yield dict(b, poison=np.full(len(b["label"]), step >= poison_from_step, np.float32))

    def loss_fn(model, batch, *, key, train, carry):
        loss, aux = inner_loss(model, batch, key=key, train=train, carry=carry)
        if "poison" not in batch:  # evaluation batches
            return loss, aux
        return loss + jnp.where(batch["poison"][0] > 0, jnp.nan, 0.0), aux

    task.train_batches, task.loss_fn = train_batches, loss_fn
    return task


# The error names the first bad step of a record (a record every 2 steps: at step 8, after 1 or 2
# bad steps).
@pytest.mark.parametrize("poison_from_step", [7, 8])
def test_nan_loss_stops_cleanly_and_keeps_the_last_checkpoint(tmp_path, poison_from_step):
    config = ef.base_config(num_epochs=3)
    with pytest.raises(UserError) as err:
        train_and_evaluate(config, str(tmp_path), _poisoned_task(config, poison_from_step))
    message = str(err.value)
    assert f"at step {poison_from_step} (epoch 2," in message
    assert "learning_rate" in message and "clip_norm" in message
    assert "\n" not in message
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["5"]
    assert not (tmp_path / "results.json").exists()
    params, step = _params(tmp_path, config)
    assert step == 5 and all(np.isfinite(p).all() for p in params)


def _stopping_early():
    """A config with early stopping (patience 1) and data on which it stops: `(config, task maker)`."""
    config = ef.base_config(num_epochs=8)
    config.model.dropout = 0.0
    config.early_stopping.enabled = True
    config.early_stopping.patience = 1
    train = ef.classification_data(40)
    valid = dict(train, label=(train["label"] + 1) % 3)  # learning the train rule hurts validation
    return config, lambda: ef.classification_task(config, train=train, valid=valid)


def test_early_stopping_restores_the_best_weights(tmp_path):
    config, task = _stopping_early()
    results = train_and_evaluate(config, str(tmp_path), task())
    assert results["stopped_early"] and results["steps"] < 40
    best = results["metrics"]["best"]
    val_losses = [r["validation"]["loss"] for r in results["history"]]
    assert best["value"] == min(val_losses) and best["step"] == results["best_step"]
    assert results["metrics"]["evaluated_weights"] == "best"
    final = results["metrics"]["final"]["validation"]
    assert final["loss"] == pytest.approx(best["validation"]["loss"], rel=1e-5)
    # The best checkpoint survives even with checkpoint_keep=3 later saves.
    assert str(results["best_step"]) in os.listdir(tmp_path / "checkpoints")


@pytest.mark.parametrize(
    "patience,val_losses,steps,best_step",
    [
        (0, [0.5, 0.4, 0.3, 0.2], 20, 20),  # improving every epoch: patience 0 never stops
        (0, [0.5, 0.4, 0.45, 0.2], 15, 10),  # stops at the first evaluation that did not improve
        (1, [0.5, 0.4, 0.45, 0.2], 15, 10),  # so does 1 (Keras counts the same way)
        (2, [0.5, 0.4, 0.45, 0.2], 20, 20),
        (0, [float("nan"), 0.4, 0.45, 0.2], 15, 10),  # never at the first evaluation
        (1, [0.5, 0.5, 0.4, 0.3], 10, 5),  # an equal loss is no improvement (Keras' np.less)
        (2, [0.5, 0.6, 0.4, 0.45], 20, 15),  # an improvement starts the wait again
    ],
)
def test_early_stopping_stops_as_keras(
    tmp_path, monkeypatch, patience, val_losses, steps, best_step
):
    """The stop rule against scripted validation losses, epoch by epoch, as
    `keras.callbacks.EarlyStopping(patience=...)` stops on them (its `on_epoch_end`)."""
    config = ef.base_config(num_epochs=4)  # 5 steps an epoch
    config.early_stopping.enabled = True
    config.early_stopping.patience = patience
    scripted = iter(val_losses)
    evaluate = train_mod._Engine.evaluate

    def scripted_evaluate(self, params, split):
        out = evaluate(self, params, split)
        return {**out, "loss": next(scripted, out["loss"])} if split == "validation" else out

    monkeypatch.setattr(train_mod._Engine, "evaluate", scripted_evaluate)
    results = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert results["steps"] == steps and results["stopped_early"] == (steps < 20)
    assert results["best_step"] == best_step


def test_early_stopping_state_survives_a_crash_and_resume(tmp_path, monkeypatch):
    """A run killed between evaluations, after one that did not improve (patience 2: one more such
    evaluation stops it), resumes with its early-stopping state (best value and step, evaluations
    waited): it stops at the same step as the uninterrupted run and ends on the same best weights, kept
    although `checkpoint_keep=1` rotated every later checkpoint away."""
    config = ef.base_config(num_epochs=6, checkpoint_keep=1)  # 5 steps an epoch
    config.early_stopping.enabled = True
    config.early_stopping.patience = 2
    config.early_stopping.restore_best_weights = True
    losses = [0.5, 0.4, 0.45, 0.47, 0.3]  # improves at step 10, stops at step 20
    evaluate = train_mod._Engine.evaluate

    def scripted(values):
        def scripted_evaluate(self, params, split):
            out = evaluate(self, params, split)
            return {**out, "loss": next(values, out["loss"])} if split == "validation" else out

        return scripted_evaluate

    monkeypatch.setattr(train_mod._Engine, "evaluate", scripted(iter(losses)))
    straight = train_and_evaluate(config, str(tmp_path / "a"), ef.classification_task(config))
    assert straight["steps"] == 20 and straight["stopped_early"] and straight["best_step"] == 10
    assert straight["metrics"]["evaluated_weights"] == "best"

    monkeypatch.setattr(
        train_mod._Engine, "evaluate", scripted(iter(losses))
    )  # one run, two sessions
    with pytest.raises(KeyboardInterrupt):  # in step 18: the last checkpoint is step 15's
        train_and_evaluate(config, str(tmp_path / "b"), ef.classification_task(config, stop_at=17))
    assert sorted(int(d) for d in os.listdir(tmp_path / "b" / "checkpoints")) == [10, 15]
    resumed = train_and_evaluate(config, str(tmp_path / "b"), ef.classification_task(config))
    for key in ("steps", "stopped_early", "best_step", "metrics", "history"):
        assert resumed[key] == straight[key], key
    for which in ("latest", "best"):
        a, step_a = _params(tmp_path / "a", config, which)
        b, step_b = _params(tmp_path / "b", config, which)
        assert step_a == step_b == {"latest": 20, "best": 10}[which]
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(
    "value,best,mode,min_delta,improved",
    [
        (0.5, None, "min", 0.0, True),  # the first finite value is the best so far
        (float("nan"), None, "min", 0.0, False),
        (0.4, 0.5, "min", 0.0, True),
        (0.5, 0.5, "min", 0.0, False),  # equal is no improvement, in either mode
        (0.5, 0.5, "max", 0.0, False),
        (0.45, 0.5, "min", 0.1, False),  # must beat the best by more than min_delta ...
        (0.39, 0.5, "min", 0.1, True),
        (0.85, 0.8, "max", 0.1, False),  # ... upwards for a maximised metric
        (0.75, 0.8, "max", 0.1, False),
        (0.91, 0.8, "max", 0.1, True),
    ],
)
def test_improvement_beats_the_best_by_min_delta_in_the_monitored_direction(
    value, best, mode, min_delta, improved
):
    """Keras' EarlyStopping rule: an improvement beats the best by more than `min_delta`, downwards in
    mode "min" and upwards in mode "max"; NaN never improves."""
    assert train_mod._improved(value, best, mode, min_delta) is improved


def _scripting(monkeypatch, metric: str, values: list[float]) -> None:
    """Makes every periodic evaluation of "validation" report the next of `values` as its `metric`."""
    scripted = iter(values)
    evaluate = train_mod._Engine.evaluate

    def scripted_evaluate(self, params, split):
        out = evaluate(self, params, split)
        return {**out, metric: next(scripted, out[metric])} if split == "validation" else out

    monkeypatch.setattr(train_mod._Engine, "evaluate", scripted_evaluate)


@pytest.mark.parametrize(
    "monitor,mode,values,steps,best_step",
    [
        ("val_accuracy", "auto", [0.5, 0.6, 0.55, 0.9], 15, 10),  # "auto" maximises an accuracy
        ("val_loss", "max", [0.5, 0.6, 0.55, 0.9], 15, 10),  # an explicit mode wins over the name
        ("val_accuracy", "min", [0.5, 0.4, 0.45, 0.2], 15, 10),
    ],
)
def test_early_stopping_follows_the_monitored_metrics_direction(
    tmp_path, monkeypatch, monitor, mode, values, steps, best_step
):
    """`train.monitor_mode` ("auto": max for accuracy-like names, min otherwise) decides which way an
    evaluation improves: for the stop and for the best checkpoint (patience 1, scripted values)."""
    config = ef.base_config(num_epochs=4, monitor=monitor, monitor_mode=mode)  # 5 steps an epoch
    config.early_stopping.enabled = True
    config.early_stopping.patience = 1
    _scripting(monkeypatch, monitor[4:], values)
    results = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert results["steps"] == steps and results["stopped_early"]
    assert results["best_step"] == best_step
    assert results["metrics"]["best"]["value"] == values[best_step // 5 - 1]


def test_a_train_monitor_tracks_the_training_metric_not_the_validation_one(tmp_path, monkeypatch):
    """`train.monitor` without ``val_`` watches the training average of each evaluation's interval:
    the best checkpoint is where the training loss was lowest, whatever the validation loss did."""
    config = ef.base_config(num_epochs=4, monitor="loss")
    _scripting(monkeypatch, "loss", [0.5, 0.6, 0.7, 0.8])  # validation: best at the first one
    results = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    train_losses = {r["step"]: r["train"]["loss"] for r in results["history"]}
    best = min(train_losses, key=train_losses.get)
    assert best != 5  # (the training loss falls on this data)
    assert results["best_step"] == best
    assert results["metrics"]["best"]["value"] == train_losses[best]


@pytest.mark.parametrize(
    "restore,val_losses,evaluated",
    [
        (True, [0.5, 0.4, 0.45], "best"),  # stops at step 15, the best is step 10's
        (False, [0.5, 0.4, 0.45], "last"),
        (True, [0.5, 0.4, 0.3, 0.2], "last"),  # the best is the last: nothing to restore
    ],
)
def test_restore_best_weights_decides_the_weights_of_the_final_evaluation(
    tmp_path, monkeypatch, restore, val_losses, evaluated
):
    """With early stopping, `restore_best_weights` evaluates the best checkpoint at the end when it is
    not the last one; otherwise the last weights, whose evaluation (the last one in the history) is
    reused, not done again."""
    config = ef.base_config(num_epochs=4)  # 5 steps an epoch
    config.early_stopping.enabled = True
    config.early_stopping.patience = 1
    config.early_stopping.restore_best_weights = restore
    _scripting(monkeypatch, "loss", val_losses)
    results = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert results["steps"] == 5 * len(val_losses)
    assert results["metrics"]["evaluated_weights"] == evaluated
    final = results["metrics"]["final"]["validation"]
    kinds = [r["kind"] for r in read_jsonl(str(tmp_path / "metrics.jsonl"))]
    if evaluated == "last":
        assert final == results["history"][-1]["validation"]  # the scripted loss, reused
        assert "final_validation" not in kinds
    else:
        assert final["loss"] not in val_losses  # evaluated again, on the best weights
        assert "final_validation" in kinds


def test_without_early_stopping_the_last_weights_are_evaluated(tmp_path, monkeypatch):
    """`restore_best_weights` belongs to early stopping: with it off (the default) the final evaluation
    is of the last weights, though a best checkpoint is kept (for --mode=eval) before the last one."""
    config = ef.base_config(num_epochs=3)
    assert not config.early_stopping.enabled and config.early_stopping.restore_best_weights
    _scripting(monkeypatch, "loss", [0.5, 0.4, 0.45])
    results = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert results["best_step"] == 10 and results["steps"] == 15
    assert results["metrics"]["evaluated_weights"] == "last"
    assert results["metrics"]["final"]["validation"] == results["history"][-1]["validation"]


def test_outputs_in_the_workdir_and_a_finished_rerun_changes_nothing(tmp_path):
    config = ef.base_config(num_epochs=2)
    results = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    for key in ("metrics", "config", "wall_time_s", "steps", "devices", "data", "history"):
        assert key in results
    assert results["data"]["train_examples"] == 40
    assert results["devices"]["count"] == jax.device_count()
    assert set(results["metrics"]["final"]) == {"validation", "test"}
    assert (
        results["metrics"]["final"]["test"]["count"] == 15
    )  # every example once, padding excluded
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["steps"] == 10 and on_disk["config"]["train"]["batch_size"] == 8
    assert saved_results(str(tmp_path)) == on_disk
    lines = read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert {"train", "validation", "final_test"} <= {line["kind"] for line in lines}
    assert all("loss" in line for line in lines if line["kind"] == "train")
    (event_file,) = glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
    tags = {tag for _, tag, _ in read_event_scalars(event_file)}
    assert {"train/loss", "validation/accuracy"} <= tags
    png = (tmp_path / "training_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    again = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert again == on_disk
    assert len(read_jsonl(str(tmp_path / "metrics.jsonl"))) == len(lines)


def test_results_record_the_provenance_needed_to_reproduce_the_run(tmp_path, monkeypatch):
    """results.json says how the run was made beyond its config: command, data fingerprint, source commit,
    package versions, the environment that changes the computation, and the step a resumed session began at."""
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
    config = ef.base_config(num_epochs=1)
    task = dataclasses.replace(ef.classification_task(config), data_fingerprint="abc123")
    prov = train_and_evaluate(config, str(tmp_path), task)["provenance"]
    assert prov["resumed_from_step"] == 0
    assert prov["data_fingerprint"] == "abc123"
    assert prov["command"] == list(getattr(sys, "orig_argv", sys.argv))
    assert prov["cwd"] == os.getcwd()
    assert prov["packages"]["jax"] == jax.__version__
    assert prov["packages"]["numpy"] == np.__version__
    assert prov["python"] == platform.python_version()
    assert "XLA_FLAGS" in prov["env"]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(train_mod.__file__)))
    head = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True)
    git = prov["lstm_jax"]["git"]
    if head.returncode == 0:
        assert git["commit"] == head.stdout.strip() and isinstance(git["dirty"], bool)
    else:
        assert git is None
    assert json.loads((tmp_path / "results.json").read_text())["provenance"] == prov
    config.train.num_epochs = 2  # a resumed session records where it began
    again = train_and_evaluate(config, str(tmp_path), task)["provenance"]
    assert again["resumed_from_step"] == 5


def test_results_json_records_the_config_as_config_json_does_a_relative_data_path_absolute(
    tmp_path, monkeypatch
):
    """A relative `data.path` is saved absolute in config.json; results.json's copy of the config (the
    record of the run, and the config a workdir without config.json is checked against) must say the same,
    not a path that means something else from another working directory."""
    monkeypatch.chdir(tmp_path)
    config = ef.base_config(num_epochs=1)
    config.data.path = "data/train.txt"
    results = train_and_evaluate(config, "run", ef.classification_task(config))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data"]["path"] == str(tmp_path / "data" / "train.txt")
    assert results["config"] == saved
    assert json.loads((tmp_path / "run" / "results.json").read_text())["config"] == saved


def test_a_task_can_supply_the_final_metrics_of_the_splits_not_yet_evaluated(tmp_path):
    config = ef.base_config(num_epochs=2)
    calls, seen = [], {}

    def final_metrics(model, splits):
        calls.append(list(splits))
        return {s: {"loss": 0.25, "accuracy": 0.5, "count": 15.0} for s in splits}

    def extra_results(model, results):
        seen["same_model"] = model is seen.get("model")
        return {}

    def final_metrics_keeping_model(model, splits):
        seen["model"] = model
        return final_metrics(model, splits)

    task = ef.classification_task(
        config, final_metrics=final_metrics_keeping_model, extra_results=extra_results
    )
    results = train_and_evaluate(config, str(tmp_path / "hook"), task)
    # Validation was just evaluated with the final weights (last step): only "test" is asked for, once.
    assert calls == [["test"]]
    assert results["metrics"]["final"]["test"] == {"loss": 0.25, "accuracy": 0.5, "count": 15.0}
    plain = train_and_evaluate(config, str(tmp_path / "plain"), ef.classification_task(config))
    assert results["metrics"]["final"]["validation"] == plain["metrics"]["final"]["validation"]
    assert list(results["metrics"]["final"]) == ["validation", "test"]
    assert seen["same_model"]  # extra_results gets the model final_metrics saw
    lines = read_jsonl(str(tmp_path / "hook" / "metrics.jsonl"))
    assert [x["accuracy"] for x in lines if x["kind"] == "final_test"] == [0.5]

    def wrong_splits(model, splits):
        return {"validation": {"loss": 0.0, "accuracy": 1.0, "count": 1.0}}

    with pytest.raises(ValueError, match="expected \\['test'\\]"):
        train_and_evaluate(
            config,
            str(tmp_path / "wrong"),
            ef.classification_task(config, final_metrics=wrong_splits),
        )


def test_changing_the_model_in_an_existing_workdir_is_a_user_error(tmp_path):
    config = ef.base_config(num_epochs=1)
    train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    before = (tmp_path / "config.json").read_text()
    config.model.hidden = 32
    with pytest.raises(UserError, match="config.model.hidden differs from the run saved"):
        train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert (tmp_path / "config.json").read_text() == before  # the saved config is left alone


@pytest.mark.parametrize(
    "field, value",
    [
        ("seed", 7),
        ("optimizer.learning_rate", 0.5),
        ("train.batch_size", 4),
        ("train.monitor", "loss"),
    ],
)
def test_changing_what_the_run_is_on_resume_is_a_user_error_that_writes_nothing(
    tmp_path, field, value
):
    """Seed, optimizer, batch size, monitored metric (and data, model) changed on a finished run: one
    UserError naming the field and its saved value; the workdir is left byte for byte as it was (before
    2026-12-05 only model fields were checked and the rest rewrote config.json with a warning)."""
    config = ef.base_config(num_epochs=1)
    train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    before = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    section, _, name = field.rpartition(".")
    (config[section] if section else config)[name] = value
    with pytest.raises(UserError, match=rf"config\.{field} differs from the run saved in .*saved"):
        train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    after = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before


def test_schedule_clipping_and_early_stopping_may_change_on_resume(tmp_path):
    """What RESUMABLE_FIELDS allows: the run continues and the saved config takes the new values."""
    config = ef.base_config(num_epochs=1)
    train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    config.train.num_epochs = 2
    config.train.log_every_steps = 1
    config.optimizer.clip_norm = 1.0
    config.early_stopping.patience = 5
    results = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert results["steps"] == 10
    saved = config_utils.load_config(str(tmp_path))
    assert saved.optimizer.clip_norm == 1.0 and saved.train.log_every_steps == 1


def test_a_schedule_over_another_total_on_resume_warns_with_the_learning_rate_before_and_after(
    tmp_path, caplog
):
    """A cosine schedule spans the run's total steps: resuming with another num_epochs (mid-run, or a
    finished run extended) re-times it, and one warning names the learning rate at the resumed step
    under the saved length and the new one; resuming with the same total, or under a schedule that does
    not depend on it, warns nothing."""

    def run(workdir, epochs, schedule="cosine", stop_at=None):
        config = ef.base_config(num_epochs=epochs)  # 5 steps per epoch, learning rate 0.02
        config.optimizer.schedule = schedule
        if schedule.startswith("warmup"):
            config.optimizer.warmup_steps = 2
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            if stop_at is None:
                train_and_evaluate(config, str(workdir), ef.classification_task(config))
            else:
                with pytest.raises(KeyboardInterrupt):  # the checkpoint of step 5 is the last
                    task = ef.classification_task(config, stop_at=stop_at)
                    train_and_evaluate(config, str(workdir), task)
        return [r.getMessage() for r in caplog.records if "learning rate at step" in r.getMessage()]

    assert run(tmp_path / "a", 2, stop_at=7) == []
    assert run(tmp_path / "a", 2, stop_at=9) == []  # the same total: the same schedule
    (line,) = run(tmp_path / "a", 3)  # mid-run: cos(pi/2) -> cos(pi/3)
    assert line.startswith(
        "learning rate at step 5 was 0.01 under the saved 2-epoch (10 steps) cosine schedule and is"
        " now 0.015 under 3 epochs (15 steps): "
    )
    (line,) = run(tmp_path / "a", 4)  # a finished run extended: from the end of its decay
    assert line.startswith(
        "learning rate at step 15 was 0 under the saved 3-epoch (15 steps) cosine schedule and is now"
        f" {0.01 * (1 + np.cos(0.75 * np.pi)):.3g} under 4 epochs (20 steps): "
    )
    assert run(tmp_path / "a", 4) == []  # finished: returns its results
    # A schedule that does not depend on the length: one run extended (each run costs seconds; the
    # others by what decides it).
    assert run(tmp_path / "warmup_constant", 1, "warmup_constant") == []
    assert run(tmp_path / "warmup_constant", 2, "warmup_constant") == []
    opt = ef.base_config().optimizer
    for schedule, ratio, depends in [
        ("constant", 0.0, False),
        ("warmup_constant", 0.0, False),
        ("cosine", 1.0, False),
        ("cosine", 0.0, True),
        ("warmup_cosine", 0.1, True),
    ]:
        opt.schedule, opt.min_lr_ratio = schedule, ratio
        assert optim.schedule_depends_on_total(opt) is depends
        opt.decay_steps = 50  # a fixed length: never depends on the run's
        assert not optim.schedule_depends_on_total(opt)
        opt.decay_steps = 0


def test_a_field_the_saved_run_lacks_is_allowed(tmp_path):
    """A run saved before a config field existed resumes under a config that has it."""
    config = ef.base_config(num_epochs=1)
    train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    config.optimizer.new_field_of_a_later_version = 3
    config.train.num_epochs = 2
    assert train_and_evaluate(config, str(tmp_path), ef.classification_task(config))["steps"] == 10


def test_a_finished_run_re_run_with_changes_is_left_as_it_is_and_says_what_it_ignores(
    tmp_path, caplog
):
    """Re-running a finished run returns its results; changed resumable fields (which would only apply
    to more training) are named in a warning, and config.json is not rewritten with them (it was, and
    a later --mode=generate read the ignored generate.* values)."""
    config = ef.base_config(num_epochs=1)
    first = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    config.optimizer.clip_norm = 1.0
    config.train.log_every_steps = 1
    with caplog.at_level(logging.WARNING):
        again = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert again == first
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    (warning,) = [r.getMessage() for r in caplog.records if "do not apply" in r.getMessage()]
    assert "config.optimizer.clip_norm, config.train.log_every_steps" in warning
    assert "raise --config.train.num_epochs" in warning


def test_a_finished_run_of_num_steps_names_num_steps_as_the_way_to_train_on(tmp_path, caplog):
    """A run whose length is `train.num_steps` trains on when that is raised, not `num_epochs` (not
    read while num_steps is set): the warning on a finished re-run said "raise
    --config.train.num_epochs", which changed nothing."""
    config = ef.base_config(num_epochs=1, num_steps=3)
    first = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    config.train.num_epochs = 4
    with caplog.at_level(logging.WARNING):
        again = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert again == first and first["steps"] == 3
    (warning,) = [r.getMessage() for r in caplog.records if "do not apply" in r.getMessage()]
    assert "raise --config.train.num_steps above 3" in warning
    assert "raise --config.train.num_epochs" not in warning
    config.train.num_steps = 4
    assert train_and_evaluate(config, str(tmp_path), ef.classification_task(config))["steps"] == 4


def test_a_run_that_stopped_early_trains_on_with_early_stopping_switched_off(tmp_path, caplog):
    """`early_stopping.*` may change on resume; switching it off continues a run that stopped early
    (from its last checkpoint) instead of re-printing its results."""
    config, task = _stopping_early()
    first = train_and_evaluate(config, str(tmp_path), task())
    assert first["stopped_early"] and first["steps"] < 40
    config.early_stopping.patience = 2  # changed, still on: the finished run is left as it is
    with caplog.at_level(logging.WARNING):
        again = train_and_evaluate(config, str(tmp_path), task())
    assert again == first
    assert any(
        "pass --config.early_stopping.enabled=False" in r.getMessage() for r in caplog.records
    )
    config.early_stopping.enabled = False
    results = train_and_evaluate(config, str(tmp_path), task())
    assert results["steps"] == 40 and not results["stopped_early"]
    assert [r["step"] for r in results["history"]][: len(first["history"])] == [
        r["step"] for r in first["history"]
    ]


def test_a_config_json_without_any_checkpoint_does_not_block_a_corrected_retry(tmp_path):
    """A start that stopped before its first checkpoint (a non-finite loss at step 2, whose error
    advises a lower learning rate; a kill) left config.json: retrying with the fix is not a "change"."""
    config = ef.base_config(num_epochs=1)
    config_utils.save_config(config, str(tmp_path))  # as that start left it, with its records
    (tmp_path / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 1e30}\n')
    config.optimizer.learning_rate = 0.005
    results = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert results["steps"] == 5
    assert config_utils.load_config(str(tmp_path)).optimizer.learning_rate == 0.005
    # Another config's records are set aside (kept), so the two starts never read as one run.
    (aside,) = tmp_path.glob("earlier_start-*")
    assert config_utils.load_config(str(aside)).optimizer.learning_rate == 0.02
    assert "1e30" in (aside / "metrics.jsonl").read_text()
    assert "1e30" not in (tmp_path / "metrics.jsonl").read_text()


def test_a_missing_config_json_is_checked_against_results_json_or_refused(tmp_path):
    """Without config.json the run's config is the copy in results.json; with neither, resuming is
    refused (it used to train on from another seed's and learning rate's checkpoint)."""
    config = ef.base_config(num_epochs=1)
    train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    saved = (tmp_path / "config.json").read_bytes()
    (tmp_path / "config.json").unlink()
    config.seed = 7
    with pytest.raises(UserError, match="config.seed differs from the run saved"):
        train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    config.seed = 0  # the same command again: the finished run's config.json is written back
    train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert (tmp_path / "config.json").read_bytes() == saved
    (tmp_path / "config.json").unlink()
    config.seed = 7
    (tmp_path / "results.json").unlink()
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match=r"config.json is missing, but .*checkpoints.* put the run"):
        train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("monitor", ["val_foo", "acuracy"])
def test_a_monitor_naming_no_metric_fails_before_anything_is_written(tmp_path, monitor):
    """A misspelled train.monitor once trained to the end keeping no best checkpoint (best: null)."""
    config = ef.base_config(num_epochs=1)
    config.train.monitor = monitor
    with pytest.raises(
        UserError, match=rf"config.train.monitor='{monitor}' is not a metric .*accuracy"
    ):
        train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert not (tmp_path / "config.json").exists() and not (tmp_path / "metrics.jsonl").exists()
    config.train.monitor = "val_accuracy" if monitor.startswith("val_") else "accuracy"
    results = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert results["metrics"]["best"]["monitor"] == config.train.monitor


def test_resuming_with_another_model_impl_continues_the_run(tmp_path):
    """model.impl is how the same parameters are computed (a CPU run may resume on a GPU with "cudnn"),
    so changing it on resume is allowed, unlike any other model field (the test above)."""
    config = ef.base_config(num_epochs=1)
    config.model.impl = "auto"
    train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    config.model.impl = "scan"
    config.train.num_epochs = 2
    results = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert results["steps"] == 10 and len(results["history"]) == 2


def test_classification_models_take_the_configs_impl():
    from flax import nnx

    from experiments.imdb_sentiment.configs import test as imdb_test
    from lstm_jax.tasks import classification

    config = imdb_test.get_config()
    assert config.model.impl == "auto"
    config.model.impl = "fused"
    model = classification.build_model(config, nnx.Rngs(0))
    assert model.lstm.layers[0].impl == "fused"
    del config.model["impl"]  # a run saved before the field existed
    assert classification.build_model(config, nnx.Rngs(0)).lstm.layers[0].impl == "auto"


def test_more_epochs_continue_a_finished_run(tmp_path):
    config = ef.base_config(num_epochs=1)
    train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    config.train.num_epochs = 2
    results = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert results["steps"] == 10 and len(results["history"]) == 2


def test_keeping_the_remainder_trains_a_last_short_batch(tmp_path):
    """`train.drop_remainder=False` (Keras' fit, PyTorch's DataLoader): ceil(n / batch) steps an epoch, the
    last one padded with weight-0 rows, which give it exactly the short batch's loss and gradients."""
    config = ef.base_config(num_epochs=2, drop_remainder=False)
    train = ef.classification_data(43)  # 5 full batches of 8 and one of 3
    task = ef.classification_task(config, train)
    assert task.steps_per_epoch == 6
    batches = list(task.train_batches(0, 0))
    assert [b["weight"].sum() for b in batches] == [8] * 5 + [3]
    ef.assert_padding_rows_change_nothing(
        ef.classifier_loss, ef.build_model(config, nnx.Rngs(0)), batches[-1]
    )
    results = train_and_evaluate(config, str(tmp_path), task)
    assert results["steps"] == 12
    assert ef.classification_task(ef.base_config(), train).steps_per_epoch == 5  # the default drops


def _tick_a_second_per_step(monkeypatch) -> list[float]:
    """Makes the engine's clock (`train.time.time`) advance by exactly 1 s at every training step, and
    at nothing else; returns the clock, `[seconds]`, which the test may advance itself."""
    clock = [1000.0]
    fake_time = dataclasses.make_dataclass("FakeTime", ["time", "strftime"])(
        lambda: clock[0], time.strftime
    )
    monkeypatch.setattr(train_mod, "time", fake_time)
    compile_train_step = train_mod._Engine.compile_train_step

    def compile_ticking(self, state):
        compile_train_step(self, state)
        step = self.train_step

        def ticking(*args):
            clock[0] += 1.0
            return step(*args)

        self.train_step = ticking

    monkeypatch.setattr(train_mod._Engine, "compile_train_step", compile_ticking)
    return clock


def test_examples_per_second_count_a_short_last_batch_by_its_real_rows(tmp_path, monkeypatch):
    """With `drop_remainder=False` the short last batch is padded with weight-0 rows: the logged
    `examples_per_s` counts its real examples (43 an epoch here), not the padded batch's 48."""
    _tick_a_second_per_step(monkeypatch)
    config = ef.base_config(num_epochs=1, drop_remainder=False, log_every_steps=6)
    task = ef.classification_task(config, train=ef.classification_data(43))
    assert task.steps_per_epoch == 6
    train_and_evaluate(config, str(tmp_path), task)
    (record,) = [r for r in read_jsonl(str(tmp_path / "metrics.jsonl")) if r["kind"] == "train"]
    assert record["step"] == 6 and record["count"] == 43
    assert record["examples_per_s"] == pytest.approx(43 / 6)


def test_examples_per_second_after_a_signal_cover_the_steps_before_it(tmp_path, monkeypatch):
    """A signal between two logged steps saves their sums and examples for the resumed run's next
    record; its `examples_per_s` divides them by their own training time as well, as the uninterrupted
    run does (it divided them by the resumed steps' time alone: 10x too many here)."""
    clock = _tick_a_second_per_step(monkeypatch)
    config = ef.base_config(num_steps=10, log_every_steps=10)  # one record, at step 10
    data = ef.classification_data(80)  # 10 steps an epoch

    def run(workdir, signal_at=None):
        task = ef.classification_task(config, train=data)
        if signal_at is not None:
            inner = task.train_batches

            def train_batches(epoch, start):
                for n, b in enumerate(inner(epoch, start), start=start):
                    if n == signal_at:
                        signal.raise_signal(signal.SIGINT)  # handled before the batch's step
                    yield b

            task.train_batches = train_batches
        train_and_evaluate(config, str(workdir), task)
        return [
            r["examples_per_s"]
            for r in read_jsonl(str(workdir / "metrics.jsonl"))
            if r["kind"] == "train"
        ]

    assert run(tmp_path / "a") == [8.0]  # 80 examples in 10 s
    with pytest.raises(Interrupted, match="at step 9 of 10"):
        run(tmp_path / "b", signal_at=8)
    clock[0] += 500.0  # the time before the same command is run again is no training time
    assert run(tmp_path / "b") == [8.0]


def test_examples_per_second_leave_out_the_evaluations_and_checkpoints(tmp_path, monkeypatch):
    """An evaluation (and its checkpoint) between two logged steps is no training time: the next
    record's `examples_per_s` divides its examples by its steps' time alone (it counted the time of the
    evaluation before it: 40 examples in 5 s of steps and 50 s of evaluation here, 0.73/s, not 8/s)."""
    clock = _tick_a_second_per_step(monkeypatch)
    evaluate = train_mod._Engine.evaluate

    def slow_evaluate(self, params, split):
        clock[0] += 50.0
        return evaluate(self, params, split)

    monkeypatch.setattr(train_mod._Engine, "evaluate", slow_evaluate)
    config = ef.base_config(num_epochs=2, log_every_steps=100)  # records at the evaluations only
    train_and_evaluate(config, str(tmp_path), ef.classification_task(config))  # 5 steps an epoch
    records = [r for r in read_jsonl(str(tmp_path / "metrics.jsonl")) if r["kind"] == "train"]
    assert [r["step"] for r in records] == [5, 10]
    assert [r["examples_per_s"] for r in records] == [8.0, 8.0]  # 40 examples in 5 s each


def test_train_records_and_the_history_average_every_step_of_their_interval(tmp_path):
    """Each train record averages the steps since the previous one (sums and counts, reset after each
    record), and the history's train averages cover every step since the previous evaluation: the
    count-weighted mean of the train records in between."""
    config = ef.base_config(num_epochs=2)  # 5 steps an epoch of 8 examples, a record every 2 steps
    results = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    records = [r for r in read_jsonl(str(tmp_path / "metrics.jsonl")) if r["kind"] == "train"]
    assert [r["step"] for r in records] == [2, 4, 5, 6, 8, 10]
    assert [r["count"] for r in records] == [16, 16, 8, 8, 16, 16]
    for evaluation, interval in zip(results["history"], (records[:3], records[3:]), strict=True):
        assert evaluation["train"]["count"] == 40
        for name in ("loss", "accuracy"):
            mean = sum(r[name] * r["count"] for r in interval) / 40
            assert evaluation["train"][name] == pytest.approx(mean, rel=1e-5)


def test_each_train_record_logs_the_learning_rate_its_last_step_trained_with(tmp_path):
    """Under a schedule, the record of step s logs the rate step s was trained with: `schedule(s - 1)`
    (the first step trains at `optimizer.learning_rate`, the schedule's value after 0 updates)."""
    config = ef.base_config(num_epochs=1, log_every_steps=1)  # 5 steps
    config.optimizer.schedule = "cosine"
    train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    rates = [
        r["learning_rate"]
        for r in read_jsonl(str(tmp_path / "metrics.jsonl"))
        if r["kind"] == "train"
    ]
    schedule = optim.make_schedule(config.optimizer, 5)
    assert rates[0] == pytest.approx(0.02)
    assert rates == pytest.approx([float(schedule(s)) for s in range(5)])


def test_the_wall_time_of_a_resumed_run_adds_up_its_sessions(tmp_path, monkeypatch):
    """results.json's `wall_time_s` of a run resumed from a checkpoint is the time trained up to that
    checkpoint plus the resumed session's, not the last session's alone (a second of the test's clock
    per step; the time between the sessions is not counted)."""
    clock = _tick_a_second_per_step(monkeypatch)
    config = ef.base_config(num_epochs=2)  # 5 steps an epoch
    straight = train_and_evaluate(config, str(tmp_path / "a"), ef.classification_task(config))
    assert straight["wall_time_s"] == 10.0
    with pytest.raises(KeyboardInterrupt):  # in step 8: the checkpoint of step 5 holds 5 s
        train_and_evaluate(config, str(tmp_path / "b"), ef.classification_task(config, stop_at=7))
    clock[0] += 500.0
    resumed = train_and_evaluate(config, str(tmp_path / "b"), ef.classification_task(config))
    assert resumed["wall_time_s"] == 10.0


def test_a_run_saved_before_a_field_resumes_only_with_its_default(tmp_path):
    """A saved config without `train.drop_remainder` ran with the default (True): resuming with it is
    allowed, with False (another epoch layout) an error that changes nothing."""
    config = ef.base_config(num_epochs=1)
    train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["train"]["drop_remainder"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    config.train.num_epochs = 2
    results = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert results["steps"] == 10
    config.train.num_epochs = 3
    config.train.drop_remainder = False
    before = (tmp_path / "config.json").read_text()
    with pytest.raises(
        UserError, match=r"config\.train\.drop_remainder differs .*saved True, given False"
    ):
        train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert json.loads((tmp_path / "results.json").read_text())["steps"] == 10
    assert (tmp_path / "config.json").read_text() == before


def test_a_task_with_no_whole_batch_an_epoch_is_a_user_error(tmp_path):
    """Fewer training examples than one batch (with drop_remainder) is a UserError naming the batch
    size, and leaves no run directory behind."""
    config = ef.base_config(num_epochs=1)  # batch size 8
    task = ef.classification_task(config, train=ef.classification_data(5))
    assert task.steps_per_epoch == 0
    with pytest.raises(UserError, match=r"gives 0 batches per epoch; .*batch_size \(now 8\)"):
        train_and_evaluate(config, str(tmp_path / "run"), task)
    assert not (tmp_path / "run").exists()


def test_an_epoch_shorter_than_the_task_declared_is_a_user_error(tmp_path):
    """`train_batches` ending before `steps_per_epoch` batches is a UserError naming both (a task bug),
    not an endless loop asking the task for the rest of the epoch."""
    config = ef.base_config(num_epochs=2)
    task = ef.classification_task(config)  # 5 batches an epoch
    inner = task.train_batches

    def train_batches(epoch, start):
        if start:  # the rest of an epoch that ended early: would never come
            raise AssertionError(f"asked for epoch {epoch} from batch {start}")
        return inner(epoch, start)

    task = dataclasses.replace(task, steps_per_epoch=6, train_batches=train_batches)
    with pytest.raises(
        UserError, match=r"epoch 1 ended after 5 batches but the task declared steps_per_epoch=6"
    ):
        train_and_evaluate(config, str(tmp_path), task)


def test_an_evaluation_split_without_batches_is_a_user_error(tmp_path):
    config = ef.base_config(num_epochs=1)
    task = ef.classification_task(config)
    task = dataclasses.replace(
        task, eval_batches={**task.eval_batches, "validation": lambda: iter(())}
    )
    with pytest.raises(UserError, match=r"the 'validation' split gave no evaluation batches"):
        train_and_evaluate(config, str(tmp_path), task)


def test_early_stopping_on_a_validation_metric_without_a_validation_split_is_a_user_error(tmp_path):
    """Early stopping watching `val_<metric>` in a run that evaluates no validation split could never
    stop: a UserError naming the fixes before anything is written. Without early stopping the run
    trains, keeping no best checkpoint (the latest is used)."""
    config = ef.base_config(num_epochs=1)
    config.early_stopping.enabled = True
    task = dataclasses.replace(ef.classification_task(config), periodic_eval=())
    with pytest.raises(
        UserError, match=r"monitor='val_loss', but this run has no validation split"
    ):
        train_and_evaluate(config, str(tmp_path), task)
    assert not (tmp_path / "config.json").exists()
    config.early_stopping.enabled = False
    results = train_and_evaluate(config, str(tmp_path), task)
    assert results["steps"] == 5 and results["metrics"]["best"] is None


def test_drop_remainder_must_be_a_bool():
    fields = ef.base_config().to_dict()
    fields["train"]["drop_remainder"] = "no"  # as a hand-edited config.json could hold it
    config = ml_collections.ConfigDict(fields)
    with pytest.raises(UserError, match="config.train.drop_remainder"):
        config_utils.validate_config(config)


# -- data helpers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_examples,batch_size,drop_remainder,steps",
    [
        (23, 5, True, 4),
        (23, 5, False, 5),  # the remainder as a last, short batch
        (20, 5, False, 4),  # an exact multiple has no remainder: no empty last batch
        (20, 5, True, 4),
        (4, 5, True, 0),
        (4, 5, False, 1),
    ],
)
def test_steps_per_epoch_counts_the_remainder_only_when_there_is_one(
    num_examples, batch_size, drop_remainder, steps
):
    assert steps_per_epoch(num_examples, batch_size, drop_remainder) == steps


def test_shuffled_batches_resume_and_depend_only_on_seed_and_epoch():
    data = {"x": np.arange(23)}
    full = list(shuffled_batches(data, 5, seed=3, epoch=2))
    assert len(full) == 4 and all(len(b["x"]) == 5 for b in full)
    kept = list(shuffled_batches(data, 5, seed=3, epoch=2, drop_remainder=False))
    assert [b["weight"].sum() for b in kept] == [5, 5, 5, 5, 3]
    assert sorted(np.concatenate([b["x"][b["weight"] > 0] for b in kept])) == list(range(23))
    for a, b in zip(full, kept, strict=False):  # the same order, the remainder added at the end
        np.testing.assert_array_equal(a["x"], b["x"])
    tail = list(shuffled_batches(data, 5, seed=3, epoch=2, start=2))
    for a, b in zip(full[2:], tail, strict=True):
        np.testing.assert_array_equal(a["x"], b["x"])
    np.testing.assert_array_equal(epoch_permutation(3, 2, 23), epoch_permutation(3, 2, 23))
    assert not np.array_equal(epoch_permutation(3, 2, 23), epoch_permutation(3, 3, 23))
    # Each epoch (and each seed) has its own order.
    for other in ({"seed": 3, "epoch": 3}, {"seed": 4, "epoch": 2}):
        again = list(shuffled_batches(data, 5, **other))
        assert not np.array_equal(
            np.concatenate([b["x"] for b in full]), np.concatenate([b["x"] for b in again])
        )


def test_padded_batches_cover_every_example_once():
    data = {"x": np.arange(13), "y": np.arange(13) * 2}
    batches = list(padded_batches(data, 5))
    assert [b["x"].shape[0] for b in batches] == [5, 5, 5]
    weights = np.concatenate([b["weight"] for b in batches])
    xs = np.concatenate([b["x"] for b in batches])
    np.testing.assert_array_equal(xs[weights > 0], np.arange(13))
    assert weights.sum() == 13


def test_pad_batch_adds_weight_zero_rows():
    out = pad_batch({"x": np.ones((6, 2))}, 8)
    assert out["x"].shape == (8, 2) and out["weight"].tolist() == [1] * 6 + [0] * 2


# -- optimizers against Keras' formulas (computed by hand in NumPy) --------------------------------------


def _run_optimizer(name, grads, **overrides):
    opt = config_utils.engine_defaults().optimizer
    opt.name = name
    opt.update(overrides)
    tx = optim.make_optimizer(opt, total_steps=100)
    params = {"w": jnp.array([0.5, -1.0, 2.0], jnp.float32)}
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
        params = optax.apply_updates(params, updates)
    return np.asarray(params["w"], np.float64)


GRADS = [np.array([0.1, -2.0, 3e-4]), np.array([0.3, 1.0, -1e-4]), np.array([-0.2, 0.5, 2e-4])]


def test_rmsprop_matches_keras_formula():
    w, v = np.array([0.5, -1.0, 2.0]), np.zeros(3)
    lr, rho, eps = 1e-3, 0.9, 1e-7
    for g in GRADS:
        v = rho * v + (1 - rho) * g * g
        w = w - lr * g / np.sqrt(v + eps)  # Keras: epsilon inside the square root
    np.testing.assert_allclose(_run_optimizer("rmsprop", GRADS), w, rtol=1e-6, atol=1e-8)


def test_adam_matches_keras_formula():
    w, m, v = np.array([0.5, -1.0, 2.0]), np.zeros(3), np.zeros(3)
    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-7
    for t, g in enumerate(GRADS, start=1):
        alpha = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        m += (g - m) * (1 - b1)
        v += (g * g - v) * (1 - b2)
        w = w - alpha * m / (
            np.sqrt(v) + eps
        )  # Keras: epsilon outside sqrt(v), v not bias-corrected
    np.testing.assert_allclose(_run_optimizer("adam", GRADS), w, rtol=1e-6, atol=1e-8)


def test_sgd_momentum_adamw_and_clipping():
    w, vel = np.array([0.5, -1.0, 2.0]), np.zeros(3)
    for g in GRADS:
        vel = 0.9 * vel - 0.1 * g
        w = w + vel
    got = _run_optimizer("sgd", GRADS, learning_rate=0.1, momentum=0.9)
    np.testing.assert_allclose(got, w, rtol=1e-6)
    plain = _run_optimizer("adam", GRADS[:1])
    decayed = _run_optimizer("adamw", GRADS[:1], weight_decay=0.1)
    np.testing.assert_allclose(decayed, plain - 1e-3 * 0.1 * np.array([0.5, -1.0, 2.0]), rtol=1e-6)
    clipped = _run_optimizer("sgd", [np.array([30.0, 40.0, 0.0])], learning_rate=1.0, clip_norm=5.0)
    np.testing.assert_allclose(clipped, [0.5 - 3.0, -1.0 - 4.0, 2.0], rtol=1e-6)


def test_schedules():
    opt = config_utils.engine_defaults().optimizer
    opt.learning_rate, opt.schedule, opt.warmup_steps, opt.min_lr_ratio = (
        1.0,
        "warmup_cosine",
        10,
        0.1,
    )
    s = optim.make_schedule(opt, 110)
    assert float(s(0)) == 0.0 and float(s(5)) == pytest.approx(0.5)
    assert float(s(10)) == pytest.approx(1.0) and float(s(110)) == pytest.approx(0.1)
    opt.schedule = "cosine"
    s = optim.make_schedule(opt, 100)
    assert (
        float(s(0)) == 1.0
        and float(s(50)) == pytest.approx(0.55)
        and float(s(100)) == pytest.approx(0.1)
    )
    opt.schedule = "warmup_constant"
    s = optim.make_schedule(opt, 100)
    assert float(s(5)) == pytest.approx(0.5) and float(s(60)) == 1.0
    # decay_steps fixes the cosine's length (Keras' decay_steps, PyTorch's T_max), whatever the run's,
    # and the rate then holds its end value.
    opt.schedule, opt.decay_steps = "cosine", 40
    for total in (10, 100, 1000):
        s = optim.make_schedule(opt, total)
        assert float(s(20)) == pytest.approx(0.55) and float(s(40)) == pytest.approx(0.1)
        assert float(s(500)) == pytest.approx(0.1)
    opt.schedule = "warmup_cosine"
    s = optim.make_schedule(opt, 1000)
    assert float(s(5)) == pytest.approx(0.5) and float(s(10)) == pytest.approx(1.0)
    assert float(s(25)) == pytest.approx(0.55) and float(s(40)) == pytest.approx(0.1)


def test_warmup_cosine_decay_steps_include_the_warmup_unlike_keras():
    """`decay_steps` counts the warmup: Keras' `CosineDecay(0, decay_steps=D, alpha, warmup_target=lr,
    warmup_steps=W)` (and PyTorch's warmup then `T_max=D`) is `warmup_steps=W, decay_steps=W+D` here,
    as docs/training.md says (Keras' formula by hand)."""
    opt = config_utils.engine_defaults().optimizer
    opt.learning_rate, opt.schedule, opt.min_lr_ratio = 1.0, "warmup_cosine", 0.1
    w, d = 10, 30
    opt.warmup_steps, opt.decay_steps = w, w + d
    s = optim.make_schedule(opt, 1000)
    for t in (0, 5, 10, 17, 25, 39, 40, 55, 500):
        if t < w:
            keras = t / w
        else:
            keras = 0.9 * 0.5 * (1 + np.cos(np.pi * min(t - w, d) / d)) + 0.1
        assert float(s(t)) == pytest.approx(keras, rel=1e-5, abs=1e-7), t


def test_sgd_momentum_under_a_schedule_is_pytorchs_form_not_keras():
    """optim's docstring: SGD momentum is `v = μv + g; θ -= lr·v` (PyTorch's `SGD` with a scheduler),
    which under a decaying rate differs from Keras' `v = μv - lr·g; θ += v` (formulas by hand)."""
    opt = config_utils.engine_defaults().optimizer
    opt.name, opt.learning_rate, opt.momentum = "sgd", 0.1, 0.9
    opt.schedule, opt.min_lr_ratio, opt.decay_steps = "cosine", 0.1, len(GRADS)
    schedule = optim.make_schedule(opt, 100)
    w_torch = w_keras = np.array([0.5, -1.0, 2.0])
    v_torch = v_keras = np.zeros(3)
    for t, g in enumerate(GRADS):
        lr = float(schedule(t))
        v_torch = 0.9 * v_torch + g
        w_torch = w_torch - lr * v_torch
        v_keras = 0.9 * v_keras - lr * g
        w_keras = w_keras + v_keras
    got = _run_optimizer(
        "sgd",
        GRADS,
        learning_rate=0.1,
        momentum=0.9,
        schedule="cosine",
        min_lr_ratio=0.1,
        decay_steps=len(GRADS),
    )
    np.testing.assert_allclose(got, w_torch, rtol=1e-6)
    assert np.abs(got - w_keras).max() > 1e-3


def test_adam_and_rmsprop_use_the_configured_betas_rho_and_eps():
    """Keras' formulas (by hand) with non-default b1, b2, eps and rho: each value reaches the update."""
    w, m, v = np.array([0.5, -1.0, 2.0]), np.zeros(3), np.zeros(3)
    lr, b1, b2, eps = 1e-3, 0.8, 0.99, 1e-3
    for t, g in enumerate(GRADS, start=1):
        m += (g - m) * (1 - b1)
        v += (g * g - v) * (1 - b2)
        w = w - lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)
    got = _run_optimizer("adam", GRADS, b1=b1, b2=b2, eps=eps)
    np.testing.assert_allclose(got, w, rtol=1e-6, atol=1e-8)
    w, v = np.array([0.5, -1.0, 2.0]), np.zeros(3)
    for g in GRADS:
        v = 0.5 * v + 0.5 * g * g
        w = w - lr * g / np.sqrt(v + 1e-3)
    got = _run_optimizer("rmsprop", GRADS, rho=0.5, eps=1e-3)
    np.testing.assert_allclose(got, w, rtol=1e-6, atol=1e-8)


def test_rmsprop_momentum_and_sgd_nesterov_match_keras_under_a_constant_rate():
    """Keras RMSprop(momentum): `μ_t = μ·μ_{t-1} + lr·g/√(v+ε)`, `θ -= μ_t`; Keras SGD(nesterov):
    `v = μv - lr·g`, `θ += μv - lr·g` (by hand)."""
    lr, mu = 0.01, 0.9
    w, v, vel = np.array([0.5, -1.0, 2.0]), np.zeros(3), np.zeros(3)
    for g in GRADS:
        v = 0.9 * v + 0.1 * g * g
        vel = mu * vel + lr * g / np.sqrt(v + 1e-7)
        w = w - vel
    got = _run_optimizer("rmsprop", GRADS, learning_rate=lr, momentum=mu)
    np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-7)
    w, vel = np.array([0.5, -1.0, 2.0]), np.zeros(3)
    for g in GRADS:
        vel = mu * vel - 0.1 * g
        w = w + mu * vel - 0.1 * g
    got = _run_optimizer("sgd", GRADS, learning_rate=0.1, momentum=mu, nesterov=True)
    np.testing.assert_allclose(got, w, rtol=1e-6)


def test_clipping_applies_to_the_gradient_before_the_learning_rate():
    """Keras' `global_clipnorm`: the gradient [30, 40] (norm 50) is cut to norm 5, then scaled by lr."""
    got = _run_optimizer("sgd", [np.array([30.0, 40.0, 0.0])], learning_rate=0.1, clip_norm=5.0)
    np.testing.assert_allclose(got, [0.5 - 0.3, -1.0 - 0.4, 2.0], rtol=1e-6)


def test_schedules_of_a_run_no_longer_than_its_warmup_or_of_no_steps():
    """A warmup_cosine whose warmup fills the run (the engine warns of it) still rises linearly, and a
    cosine over 0 total steps is its start value: neither hands optax a decay of 0 steps."""
    opt = config_utils.engine_defaults().optimizer
    opt.learning_rate, opt.schedule, opt.warmup_steps = 1.0, "warmup_cosine", 10
    for total in (4, 10):
        s = optim.make_schedule(opt, total)
        assert float(s(5)) == pytest.approx(0.5) and float(s(10)) == pytest.approx(1.0)
    opt.schedule = "cosine"
    assert float(optim.make_schedule(opt, 0)(0)) == 1.0


def test_progress_bar_on_a_terminal_and_log_lines_otherwise(capsys, caplog):
    import logging

    from lstm_jax.logging_utils import Progress

    bar = Progress(total_steps=4, steps_per_epoch=4, num_epochs=1, use_bar=True)
    bar.start_epoch(0, 0, 0)
    for step in range(1, 5):
        bar.advance()
        bar.report(step, {"loss": 0.5, "accuracy": 0.75, "count": 8}, 123.0)
    bar.end_epoch()
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "4/4" in err and "loss=0.5" in err and "ex/s=123" in err
    lines = Progress(total_steps=4, steps_per_epoch=4, num_epochs=1, use_bar=False)
    lines.start_epoch(0, 0, 0)
    with caplog.at_level(logging.INFO):
        lines.report(2, {"loss": 0.5, "count": 8}, 50.0)
    assert any(
        "step 2/4: loss=0.5" in r.getMessage() and "ETA" in r.getMessage() for r in caplog.records
    )


def test_progress_log_line_gives_the_eta_of_the_steps_left_at_this_epochs_pace(monkeypatch, caplog):
    """The ETA is the steps left to the end of training at the pace measured since the epoch started
    (a resumed run's epoch starts at its checkpoint's step, not at 0), as h:mm:ss; the count is not a
    metric of the line; before a step is done the pace is unknown: ETA ?."""
    import types

    from lstm_jax import logging_utils

    now = [1000.0]
    monkeypatch.setattr(logging_utils, "time", types.SimpleNamespace(time=lambda: now[0]))
    progress = logging_utils.Progress(
        total_steps=10000, steps_per_epoch=5000, num_epochs=2, use_bar=False
    )
    progress.start_epoch(0, 100, 100)
    with caplog.at_level(logging.INFO):
        progress.report(100, {"loss": 0.5}, 0.0)
        now[0] += 100.0  # 100 steps in 100 s: 9800 s for the 9800 steps left
        progress.report(200, {"loss": 0.5, "accuracy": 0.87654, "count": 8}, 49.6)
    messages = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert messages == [
        "step 100/10000: loss=0.5, 0 examples/s, ETA ?",
        "step 200/10000: loss=0.5 accuracy=0.8765, 50 examples/s, ETA 2:43:20",
    ]


def test_atomic_write_leaves_the_old_file_whole_when_the_block_fails(tmp_path):
    """Every JSON, text and artefact the engine writes goes through `atomic_write`: readers see the old
    file or the new one, and a write that fails (a full disk, Ctrl-C) leaves the old one and no temp file."""
    from lstm_jax.logging_utils import atomic_write

    path = tmp_path / "results.json"
    path.write_text('{"accuracy": 0.87}\n')
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(str(path)) as f:
            f.write('{"accur')
            raise KeyboardInterrupt
    assert path.read_text() == '{"accuracy": 0.87}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    with atomic_write(str(path), "wb") as f:
        f.write(b"new\n")
    assert path.read_bytes() == b"new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_saved_results_of_a_workdir_without_a_finished_run_names_the_fix(tmp_path):
    with pytest.raises(UserError, match=r"results\.json is missing; train first with --workdir="):
        saved_results(str(tmp_path))


def _strict_json(text):
    """Parses `text` as strict JSON (jq's, JavaScript's): bare NaN / Infinity are refused."""

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_metrics_are_written_as_strict_json_and_read_back(tmp_path, monkeypatch, capsys):
    """A NaN metric (here the first validation loss) was written into results.json, the checkpoint's
    meta and config.json as Python's bare NaN, which strict parsers (jq, JavaScript) refuse. Now every
    file holds null for it, and what reads the files back (a resume's history and curves, a finished
    run's summary) takes the null."""
    from lstm_jax.tasks import classification

    config = ef.base_config(num_epochs=2)  # 5 steps an epoch
    config.train.unchecked = float("inf")  # a config field no check reads
    evaluate = train_mod._Engine.evaluate

    def nan_first(self, params, split):
        out = evaluate(self, params, split)
        return {**out, "loss": float("nan")} if split == "validation" and self.first else out

    monkeypatch.setattr(train_mod._Engine, "first", True, raising=False)
    monkeypatch.setattr(train_mod._Engine, "evaluate", nan_first)
    train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    monkeypatch.setattr(train_mod._Engine, "first", False, raising=False)
    config.train.num_epochs = 4  # resumed: the history comes back from the checkpoint's meta
    results = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert results["steps"] == 20 and (tmp_path / train_mod.CURVES_FILE).exists()
    on_disk = _strict_json((tmp_path / "results.json").read_text())
    assert on_disk["history"][0]["validation"]["loss"] is None
    assert on_disk["config"]["train"]["unchecked"] is None
    _strict_json((tmp_path / "config.json").read_text())
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        _strict_json(line)
    for meta in glob.glob(str(tmp_path / "checkpoints" / "*" / "meta" / "metadata")):
        _strict_json(open(meta).read())
    # A finished run re-run returns its saved results, and their summary reads the null.
    on_disk["metrics"]["final"]["validation"]["accuracy"] = None
    classification._print_summary(on_disk)
    assert "validation accuracy nan" in capsys.readouterr().out
    assert "loss=nan" in train_mod.format_metrics({"loss": None, "count": 3})
