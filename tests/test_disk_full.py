"""A full (or read-only) disk during a run: one `error:` line naming the file and what the same command does
next, nothing written before damaged, no half record left, the space of a failed checkpoint given back.

The disk is simulated by making the write path raise `OSError(errno.ENOSPC, ...)` as a full disk does (a
write through a file object names no file), so these run without root or a small file system.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import textwrap

import engine_fixtures as ef
import numpy as np
import pytest

from lstm_jax import logging_utils
from lstm_jax import train as train_mod
from lstm_jax.checkpoint import CheckpointStore
from lstm_jax.errors import UserError
from lstm_jax.logging_utils import (
    MetricsLogger,
    atomic_write,
    read_event_scalars,
    read_jsonl,
)
from lstm_jax.train import train_and_evaluate

FULL = os.strerror(errno.ENOSPC)


def _full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, FULL)  # as a write through a file object reports it: no file name


def test_atomic_write_names_the_file_a_full_disk_stopped(tmp_path):
    """A write through the file object fails naming no file (the CLI's line then named none): the error
    names the file being written, and the old file is left whole."""
    path = tmp_path / "results.json"
    path.write_text('{"accuracy": 0.87}\n')
    with pytest.raises(OSError) as info:
        with atomic_write(str(path)) as f:
            f.write('{"accur')
            _full()
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert path.read_text() == '{"accuracy": 0.87}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    with pytest.raises(OSError) as info:
        with atomic_write(str(tmp_path / "curves.png"), "wb"):
            _full()
    assert info.value.filename == str(tmp_path / "curves.png")


class _FailingFile:
    """A file whose next write stores its first `room` bytes (None: all) and then fails with ENOSPC, as a
    write that fills the disk part way does."""

    def __init__(self, real, room: int | None) -> None:
        self._real, self._room = real, room

    def __getattr__(self, name):
        return getattr(self._real, name)

    def write(self, data):
        if self._room is None:
            return self._real.write(data)
        part = data[: self._room]
        if len(part):
            self._room -= len(part)
            self._real.write(part)
            self._real.flush()
        if len(part) < len(data):
            raise OSError(errno.ENOSPC, FULL)
        return len(part)


class _ShortWrites:
    """A file that stores at most `most` bytes a write and returns how many, as a write of a regular file
    may when the disk is nearly full (the next write then fails, or goes on)."""

    def __init__(self, real, most: int) -> None:
        self._real, self._most = real, most

    def __getattr__(self, name):
        return getattr(self._real, name)

    def write(self, data):
        return self._real.write(data[: self._most])


def test_metrics_logger_writes_the_rest_of_a_short_write(tmp_path):
    """A write that stores part of a record and returns its length is followed by writes of the rest:
    no record is left cut, neither in metrics.jsonl nor in the TensorBoard file."""
    logger = MetricsLogger(str(tmp_path))
    logger.write("train", 1, {"loss": 1.5})
    logger._jsonl = _ShortWrites(logger._jsonl, 7)
    logger._tb._file = _ShortWrites(logger._tb._file, 5)
    logger.write("train", 2, {"loss": 1.25})
    tb_path = logger._tb.path
    logger.close()
    assert [(r["step"], r["loss"]) for r in read_jsonl(logger.path)] == [(1, 1.5), (2, 1.25)]
    assert [(s, v) for s, _, v in read_event_scalars(tb_path)] == [(1, 1.5), (2, 1.25)]


def test_metrics_logger_leaves_no_half_record_and_names_the_file(tmp_path):
    """The disk filling in the middle of a metrics.jsonl line or a TensorBoard record: the partial write
    is cut back off (the next run's records would follow half a line, which no JSON reader parses, or half
    an event, which breaks the CRC framing), and the error names the file."""
    logger = MetricsLogger(str(tmp_path))
    logger.write("train", 1, {"loss": 1.5})
    logger._jsonl = _FailingFile(logger._jsonl, room=10)
    with pytest.raises(OSError) as info:
        logger.write("train", 2, {"loss": 1.25})
    assert info.value.errno == errno.ENOSPC and info.value.filename == logger.path
    logger._jsonl = logger._jsonl._real
    assert logger._tb is not None
    tb_path = logger._tb.path
    logger._tb._file = _FailingFile(logger._tb._file, room=12)
    logger._jsonl = _FailingFile(logger._jsonl, room=None)  # this line fits; the event does not
    with pytest.raises(OSError) as info:
        logger.write("train", 3, {"loss": 1.0})
    assert info.value.filename == tb_path
    logger._tb._file = logger._tb._file._real
    logger._jsonl = logger._jsonl._real
    logger.write(
        "resume", 3, {"from_step": 3}
    )  # space freed: the next run's records follow whole ones
    logger.close()
    assert [(r["kind"], r["step"]) for r in read_jsonl(logger.path)] == [
        ("train", 1),
        ("train", 3),
        ("resume", 3),
    ]
    assert [(s, tag) for s, tag, _ in read_event_scalars(tb_path)] == [
        (1, "train/loss"),
        (3, "resume/from_step"),
    ]


def test_a_failed_checkpoint_save_gives_its_space_back_and_keeps_the_earlier_one(
    tmp_path, monkeypatch
):
    """The disk filling while Orbax writes a checkpoint: its temporary folder (which can hold most of a
    checkpoint) is deleted at once rather than at the next start, so freeing space is not eaten by it; the
    earlier checkpoint is the latest and restores."""
    config = ef.base_config(num_steps=10, eval_every_steps=5)
    workdir = tmp_path / "run"
    task = ef.classification_task(config)
    real_save = CheckpointStore.save

    def save(self, step, state, meta, *, improvement=-1):
        if step == 10:

            def tensorstore_write(*args, **kwargs):
                os.makedirs(os.path.join(self.directory, "10.orbax-checkpoint-tmp", "state"))
                with open(
                    os.path.join(self.directory, "10.orbax-checkpoint-tmp", "state", "d"), "w"
                ) as f:
                    f.write("x" * 1000)
                raise ValueError(
                    "RESOURCE_EXHAUSTED: Error writing file: No space left on device [OS error: 28]"
                )

            monkeypatch.setattr(self._manager, "save", tensorstore_write)
        return real_save(self, step, state, meta, improvement=improvement)

    monkeypatch.setattr(CheckpointStore, "save", save)
    with pytest.raises(OSError) as info:
        train_and_evaluate(config, str(workdir), task)
    assert info.value.errno == errno.ENOSPC
    assert info.value.resume_hint == (
        "and once that is done the same command resumes from the checkpoint of step 5 in"
        f" {workdir / 'checkpoints'}"
    )
    assert sorted(os.listdir(workdir / "checkpoints")) == ["5"]
    monkeypatch.undo()
    results = train_and_evaluate(config, str(workdir), ef.classification_task(config))
    assert results["steps"] == 10
    kinds = [(r["kind"], r["step"]) for r in read_jsonl(str(workdir / "metrics.jsonl"))]
    assert ("resume", 5) in kinds


def test_a_save_stopped_by_a_second_ctrl_c_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    """The second Ctrl-C (KeyboardInterrupt at once) while Orbax writes a checkpoint: its temporary folder
    was left behind, and nothing ever removed it (the resumed run saves other steps), so it held most of
    a checkpoint's space for good. Now it is deleted as a failed save's is; the earlier one is intact."""
    store = CheckpointStore(str(tmp_path), keep=3)
    store.save(4, {"w": np.ones(3, np.float32)}, {"step": 4})
    partial = os.path.join(store.directory, "7.orbax-checkpoint-tmp")

    def interrupted_write(*args, **kwargs):
        os.makedirs(os.path.join(partial, "state"))
        with open(os.path.join(partial, "state", "d"), "w") as f:
            f.write("x" * 1000)
        raise KeyboardInterrupt

    monkeypatch.setattr(store._manager, "save", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        store.save(7, {"w": np.zeros(3, np.float32)}, {"step": 7})
    monkeypatch.undo()
    assert sorted(os.listdir(store.directory)) == ["4"]
    assert store.all_steps() == [4]
    store.close()


def test_a_disk_without_room_for_one_checkpoint_is_refused_before_training(tmp_path, monkeypatch):
    """A run on a (nearly) full disk would train until its first save and fail there, steps thrown away:
    it is refused before training, naming the workdir, the space free and needed, and the fix; a resumed
    run's need is its checkpoint's size."""
    config = ef.base_config(num_steps=10, eval_every_steps=5)
    workdir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):  # stopped after its checkpoint of step 5
        train_and_evaluate(config, str(workdir), ef.classification_task(config, stop_at=7))
    real = os.statvfs

    class Full:
        f_bavail, f_frsize = 2, 1024

    monkeypatch.setattr(train_mod.os, "statvfs", lambda p: Full())
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()}
    with pytest.raises(UserError) as info:
        train_and_evaluate(config, str(workdir), ef.classification_task(config))
    message = str(info.value)
    assert message.startswith(f"{workdir} is on a disk with 2 KB free, less than one checkpoint")
    # Freeing space resumes the run; another --workdir is a new run (the message once said it resumed).
    assert (
        "free some space (the same command then resumes from the checkpoint of step 5) or pass a"
        " --workdir on another disk (a new run there, from step 0)"
    ) in message
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()} == before
    with pytest.raises(
        UserError, match=r"free some space \(the same command then starts training from step 0\)"
    ):
        train_and_evaluate(config, str(tmp_path / "new"), ef.classification_task(config))
    assert not (tmp_path / "new").exists()  # a new workdir refused is not left behind, empty
    monkeypatch.setattr(train_mod.os, "statvfs", real)
    assert train_and_evaluate(config, str(workdir), ef.classification_task(config))["steps"] == 10


def test_naming_the_lock_holder_on_a_full_disk_names_the_lock_file(tmp_path, monkeypatch):
    """The first thing a run writes: its failure named no file, and closing the lock raised it again."""
    lock = train_mod._lock_workdir(str(tmp_path))
    monkeypatch.setattr(train_mod.os, "write", _full)
    with pytest.raises(OSError) as info:
        train_mod._name_lock_holder(lock)
    assert info.value.filename == os.path.join(str(tmp_path), train_mod.LOCK_FILE)
    lock.close()  # nothing left buffered to fail again


MAIN = textwrap.dedent(
    """
    import errno, logging, os, sys
    from absl import logging as absl_logging
    from lstm_jax import cli

    def full(config, workdir):
        # What a checkpoint save on a full disk printed around its one line: Orbax's worker thread logs
        # the exception it re-raises, and TensorStore's callbacks hit the closed event loop.
        record = logging.LogRecord(
            "absl", logging.ERROR, "/site-packages/orbax/checkpoint/_src/futures/future.py", 387,
            "[process=0][thread=t][operation_id=1] _SignalingThread.run() raised an exception: %s",
            ("RESOURCE_EXHAUSTED: No space left on device",), None,
        )
        absl_logging.get_absl_handler().handle(record)
        import asyncio, gc
        loop = asyncio.new_event_loop()
        loop.close()

        class Callback:  # raising where Python can only report it to sys.unraisablehook
            def __del__(self):
                loop.call_soon_threadsafe(print)

        Callback()
        gc.collect()
        e = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), workdir + "/checkpoints")
        e.resume_hint = "and once that is done the same command resumes from step 4"
        raise e

    if __name__ == "__main__":
        cli.run({"full": full})
    """
)


def test_a_full_disk_during_a_checkpoint_is_one_line_without_orbax_noise(tmp_path):
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    proc = ef.run_cli_script(tmp_path, MAIN, "--config=cfg.py", f"--workdir={workdir}")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "_SignalingThread" not in proc.stderr, proc.stderr
    assert "Event loop is closed" not in proc.stderr, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert lines == [
        f"error: {workdir}/checkpoints: {FULL}; the disk is full; free some space or pass a --workdir"
        " on another disk; and once that is done the same command resumes from step 4 (what was"
        f" already written in {workdir} is intact: files are written whole or not at all)"
    ]


def test_results_json_on_a_full_disk_names_it_and_the_rerun_finishes(tmp_path, monkeypatch):
    """The disk filling after the last checkpoint (results.json, the curves' PNG): the error names the
    file and the step the same command goes on from; it then writes the results without training."""
    config = ef.base_config(num_steps=5, eval_every_steps=5)
    workdir = tmp_path / "run"
    real = logging_utils.atomic_write

    @contextlib.contextmanager
    def atomic_write_full(path, mode="w"):
        with real(path, mode) as f:
            yield f
            if path.endswith("results.json"):
                _full()  # the disk filled while results.json was written

    monkeypatch.setattr(logging_utils, "atomic_write", atomic_write_full)
    with pytest.raises(OSError) as info:
        train_and_evaluate(config, str(workdir), ef.classification_task(config))
    assert info.value.filename == str(workdir / "results.json")
    assert "resumes from the checkpoint of step 5" in info.value.resume_hint
    assert not (workdir / "results.json").exists()
    monkeypatch.undo()

    class LittleFree:  # less than a checkpoint, which a run that only writes its results needs not
        f_bavail, f_frsize = 1, 1024

    monkeypatch.setattr(train_mod.os, "statvfs", lambda p: LittleFree())
    results = train_and_evaluate(config, str(workdir), ef.classification_task(config))
    assert results["steps"] == 5
    assert json.loads((workdir / "results.json").read_text())["steps"] == 5
