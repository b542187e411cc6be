"""A full (or read-only) disk during a run: one `error:` line naming the file and what the same command does
next, nothing written before damaged, no half record left, the space of a failed checkpoint given back.

The disk is simulated by making the write path raise `OSError(errno.ENOSPC, ...)` as a full disk does (a
write through a file object names no file), so these run without root or a small file system.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from lstm_jax import train as train_mod
from lstm_jax.logging_utils import (
    MetricsLogger,
    atomic_write,
    read_event_scalars,
    read_jsonl,
)

REPO = Path(__file__).resolve().parents[1]
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


def test_naming_the_lock_holder_on_a_full_disk_names_the_lock_file(tmp_path, monkeypatch):
    """The first thing a run writes: its failure named no file, and closing the lock raised it again."""
    lock = train_mod._lock_workdir(str(tmp_path))
    monkeypatch.setattr(train_mod.os, "write", _full)
    with pytest.raises(OSError) as info:
        train_mod._name_lock_holder(lock)
    assert info.value.filename == os.path.join(str(tmp_path), train_mod.LOCK_FILE)
    lock.close()  # nothing left buffered to fail again
