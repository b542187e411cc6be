"""What a run leaves in its workdir and shows while it runs.

* `MetricsLogger`: one JSON line per logged train interval / evaluation in ``metrics.jsonl`` and the same
  scalars in TensorBoard event files under ``<workdir>/tensorboard`` (written by `EventFileWriter`, a
  dependency-free writer of the TFRecord/Event format, so a run does not pay TensorFlow's import time).
  A resumed run first sets aside the records written after its checkpoint (`MetricsLogger.restart_at`),
  so that both keep one history.
* `Progress`: a tqdm bar per epoch on a terminal (step, loss, metrics, examples/s, ETA), otherwise one absl
  log line per logging interval.
* `write_json` / `read_json`: atomic JSON files (``results.json``, vocabularies).

Every JSON file and line written here is strict JSON (`json_ready`): a non-finite number (a NaN metric of
an evaluation that measured nothing, a diverged loss) is written as ``null``, never as Python's bare
``NaN`` / ``Infinity``, which jq, JavaScript and other strict parsers refuse.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import struct
import sys
import time
from collections.abc import Iterator, Mapping
from typing import IO, Any

from absl import logging

from lstm_jax.errors import UserError

__all__ = [
    "EventFileWriter",
    "read_event_scalars",
    "read_run_scalars",
    "MetricsLogger",
    "Progress",
    "atomic_write",
    "os_error_naming",
    "write_json",
    "read_json",
    "json_ready",
    "read_jsonl",
    "read_lines",
    "parse_record",
    "json_int",
    "json_number",
    "ORPHANED_FILE",
    "format_metrics",
]

# ---------------------------------------------------------------------------------------------------------
# TensorBoard event files: TFRecord framing (length, masked CRC-32C) around serialized `tensorflow.Event`
# protos. Only the fields a scalar summary needs are encoded.
# ---------------------------------------------------------------------------------------------------------


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        bits = n & 0x7F
        n >>= 7
        if n:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


# `SessionLog.status` START (tensorflow/core/util/event.proto: Event.session_log is field 7, its status
# field 1).
_SESSION_START = 1


def _event(
    wall_time: float,
    step: int,
    *,
    file_version: str | None = None,
    scalars=None,
    session_start: bool = False,
) -> bytes:
    msg = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
    if file_version is not None:
        msg += _field_bytes(3, file_version.encode())
    if session_start:
        msg += _field_bytes(7, b"\x08" + _varint(_SESSION_START))
    if scalars:
        values = b"".join(
            _field_bytes(1, _field_bytes(1, tag.encode()) + b"\x15" + struct.pack("<f", value))
            for tag, value in scalars.items()
        )
        msg += _field_bytes(5, values)
    return msg


class EventFileWriter:
    """Appends scalar summaries to a TensorBoard event file in `logdir` (created if needed)."""

    def __init__(self, logdir: str) -> None:
        os.makedirs(logdir, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = os.path.join(logdir, name)
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 (closed in close())
        self._write(_event(time.time(), 0, file_version="brain.Event:2"))

    def _write(self, record: bytes) -> None:
        header = struct.pack("<Q", len(record))
        _append_whole(
            self._file,
            header
            + struct.pack("<I", _masked_crc(header))
            + record
            + struct.pack("<I", _masked_crc(record)),
            self.path,
        )

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Writes `{tag: value}` at `step` (non-finite values are written as they are)."""
        self._write(
            _event(time.time(), int(step), scalars={k: float(v) for k, v in values.items()})
        )

    def session_start(self, step: int) -> None:
        """Writes a ``SessionLog`` START event at `step`: TensorBoard then drops every value it read before
        it (in this and earlier event files of the directory) at a step >= `step`, TensorFlow's way of
        discarding what a crashed run logged after its last checkpoint (its ``purge_orphaned_data``)."""
        self._write(_event(time.time(), int(step), session_start=True))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def _append_whole(f: Any, data: bytes, path: str) -> None:
    """Appends `data` to the unbuffered binary file `f` whole or not at all: a write that fails part way (a
    full disk) is cut back off, so the file never keeps half a record that later records would follow, and
    the OSError names `path`."""
    start = f.seek(0, os.SEEK_END)
    view = memoryview(data)
    try:
        while view:
            view = view[f.write(view) :]
    except OSError as e:
        with contextlib.suppress(OSError):
            os.ftruncate(f.fileno(), start)
        raise os_error_naming(e, path) from e


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def _parse_fields(buf: bytes) -> Iterator[tuple[int, Any]]:
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        elif wire == 2:
            n, pos = _read_varint(buf, pos)
            value, pos = buf[pos : pos + n], pos + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, value


def read_event_scalars(path: str) -> list[tuple[int, str, float]]:
    """Reads `(step, tag, value)` scalars back from an event file, checking every CRC."""
    return [(step, tag, value) for step, tag, value in _read_events(path) if tag is not None]


def read_run_scalars(logdir: str) -> list[tuple[int, str, float]]:
    """The `(step, tag, value)` scalars of all event files in `logdir` as TensorBoard shows them: the files
    in name (= start time) order, a ``SessionLog`` START at step s dropping the values read before it
    at steps >= s (`EventFileWriter.session_start`)."""
    out: list[tuple[int, str, float]] = []
    for name in sorted(os.listdir(logdir)):
        if ".tfevents." not in name:
            continue
        for step, tag, value in _read_events(os.path.join(logdir, name)):
            if tag is None:
                out = [x for x in out if x[0] < step]
            else:
                out.append((step, tag, value))
    return out


def _read_events(path: str) -> list[tuple[int, str | None, float]]:
    """`(step, tag, value)` per scalar and `(step, None, nan)` per SessionLog START, in file order."""
    with open(path, "rb") as f:
        data = f.read()
    pos, out = 0, []
    while pos < len(data):
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        if crc != _masked_crc(header):
            raise ValueError(f"{path}: corrupt record header at byte {pos}")
        record = data[pos + 12 : pos + 12 + length]
        (crc,) = struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])
        if crc != _masked_crc(record):
            raise ValueError(f"{path}: corrupt record at byte {pos}")
        pos += 16 + length
        step = 0
        for number, value in _parse_fields(record):
            if number == 2:
                step = value
            elif number == 5:
                for _, v in _parse_fields(value):
                    fields = dict(_parse_fields(v))
                    out.append((step, fields[1].decode(), struct.unpack("<f", fields[2])[0]))
            elif number == 7 and dict(_parse_fields(value)).get(1) == _SESSION_START:
                out.append((step, None, math.nan))
    return out


# ---------------------------------------------------------------------------------------------------------
# metrics.jsonl + TensorBoard
# ---------------------------------------------------------------------------------------------------------


class MetricsLogger:
    """Writes logged scalars to ``<workdir>/metrics.jsonl`` and TensorBoard (only on process 0).

    Each call to `write` appends one line ``{"kind": kind, "step": step, "time": unix_seconds, ...}``;
    TensorBoard gets every numeric value as tag ``<kind>/<name>``.
    """

    def __init__(self, workdir: str, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.workdir = workdir
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._jsonl: Any = None
        self._tb: EventFileWriter | None = None

    def _open(self) -> None:
        """The files are made at the first write: a run that stops before it (an error, a finished run
        re-run) adds no empty metrics file or TensorBoard events file."""
        if self._jsonl is None:
            os.makedirs(self.workdir, exist_ok=True)
            self._jsonl = open(self.path, "ab", buffering=0)  # noqa: SIM115
            self._tb = EventFileWriter(os.path.join(self.workdir, "tensorboard"))

    def restart_at(
        self, step: int, *, redo_final: bool = False, lines: list[bytes] | None = None
    ) -> list[dict[str, Any]]:
        """Before the first record of a run that goes on from `step` (its checkpoint's; 0 for a start again
        from scratch): makes both logs hold one history again. Returns the records set aside.

        A run that stopped without a checkpoint of its last steps (a crash, a kill -9, a full disk) wrote
        records past `step` that the resumed run writes again. Those lines (with ``redo_final``, when the
        final evaluation is done again, also the ``final_*`` records at `step`; and any line that does not
        parse) move verbatim to ``metrics.orphaned.jsonl`` beside it, kept, not deleted: first copied
        there, then ``metrics.jsonl`` is rewritten without them through a temp file renamed over it
        (`atomic_write`), so a failure at any point leaves both files whole, every record in at least one
        of them, and a retry copies none twice. A file without such records is not touched (but for a
        newline added after a last record that lost its own, which the next record would follow). TensorBoard
        gets a ``SessionLog`` START at ``step + 1`` (`EventFileWriter.session_start`), after which it shows
        no value the earlier event files hold past `step`; when ``final_*`` records at `step` itself were set
        aside (a final evaluation done again), the START is at `step`, which drops those too, and the
        records kept at `step` (the last train and evaluation ones) are written to TensorBoard again, so
        that it shows each value once, as a run that was never stopped does. `lines`: the file's lines as the caller already
        read them (`read_lines`, None when it is absent), so that it is not read again; by default it is
        read here.
        """
        if not self.enabled:
            return []
        if self._jsonl is not None:  # reopened at the next write: the path may name a new file then
            self._jsonl.close()
            self._jsonl = None
        kept, orphaned, records = [], [], []
        if lines is None:
            lines = read_lines(self.path)
        if lines is not None:
            for line in lines:
                record = parse_record(line)
                if record is None and not line.strip():
                    kept.append(line)
                elif record is None or _past(record, step, redo_final):
                    orphaned.append(line if line.endswith(b"\n") else line + b"\n")
                    records.append(record or {"line": line.decode("utf-8", "replace")})
                else:
                    kept.append(line)
        # A whole record that lost only its newline (a power cut): the next one must not follow it on its line.
        lost_newline = bool(kept) and not kept[-1].endswith(b"\n") and bool(kept[-1].strip())
        if lost_newline:
            kept[-1] += b"\n"
        if orphaned:
            aside = os.path.join(self.workdir, ORPHANED_FILE)
            before = b""
            if os.path.exists(aside):
                with open(aside, "rb") as f:
                    before = f.read()
            have = set(before.splitlines(keepends=True))
            new = b"".join(line for line in orphaned if line not in have)
            if new:
                if before and not before.endswith(b"\n"):
                    before += b"\n"
                with atomic_write(aside, "wb", durable=True) as f:
                    f.write(before + new)
        # After the copy aside: a failure here leaves every record somewhere.
        if orphaned or lost_newline:
            with atomic_write(self.path, "wb", durable=True) as f:
                f.write(b"".join(kept))
        self._open()
        assert self._tb is not None
        if any(r.get("step") == step for r in records):  # final_* records at `step`, done again
            self._tb.session_start(int(step))
            for line in kept:
                record = parse_record(line)
                if record is not None and record["step"] == step:
                    values = {k: v for k, v in record.items() if k not in ("kind", "step", "time")}
                    numeric = _numeric(str(record.get("kind")), values, null=math.nan)
                    if numeric:
                        self._tb.scalars(step, numeric)
        else:
            self._tb.session_start(int(step) + 1)
        return records

    def write(self, kind: str, step: int, values: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        self._open()
        assert self._tb is not None
        line = {"kind": kind, "step": int(step), "time": round(time.time(), 3)}
        line.update(json_ready(dict(values)))
        # Whole lines only: a full disk leaves no half line for the next run's lines to follow.
        _append_whole(self._jsonl, (json.dumps(line, allow_nan=False) + "\n").encode(), self.path)
        numeric = _numeric(kind, values)
        if numeric:
            self._tb.scalars(step, numeric)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


# Beside metrics.jsonl: the records a resumed run set aside, written after its checkpoint by a run that
# then stopped without saving them (`MetricsLogger.restart_at`).
ORPHANED_FILE = "metrics.orphaned.jsonl"


def _numeric(kind: str, values: Mapping[str, Any], null: float | None = None) -> dict[str, float]:
    """The TensorBoard scalars of a record: ``{"<kind>/<name>": value}`` of its numbers (a null, which
    stands for a non-finite number in metrics.jsonl, as `null` when that is given)."""
    out = {}
    for k, v in values.items():
        if v is None and null is not None:
            out[f"{kind}/{k}"] = null
        elif json_number(v):
            out[f"{kind}/{k}"] = float(v)
    return out


def json_int(v: Any) -> bool:
    """Whether a value read from JSON is an integer (not true/false, which Python counts as ints)."""
    return isinstance(v, int) and not isinstance(v, bool)


def json_number(v: Any) -> bool:
    """Whether a value read from JSON is a number (an int or a float, not true/false)."""
    return isinstance(v, int | float) and not isinstance(v, bool)


def parse_record(line: bytes) -> dict[str, Any] | None:
    """The record of a metrics.jsonl line, None for one that does not parse or has no integer step."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        return None
    return record


def _past(record: Mapping[str, Any], step: int, redo_final: bool) -> bool:
    if record["step"] > step:
        return True
    return redo_final and str(record.get("kind")).startswith("final_") and record["step"] >= step


def read_lines(path: str) -> list[bytes] | None:
    """The lines of the file at `path` as bytes, each with its line end (None when there is no file)."""
    try:
        with open(path, "rb") as f:
            return f.read().splitlines(keepends=True)
    except FileNotFoundError:
        return None


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """All lines of a JSONL file as dicts (empty list if it does not exist)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", *, durable: bool = False) -> Iterator[IO[Any]]:
    """Opens a temp file beside `path` (`mode` "w" text as UTF-8, or "wb") and renames it onto `path` when
    the block ends without an error, so a crash never leaves half a file and readers see the old or the new
    file; a block that raises leaves `path` as it was and removes the temp file. The directory must exist.
    `durable`: the temp file is fsynced before the rename and the directory after it, so that a power
    cut cannot leave `path` empty either (for a file rewritten in place of one that holds data)."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            _fsync_directory(os.path.dirname(os.path.abspath(path)))
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError) and e.errno and not e.filename:
            # A write through the file object (a full disk) names no file: name the one being written.
            raise os_error_naming(e, path) from e
        raise


def _fsync_directory(path: str) -> None:
    with contextlib.suppress(OSError):  # not every system opens directories
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def os_error_naming(e: OSError, path: str) -> OSError:
    """`e` (a failed write, which names no file) as the same kind of OSError naming `path` (the file the
    user knows), for the CLI's one-line error; raise it `from e`."""
    return OSError(e.errno, e.strerror or os.strerror(e.errno), path)


def write_json(path: str, data: Any) -> None:
    """Writes strict JSON (`json_ready`: non-finite numbers as null) atomically (`atomic_write`), creating
    the directory if needed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    text = json.dumps(json_ready(data), indent=2, sort_keys=False, allow_nan=False)
    with atomic_write(path) as f:
        f.write(text + "\n")


def json_ready(v: Any) -> Any:
    """`v` with what strict JSON cannot hold replaced: a non-finite float (NaN, +-Infinity, NumPy's
    too) becomes None (``null``), NumPy scalars and arrays become Python numbers and lists, tuples
    lists, and any other object its `str`. Readers of the files take ``null`` for a number that was
    not finite."""
    if isinstance(v, bool | int | str) or v is None:
        return v
    if isinstance(v, float):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, Mapping):
        return {
            (k if isinstance(k, str | int | float | bool) or k is None else str(k)): json_ready(x)
            for k, x in v.items()
        }
    if isinstance(v, list | tuple):
        return [json_ready(x) for x in v]
    try:
        import numpy as np

        if isinstance(v, np.generic | np.ndarray):
            return json_ready(v.tolist())
    except ImportError:  # pragma: no cover
        pass
    return str(v)


def read_json(path: str) -> Any:
    """The parsed JSON file at `path`; `UserError` naming it when it does not parse (a damaged or
    hand-edited workdir file)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(
            f"{path} is not valid JSON ({e.msg}, line {e.lineno} column {e.colno}); the file is"
            " damaged: restore it, or train again in a new --workdir"
        ) from None


def format_metrics(values: Mapping[str, float | None], digits: int = 4) -> str:
    """``loss=0.1234 accuracy=0.9000`` (count excluded); a value read back as null from a JSON file
    (`json_ready`: it was not finite) shows as ``nan``."""
    return " ".join(
        f"{k}={math.nan if v is None else v:.{digits}g}" for k, v in values.items() if k != "count"
    )


# ---------------------------------------------------------------------------------------------------------
# Progress: tqdm on a terminal, log lines otherwise.
# ---------------------------------------------------------------------------------------------------------


class Progress:
    """Per-epoch progress: a tqdm bar when stderr is a terminal, else absl log lines at log intervals."""

    def __init__(
        self,
        *,
        total_steps: int,
        steps_per_epoch: int,
        num_epochs: int,
        enabled: bool = True,
        use_bar: bool | None = None,
    ) -> None:
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.num_epochs = num_epochs
        self.enabled = enabled
        self.use_bar = enabled and (sys.stderr.isatty() if use_bar is None else use_bar)
        self._bar = None
        self._start_time = time.time()
        self._start_step = 0

    def start_epoch(self, epoch: int, batch_index: int, step: int) -> None:
        self._start_time, self._start_step = time.time(), step
        if self.use_bar:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.steps_per_epoch,
                initial=batch_index,
                desc=f"epoch {epoch + 1}/{self.num_epochs}",
                unit="step",
                dynamic_ncols=True,
                leave=True,
            )

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def report(self, step: int, values: Mapping[str, float], examples_per_s: float) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            post = {k: f"{v:.4g}" for k, v in values.items() if k != "count"}
            post["ex/s"] = f"{examples_per_s:.0f}"
            self._bar.set_postfix(post, refresh=False)
            return
        done = step - self._start_step
        elapsed = time.time() - self._start_time
        eta = (self.total_steps - step) * elapsed / done if done > 0 else float("nan")
        logging.info(
            "step %d/%d: %s, %.0f examples/s, ETA %s",
            step,
            self.total_steps,
            format_metrics(values),
            examples_per_s,
            _hms(eta),
        )

    def end_epoch(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
