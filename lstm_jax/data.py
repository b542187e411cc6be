"""Dataset loaders: local files first, TFDS when online; plain Python/NumPy out, clear errors in.

Every loader returns `(data, info)`: `data` is plain Python (str, lists, dicts) or NumPy, `info` a
small JSON-serialisable dict (`source`: the path read or `"tfds:<name>"`, plus counts) for
results.json.

Where the data comes from (same preprocessing for every source):
  1. an explicit path (`--config.data.path=...`),
  2. the copy under `$LSTM_JAX_DATA` (see `/work/shared/data/README.md` for the layout),
  3. TFDS (`tiny_shakespeare`, `imdb_reviews` only), after a 3-second reachability check, because an
     offline `tfds.load` retries for minutes before failing.
With none of them a `UserError` names both fixes.
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import os
import re
import stat
import sys
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lstm_jax.errors import UserError

DATA_ENV = "LSTM_JAX_DATA"
TFDS_PROBE_URL = "https://storage.googleapis.com/tfds-data/"  # TFDS tries GCS before the source

# LIAR's six PolitiFact verdicts, ordered from least to most true (index = 6-way class id).
LIAR_LABELS: tuple[str, ...] = (
    "pants-fire",
    "false",
    "barely-true",
    "half-true",
    "mostly-true",
    "true",
)
# Binary LIAR label: 1 = fake for {pants-fire, false, barely-true}, 0 = real (the staged CSV's
# `binary_label` convention; same 1 = fake coding as the Kaggle fake-news `label`).
LIAR_FAKE = frozenset(LIAR_LABELS[:3])


# --------------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------------


def data_root() -> Path | None:
    """`$LSTM_JAX_DATA` as a Path, or None when unset/empty."""
    root = os.environ.get(DATA_ENV)
    return Path(root) if root else None


def _missing_message(what: str, default_relative: str, tfds_name: str | None) -> str:
    root = data_root()
    looked = f"{root / default_relative}" if root else f"$LSTM_JAX_DATA/{default_relative}, unset"
    msg = (
        f"no {what} found (looked for {looked}); "
        f"pass --config.data.path=/path/to/{default_relative} "
        f"or export LSTM_JAX_DATA=/path/to/data (the folder that holds {default_relative})"
    )
    if tfds_name:
        msg += f"; TFDS '{tfds_name}' needs network access, which is not available"
    return msg


def resolve_path(
    configured_path: str | os.PathLike | None,
    default_relative: str,
    *,
    what: str = "dataset",
    tfds_name: str | None = None,
) -> Path:
    """The path to read: `configured_path` if given, else `$LSTM_JAX_DATA/<default_relative>`.

    An explicit path that does not exist is an error naming it; with no explicit path and no copy
    under `$LSTM_JAX_DATA`, the error names both fixes (and that TFDS needs network access, when
    `tfds_name` says the set is TFDS-backed).
    """
    if configured_path:
        p = Path(configured_path).expanduser()
        if not p.exists():
            raise UserError(
                f"{p}: {what} not found; fix --config.data.path or leave it empty to use "
                f"$LSTM_JAX_DATA/{default_relative}"
            )
        return p
    root = data_root()
    if root is not None and (root / default_relative).exists():
        return root / default_relative
    raise UserError(_missing_message(what, default_relative, tfds_name))


def _local_or_none(configured_path: str | os.PathLike | None, default_relative: str) -> Path | None:
    """Like `resolve_path` but None (instead of an error) when nothing local exists."""
    if configured_path:
        return resolve_path(configured_path, default_relative)
    root = data_root()
    if root is not None and (root / default_relative).exists():
        return root / default_relative
    return None


# --------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------


def _read_bytes(path: Path, what: str) -> bytes:
    if not path.exists():
        raise UserError(f"{path}: {what} not found; check the path")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a {what} file; pass the file inside it")
    try:
        data = path.read_bytes()
    except OSError as e:
        msg = f"{path}: cannot read ({e.strerror}); check the file's permissions"
        raise UserError(msg) from None
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            msg = f"{path}: not a valid gzip file ({e}); re-download or gunzip it"
            raise UserError(msg) from None
    return data


# Leading bytes of compressed files and archives a text file is sometimes saved or downloaded as (a
# Kaggle download is a zip), with the fix for each: read as text they were "binary file (NUL byte ...)".
_COMPRESSED_MAGIC = (
    (
        re.compile(rb"\x1f\x8b"),
        "gzip-compressed",
        "rename it to end in .gz (read as it is) or gunzip it",
    ),
    (re.compile(rb"PK\x03\x04"), "a zip archive", "unzip it and pass the file inside"),
    (re.compile(rb"BZh[1-9]1AY&SY"), "bzip2-compressed", "bunzip2 it and pass the text file"),
    (re.compile(rb"\xfd7zXZ\x00"), "xz-compressed", "unxz it and pass the text file"),
)


def _decode_utf8(data: bytes, path: Path) -> str:
    """UTF-8 text of `data` (a leading BOM dropped); compressed data, NUL bytes or bad UTF-8 ->
    UserError (+ line)."""
    for magic, what, fix in _COMPRESSED_MAGIC:
        if magic.match(data):
            raise UserError(f"{path}: the file is {what}, not text; {fix}")
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise UserError(
            f"{path}: binary file (NUL byte at line {line}, byte {nul}); pass a UTF-8 text file"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        bad = data[e.start : e.end]
        raise UserError(
            f"{path}: undecodable bytes at line {line} (byte {e.start}: {bad!r}), not UTF-8; "
            "re-save the file as UTF-8"
        ) from None


def stdin_piped() -> bool:
    """Whether stdin is a pipe or a file (``cmd | python -m ...``, ``< seeds.txt``): input to read.

    False for a terminal, ``/dev/null`` and a stdin that has no file descriptor (a test runner's)."""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


def read_stdin_lines(what: str) -> list[tuple[int, str]]:
    """`(line number, text)` of each non-empty line of stdin (UTF-8); empty lines are counted on
    stderr. `what` names the lines in the hint shown at a terminal ("texts", "seed texts")."""
    if getattr(sys.stdin, "isatty", lambda: False)():  # a user at a terminal gave no texts
        print(
            f"reading {what} from standard input, one per line; end with Ctrl-D",
            file=sys.stderr,
            flush=True,
        )
    data = sys.stdin.buffer.read()
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UserError(
            f"<stdin>: undecodable bytes at line {line} (byte {e.start}), not UTF-8; send UTF-8 text"
        ) from None
    # Lines end at "\n" (or "\r\n") only: str.splitlines() also splits at U+0085, U+2028, form feeds
    # and more, which real reviews contain (44 of 1,000 IMDB test reviews have U+0085), so one review
    # became several predictions and the output no longer lined up with the input.
    lines = [line.removesuffix("\r") for line in content.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line
    texts = [(n, t) for n, t in enumerate(lines, 1) if t.strip()]
    if len(texts) < len(lines):
        print(f"skipped {len(lines) - len(texts)} empty line(s) of stdin", file=sys.stderr)
    return texts


def load_text(path: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """A whole UTF-8 text file (Macbeth, tiny-shakespeare); `.gz` is decompressed.

    Unmodified but for Windows line ends: CRLF becomes LF (and a leading BOM is dropped), so a copy
    saved on Windows gives the original's characters, vocabulary and split. Missing, empty (or
    whitespace-only), binary (NUL bytes) and non-UTF-8 files raise `UserError`.
    Returns `(text, {"source", "chars", "distinct_chars"})`.
    """
    path = Path(path)
    text = _decode_utf8(_read_bytes(path, "text"), path).replace("\r\n", "\n")
    if not text.strip():
        raise UserError(f"{path}: file is empty; pass a text file with some text in it")
    return text, {"source": str(path), "chars": len(text), "distinct_chars": len(set(text))}


def _set_csv_field_limit() -> None:
    # Articles and reviews can exceed csv's default 131,072-char field limit; a C long caps it.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def _read_csv(
    path: Path,
    required: Sequence[str],
    what: str = "CSV",
    *,
    fix: str = "rename the column(s)",
    optional: Sequence[str] = (),
) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and `(first line number, row dict)` pairs of a UTF-8 CSV (`.csv` or `.csv.gz`).

    Errors (UserError): missing/empty/binary/undecodable file, missing columns (names the columns
    found, a column that differs only in case, a header separated by ';' or tabs, and `fix`), a
    required or `optional` (read when present) column that appears twice in the header, a malformed
    row (names the line).
    """
    _set_csv_field_limit()
    text = _decode_utf8(_read_bytes(path, what), path)
    if not text.strip():
        raise UserError(f"{path}: file is empty; pass a CSV with a header row and data rows")
    # strict: a quote still open at the end of the file is an error, not the rest of the file swallowed
    # into one field (which a lenient reader returns as a last, huge row).
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header: list[str] = []
        while not any(h.strip() for h in header):  # blank lines before the header are skipped
            header = [h.strip() for h in next(reader)]
    except csv.Error as e:
        raise UserError(f"{path}: malformed CSV header ({e}); fix the first line") from None
    except StopIteration:
        raise UserError(
            f"{path}: no header row (every line is blank or empty fields); pass a CSV with a header"
            " row and data rows"
        ) from None
    missing = [c for c in required if c not in header]
    if missing:
        raise UserError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}; columns found: "
            f"{', '.join(repr(h) for h in header)}{_header_hint(header, missing)}; {fix}"
        )
    repeated = [c for c in (*required, *optional) if header.count(c) > 1]
    if repeated:
        raise UserError(
            f"{path}: column {repeated[0]!r} appears {header.count(repeated[0])} times in the header;"
            " rename or remove the repeated column so that each name is used once"
        )
    rows: list[tuple[int, dict[str, str]]] = []
    end = reader.line_num  # physical lines consumed so far; a record may span several lines
    try:
        for fields in reader:
            line, end = end + 1, reader.line_num  # the record's FIRST line, as an editor shows it
            if not any(f.strip() for f in fields):  # a blank (or whitespace-only) line
                continue
            if len(fields) != len(header):
                raise UserError(
                    f"{path}: line {line} has {len(fields)} fields but the header has "
                    f"{len(header)}; fix the quoting of that row"
                )
            rows.append((line, dict(zip(header, fields, strict=True))))
    except csv.Error as e:
        if "unexpected end of data" in str(e):
            raise UserError(
                f"{path}: line {end + 1} opens a quoted field that is never closed (the file ends"
                " inside it); fix the quoting of that row (a quote inside a quoted field is written"
                ' twice: "")'
            ) from None
        at = f", found at line {reader.line_num}" if reader.line_num != end + 1 else ""
        raise UserError(
            f"{path}: malformed CSV in the row that starts at line {end + 1} ({e}{at}); fix the"
            ' quoting of that row (a quote inside a quoted field is written twice: "")'
        ) from None
    return header, rows


def fingerprint(*parts: Any) -> str:
    """A short digest (16 hex digits of SHA-256) of arrays, strings, numbers and (nested) sequences of
    them: the same for the same values in the same order, with dtypes and shapes included."""
    import hashlib

    h = hashlib.sha256()

    def add(x: Any) -> None:
        if not isinstance(x, np.ndarray) and hasattr(x, "__array__"):
            x = np.asarray(x)  # a jax.Array: its values (its repr would elide them)
        if isinstance(x, np.ndarray):
            h.update(f"a{x.dtype.str}{x.shape}".encode())
            h.update(np.ascontiguousarray(x).tobytes())
        elif isinstance(x, str):
            h.update(f"s{len(x)}:".encode())
            h.update(x.encode("utf-8"))
        elif isinstance(x, Mapping):
            h.update(f"m{len(x)}".encode())
            for k in sorted(x):
                add(str(k))
                add(x[k])
        elif isinstance(x, Sequence):
            h.update(f"l{len(x)}".encode())
            for item in x:
                add(item)
        elif x is None or isinstance(x, bool | int | float | np.generic):
            h.update(f"v{x!r}".encode())
        else:
            raise TypeError(f"fingerprint: cannot digest a {type(x).__name__}")

    for part in parts:
        add(part)
    return h.hexdigest()[:16]


def _header_hint(header: Sequence[str], missing: Sequence[str]) -> str:
    """What a missing column's likely cause is: a header not separated by commas, or a column whose
    name differs only in case ("" when neither)."""
    if len(header) == 1:
        for sep, name in ((";", "';'"), ("\t", "tabs")):
            if sep in header[0]:
                return f" (the header is separated by {name}, not commas: save the file as comma-separated)"
    near = [(h, c) for c in missing for h in header if h.lower() == c.lower()]
    if near:
        return " (" + ", ".join(f"{h!r} differs from {c!r} only in case" for h, c in near) + ")"
    return ""


def load_csv_texts(path: str | os.PathLike, text_column: str) -> tuple[list[str], dict[str, Any]]:
    """The non-empty texts of one column of any CSV (e.g. the Myntra catalogue's `Description`).

    Empty (or whitespace-only) cells are skipped and counted in `info["skipped_empty"]`. A missing
    column raises `UserError` naming the file, the column and the columns found. CRLF inside a
    quoted cell becomes LF: a copy saved on Windows gives the same words (the Keras tokenizer splits
    on "\\n" but keeps "\\r" in the word).
    """
    path = Path(path)
    _, rows = _read_csv(
        path, [text_column], fix="pass --config.data.text_column=<the column with the texts>"
    )
    texts = [r[text_column].replace("\r\n", "\n") for _, r in rows if r[text_column].strip()]
    if not rows:  # a header and no row (but blank ones): the column is there, the texts are not
        raise UserError(
            f"{path}: no non-empty texts, only the header row; add rows with a text in column"
            f" {text_column!r}"
        )
    if not texts:
        raise UserError(
            f"{path}: column {text_column!r} has no non-empty texts in {len(rows)} rows; "
            "configure a text column that holds the texts"
        )
    info = {
        "source": str(path),
        "column": text_column,
        "rows": len(rows),
        "texts": len(texts),
        "skipped_empty": len(rows) - len(texts),
    }
    return texts, info


# --------------------------------------------------------------------------------------------------
# TFDS
# --------------------------------------------------------------------------------------------------


def _tfds_data_dir() -> str:
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def _tfds_prepared(name: str, data_dir: str) -> bool:
    """Whether some version of `name` is already prepared in `data_dir` (cheap: no TF import)."""
    d = Path(data_dir) / name
    return d.is_dir() and any(True for _ in d.rglob("dataset_info.json"))


def _network_reachable(url: str = TFDS_PROBE_URL, timeout: float = 3.0) -> bool:
    """Whether an HTTPS request to `url` gets any HTTP answer within `timeout` seconds.

    A full request (not a bare TCP connect): sandboxes that accept every connection and then reset
    it must count as offline. Honours the usual `https_proxy` variables, as TFDS does.
    """
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except urllib.error.HTTPError:  # an HTTP status (403, 404...) still proves the host answers
        return True
    except (OSError, ValueError):  # URLError, resets, timeouts, DNS failures, bad URL
        return False


def _tfds_load(name: str, splits: Sequence[str], what: str, default_relative: str) -> list[Any]:
    """`tfds.load(name, split=splits)` as NumPy iterables, or an immediate UserError offline."""
    data_dir = _tfds_data_dir()
    if not _tfds_prepared(name, data_dir) and not _network_reachable():
        raise UserError(_missing_message(what, default_relative, name))
    os.environ.setdefault("KERAS_BACKEND", "jax")  # importing TF must not pin Keras to TF
    import tensorflow as tf
    import tensorflow_datasets as tfds

    tf.config.set_visible_devices([], "GPU")  # keep TF off the accelerator JAX uses
    try:
        ds = tfds.load(name, split=list(splits), data_dir=data_dir)
    except Exception as e:  # download/prepare failures: network, disk, checksum
        raise UserError(
            f"TFDS '{name}' could not be loaded ({type(e).__name__}: {e}); "
            + _missing_message(what, default_relative, None)
        ) from None
    return [tfds.as_numpy(d) for d in ds]


# --------------------------------------------------------------------------------------------------
# tiny-shakespeare
# --------------------------------------------------------------------------------------------------


def split_tiny_shakespeare(text: str) -> dict[str, str]:
    """TFDS/nanoGPT split: the first `int(0.9 * len(text))` characters train, the rest validate.

    TFDS cuts train at `int(0.9 n)` and the rest 50/50 into validation and test; its
    validation + test is exactly our validation (and nanoGPT's `val.bin`).
    """
    i = int(len(text) * 0.9)
    return {"train": text[:i], "validation": text[i:]}


def load_tiny_shakespeare(
    path: str | os.PathLike | None = None,
) -> tuple[dict[str, str], dict[str, Any]]:
    """`{"train": str, "validation": str}` of tiny-shakespeare (90/10 by characters, see above).

    Source order: `path` > `$LSTM_JAX_DATA/shakespeare/tinyshakespeare.txt` > TFDS
    `tiny_shakespeare` (train vs. validation + test, decoded to str). Any text file works as `path`.
    """
    rel = "shakespeare/tinyshakespeare.txt"
    local = _local_or_none(path, rel)
    if local is not None:
        text, info = load_text(local)
        splits = split_tiny_shakespeare(text)
    else:
        parts = _tfds_load(
            "tiny_shakespeare", ["train", "validation", "test"], "tiny-shakespeare text", rel
        )
        train, valid, test = ("".join(ex["text"].decode("utf-8") for ex in p) for p in parts)
        splits = {"train": train, "validation": valid + test}
        full = train + valid + test
        info = {
            "source": "tfds:tiny_shakespeare",
            "chars": len(full),
            "distinct_chars": len(set(full)),
        }
    info["train_chars"] = len(splits["train"])
    info["validation_chars"] = len(splits["validation"])
    return splits, info


# --------------------------------------------------------------------------------------------------
# IMDB
# --------------------------------------------------------------------------------------------------

_IMDB_LABELS = {"pos": 1, "neg": 0, "1": 1, "0": 0, "positive": 1, "negative": 0}


def _acl_imdb_order(f: Path) -> tuple[int, str]:
    """Sort key of `<id>_<rating>.txt`: the numeric id (the staged CSVs' order, so both sources give the
    same split), then the name; "10_7.txt" after "9_8.txt", not before "2_9.txt"."""
    head = f.name.split("_", 1)[0]
    # ASCII digits only: str.isdigit takes "²", which int() refuses.
    return (int(head) if head.isascii() and head.isdigit() else sys.maxsize, f.name)


def _load_acl_imdb(root: Path) -> tuple[dict[str, list[tuple[str, int]]], dict[str, Any]]:
    data: dict[str, list[tuple[str, int]]] = {}
    skipped = 0
    for split in ("train", "test"):
        items: list[tuple[str, int]] = []
        for label_name, label in (("pos", 1), ("neg", 0)):
            d = root / split / label_name
            if not d.is_dir():
                raise UserError(
                    f"{d}: folder missing; an aclImdb/ folder needs train/pos, train/neg, "
                    "test/pos and test/neg with one .txt review per file"
                )
            for f in sorted(d.glob("*.txt"), key=_acl_imdb_order):
                text = _decode_utf8(_read_bytes(f, "review"), f)
                if not text.strip():
                    skipped += 1
                    continue
                items.append((text, label))
        if not items:
            raise UserError(f"{root / split}: no .txt reviews found; check the aclImdb/ folder")
        data[split] = items
    return data, {"source": str(root), "skipped_empty": skipped}


def _load_imdb_csv(path: Path) -> tuple[list[tuple[str, int]], int]:
    _, rows = _read_csv(
        path, ["label", "text"], fix="rename them to text and label (1 = positive, 0 = negative)"
    )
    items: list[tuple[str, int]] = []
    skipped = 0
    for line, row in rows:
        raw = row["label"].strip().lower()
        if raw not in _IMDB_LABELS:
            raise UserError(
                f"{path}: line {line}: label {row['label']!r} is not pos/neg (or 1/0); fix that row"
            )
        if not row["text"].strip():
            skipped += 1
            continue
        items.append((row["text"], _IMDB_LABELS[raw]))
    if not items:
        raise UserError(f"{path}: no reviews in the file; pass a CSV with label,text rows")
    return items, skipped


def _find_imdb_csv(folder: Path, split: str) -> Path | None:
    for name in (f"imdb_{split}.csv.gz", f"imdb_{split}.csv", f"{split}.csv.gz", f"{split}.csv"):
        if (folder / name).is_file():
            return folder / name
    return None


def _imdb_files(p: Path) -> Path | tuple[Path, Path] | None:
    """The IMDB data in folder `p`: the root of an aclImdb tree (`p` or `p/aclImdb`), else its train and
    test CSVs, else None."""
    for root in (p, p / "aclImdb"):
        if (root / "train").is_dir() and (root / "test").is_dir():
            return root
    train, test = _find_imdb_csv(p, "train"), _find_imdb_csv(p, "test")
    return None if train is None or test is None else (train, test)


def _holds_imdb(p: Path) -> bool:
    """Whether `p` is a folder holding IMDB data `_load_imdb_local` reads (an aclImdb tree or both CSVs)."""
    return p.is_dir() and _imdb_files(p) is not None


def _load_imdb_local(p: Path) -> tuple[dict[str, list[tuple[str, int]]], dict[str, Any]]:
    if not p.is_dir():
        raise UserError(
            f"{p}: is a file; point to an aclImdb/ folder or a folder with imdb_train.csv(.gz) "
            "and imdb_test.csv(.gz)"
        )
    found = _imdb_files(p)
    if isinstance(found, Path):
        return _load_acl_imdb(found)
    if found is None:
        for root in (p, p / "aclImdb"):
            # Half an aclImdb tree (its test/ not extracted or deleted): name the missing folder.
            halves = [(root / split).is_dir() for split in ("train", "test")]
            if any(halves):
                missing = root / ("test" if halves[0] else "train")
                raise UserError(
                    f"{missing}: folder missing; an aclImdb/ folder needs train/pos, train/neg,"
                    " test/pos and test/neg with one .txt review per file (re-extract"
                    " aclImdb_v1.tar.gz)"
                )
        raise UserError(
            f"{p}: no IMDB data found; point to an aclImdb/ folder (train/pos, train/neg, "
            "test/pos, test/neg) or a folder with imdb_train.csv(.gz) and imdb_test.csv(.gz)"
        )
    train, test = found
    (tr, s1), (te, s2) = _load_imdb_csv(train), _load_imdb_csv(test)
    return {"train": tr, "test": te}, {"source": str(p), "skipped_empty": s1 + s2}


def load_imdb(
    path: str | os.PathLike | None = None,
) -> tuple[dict[str, list[tuple[str, int]]], dict[str, Any]]:
    """`{"train": [(text, label)], "test": [...]}` of IMDB reviews; label 1 = pos, 0 = neg.

    Texts are raw (with `<br />`), as the tutorial feeds TextVectorization. `path` may be an
    `aclImdb/` folder (or its parent), or a folder with `imdb_{train,test}.csv(.gz)` (columns
    `label` pos/neg or 1/0 and `text`). Source order: `path` > `$LSTM_JAX_DATA/imdb` (CSVs or
    an aclImdb tree) > `$LSTM_JAX_DATA/aclImdb` > TFDS `imdb_reviews`. Empty reviews are skipped
    and counted; bad labels name file and line.
    """
    rel = "imdb"
    local = _local_or_none(path, rel)
    # A $LSTM_JAX_DATA/imdb folder without IMDB data does not hide $LSTM_JAX_DATA/aclImdb.
    if not path:
        acl = _local_or_none(None, "aclImdb")
        if acl is not None and (local is None or (not _holds_imdb(local) and _holds_imdb(acl))):
            local = acl
    if local is not None:
        data, info = _load_imdb_local(local)
    else:
        parts = _tfds_load("imdb_reviews", ["train", "test"], "IMDB reviews", rel)
        data = {
            split: [(ex["text"].decode("utf-8"), int(ex["label"])) for ex in part]
            for split, part in zip(("train", "test"), parts, strict=True)
        }
        info = {"source": "tfds:imdb_reviews", "skipped_empty": 0}
    for split, items in data.items():
        pos = sum(label for _, label in items)
        info[split] = {"examples": len(items), "pos": pos, "neg": len(items) - pos}
    return data, info


# --------------------------------------------------------------------------------------------------
# Fake news (Kaggle columns) and LIAR
# --------------------------------------------------------------------------------------------------


def normalise_author(raw: str) -> str:
    """Kaggle's `author` is a plain name; the staged articles CSV stores a Python list literal
    (`"['A', 'B']"`, `"[]"`). Lists become `"A, B"` (empty list -> ""); other values pass through.
    """
    s = raw.strip()
    if s.startswith("[") and s.endswith("]"):
        try:
            names = ast.literal_eval(s)
        except (ValueError, SyntaxError):
            return raw
        if isinstance(names, list) and all(isinstance(n, str) for n in names):
            return ", ".join(n.strip() for n in names if n.strip())
    return raw


def _parse_binary_label(
    raw: str, path: Path, line: int, allowed: str, names: Mapping[str, int] | None = None
) -> int:
    """0 or 1 from `raw` ("0", "1", "0.0", "1.0", or a key of `names`, case-insensitive)."""
    s = raw.strip()
    if s in ("0", "1", "0.0", "1.0"):
        return int(float(s))
    if names and s.upper() in names:
        return names[s.upper()]
    raise UserError(
        f"{path}: line {line}: label {raw!r} is not {allowed}; fix or remove that row, or, when the"
        " whole column uses other names, map them to 0 and 1"
    )


# Label names of the other common Kaggle fake-news file (fake_or_real_news.csv): FAKE / REAL.
FAKE_NEWS_LABEL_NAMES = {"FAKE": 1, "REAL": 0}


def load_fake_news_csv(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """A fake-news CSV with the Kaggle columns `title, author, text, label` (1 = fake, 0 = real).

    Also read: the other common Kaggle file's form, no `author` column (every author is then "", and
    `info["author_column"]` is False) and labels `FAKE` / `REAL` (any case). Returns columns `{"id", "title", "author", "text": list[str], "label": int32 [n]}`; missing
    cells stay "" (the tutorial's `fillna(' ')` happens in `text.fake_news_text`). An `author`
    written as a Python list literal (the staged `fake_real_articles.csv`: `"['A', 'B']"`, `"[]"`)
    becomes `"A, B"` / `""`; after the tutorial's letters-only cleaning both forms give the same
    words. Rows with empty title, author and text are skipped and counted; a label other than 0/1
    names file and line. `info` counts labels, empty texts and `dup_text` rows when that column
    exists (the staged copy marks 15 repeated texts; they are kept, as the tutorial keeps all).
    """
    path = Path(path)
    header, rows = _read_csv(
        path,
        ["title", "text"],
        fix="rename them to title, author (optional), text and label (1 or FAKE = fake, 0 or REAL ="
        " real), the columns of Kaggle's fake-news train.csv",
        optional=["author", "label"],
    )
    if "label" not in header:  # an unlabelled file: renaming a column cannot fix it
        raise UserError(
            f"{path}: missing column(s) 'label'; columns found: "
            f"{', '.join(repr(h) for h in header)}{_header_hint(header, ['label'])}; the articles"
            " need a label column (1 or FAKE = fake, 0 or REAL = real): ISOT's Fake.csv and"
            " True.csv go into one CSV with label 1 for Fake.csv's rows and 0 for True.csv's, and"
            " Kaggle's test.csv has no labels (pass its train.csv)"
        )
    out: dict[str, list[Any]] = {"id": [], "title": [], "author": [], "text": [], "label": []}
    skipped = empty_text = dups = 0
    for line, row in rows:
        label = _parse_binary_label(
            row["label"],
            path,
            line,
            "0 (real) or 1 (fake), nor FAKE or REAL",
            FAKE_NEWS_LABEL_NAMES,
        )
        title, author, text = row["title"], normalise_author(row.get("author", "")), row["text"]
        if not (title.strip() or author.strip() or text.strip()):
            skipped += 1
            continue
        empty_text += not text.strip()
        dups += row.get("dup_text", "0").strip() == "1"
        out["id"].append(row.get("id", str(line)))
        out["title"].append(title)
        out["author"].append(author)
        out["text"].append(text)
        out["label"].append(label)
    if not out["label"]:
        raise UserError(f"{path}: no articles in the file; pass a CSV with title,author,text,label")
    labels = np.asarray(out["label"], dtype=np.int32)
    data = {**out, "label": labels}
    info = {
        "source": str(path),
        "rows": len(rows),
        "examples": len(labels),
        "fake": int(labels.sum()),
        "real": int(len(labels) - labels.sum()),
        "skipped_empty": skipped,
        "empty_text": empty_text,
        "author_column": "author" in header,
    }
    if "dup_text" in header:
        info["dup_text"] = dups
    return data, info


LIAR_META = (
    "subject",
    "speaker",
    "speaker_job_title",
    "state_info",
    "party_affiliation",
    "context",
)
# The 14 columns of the official LIAR release's headerless TSVs (liar_dataset.zip: train.tsv, ...).
LIAR_TSV_COLUMNS = (
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
)


def _read_liar_tsv(path: Path) -> list[tuple[int, dict[str, str]]]:
    """`(line number, row dict)` pairs of an official LIAR TSV: no header, 14 tab-separated columns,
    split on tabs only (statements hold unbalanced quotes); the `.json` suffix of the id is dropped,
    as in the staged CSVs. A row without 14 fields names file and line."""
    text = _decode_utf8(_read_bytes(path, "LIAR TSV"), path)
    rows: list[tuple[int, dict[str, str]]] = []
    for line, raw in enumerate(text.split("\n"), start=1):
        raw = raw.removesuffix("\r")  # CRLF line ends
        if not raw.strip():
            continue
        fields = raw.split("\t")
        if len(fields) != len(LIAR_TSV_COLUMNS):
            raise UserError(
                f"{path}: line {line} has {len(fields)} tab-separated fields, not the"
                f" {len(LIAR_TSV_COLUMNS)} of the official LIAR TSVs; fix that row"
            )
        row = dict(zip(LIAR_TSV_COLUMNS, fields, strict=True))
        row["id"] = row["id"].removesuffix(".json")
        rows.append((line, row))
    if not rows:
        raise UserError(f"{path}: file is empty; pass the official LIAR TSV with its rows")
    return rows


def load_liar(
    directory: str | os.PathLike | None = None, metadata: Sequence[str] = ()
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """LIAR (Wang 2017) with its official split: `{"train"|"valid"|"test": columns}`.

    Reads `liar_{train,valid,test}.csv` (the staged CSVs; `directory` defaults to
    `$LSTM_JAX_DATA/fake_news/liar`), or, for a split without one, the official release's headerless
    `{train,valid,test}.tsv` (the same examples). Columns per split: `id`, `statement` and the metadata
    `LIAR_META` as lists of str, `label` int32 [n] (index into `LIAR_LABELS`: 0 = pants-fire ..
    5 = true), `binary_label` int32 [n] (1 = fake = pants-fire/false/barely-true, 0 = real). A
    verdict outside `LIAR_LABELS` names file and line; empty statements are skipped and counted. The
    `metadata` columns (those the model reads) must be in every file; the other `LIAR_META` columns are
    read as "" when absent.
    """
    root = resolve_path(directory, "fake_news/liar", what="LIAR folder")
    if root.is_file():
        raise UserError(
            f"{root} is a file; pass the folder that holds liar_train.csv, liar_valid.csv and"
            " liar_test.csv (or the official train.tsv, valid.tsv and test.tsv) as"
            " --config.data.path"
        )
    data: dict[str, dict[str, Any]] = {}
    info: dict[str, Any] = {"source": str(root), "skipped_empty": 0}
    for split in ("train", "valid", "test"):
        path, tsv = root / f"liar_{split}.csv", root / f"{split}.tsv"
        if not path.is_file() and tsv.is_file():  # the official liar_dataset.zip
            path, rows = tsv, _read_liar_tsv(tsv)
        elif not path.is_file():
            raise UserError(
                f"{path}: LIAR split file not found; the folder needs liar_train.csv, "
                "liar_valid.csv and liar_test.csv, or the official train.tsv, valid.tsv and"
                " test.tsv (liar_dataset.zip, unzipped)"
            )
        else:
            _, rows = _read_csv(
                path,
                ["label", "statement", *metadata],
                fix="the LIAR files need the columns label (the verdict) and statement, and the"
                f" metadata columns config.data.metadata names ({', '.join(metadata) or 'none'}):"
                " stage the files with them, or pass --config.data.metadata='()' (or fewer"
                " columns) to train on the statements alone",
            )
        cols: dict[str, list[Any]] = {k: [] for k in ("id", "statement", *LIAR_META, "label")}
        for line, row in rows:
            verdict = row["label"].strip().lower()
            if verdict not in LIAR_LABELS:
                raise UserError(
                    f"{path}: line {line}: label {row['label']!r} is not one of "
                    f"{', '.join(LIAR_LABELS)}; fix that row"
                )
            if not row["statement"].strip():
                info["skipped_empty"] += 1
                continue
            cols["id"].append(row.get("id", str(line)))
            cols["statement"].append(row["statement"])
            for k in LIAR_META:
                cols[k].append(row.get(k, ""))
            cols["label"].append(LIAR_LABELS.index(verdict))
        labels = np.asarray(cols["label"], dtype=np.int32)
        binary = np.isin(labels, [LIAR_LABELS.index(v) for v in LIAR_FAKE]).astype(np.int32)
        data[split] = {**cols, "label": labels, "binary_label": binary}
        info[split] = {
            "examples": len(labels),
            "label_counts": {name: int((labels == i).sum()) for i, name in enumerate(LIAR_LABELS)},
            "fake": int(binary.sum()),
            "real": int(len(binary) - binary.sum()),
        }
    return data, info


# --------------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------------


def check_fraction(value: float, field: str | None = None) -> None:
    """`UserError` unless `value` (a split's fraction) lies in (0, 1); `field` names the config field it
    comes from (``"config.data.validation_fraction"``)."""
    if not 0.0 < value < 1.0:
        if field:
            raise UserError(f"{field}={value} must be in (0, 1); pass e.g. --{field}=0.2")
        raise UserError(f"test fraction {value} is not in (0, 1); use e.g. 0.2")


def train_test_split(
    n: int,
    test_fraction: float,
    seed: int,
    stratify: Sequence[int] | np.ndarray | None = None,
    *,
    field: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices `(train_idx [n_train], test_idx [n_test])` of sklearn's `train_test_split(..., random_state=seed)`.

    `stratify`: optional labels `[n]` to split in proportion.

    `field` names the config field the fraction comes from (``"config.data.validation_fraction"``) in
    the `UserError` a fraction outside (0, 1) raises.

    sklearn's shuffle depends only on `n` and the seed, so `X[train_idx]` equals the `X_train` that
    the tutorials' `train_test_split(X, y, test_size=test_fraction, random_state=seed)` returns.
    """
    from sklearn.model_selection import train_test_split as sk_split

    if n < 2:
        raise UserError(f"cannot split {n} example(s) into train and test; provide more data")
    check_fraction(test_fraction, field)
    try:
        train_idx, test_idx = sk_split(
            np.arange(n), test_size=test_fraction, random_state=seed, stratify=stratify
        )
    except ValueError as e:
        what = f"{field}={test_fraction}" if field else f"test fraction {test_fraction}"
        msg = f"cannot split {n} examples with {what}: {e}"
        raise UserError(msg) from None
    return np.asarray(train_idx), np.asarray(test_idx)
