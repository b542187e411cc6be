"""Orbax checkpoints of the training state, plus the JSON artefacts kept next to them in the workdir.

Layout of a workdir::

    <workdir>/config.json            the config actually used (lstm_jax.config_utils.save_config)
    <workdir>/<artefact>.json        experiment artefacts (vocabulary, preprocessing settings, ...)
    <workdir>/checkpoints/<step>/    state/ (params, opt_state, step, rng, carry: Orbax StandardSave)
                                     meta/  (data position, history, early-stopping state: JSON)
    <workdir>/corrupt_checkpoints/   checkpoints that failed to restore, moved aside (never deleted)

`CheckpointStore` keeps the last ``keep`` checkpoints plus the best one. "Best" follows Keras' EarlyStopping
rule (an improvement must beat the best by ``min_delta``): the engine passes each save an ``improvement``
index (how many improvements so far, or -1 when this evaluation was not one), and Orbax keeps the checkpoint
with the highest index. Restores take their target from ``jax.eval_shape`` of the initialiser, never pickles.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from orbax.checkpoint import checkpoint_managers

from lstm_jax.errors import UserError, root_reason
from lstm_jax.logging_utils import (
    atomic_write,
    json_ready,
    os_error_naming,
    read_json,
    write_json,
)

__all__ = [
    "CheckpointStore",
    "has_checkpoints",
    "restore_params",
    "save_artefacts",
    "load_artefact",
]

IMPROVEMENT = "improvement"


def _improvement(metrics: Mapping[str, Any]) -> float:
    return float(metrics.get(IMPROVEMENT, -1))


class CheckpointStore:
    """Saves and restores `(state pytree, meta JSON)` pairs under ``<workdir>/checkpoints``.

    Args:
      workdir: the run directory.
      keep: number of most recent checkpoints to keep (the best is kept in addition).
    """

    def __init__(self, workdir: str, *, keep: int = 3) -> None:
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, "checkpoints")
        policy = checkpoint_managers.AnyPreservationPolicy(
            [
                checkpoint_managers.LatestN(n=keep),
                checkpoint_managers.BestN(
                    get_metric_fn=_improvement,
                    reverse=False,
                    n=1,
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            best_fn=_improvement,
            best_mode="max",
            enable_async_checkpointing=False,  # the train step donates its buffers right after a save
            create=True,
        )
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        damaged = _unreadable_metrics(self.directory)  # Orbax would stop on it with a bare error
        if damaged:
            path, reason = damaged[0]
            step_dir = os.path.join(
                self.directory, os.path.relpath(path, self.directory).split(os.sep)[0]
            )
            raise UserError(
                f"{path} cannot be read ({reason}): the checkpoint it belongs to is damaged, or the"
                f" file was edited; restore the file, or move {step_dir} out of {self.directory} (into"
                f" {os.path.join(self.workdir, 'corrupt_checkpoints')}, say) and run the command"
                " again to use the other checkpoints"
            )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers
        )
        self.corrupt_directory = os.path.join(self.workdir, "corrupt_checkpoints")
        self.quarantined: list[int] = []  # steps moved to corrupt_directory by this store

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The step of the last improvement of the monitored metric (None before any save)."""
        return self._manager.best_step()

    def save(
        self, step: int, state: Any, meta: Mapping[str, Any], *, improvement: int = -1
    ) -> None:
        """Writes checkpoint `step` (blocking; the directory appears atomically when complete).

        Args:
          step: the number of updates done.
          state: pytree of arrays (params, opt_state, step, rng, carry).
          meta: JSON-serialisable dict (data position, history, early-stopping state, ...), written as
            strict JSON (`json_ready`: a non-finite number as null).
          improvement: index of this improvement of the monitored metric, -1 if it was none.
        """
        try:
            self._manager.save(
                int(step),
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    meta=ocp.args.JsonSave(json_ready(dict(meta))),
                ),
                metrics={IMPROVEMENT: int(improvement)},
                force=True,
            )
            self._manager.wait_until_finished()
        except OSError as e:
            self._remove_partial(step)
            if e.errno and not e.filename:  # Orbax's metadata writes (write_text) name no file
                raise os_error_naming(e, self.directory) from e
            raise
        except Exception as e:
            # TensorStore reports a full disk as ValueError("RESOURCE_EXHAUSTED: ... No space left on
            # device"): the OSError it is, so the CLI says so in one line (earlier checkpoints are intact).
            self._remove_partial(step)
            text = str(e)
            if "No space left on device" in text or "RESOURCE_EXHAUSTED" in text:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.directory) from e
            raise
        except BaseException:
            # A second Ctrl-C during the save: no resumed run saves this step again to replace it.
            self._remove_partial(step)
            raise

    def _remove_partial(self, step: int) -> None:
        """Deletes what a failed save of `step` left in Orbax's temporary folder (never a finished
        checkpoint): on a full disk it is the space the next try needs, and nothing can resume from it."""
        if jax.process_index() != 0 or not os.path.isdir(self.directory):
            return
        for name in os.listdir(self.directory):
            if name.startswith(f"{int(step)}.orbax-checkpoint-tmp"):
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """Restores checkpoint `step` into arrays shaped (and sharded) like `abstract_state`."""
        out = self._manager.restore(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
        state = out["state"]
        if jax.tree.structure(state) != jax.tree.structure(abstract_state):
            raise ValueError(
                "checkpoint tree structure does not match the model built from the config"
            )
        return state, dict(out["meta"])

    def restore_latest(
        self, abstract_state: Any, *, alternate: Any = None
    ) -> tuple[int, Any, dict[str, Any], bool] | None:
        """Restores the newest checkpoint that reads back correctly.

        A checkpoint that fails to restore (truncated or corrupted files) is reported with a warning and
        moved to ``<workdir>/corrupt_checkpoints/`` (kept for inspection, out of the manager's way), and the
        previous one is tried; one whose files this user may not read is an OSError (EACCES) naming them,
        and nothing is moved. A checkpoint whose arrays (read from its metadata, never guessed from a
        config file) match `alternate` instead of `abstract_state` is restored as `alternate` (the engine
        passes the other gradient-clipping layout of the optimizer state); any other mismatch is a
        `UserError` that moves nothing. Returns `(step, state, meta, is_alternate)`, or None when there is
        no usable checkpoint.
        """
        want = _arrays(abstract_state)
        other = None if alternate is None else _arrays(alternate)
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                on_disk = self._manager.item_metadata(step)["state"]
                have = _arrays(getattr(on_disk, "tree", on_disk))
            except Exception:  # noqa: BLE001 (unreadable metadata: handled as corrupt below)
                have = None
            is_alternate = bool(have) and have == other and have != want
            if have and have != want and not is_alternate:  # another config's (empty: damaged)
                first = (
                    _first_difference(have, want) or f"{len(have)} arrays on disk, {len(want)} here"
                )
                raise UserError(
                    f"the checkpoint at step {step} in {self.directory} holds {len(have)} arrays that do"
                    f" not match the {len(want)} this config builds (first difference: {first}; model,"
                    " optimizer or batch size changed, or the number of devices, --cpu_devices, that"
                    " a carried state is padded to); resume with the saved <workdir>/config.json and"
                    " the same devices, or use a new --workdir"
                )
            try:
                state, meta = self.restore(step, alternate if is_alternate else abstract_state)
            except Exception as e:  # noqa: BLE001 (any read/decode failure means "unusable")
                refused = not_permitted(e, os.path.join(self.directory, str(step)))
                if refused is not None:  # readable by someone else: not damaged, nothing is moved
                    raise refused from e
                moved = self.quarantine(step)
                logging.warning(
                    "checkpoint at step %d in %s could not be restored (%s); moved it to %s and"
                    " falling back to the previous checkpoint",
                    step,
                    self.directory,
                    root_reason(e),
                    moved,
                )
                continue
            return step, state, meta, is_alternate
        return None

    def restore_params(self, step: int, abstract_params: Any) -> Any:
        """Only the ``params`` of checkpoint `step`, shaped (and sharded, where the leaves of
        `abstract_params` carry a sharding) like `abstract_params`; the rest of the state (the optimizer's,
        whatever its layout) is not read. Raises what Orbax raises when the files are damaged."""
        return restore_params(os.path.join(self.directory, str(step)), abstract_params)

    def quarantine(self, step: int) -> str | None:
        """Moves checkpoint `step`, which failed to restore, to ``<workdir>/corrupt_checkpoints/<step>-<unix
        time>`` (kept for inspection) and returns that path; None when the checkpoint is not there."""
        src = os.path.join(self.directory, str(step))
        self.quarantined.append(int(step))
        dst = None
        if os.path.exists(src):
            os.makedirs(self.corrupt_directory, exist_ok=True)
            stem = os.path.join(self.corrupt_directory, f"{step}-{int(time.time())}")
            dst, n = stem, 1
            while os.path.exists(dst):  # the same step moved twice within a second would nest in it
                n += 1
                dst = f"{stem}-{n}"
            if jax.process_index() == 0:
                shutil.move(src, dst)
        self._manager.reload()
        return dst

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def not_permitted(e: BaseException, path: str) -> OSError | None:
    """`e` as a PermissionError (EACCES) naming the file it was refused (else `path`) when it, or an
    exception it was raised from, is a refused read: Python's PermissionError, or TensorStore's
    ValueError("PERMISSION_DENIED: ..."); None for any other failure (damaged files, say)."""
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in (errno.EACCES, errno.EPERM):
            return PermissionError(cause.errno, os.strerror(cause.errno), cause.filename or path)
        if "PERMISSION_DENIED" in str(cause):
            return PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        cause = cause.__cause__ or cause.__context__
    return None


def _unreadable_metrics(directory: str) -> list[tuple[str, str]]:
    """`(path, reason)` of each JSON file of a checkpoint under `directory` that Orbax reads when its
    manager starts and would stop on with a bare error: a ``<step>/metrics/metrics`` that is not a JSON
    object (a JSONDecodeError, or later an AttributeError) or whose ``improvement`` is not a number (a
    ValueError or TypeError in `_improvement`), and a ``<step>/_CHECKPOINT_METADATA`` object with a
    field of the wrong type (hand-edited: a bare ValueError; one that does not parse Orbax skips). One
    this user may not read raises its PermissionError."""
    try:  # Orbax's own reader of _CHECKPOINT_METADATA (private: absent in other versions, then unchecked)
        from orbax.checkpoint._src.metadata.step_metadata_serialization import deserialize
    except ImportError:  # pragma: no cover
        deserialize = None
    bad = []
    names = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
    for name in names:
        if not name.isdigit():
            continue
        path = os.path.join(directory, name, "metrics", "metrics")
        value = _json_file(path, bad)
        if value is not None:
            improvement = value.get(IMPROVEMENT, -1) if isinstance(value, dict) else None
            if not isinstance(value, dict):
                bad.append((path, f"a JSON {type(value).__name__}, not an object"))
            elif isinstance(improvement, bool) or not isinstance(improvement, int | float):
                bad.append((path, f'its "{IMPROVEMENT}" is {improvement!r}, not a number'))
        path = os.path.join(directory, name, "_CHECKPOINT_METADATA")
        value = _json_file(path, None)
        if value is not None and deserialize is not None:
            try:
                deserialize(value)
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                bad.append((path, root_reason(e)))
    return bad


def _json_file(path: str, bad: list[tuple[str, str]] | None) -> Any:
    """The parsed JSON file at `path` (None when there is none); one that cannot be read or parsed is
    added to `bad` (None: skipped, as Orbax skips it). A PermissionError (another user's file, not a
    damaged one: the CLI names it) is raised."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except PermissionError:
        raise
    except (OSError, ValueError) as e:
        if bad is not None:
            bad.append((path, root_reason(e)))
        return None


def restore_params(step_directory: str, abstract_params: Any) -> Any:
    """The ``params`` subtree of the checkpoint in `step_directory` (``<workdir>/checkpoints/<step>``) as
    arrays shaped like `abstract_params` (ShapeDtypeStructs; each leaf's sharding is used when it has
    one, else the first local device); a partial restore, so the optimizer state is never read.

    A `UserError` names the first difference when the checkpoint's parameters (read from its metadata)
    are not those of `abstract_params` (another model's: the partial restore would drop the parameters
    `abstract_params` lacks without a word, and call other shapes unreadable)."""
    difference = _params_difference(os.path.join(step_directory, "state"), abstract_params)
    if difference is not None:
        raise UserError(
            f"the checkpoint in {step_directory} holds the parameters of another model than this"
            f" config builds (first difference: {difference}); pass the config the run was trained"
            " with"
        )
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    restored = ocp.PyTreeCheckpointer().restore(
        os.path.join(step_directory, "state"),
        args=ocp.args.PyTreeRestore(
            item={"params": abstract_params},
            restore_args={
                "params": jax.tree.map(
                    lambda a: ocp.ArrayRestoreArgs(
                        sharding=getattr(a, "sharding", None) or default
                    ),
                    abstract_params,
                )
            },
            partial_restore=True,
        ),
    )
    return restored["params"]


def _params_difference(state_directory: str, abstract_params: Any) -> str | None:
    """The first parameter where the checkpoint state in `state_directory` (its metadata) and
    `abstract_params` differ, as "<path>: <on disk> on disk, <here> here"; None when they agree, or when
    the metadata cannot be read (damaged files: the restore then says what is wrong)."""
    handler = ocp.PyTreeCheckpointHandler()
    try:
        on_disk = handler.metadata(epath.Path(state_directory))
        have = [a for a in _arrays(getattr(on_disk, "tree", on_disk)) if a[0].startswith("params/")]
    except Exception:  # noqa: BLE001 (unreadable metadata: left to the restore)
        return None
    finally:
        handler.close()
    return _first_difference(have, _arrays({"params": abstract_params}))


def _first_difference(have: list, want: list) -> str | None:
    """The first path (in sorted order) where two `_arrays` lists, a checkpoint's and this config's,
    differ, as "<path>: <on disk> on disk, <here> here" (shape and dtype, or "absent"); None when equal."""
    on_disk = {p: f"{list(s)} {d}" for p, s, d in have}
    here = {p: f"{list(s)} {d}" for p, s, d in want}
    for path in sorted(on_disk.keys() | here.keys()):
        if on_disk.get(path) != here.get(path):
            return f"{path}: {on_disk.get(path, 'absent')} on disk, {here.get(path, 'absent')} here"
    return None


def _arrays(tree: Any) -> list[tuple[str, tuple[int, ...], str]]:
    """A tree's arrays as sorted (path, shape, dtype), the path's keys, attribute names and indices joined
    by "/" (`opt_state/0/mu/head/kernel`): the same for an abstract state and for Orbax's metadata of its
    checkpoint (which stores tuples, named tuples and dicts alike as containers keyed by name or index),
    and different when an optimizer wraps another one (gradient clipping adds a level) even though the
    arrays' shapes stay the same."""
    return sorted(
        (_path(p), tuple(x.shape), str(np.dtype(x.dtype)))
        for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    )


def _path(keys: tuple[Any, ...]) -> str:
    parts = []
    for k in keys:
        for attr in ("key", "idx", "name"):  # DictKey, SequenceKey, GetAttrKey
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def save_artefacts(workdir: str, artefacts: Mapping[str, Any]) -> list[str]:
    """Writes experiment artefacts into the workdir next to the checkpoints.

    Args:
      workdir: the run directory.
      artefacts: ``{file name: content}``; a dict/list is written as JSON, a str as text, an existing
        file path (``os.PathLike``) is copied.

    Returns:
      The written paths.
    """
    written = []
    for name, content in artefacts.items():
        if os.path.basename(name) != name:
            raise UserError(
                f"artefact name {name!r} must be a plain file name; drop the directory part"
            )
        path = os.path.join(workdir, name)
        if isinstance(content, os.PathLike):
            with open(os.fspath(content), "rb") as src, atomic_write(path, "wb") as f:
                shutil.copyfileobj(src, f)
        elif isinstance(content, str):
            with atomic_write(path) as f:
                f.write(content)
        else:
            write_json(path, content)
        written.append(path)
    return written


def has_checkpoints(workdir: str) -> bool:
    """Whether ``<workdir>/checkpoints`` holds a step folder (a run to resume), finished or not."""
    directory = os.path.join(workdir, "checkpoints")
    return os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory))


def load_artefact(workdir: str, name: str) -> Any:
    """Reads an artefact written by `save_artefacts` (JSON is parsed, other files returned as text)."""
    path = os.path.join(workdir, name)
    if not os.path.exists(path):
        raise UserError(
            f"{path} is missing; the workdir was not written by a finished training run"
        )
    if name.endswith(".json"):
        return read_json(path)
    with open(path, encoding="utf-8") as f:
        return f.read()
