"""The one training engine: `train_and_evaluate(config, workdir, task)`.

An experiment supplies a `Task` (model, data, loss); the engine does everything else: the device mesh,
jitted train/eval steps over a plain pytree of parameters, Optax, Orbax checkpoints with exact resume, early
stopping, NaN/Inf detection, logging (metrics.jsonl, TensorBoard, progress) and the results in the workdir.

The train state is a dict pytree, saved as is::

    {"step": int32[], "params": {...pure dict of nnx.Param values...}, "opt_state": ...,
     "rng": uint32[2], "carry": <task pytree, only if the task uses one>}

Dropout keys are ``jax.random.fold_in(rng, step)``, passed to the loss function as ``key=``; nothing random is
hidden in module state, so a resumed run is bit-identical to an uninterrupted one.

Data parallelism: one `jax.sharding.Mesh` over all devices with axis ``data``. Batches (and the carry) are
sharded along their leading axis, everything else is replicated. On more than one device the train and
eval steps are explicit data parallelism (`data_parallel_grads`, `data_parallel_sums`): each device runs
the whole step on its slice, then gradients and metric sums are combined. A batch whose size is not a
multiple of the device count is padded with weight-0 examples (``batch["weight"]``), which the loss must
honour. Each device draws its own dropout masks (key ``fold_in(key, device index)``), so runs on different
device counts give the same numbers only without dropout (up to float summation order). On a CPU,
`lstm_jax.runtime.set_cpu_devices` (the binaries' ``--cpu_devices``) makes one device per core.

Evaluation, checkpoints and early stopping happen together: at the end of every epoch, every
``config.train.eval_every_steps`` steps if set, and at the last step. Early stopping follows Keras'
EarlyStopping (monitor, mode, patience, min_delta); with ``restore_best_weights`` the final evaluation
uses the best checkpoint whenever it is not the last one (as Keras 3 does; Keras 2 restored only when it
stopped early).

Multi-host: call `initialize_distributed()` first (the `lstm_jax.cli` entry point does); each process then
feeds its own slice of every global batch (its task data should be sharded by `jax.process_index()`), and
the mesh spans the devices of all processes. Launch the same command on every host, e.g. for two hosts::

    JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 python -m experiments.X.main ...
    JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=1 python -m experiments.X.main ...

(under SLURM or Open MPI `srun`/`mpirun` alone suffices: JAX reads the job's environment). The workdir must
be on storage all hosts share; process 0 writes the logs and results, Orbax coordinates the checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from importlib import metadata
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lstm_jax import config_utils, core, metrics, optim, runtime
from lstm_jax.checkpoint import (
    CheckpointStore,
    has_checkpoints,
    not_permitted,
    restore_params,
    save_artefacts,
)
from lstm_jax.errors import Interrupted, UserError, root_reason
from lstm_jax.logging_utils import (
    ORPHANED_FILE,
    MetricsLogger,
    Progress,
    format_metrics,
    json_int,
    json_number,
    os_error_naming,
    parse_record,
    read_json,
    read_lines,
    write_json,
)
from lstm_jax.plots import plot_training_curves

__all__ = [
    "Batch",
    "LossFn",
    "Task",
    "train_and_evaluate",
    "initialize_distributed",
    "make_mesh",
    "data_parallel_grads",
    "data_parallel_sums",
    "data_parallel_map",
    "pad_batch",
    "steps_per_epoch",
    "epoch_permutation",
    "epoch_batch_indices",
    "shuffled_batches",
    "padded_batches",
    "restore_model",
    "load_trained",
    "saved_results",
    "check_run",
    "checkpoint_step",
]

Batch = Mapping[str, np.ndarray]
RESULTS_FILE = "results.json"
CURVES_FILE = "training_curves.png"
# With several CPU devices in one process (`--cpu_devices`, `--xla_force_host_platform_device_count`) the
# host must not run far ahead of the devices: a train or eval step holds an all-reduce across them, and
# XLA:CPU admits only so many computations per device at once; a host that queued hundreds of steps
# left one device waiting in an all-reduce while a launch waited for a free slot (gdb; jaxlib 0.10.2,
# 2026-12-05: Macbeth with --cpu_devices=2 aborted in the rendezvous after 60 s; waiting for every 1st,
# 16th or 30th step did not hang; benchmarks/README.md). The engine's loops therefore wait for every
# CPU_MULTI_DEVICE_MAX_AHEAD-th step there; one device (and accelerators) run ahead freely as before.
CPU_MULTI_DEVICE_MAX_AHEAD = 8


class LossFn(Protocol):
    """``loss_fn(model, batch, *, key, train, carry) -> (loss, (metric_sums, new_carry))``.

    Args:
      model: the NNX module (merged from the current parameters inside the jitted step).
      batch: dict of arrays, leading axis = batch; always holds ``weight [batch]`` (0 for padding rows).
      key: PRNG key for dropout, different for every step (unused when ``train`` is False).
      train: True in the train step (dropout on), False in evaluation.
      carry: the pytree the engine keeps across consecutive steps (truncated BPTT states), or None.

    Returns:
      ``loss``: the scalar to minimise (a weighted mean, so padding does not change it; on several devices
        the devices' losses and gradients are averaged with weights ``metric_sums["count"]``, exact for
        ``loss = metric_sums["loss"] / metric_sums["count"]``, see `data_parallel_grads`);
      ``metric_sums``: dict of weighted sums plus ``count`` (see `lstm_jax.metrics`);
      ``new_carry``: the carry for the next batch (None if unused).
    """

    def __call__(
        self, model: Any, batch: Batch, *, key: jax.Array, train: bool, carry: Any
    ) -> tuple[jax.Array, tuple[dict[str, jax.Array], Any]]: ...


@dataclasses.dataclass
class Task:
    """What an experiment supplies to the engine.

    Attributes:
      build_model: ``(config, rngs: nnx.Rngs) -> nnx.Module``. Must be deterministic given the rngs; it is
        also traced under `jax.eval_shape` to build restore targets.
      loss_fn: see `LossFn`.
      train_batches: ``(epoch, start) -> iterable of batches`` for that epoch, starting at batch index
        ``start`` (resume). Shuffling must be a function of (seed, epoch) only (see `shuffled_batches`).
        Batches should come in a few fixed shapes (each compiles once): one shape, or a handful of
        length buckets.
      steps_per_epoch: number of batches ``train_batches`` yields for a whole epoch.
      eval_batches: ``{split: () -> iterable of batches}``; together the batches cover every example of the
        split exactly once; the last batch is padded to the full shape with ``weight`` 0 rows.
      periodic_eval: the splits evaluated at every evaluation during training (others, e.g. "test", only
        once at the end, on the final or best weights). Monitor names ``val_<metric>`` refer to "validation".
      init_carry: ``batch_size -> pytree`` of arrays ``[batch_size, ...]`` (zeros), for tasks that carry
        state across consecutive batches; reset at every epoch start and at the start of every evaluation.
      eval_loss_fn: a different loss for evaluation (default: ``loss_fn`` with ``train=False``).
      artefacts: ``{file name: dict | str | os.PathLike}`` written into the workdir (vocabulary JSON, ...).
      data_info: what was loaded, from where, examples per split; copied into results.json["data"].
      data_fingerprint: a digest of the encoded data the run trains and evaluates on
        (`lstm_jax.data.fingerprint`), saved with every checkpoint: resuming on other data (a file
        edited in place) is then an error instead of a run that silently mixes two datasets.
      data_fix: ``(saved config, saved fingerprint) -> str | None``, asked when the fingerprints differ:
        the config override that loads the data the run trained on (a split an earlier version made
        otherwise), when the task can tell that it does, for the error to give as the fix; None when not.
      derive_metrics: ``averages -> averages`` adding derived values (e.g. bits per character).
      extra_results: ``(model, results) -> dict`` of extra results.json keys, called once at the end with
        the final model (classification reports, confusion matrices, samples).
      extra_results_on_best: give `extra_results` the best checkpoint's weights (the ones the read-only
        modes load, `restore_model`) rather than the final ones: the language models' samples after
        training are then the text ``--mode=generate`` gives from the workdir.
      final_metrics: ``(model, splits) -> {split: averages}``, the final evaluation of `splits` done by the
        task instead of the engine, for a task whose `extra_results` goes over those splits anyway (the
        classifiers' reports predict every test example; computing the metrics from the same predictions
        saves a second pass). Called once, just before `extra_results`, with the same final model; it must
        return the metrics `evaluate` would give (same keys, averages over every example of the split).
      derived_fields: dotted config fields the task fills in from the data (`model.vocab_size`): one
        that differs from the saved run's means the data changed, and the error says so.
      fixed_on_resume: dotted config fields that are otherwise resumable (`RESUMABLE_FIELDS`) but change
        what this task measures, so that resuming with another value is an error (the char streams'
        `train.eval_batch_size`, which is their number of validation streams).
    """

    build_model: Callable[[ml_collections.ConfigDict, nnx.Rngs], nnx.Module]
    loss_fn: LossFn
    train_batches: Callable[[int, int], Iterable[Batch]]
    steps_per_epoch: int
    eval_batches: Mapping[str, Callable[[], Iterable[Batch]]] = dataclasses.field(
        default_factory=dict
    )
    periodic_eval: Sequence[str] = ("validation",)
    init_carry: Callable[[int], Any] | None = None
    eval_loss_fn: LossFn | None = None
    artefacts: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    data_info: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    data_fingerprint: str | None = None
    data_fix: Callable[[ml_collections.ConfigDict, str], str | None] | None = None
    derive_metrics: Callable[[dict[str, float]], dict[str, float]] | None = None
    extra_results: Callable[[nnx.Module, dict[str, Any]], Mapping[str, Any]] | None = None
    extra_results_on_best: bool = False
    final_metrics: (
        Callable[[nnx.Module, Sequence[str]], Mapping[str, Mapping[str, float]]] | None
    ) = None
    derived_fields: Sequence[str] = ()
    fixed_on_resume: Sequence[str] = ()


class _StopNow(BaseException):
    """Raised by `_StopSignals` after the last step (`at_once`): a BaseException, so that no `except
    Exception` of the final evaluation (a damaged best checkpoint's) takes the signal for a failure."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _StopSignals:
    """While training, the first SIGINT (Ctrl-C) or SIGTERM asks the loop to stop after the step it is in
    (the loop then saves a checkpoint and raises `Interrupted`); a second one raises KeyboardInterrupt at
    once. After the last step (`at_once`), when there is no step to wait for, the first raises `_StopNow`
    at once (and at once on `at_once` when one came during the last step); once only the results' write is
    left (`done`), one is only logged. Installed only in the main thread of a single-process run (a
    multi-process run's processes would not stop at the same step); elsewhere signals keep their usual
    effect."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        self._phase = "steps"  # "steps", "at_once" or "done"

    def at_once(self) -> None:
        """From now on a signal stops at once (`_StopNow`); raises it now for one that already came."""
        self._phase = "at_once"
        if self.signum is not None and self._old:
            raise _StopNow(self.signum)

    def done(self) -> None:
        """Only the results' write is left: a signal from now on has nothing left to stop (it is logged)."""
        self._phase = "done"

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
            for s in self.SIGNALS:
                old = signal.signal(s, self._handle)
                self._old[s] = signal.SIG_DFL if old is None else old
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self._phase == "done":
            logging.warning(
                "%s: the run's results are already written; nothing is left to stop",
                signal.Signals(signum).name,
            )
            return
        if self._phase == "at_once":
            self.signum = signum
            self.__exit__()
            raise _StopNow(signum)
        if self.signum is not None:
            self.__exit__()
            raise KeyboardInterrupt
        self.signum = signum
        logging.warning(
            "%s: stopping after this step and saving a checkpoint (send it again to stop at once)",
            signal.Signals(signum).name,
        )

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}


# ---------------------------------------------------------------------------------------------------------
# Devices.
# ---------------------------------------------------------------------------------------------------------

_DISTRIBUTED_DONE = False


def initialize_distributed() -> bool:
    """Calls `jax.distributed.initialize` once when a multi-process launch is detected.

    Triggers: ``JAX_COORDINATOR_ADDRESS`` + ``JAX_NUM_PROCESSES`` + ``JAX_PROCESS_ID`` (explicit), or a
    SLURM / Open MPI job with more than one task (JAX auto-detects the rest). Returns True if it initialised.
    """
    global _DISTRIBUTED_DONE
    if _DISTRIBUTED_DONE:
        return False
    env = os.environ
    explicit = all(
        k in env for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
    )
    if explicit:
        jax.distributed.initialize(
            coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(env["JAX_NUM_PROCESSES"]),
            process_id=int(env["JAX_PROCESS_ID"]),
        )
    elif int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        jax.distributed.initialize()
    else:
        return False
    _DISTRIBUTED_DONE = True
    return True


def make_mesh() -> Mesh:
    """A 1-D mesh over all devices (every process), axis name ``data``."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def data_parallel_grads(
    loss_and_grads: Callable[..., tuple[jax.Array, dict[str, jax.Array], Any, Any]], mesh: Mesh
) -> Callable[..., tuple[jax.Array, dict[str, jax.Array], Any, Any]]:
    """The engine's ``loss_and_grads(params, batch, key, carry) -> (loss, sums, new_carry, grads)`` as
    explicit data parallelism over the ``data`` axis of `mesh` (a `jax.shard_map`; call it inside `jit`).

    Every device runs the whole forward and backward pass on its slice of the batch (and of the carry),
    with its own dropout key ``fold_in(key, device index)``. The slices' results are then combined so
    that they equal the whole batch's: metric sums are added, and the loss and gradients are averaged with
    weights ``sums["count"]`` (each slice's share of the batch's weight), which for a loss of the form
    ``sums["loss"] / sums["count"]`` (every task here) is exactly the gradient of the batch's weighted mean,
    padding rows included. Parameters and key are replicated; loss, sums and gradients come out replicated.

    Why not let `jit` partition the step (GSPMD, as the engine did before): on one XLA:CPU host device per
    core, the partitioned LSTM steps ran 1.4-4x slower than on one device, while this form gives each core
    a whole, single-threaded step (see `lstm_jax.runtime.set_cpu_devices`).
    """

    def local(params, batch, key, carry):
        key = jax.random.fold_in(key, jax.lax.axis_index("data"))
        loss, sums, new_carry, grads = loss_and_grads(params, batch, key, carry)
        share = sums["count"] / jnp.maximum(jax.lax.psum(sums["count"], "data"), 1e-9)
        loss, grads = jax.lax.psum(
            (loss * share, jax.tree.map(lambda g: g * share.astype(g.dtype), grads)), "data"
        )
        return loss, jax.lax.psum(sums, "data"), new_carry, grads

    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(), P("data"), P(), P("data")),
        out_specs=(P(), P(), P("data"), P()),
        check_vma=False,  # a task's zero initial states are not marked as varying over "data"
    )


def data_parallel_sums(
    eval_sums: Callable[..., tuple[dict[str, jax.Array], Any]], mesh: Mesh
) -> Callable[..., tuple[dict[str, jax.Array], Any]]:
    """``eval_sums(params, batch, carry) -> (sums, new_carry)`` over the ``data`` axis of `mesh`: each
    device evaluates its slice of the batch and the metric sums are added (see `data_parallel_grads`)."""

    def local(params, batch, carry):
        sums, new_carry = eval_sums(params, batch, carry)
        return jax.lax.psum(sums, "data"), new_carry

    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(), P("data"), P("data")),
        out_specs=(P(), P("data")),
        check_vma=False,
    )


def data_parallel_map(fn: Callable[..., Any], mesh: Mesh) -> Callable[..., Any]:
    """``fn(params, batch) -> outputs`` over the ``data`` axis of `mesh`: each device applies `fn` to its
    slice of `batch` (a pytree of arrays whose leading axis, the batch, is a multiple of the device count)
    with the replicated `params`; the outputs are per row and come out sharded the same way (prediction;
    see `data_parallel_grads`)."""
    return jax.shard_map(
        fn, mesh=mesh, in_specs=(P(), P("data")), out_specs=P("data"), check_vma=False
    )


def pad_batch(batch: Batch, multiple: int) -> dict[str, np.ndarray]:
    """Adds ``weight [batch]`` (ones) if absent and zero-pads every array's leading axis to a multiple.

    Padded rows have weight 0, so they change no loss or metric sum.
    """
    out = {k: np.asarray(v) for k, v in batch.items()}
    sizes = {k: v.shape[0] for k, v in out.items() if v.ndim > 0}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"batch arrays disagree on the batch size: {sizes}")
    size = next(iter(sizes.values()))
    if "weight" not in out:
        out["weight"] = np.ones((size,), np.float32)
    target = -(-size // multiple) * multiple
    if target != size:
        out = {
            k: np.concatenate([v, np.zeros((target - size, *v.shape[1:]), v.dtype)])
            for k, v in out.items()
        }
    return out


# ---------------------------------------------------------------------------------------------------------
# Data helpers for tasks: resumable, seeded per-epoch shuffling and padded evaluation batches.
# ---------------------------------------------------------------------------------------------------------


def steps_per_epoch(num_examples: int, batch_size: int, drop_remainder: bool = True) -> int:
    """Batches per epoch: the full ones (`drop_remainder`, as tf.data's and Flax's examples), or with the
    remainder as a last, smaller batch (Keras' `fit` and PyTorch's `DataLoader`), padded to the batch shape
    with weight-0 rows (`pad_batch`), which gives exactly the smaller batch's weighted-mean gradient."""
    return num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The example order of `epoch`: a permutation `[n]` of `range(n)` that depends only on (seed, epoch)."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def epoch_batch_indices(
    n: int,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    drop_remainder: bool = True,
) -> list[np.ndarray]:
    """The example indices of each of epoch `epoch`'s `steps_per_epoch(n, batch_size, drop_remainder)`
    batches, each `[batch_size]`: `epoch_permutation(seed, epoch)` (or `arange(n)` without `shuffle`) cut in
    order; with `drop_remainder=False` the last one may be shorter."""
    order = epoch_permutation(seed, epoch, n) if shuffle else np.arange(n)
    steps = steps_per_epoch(n, batch_size, drop_remainder)
    return [order[b * batch_size : (b + 1) * batch_size] for b in range(steps)]


def shuffled_batches(
    arrays: Mapping[str, np.ndarray],
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    start: int = 0,
    shuffle: bool = True,
    drop_remainder: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
    """Training batches of epoch `epoch` from in-memory arrays (all `[examples, ...]`), from batch `start`.

    Yields ``steps_per_epoch(n, batch_size, drop_remainder)`` batches of `batch_size` rows (a short last
    one padded with weight-0 rows by `pad_batch`); the order is `epoch_permutation(seed, epoch)`, so
    resuming at ``start`` gives exactly the batches an uninterrupted epoch would have.
    """
    n = len(next(iter(arrays.values())))
    batches = epoch_batch_indices(
        n, batch_size, seed=seed, epoch=epoch, shuffle=shuffle, drop_remainder=drop_remainder
    )
    for idx in batches[start:]:
        yield pad_batch({k: np.asarray(v)[idx] for k, v in arrays.items()}, batch_size)


def padded_batches(
    arrays: Mapping[str, np.ndarray], batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """Evaluation batches covering every example once, in order: each array `[examples, ...]` is cut into
    `[batch_size, ...]` chunks plus ``weight [batch_size]``; the last is padded with weight 0 rows."""
    n = len(next(iter(arrays.values())))
    for lo in range(0, n, batch_size):
        chunk = {k: np.asarray(v)[lo : lo + batch_size] for k, v in arrays.items()}
        real = len(next(iter(chunk.values())))
        weight = np.asarray(chunk.pop("weight"), np.float32) if "weight" in chunk else np.ones(real)
        chunk = {
            k: np.concatenate([v, np.zeros((batch_size - real, *v.shape[1:]), v.dtype)])
            for k, v in chunk.items()
        }
        chunk["weight"] = np.concatenate([weight, np.zeros(batch_size - real)]).astype(np.float32)
        yield chunk


class _Prefetcher:
    """Runs `transform` over `iterable` in a background thread, `size` items ahead (0: inline)."""

    def __init__(self, iterable: Iterable[Any], transform: Callable[[Any], Any], size: int) -> None:
        self._size = size
        self._stop = threading.Event()
        if size == 0:
            self._inline = (transform(b) for b in iterable)
            return
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._thread = threading.Thread(
            target=self._run, args=(iterable, transform), daemon=True, name="batch-prefetch"
        )
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, iterable: Iterable[Any], transform: Callable[[Any], Any]) -> None:
        try:
            for b in iterable:
                if not self._put(("item", transform(b))):
                    return
            self._put(("end", None))
        except BaseException as e:  # noqa: BLE001 (re-raised in the consuming thread)
            self._put(("error", e))

    def __iter__(self) -> Iterator[Any]:
        if self._size == 0:
            yield from self._inline
            return
        while True:
            kind, value = self._queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value

    def close(self) -> None:
        self._stop.set()
        if self._size:
            while self._thread.is_alive():
                try:
                    self._queue.get(timeout=0.05)
                except queue.Empty:
                    pass
            self._thread.join()


# ---------------------------------------------------------------------------------------------------------
# The engine.
# ---------------------------------------------------------------------------------------------------------


def _monitor_value(record: Mapping[str, Any], monitor: str) -> float | None:
    if monitor.startswith("val_"):
        return record.get("validation", {}).get(monitor[4:])
    return record.get("train", {}).get(monitor)


def _improved(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if value is None or not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


class _Engine:
    """One run of `train_and_evaluate`; holds the mesh, jitted steps and bookkeeping."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, task: Task) -> None:
        self.config, self.workdir, self.task = config, os.path.abspath(workdir), task
        self.is_main = jax.process_index() == 0
        if task.steps_per_epoch < 1:
            raise UserError(
                f"the training data gives {task.steps_per_epoch} batches per epoch; use a smaller"
                f" config.train.batch_size (now {config.train.batch_size}) or more training data"
            )
        tr = config.train
        self.steps_per_epoch = int(task.steps_per_epoch)
        self.total_steps = int(tr.num_steps) or int(tr.num_epochs) * self.steps_per_epoch
        self.num_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.monitor = tr.monitor
        self.mode = config_utils.monitor_mode(tr.monitor, tr.monitor_mode)

        self.mesh = make_mesh()
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, P("data"))
        self.local_devices = jax.local_device_count()
        # See CPU_MULTI_DEVICE_MAX_AHEAD: 0 lets the host run ahead without limit.
        several_cpus = self.mesh.size > 1 and self.mesh.devices.flat[0].platform == "cpu"
        self.max_ahead = CPU_MULTI_DEVICE_MAX_AHEAD if several_cpus else 0
        # Global train batch: every process pads its batch to a multiple of its local devices.
        self.train_batch_size = (
            _padded_size(int(tr.batch_size), self.local_devices) * jax.process_count()
        )

        self.schedule = optim.make_schedule(config.optimizer, self.total_steps)
        self.tx = optim.make_optimizer(config.optimizer, self.total_steps)
        self.graphdef, self.params_template, self.others = _split_model(task.build_model, config)
        self._carry_fns: dict[int, Callable[[], Any]] = {}
        self._eval_sums_shape: dict[str, Any] = {}
        self.eval_loss = task.eval_loss_fn or task.loss_fn
        self._build_steps()

    # -- model <-> pure params ------------------------------------------------------------------------------

    def merge(self, params: Any) -> nnx.Module:
        # Fresh containers (tree.map rebuilds them): the shared template is never mutated.
        state = jax.tree.map(lambda x: x, self.params_template)
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(self.graphdef, state, self.others)

    def init_state(self) -> dict[str, Any]:
        model = self.task.build_model(self.config, nnx.Rngs(self.config.seed))
        params = nnx.to_pure_dict(nnx.split(model, nnx.Param, ...)[1])
        state = {
            "step": jnp.zeros([], jnp.int32),
            "params": params,
            "opt_state": self.tx.init(params),
            "rng": jax.random.fold_in(jax.random.PRNGKey(self.config.seed), 1),
        }
        if self.task.init_carry is not None:
            state["carry"] = self.task.init_carry(self.train_batch_size)
        return state

    def state_shardings(self, abstract: Any) -> Any:
        shardings = jax.tree.map(lambda _: self.replicated, abstract)
        if "carry" in abstract:
            shardings["carry"] = jax.tree.map(lambda _: self.batch_sharding, abstract["carry"])
        return shardings

    def make_carry(self, batch_size: int) -> Any:
        """A fresh (zero) carry for `batch_size` rows, sharded on the data axis; compiled once per size."""
        if batch_size not in self._carry_fns:
            shape = jax.eval_shape(lambda: self.task.init_carry(batch_size))
            shardings = jax.tree.map(lambda _: self.batch_sharding, shape)
            self._carry_fns[batch_size] = jax.jit(
                lambda: self.task.init_carry(batch_size), out_shardings=shardings
            )
        return self._carry_fns[batch_size]()

    # -- jitted steps -------------------------------------------------------------------------------------

    def _build_steps(self) -> None:
        task, tx = self.task, self.tx

        def loss_and_grads(params, batch, key, carry):
            def objective(p):
                return task.loss_fn(self.merge(p), batch, key=key, train=True, carry=carry)

            (loss, (sums, new_carry)), grads = jax.value_and_grad(objective, has_aux=True)(params)
            return loss, sums, new_carry, grads

        def eval_sums(params, batch, carry):
            _, (sums, new_carry) = self.eval_loss(
                self.merge(params), batch, key=jax.random.PRNGKey(0), train=False, carry=carry
            )
            return sums, new_carry

        if self.mesh.size > 1:
            loss_and_grads = data_parallel_grads(loss_and_grads, self.mesh)
            eval_sums = data_parallel_sums(eval_sums, self.mesh)

        def train_step(state, batch, acc):
            step = state["step"]
            key = jax.random.fold_in(state["rng"], step)
            loss, sums, new_carry, grads = loss_and_grads(
                state["params"], batch, key, state.get("carry")
            )
            updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
            params = optax.apply_updates(state["params"], updates)
            new_state = dict(state, step=step + 1, params=params, opt_state=opt_state)
            if "carry" in state:
                new_state["carry"] = jax.lax.stop_gradient(new_carry)
            finite = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(grads))
            first_bad = jnp.where((acc["first_bad"] == 0) & ~finite, step + 1, acc["first_bad"])
            new_acc = {
                "sums": metrics.merge(acc["sums"], sums),
                "first_bad": first_bad,
                "last_loss": loss.astype(jnp.float32),
            }
            return new_state, new_acc

        def eval_step(params, batch, carry, acc):
            sums, new_carry = eval_sums(params, batch, carry)
            return metrics.merge(acc, sums), new_carry

        self._train_step_fn = train_step
        self.train_step = None  # compiled lazily with the state's shardings
        self.eval_step = runtime.jit_choosing_cpu_dots(eval_step)

    def compile_train_step(self, state: Any) -> None:
        shardings = self.state_shardings(state)
        self.train_step = runtime.jit_choosing_cpu_dots(
            self._train_step_fn,
            out_shardings=(shardings, self.replicated),
            donate_argnums=(0, 2),
        )

    def zero_acc(self, sums_shape: Mapping[str, Any]) -> dict[str, Any]:
        return jax.device_put(
            {
                "sums": {k: np.zeros((), np.float32) for k in sums_shape},
                "first_bad": np.zeros((), np.int32),
                "last_loss": np.zeros((), np.float32),
            },
            self.replicated,
        )

    def sums_shape(self, state: Any, batch: Any, train: bool) -> Any:
        def f(params, batch, carry):
            loss_fn = self.task.loss_fn if train else self.eval_loss
            _, (sums, _) = loss_fn(
                self.merge(params), batch, key=jax.random.PRNGKey(0), train=train, carry=carry
            )
            return sums

        return jax.eval_shape(f, state["params"], batch, state.get("carry"))

    # -- data --------------------------------------------------------------------------------------------

    def put_batch(self, batch: Batch) -> dict[str, jax.Array]:
        padded = pad_batch(batch, self.local_devices)
        return {
            k: jax.make_array_from_process_local_data(self.batch_sharding, v)
            for k, v in padded.items()
        }

    def prefetch(self, iterable: Iterable[Batch]) -> _Prefetcher:
        return _Prefetcher(iterable, self.put_batch, int(self.config.train.prefetch))

    def prefetch_train(self, iterable: Iterable[Batch]) -> _Prefetcher:
        """`prefetch` of training batches, each as ``(examples, batch)``: its real rows (weight > 0; a
        short last batch's padding rows are none), for the logged examples per second."""

        def transform(batch: Batch) -> tuple[int, dict[str, jax.Array]]:
            return _real_rows(batch), self.put_batch(batch)

        return _Prefetcher(iterable, transform, int(self.config.train.prefetch))

    # -- evaluation ---------------------------------------------------------------------------------------

    def evaluate(self, params: Any, split: str) -> dict[str, float]:
        acc = carry = None
        batches_done = 0
        batches = self.prefetch(self.task.eval_batches[split]())
        try:
            for batch in batches:
                if acc is None:
                    if self.task.init_carry is not None:
                        carry = self.make_carry(batch["weight"].shape[0])
                    if split not in self._eval_sums_shape:
                        self._eval_sums_shape[split] = self.sums_shape(
                            {"params": params, "carry": carry}, batch, train=False
                        )
                    acc = self.zero_acc(self._eval_sums_shape[split])["sums"]
                acc, carry = self.eval_step(params, batch, carry, acc)
                batches_done += 1
                if self.max_ahead and batches_done % self.max_ahead == 0:
                    jax.block_until_ready(acc)
        finally:
            batches.close()
        if acc is None:
            raise UserError(
                f"the {split!r} split gave no evaluation batches; check config.data.path and the split"
                " sizes in the config"
            )
        result = metrics.compute(acc)
        if self.task.derive_metrics is not None:
            result = dict(self.task.derive_metrics(result))
        return result


def _split_model(
    build_model: Callable[..., nnx.Module], config: ml_collections.ConfigDict
) -> tuple[Any, Any, Any]:
    """`(graphdef, abstract Param state, non-Param state)` without running the initialisers eagerly.

    The non-Param state (e.g. RNG streams some modules keep) is materialised by one compiled call, only if
    the model has any.
    """
    abstract = nnx.eval_shape(lambda: build_model(config, nnx.Rngs(config.seed)))
    graphdef, params, others = nnx.split(abstract, nnx.Param, ...)
    if jax.tree.leaves(others):
        others = jax.jit(
            lambda: nnx.split(build_model(config, nnx.Rngs(config.seed)), nnx.Param, ...)[2]
        )()
    return graphdef, params, others


def _devices_info() -> dict[str, Any]:
    devs = jax.devices()
    return {
        "count": len(devs),
        "local_count": jax.local_device_count(),
        "process_count": jax.process_count(),
        "platform": devs[0].platform,
        "kind": devs[0].device_kind,
    }


# The packages whose versions change what a run computes, recorded in results.json["provenance"].
PROVENANCE_PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "numpy",
    "ml-collections",
    "scikit-learn",
)
# Environment variables that change what a run computes or reads, recorded when set.
PROVENANCE_ENV_PREFIXES = ("LSTM_JAX_", "XLA_FLAGS", "JAX_", "PYTHONHASHSEED")


def _git_state(directory: str) -> dict[str, Any] | None:
    """`{"commit", "dirty"}` of the git checkout holding `directory`, or None (no git, not a checkout)."""

    def git(*args: str) -> str:
        # --no-optional-locks: `status` must not take the index lock while the user runs git themselves.
        return subprocess.run(
            ["git", "--no-optional-locks", "-C", directory, *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()

    try:
        # A checkout that tracks lstm_jax itself (not, e.g., a repository around a site-packages).
        git("ls-files", "--error-unmatch", "lstm_jax/__init__.py")
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def _package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PROVENANCE_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def provenance(task: Task, *, resumed_from_step: int) -> dict[str, Any]:
    """What results.json needs to say how to reproduce a run beyond its config: the command (of the session
    that finished it; `resumed_from_step` > 0 when it resumed one), the working directory, the data's
    fingerprint (as saved with its checkpoints), the lstm_jax source's git commit (None outside a checkout;
    `dirty` when tracked files differ from it), Python and package versions and the environment variables
    that change the computation."""
    from lstm_jax import __version__

    source = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {
        "command": list(getattr(sys, "orig_argv", sys.argv)),
        "cwd": os.getcwd(),
        "resumed_from_step": int(resumed_from_step),
        "data_fingerprint": task.data_fingerprint,
        "lstm_jax": {"version": __version__, "source": source, "git": _git_state(source)},
        "python": platform.python_version(),
        "packages": _package_versions(),
        "platform": platform.platform(),
        "env": {
            k: v for k, v in sorted(os.environ.items()) if k.startswith(PROVENANCE_ENV_PREFIXES)
        },
    }


# Tries to read a workdir's checkpoints while a training run of it saves new ones and deletes old ones.
_CHANGED_TRIES = 3


def _checkpoints_changed(workdir: str) -> str:
    return (
        f"the checkpoints in {os.path.join(workdir, 'checkpoints')} changed while they were read"
        f" ({_CHANGED_TRIES} times: a training run of this workdir saves new ones and deletes old"
        " ones); run the command again, or after the training run ends"
    )


def checkpoint_step(config: ml_collections.ConfigDict, workdir: str, *, which: str = "best") -> int:
    """The step of the checkpoint `restore_model` would load (`which` as there), without loading it;
    `UserError` when `workdir` has none."""
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise UserError(
            f"no checkpoint in {os.path.join(workdir, 'checkpoints')}; train first with"
            f" --workdir={workdir}"
        )
    for attempt in range(_CHANGED_TRIES):
        try:
            store = CheckpointStore(workdir, keep=int(config.train.checkpoint_keep))
            try:
                step = store.best_step() if which == "best" else store.latest_step()
            finally:
                store.close()
            break
        except FileNotFoundError:
            # A step folder deleted while Orbax listed them: a training run of this workdir keeps
            # only its last checkpoints. The listing again sees the ones it keeps.
            if attempt == _CHANGED_TRIES - 1:
                raise UserError(_checkpoints_changed(workdir)) from None
    if step is None:
        raise UserError(f"no checkpoint in {store.directory}; train first with --workdir={workdir}")
    return int(step)


def restore_model(
    config: ml_collections.ConfigDict,
    workdir: str,
    build_model: Callable[[ml_collections.ConfigDict, nnx.Rngs], nnx.Module],
    *,
    which: str = "best",
) -> tuple[nnx.Module, int]:
    """Rebuilds the model from the config and loads its parameters from a checkpoint in `workdir`.

    For evaluation, generation and prediction modes. `which` is "best" (the checkpoint of the last
    improvement of the monitored metric; the latest if none was tracked) or "latest". Only the parameters
    are read (not the optimizer state). Returns `(model, step)`.
    """
    impl = config.model.get("impl", "auto") if "model" in config else "auto"
    reason = core.impl_unavailable_reason(impl)
    # Trained elsewhere (a GPU, say): the same model with this machine's impl.
    if reason is not None:
        logging.warning("the run's model.impl=%r cannot run here (%s); using 'auto'", impl, reason)
        config = ml_collections.ConfigDict(config.to_dict())
        config.model.impl = "auto"
    step = checkpoint_step(config, workdir, which=which)
    if not os.path.exists(os.path.join(workdir, RESULTS_FILE)):
        logging.warning(
            "the run in %s has not finished (no %s): using its %s checkpoint so far, step %d",
            workdir,
            RESULTS_FILE,
            which,
            step,
        )
    saved_best = _saved_best_step(workdir) if which == "best" else None
    if saved_best is not None and saved_best != step:
        logging.warning(
            "the run's best checkpoint (step %d) is no longer in %s (see corrupt_checkpoints/);"
            " using the checkpoint of step %d",
            saved_best,
            os.path.join(workdir, "checkpoints"),
            step,
        )
    graphdef, params, others = _split_model(build_model, config)
    _check_model_fits_run(config, workdir, build_model, params)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(params)
    )
    restored, step = _read_params(config, workdir, step, abstract, which=which)
    state = jax.tree.map(lambda x: x, params)
    nnx.replace_by_pure_dict(state, restored)
    return nnx.merge(graphdef, state, others), int(step)


def _read_params(
    config: ml_collections.ConfigDict, workdir: str, step: int, abstract: Any, *, which: str
) -> tuple[Any, int]:
    """`(parameters, step)` of checkpoint `step` of `workdir` (of the `which` one after it, when a
    training run of the workdir deleted it while it was read); `UserError` for damaged files."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")  # as in CheckpointStore
    for attempt in range(_CHANGED_TRIES):
        path = os.path.join(directory, str(step))
        try:  # onto the first local device (the leaves carry no sharding)
            return restore_params(path, abstract), step
        except UserError:  # another model's parameters (a run without config.json to check against)
            raise
        except Exception as e:  # noqa: BLE001 (any read/decode failure: the files are damaged)
            if not os.path.isdir(path):  # deleted while read, not damaged: replaced by training
                if attempt == _CHANGED_TRIES - 1:
                    raise UserError(_checkpoints_changed(workdir)) from None
                step = checkpoint_step(config, workdir, which=which)
                continue
            refused = not_permitted(e, path)
            if refused is not None:  # the CLI names the file and says to check its permissions
                raise refused from None
            # Read-only modes leave the workdir as it is: the user decides what to do with the files.
            raise UserError(
                f"the {which} checkpoint (step {step}) in {directory} cannot be read"
                f" ({root_reason(e)}); its files are damaged: move {path} out of {directory} to use"
                f" the {which} of the others, or train again"
            ) from None
    raise AssertionError("unreachable: every try returns or raises")


def _saved_best_step(workdir: str) -> int | None:
    """results.json's `best_step` when that checkpoint is gone from ``<workdir>/checkpoints`` (moved
    aside as damaged), else None."""
    path = os.path.join(workdir, RESULTS_FILE)
    if not os.path.exists(path):
        return None
    with contextlib.suppress(UserError, OSError, AttributeError, TypeError, ValueError):
        best = read_json(path).get("best_step")
        if best is not None and not os.path.isdir(os.path.join(workdir, "checkpoints", str(best))):
            return int(best)
    return None


def check_run(config: ml_collections.ConfigDict, workdir: str) -> None:
    """`UserError` for a config field or a `workdir` that cannot train, before anything is read or written.

    Tasks call it before building their data (a batch size of 0 would otherwise fail deep inside a data
    layout); `train_and_evaluate` calls it again.
    """
    config_utils.validate_config(config)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir={workdir} is a file, not a directory; pass a run directory")


def _param_shapes(params: Any) -> dict[str, Any]:
    return jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), nnx.to_pure_dict(params))


def _check_model_fits_run(
    config: ml_collections.ConfigDict,
    workdir: str,
    build_model: Callable[[ml_collections.ConfigDict, nnx.Rngs], nnx.Module],
    params: Any,
) -> None:
    """`UserError` when `config` builds a model whose parameters differ from those of the run saved in
    `workdir` (a `--config` with another model size or vocabulary than the trained one).

    Other differences (a data path to evaluate on, batch sizes, dropout rates) are allowed; a model field
    or `MODEL_DATA_FIELDS` field that changes what the model computes with the same parameter shapes (a
    pooling, an activation, the padding mask) is refused too, naming the saved and given values.
    """
    if not os.path.exists(os.path.join(workdir, config_utils.CONFIG_FILE)):
        return
    saved = config_utils.load_config(workdir)
    diff = [d for d in config_utils.config_diff(saved, config) if d not in EXECUTION_FIELDS]
    if not diff:
        return
    # How the run was computed (impl="cudnn" on a GPU) is not what the model is.
    if "model" in saved and "model" in config:
        saved = ml_collections.ConfigDict(saved.to_dict())
        saved.model.impl = config.model.get("impl", "auto")
    saved_params = _split_model(build_model, saved)[1]
    if _param_shapes(saved_params) == _param_shapes(params):
        # Same shapes, but maybe another computation: a pooling, an activation, the padding mask.
        computed = [
            d
            for d in diff
            if (d.startswith("model.") and d not in TRAINING_ONLY_FIELDS and "dropout" not in d)
            or d in MODEL_DATA_FIELDS
        ]
        if not computed:
            return
        old, new = config_utils.flatten_config(saved), config_utils.flatten_config(config)
        values = "; ".join(
            f"{d}: saved {old.get(d, '<absent>')!r}, given {new.get(d, '<absent>')!r}"
            for d in computed[:3]
        )
        raise UserError(
            f"this config computes another model than the run saved in {workdir} ({values}), with"
            " the same parameter shapes: its outputs would not be the trained model's; leave out"
            " --config to use the run's saved config.json, or pass the settings it was trained with"
        )
    named = [d for d in diff if d.startswith("model.")] + [d for d in diff if d.startswith("data.")]
    named = named or diff
    fields = ", ".join(f"config.{d}" for d in named[:4]) + (", ..." if len(named) > 4 else "")
    raise UserError(
        f"the model of this config does not match the run saved in {workdir} (differing: {fields});"
        " leave out --config to use the run's saved config.json, or pass its model and vocabulary"
        " settings"
    )


def saved_results(workdir: str) -> dict[str, Any]:
    """The `results.json` of a finished run in `workdir` (metrics, history, reports, samples), or a
    UserError naming the file and the fix when there is none."""
    path = os.path.join(workdir, RESULTS_FILE)
    if not os.path.exists(path):
        raise UserError(f"{path} is missing; train first with --workdir={workdir}")
    return read_json(path)


def load_trained(
    config: ml_collections.ConfigDict | None,
    workdir: str,
    build_model: Callable[[ml_collections.ConfigDict, nnx.Rngs], nnx.Module],
    *,
    which: str = "best",
    applied: Sequence[str] = ("generate",),
    derived: Sequence[str] = (),
) -> tuple[ml_collections.ConfigDict, nnx.Module, int]:
    """The run in `workdir` as it was trained: `(saved config, model, checkpoint step)`.

    For modes that need nothing but the workdir (generation): the config saved in `workdir` takes
    precedence over `config`, which is used only when the workdir has none (a run from before configs
    were saved). When both exist, the sections of `config` named in `applied` (``generate``: the
    sampling settings, which the mode's flags override in turn) replace the saved ones, and any other
    field where `config` differs from the saved run (but those in `derived`, filled in from the data
    in training, and ``data.path``: these modes read no data) is named in a warning: the saved value is
    the one used. `which` as in `restore_model`.
    """
    path = os.path.join(workdir, config_utils.CONFIG_FILE)
    if config is None or os.path.exists(path):
        given = config
        config = config_utils.load_config(workdir)  # the trained model's settings
        if given is not None:
            config = _apply_given_sections(config, given, path, applied, derived)
    model, step = restore_model(config, workdir, build_model, which=which)
    return config, model, step


def _apply_given_sections(
    saved: ml_collections.ConfigDict,
    given: ml_collections.ConfigDict,
    path: str,
    applied: Sequence[str],
    derived: Sequence[str],
) -> ml_collections.ConfigDict:
    """`saved` with `given`'s sections in `applied`; a warning names the other fields that differ."""
    ignored = [
        d
        for d in config_utils.config_diff(saved, given)
        if d.split(".", 1)[0] not in applied and d not in derived and d != "data.path"
    ]
    if ignored:
        shown = ", ".join(f"config.{d}" for d in ignored[:5])
        more = f" and {len(ignored) - 5} more" if len(ignored) > 5 else ""
        logging.warning(
            "--config differs from the run's saved %s in %s%s; this mode uses the saved values (the"
            " model as trained); only its %s settings are taken from --config",
            path,
            shown,
            more,
            "/".join(applied),
        )
    config = ml_collections.ConfigDict(saved.to_dict())
    for section in applied:
        if section in given:
            config[section] = ml_collections.ConfigDict(given[section].to_dict())
    return config


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, task: Task
) -> dict[str, Any]:
    """Trains `task` under `config`, checkpointing in `workdir`; resumes if `workdir` has a checkpoint.

    Args:
      config: an `engine_defaults()`-based config (validated here; `UserError` names a bad field).
      workdir: run directory (created). Re-running with the same workdir resumes exactly; a finished run
        returns its saved results without training.
      task: the experiment's `Task`.

    Returns:
      The results dict also written to ``<workdir>/results.json``.
    """
    t_start = time.time()
    check_run(config, workdir)
    for line in config_utils.ignored_fields(config):
        logging.warning("%s", line)
    workdir = os.path.abspath(workdir)
    created = not os.path.isdir(workdir)
    os.makedirs(workdir, exist_ok=True)
    lock = None
    try:
        # The same command started twice: the second one is an error, not a run beside the first.
        lock = _lock_workdir(workdir)
        saved = _check_saved_config(
            config,
            workdir,
            fixed=task.fixed_on_resume,
            derived=task.derived_fields,
            data_checked=task.data_fingerprint is not None,
        )
        eng = _Engine(config, workdir, task)  # builds the model: an impossible one is a UserError
        if problem := optim.warmup_problem(config.optimizer, eng.total_steps):
            logging.warning("%s", problem)
    except BaseException:
        if lock is not None:
            lock.close()
        if created:  # leave no empty run directory behind an error
            _remove_empty_run(workdir)
        raise
    is_main = eng.is_main
    failed = True
    try:
        store = CheckpointStore(workdir, keep=int(config.train.checkpoint_keep))
        logger = MetricsLogger(workdir, enabled=is_main)
        try:
            results = _run(eng, store, logger, t_start, saved, lock)
            failed = False
            return results
        except OSError as e:  # a full or read-only disk: say where the same command goes on from
            if getattr(e, "resume_hint", None) is None:
                last = store.latest_step()
                e.resume_hint = (  # type: ignore[attr-defined]
                    "and once that is done the same command starts again from step 0 (no checkpoint"
                    " was saved yet)"
                    if last is None
                    else "and once that is done the same command resumes from the checkpoint of step"
                    f" {last} in {store.directory}"
                )
            raise
        finally:
            logger.close()
            store.close()
    finally:
        if lock is not None:
            lock.close()  # releases the flock
        if created and failed:
            # Refused before writing anything (a full disk): no empty run directory.
            _remove_empty_run(workdir)


def _remove_empty_run(workdir: str) -> None:
    """Deletes `workdir`, which this run created, when it holds nothing but the lock file and an empty
    checkpoints folder (a run stopped before writing anything); anything else in it is left alone."""
    left = {"?"}
    with contextlib.suppress(OSError):
        os.rmdir(os.path.join(workdir, "checkpoints"))
    with contextlib.suppress(OSError):
        left = set(os.listdir(workdir))
    if left <= {LOCK_FILE}:
        with contextlib.suppress(OSError):
            os.remove(os.path.join(workdir, LOCK_FILE))
        with contextlib.suppress(OSError):
            os.rmdir(workdir)


# Held (flock) by the training process of a workdir while it runs; it names that process.
LOCK_FILE = ".lstm_jax.lock"


def _lock_workdir(workdir: str) -> Any:
    """The open, exclusively locked ``<workdir>/.lstm_jax.lock`` (None off process 0, or where `fcntl`
    does not exist); `UserError` naming the holder when another training run has it. The lock goes with
    its process (closed, killed or crashed), so it never needs removing by hand."""
    if jax.process_index() != 0:
        return None
    try:
        import fcntl
    except ImportError:  # pragma: no cover (not POSIX)
        return None
    f = open(os.path.join(workdir, LOCK_FILE), "a+", encoding="utf-8")  # noqa: SIM115
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise UserError(
            f"{workdir} is in use by another training run ({holder}); wait for it to finish or stop it"
            " (Ctrl-C or SIGTERM save a checkpoint), or pass another --workdir"
        ) from None
    return f


def _name_lock_holder(lock: Any) -> None:
    """Writes this process into the held lock file, once the run's checks have passed (a run refused by
    them leaves every file of the workdir as it was, the lock's included)."""
    if lock is None:
        return
    text = (
        f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
    )
    try:
        # Unbuffered: a full disk fails here, naming the file, and not again when the lock is closed.
        os.ftruncate(lock.fileno(), 0)
        os.write(lock.fileno(), text.encode())
    except OSError as e:
        raise os_error_naming(e, lock.name) from e


# Config fields under `model` that change how the model is computed, not what it is.
EXECUTION_FIELDS = ("model.impl",)
# Model fields that do not change what a trained model computes at inference: how it is computed, and
# (by name, "dropout" in it) every dropout rate.
TRAINING_ONLY_FIELDS = (*EXECUTION_FIELDS, "model.unroll")
# Data fields that change what a trained model computes (a --config given to eval or predict must agree).
MODEL_DATA_FIELDS = ("data.mask", "data.layout", "data.form")

# What may differ when a saved run is resumed (or a finished one re-run): how long it trains, how often
# it logs, evaluates and checkpoints, how it is computed, gradient clipping (documented), early stopping,
# and what is made after training (generation, reports). Any other change (data, splits, seed, model,
# optimizer, batch size, monitored metric) would make the workdir's checkpoints, metrics and saved config
# describe a different run, so it is an error that touches nothing.
RESUMABLE_FIELDS = EXECUTION_FIELDS + (
    "optimizer.clip_norm",
    "train.num_epochs",
    "train.num_steps",
    "train.eval_every_steps",
    "train.log_every_steps",
    "train.checkpoint_keep",
    "train.prefetch",
    "train.eval_batch_size",
    "train.logits_chunk",
)
RESUMABLE_SECTIONS = ("early_stopping", "generate", "report")
# Where the data is read from may change on resume when the data there is the run's: the fingerprint of
# the encoded data, saved with every checkpoint, is checked (`_check_same_data`) before anything is
# trained (the data moved to another disk or machine; without it such a run could not be resumed).
MOVABLE_DATA_FIELD = "data.path"


_RESUMABLE_TEXT = (
    ", ".join(RESUMABLE_FIELDS + tuple(f"{s}.*" for s in RESUMABLE_SECTIONS))
    + f", and {MOVABLE_DATA_FIELD} to the same data moved elsewhere"
)


def _resumable(field: str) -> bool:
    return field in RESUMABLE_FIELDS or field.split(".", 1)[0] in RESUMABLE_SECTIONS


def _check_saved_config(
    config: ml_collections.ConfigDict,
    workdir: str,
    fixed: Sequence[str] = (),
    derived: Sequence[str] = (),
    data_checked: bool = False,
) -> ml_collections.ConfigDict | None:
    """The config of the run saved in `workdir` (None if there is none), checked against `config`.

    The run's config is its config.json, or, when that is missing, the copy in its results.json (a
    `UserError` when neither is there but checkpoints are); a config.json without any checkpoint or
    results (a start that stopped before its first checkpoint) is not a run, and is not checked. A field
    the saved config lacks (a run saved before the field existed) is allowed with a warning when it is
    given its `engine_defaults` value (the one that run used); a changed or removed field that is not
    `_resumable`, or is in `fixed`, is a `UserError` naming it, its saved value and the fixes (for a
    field in `derived`, filled in from the data, the fix is the data's). `data_checked` (the task has a
    data fingerprint, compared with the checkpoint's once it is restored): ``data.path`` may change too.
    """
    path = os.path.join(workdir, config_utils.CONFIG_FILE)
    checkpoints = os.path.join(workdir, "checkpoints")
    holds_checkpoints = has_checkpoints(workdir)
    if not os.path.exists(path):
        if not holds_checkpoints:
            return None
        saved = _config_in_results(workdir)
        if saved is None:
            raise UserError(
                f"{path} is missing, but {checkpoints} holds a run's checkpoints, so this config cannot"
                " be checked against the one they were trained with; put the run's config.json back"
                ' (a finished run\'s results.json has it under "config"), or use a new --workdir'
            )
    elif not holds_checkpoints and not os.path.exists(os.path.join(workdir, RESULTS_FILE)):
        # A start that stopped before its first checkpoint: nothing to resume, nothing to protect
        # (its config.json is replaced once this run's checks have passed).
        return None
    else:
        saved = config_utils.load_config(workdir)
    diff = config_utils.config_diff(saved, config)
    if not diff:
        return saved
    old = dict(config_utils.flatten_config(saved))
    new = dict(config_utils.flatten_config(config))
    # A field the saved run predates ran as the engine's default: only another value is a change.
    defaults = config_utils.flatten_config(config_utils.engine_defaults())
    for d in diff:
        if d not in old and d in defaults and new.get(d) != defaults[d]:
            old[d] = defaults[d]
    blocking = [
        d
        for d in diff
        if d in old
        and (d in fixed or not (_resumable(d) or (data_checked and d == MOVABLE_DATA_FIELD)))
    ]
    from_data = [d for d in blocking if d in derived]
    if from_data and all(d in derived or d == "data.path" for d in blocking):
        d = from_data[0]
        raise UserError(
            f"the data differs from the run saved in {workdir}: config.{d}, which is filled in from"
            f" the data, was {old[d]!r} there and is {new.get(d)!r} now (a data file edited in place,"
            " or another --config.data.path); restore that data to resume, or use a new --workdir to"
            " train on this data"
        )
    if blocking:
        # The model first (its message has been the one users saw, and tests match), data-derived last.
        blocking.sort(key=lambda d: (d in derived, not d.startswith("model")))
        names = ", ".join(f"config.{d}" for d in blocking[:3])
        values = "; ".join(
            f"{d}: saved {old[d]!r}, given {new.get(d, '<absent>')!r}" for d in blocking[:3]
        )
        more = f" and {len(blocking) - 3} more" if len(blocking) > 3 else ""
        raise UserError(
            f"{names}{more} {'differs' if len(blocking) == 1 else 'differ'} from the run saved in"
            f" {workdir} ({values}); use a new --workdir for a different run, or drop the override to"
            f" resume this one (what may change on resume: {_RESUMABLE_TEXT})"
        )
    logging.warning("config differs from the saved run in %s: %s", workdir, ", ".join(diff))
    return saved


def _config_in_results(workdir: str) -> ml_collections.ConfigDict | None:
    """The config a finished run recorded in its results.json (None when there is none to read)."""
    path = os.path.join(workdir, RESULTS_FILE)
    if not os.path.exists(path):
        return None
    with contextlib.suppress(UserError, OSError, ValueError):
        done = read_json(path)
        if isinstance(done, dict) and isinstance(done.get("config"), dict):
            return ml_collections.ConfigDict(done["config"])
    return None


def _check_monitor(eng: _Engine, state: Any) -> None:
    """`UserError` before anything is written when `config.train.monitor` names no metric the task
    reports: a misspelled name would otherwise keep no best checkpoint, silently. The metric names come
    from the loss's sums for one training batch (shapes only, nothing is computed)."""
    monitor = eng.monitor
    val = monitor.startswith("val_")
    if val and "validation" not in eng.task.periodic_eval:
        if eng.config.early_stopping.enabled:
            raise UserError(
                f"early stopping watches config.train.monitor={monitor!r}, but this run has no"
                " validation split; pass --config.early_stopping.enabled=False, or"
                f" --config.train.monitor={monitor[4:]!r} to watch the training {monitor[4:]}"
            )
        return  # no validation split: nothing to track, the latest checkpoint is used
    batches = eng.task.train_batches(0, 0)
    try:
        batch = next(iter(batches), None)
    finally:
        getattr(batches, "close", lambda: None)()
    if batch is None:
        return
    sums = eng.sums_shape(state, eng.put_batch(batch), train=not val)
    names = metrics.compute({k: 1.0 for k in sums})
    if eng.task.derive_metrics is not None:
        names = dict(eng.task.derive_metrics(names))
    if (monitor[4:] if val else monitor) not in names:
        reported = ", ".join(sorted(names))
        raise UserError(
            f"config.train.monitor={monitor!r} is not a metric this run reports ({reported}, and"
            f" val_<name> of each on validation); pass --config.train.monitor=val_loss or another"
        )


def _run(
    eng: _Engine,
    store: CheckpointStore,
    logger: MetricsLogger,
    t_start: float,
    saved: ml_collections.ConfigDict | None,
    lock: Any = None,
) -> dict[str, Any]:
    config, task, workdir = eng.config, eng.task, eng.workdir
    es_cfg = config.early_stopping

    abstract = jax.eval_shape(eng.init_state)
    restored = _restore_latest(eng, store, abstract)
    # metrics.jsonl is read once here, for the checks of a fresh start and the set-aside of `restart_at`.
    metrics_lines = read_lines(logger.path)
    if restored is None:
        _check_fresh_start(store, workdir, metrics_lines)
        state = jax.jit(eng.init_state, out_shardings=eng.state_shardings(abstract))()
        meta: dict[str, Any] = {}
        step = 0
    else:
        step, state, meta = restored
        _check_same_data(meta, task, step, workdir, saved, config)
    if restored is None:
        _check_monitor(eng, state)
    start_step = step

    history: list[dict[str, Any]] = list(meta.get("history", []))
    es = dict(
        meta.get("early_stopping", {"best": None, "best_step": None, "wait": 0, "improvements": 0})
    )
    position = meta.get("position", {"epoch": 0, "batch": 0})
    epoch, index = int(position["epoch"]), int(position["batch"])
    wall_before = float(meta.get("wall_time_s", 0.0))
    stopped_early = bool(meta.get("stopped_early", False))
    since_eval: dict[str, float] | None = meta.get("since_eval")
    unlogged: dict[str, Any] | None = meta.get("unlogged")  # accumulated but not logged (a signal)

    if stopped_early and not es_cfg.enabled and step < eng.total_steps:
        # Early stopping switched off on resume (a documented resumable change): train on from the last
        # checkpoint (the weights of the step it stopped at, not the best ones it reports).
        logging.info(
            "the run in %s stopped early at step %d; with early stopping off it trains on to step %d",
            workdir,
            step,
            eng.total_steps,
        )
        stopped_early = False
    results_path = os.path.join(workdir, RESULTS_FILE)
    finished = stopped_early or step >= eng.total_steps
    if finished and os.path.exists(results_path):
        done = read_json(results_path)
        if isinstance(done, dict) and done.get("steps") == step:
            # A finished run is left as it is: its config.json, artefacts and results stay untouched.
            ignored = [] if saved is None else config_utils.config_diff(saved, config)
            if ignored:
                if stopped_early and step < eng.total_steps:
                    fix = "pass --config.early_stopping.enabled=False"
                elif int(config.train.num_steps):
                    # num_steps sets the length: num_epochs is not read while it is set.
                    fix = (
                        f"raise --config.train.num_steps above {step}; config.train.num_epochs is"
                        " not read while config.train.num_steps is set"
                    )
                else:
                    fix = "raise --config.train.num_epochs"
                logging.warning(
                    "the run in %s finished at step %d, so %s (changed from its config.json) do not"
                    " apply; returning its saved results (to train on, %s)",
                    workdir,
                    step,
                    ", ".join(f"config.{d}" for d in ignored),
                    fix,
                )
            else:
                logging.info(
                    "the run in %s finished at step %d; returning its saved results", workdir, step
                )
            config_path = os.path.join(workdir, config_utils.CONFIG_FILE)
            if eng.is_main and saved is not None and not os.path.exists(config_path):
                # The modes that read the workdir alone need it: the run's own, from results.json.
                config_utils.save_config(saved, workdir)
                logging.warning("wrote %s back from %s", config_path, RESULTS_FILE)
            return done
    if not finished:  # (a finished run only writes its results: no checkpoint)
        # Every process writes its part of each checkpoint: each checks its disk has room for one.
        _check_free_space(store, abstract, None if restored is None else step)
    if eng.is_main:  # only now: a config that cannot resume this workdir never overwrites its files
        _name_lock_holder(lock)
        if restored is None:
            _set_aside_another_start(config, workdir)
            if not os.path.exists(logger.path):  # moved to earlier_start-<time>/
                metrics_lines = None
        config_utils.save_config(config, workdir)
        if task.artefacts:
            save_artefacts(workdir, task.artefacts)

    if restored is not None or any(line.strip() for line in metrics_lines or ()):
        # What a crash (kill -9, full disk) logged after the checkpoint is logged again from it: one history.
        # (A start from step 0 too, even when no line parses: a half line the first record would follow.)
        _set_aside_orphaned_records(logger, step, redo_final=finished, lines=metrics_lines)
    if restored is not None:
        _log_lost_evaluation(logger, history, step, task.periodic_eval, metrics_lines)
    if restored is not None and not finished:
        logging.info("resuming from the checkpoint at step %d in %s", step, store.directory)
        _warn_schedule_change(eng, meta, step)
        logger.write("resume", step, {"from_step": step})
    if not finished:
        eng.compile_train_step(state)
    progress = Progress(
        total_steps=eng.total_steps,
        steps_per_epoch=eng.steps_per_epoch,
        num_epochs=eng.num_epochs,
        enabled=eng.is_main,
    )
    acc = None
    interval_start, interval_examples = time.time(), 0

    def fetch_acc() -> dict[str, Any]:
        """The device accumulator on the host; `UserError` if a step since the last fetch was not finite."""
        host = jax.device_get(acc)
        first_bad = int(host["first_bad"])
        if first_bad:
            last = store.latest_step()
            kept = (
                "no checkpoint had been written yet"
                if last is None
                else f"the last good checkpoint (step {last}) in {store.directory} is intact"
            )
            raise UserError(
                f"non-finite loss or gradient at step {first_bad} (epoch {epoch + 1}, last loss"
                f" {float(host['last_loss'])}); training stopped and {kept}; lower"
                " config.optimizer.learning_rate"
                f" (now {config.optimizer.learning_rate}) or set config.optimizer.clip_norm (e.g. 1.0)"
            )
        return host

    def flush() -> None:
        """Fetches the device accumulator (the only per-interval host sync) and logs train metrics."""
        nonlocal acc, since_eval, interval_start, interval_examples
        host = fetch_acc()
        sums = {k: float(v) for k, v in host["sums"].items()}
        since_eval = sums if since_eval is None else metrics.merge(since_eval, sums)
        elapsed = max(time.time() - interval_start, 1e-9)
        rate = interval_examples / elapsed
        values = metrics.compute(sums)
        if task.derive_metrics is not None:
            values = dict(task.derive_metrics(values))
        logger.write(
            "train",
            step,
            {**values, "learning_rate": float(eng.schedule(step - 1)), "examples_per_s": rate},
        )
        progress.report(step, values, rate)
        acc = eng.zero_acc(host["sums"])
        interval_start, interval_examples = time.time(), 0

    def evaluate_and_save() -> bool:
        """Evaluates the periodic splits, updates early stopping, saves a checkpoint; True = stop."""
        nonlocal since_eval, stopped_early
        record: dict[str, Any] = {"epoch": round(step / eng.steps_per_epoch, 4), "step": step}
        train_avg = metrics.compute(since_eval) if since_eval else {}
        if task.derive_metrics is not None and train_avg:
            train_avg = dict(task.derive_metrics(train_avg))
        record["train"] = train_avg
        for split in task.periodic_eval:
            if split in task.eval_batches:
                record[split] = eng.evaluate(state["params"], split)
        history.append(record)
        since_eval = None
        value = _monitor_value(record, eng.monitor)
        split = "validation" if eng.monitor.startswith("val_") else "train"
        if value is None and (es_cfg.enabled or record.get(split)):
            # A misspelled metric would otherwise keep no best checkpoint, silently. (Without a
            # validation split a val_ monitor has nothing to track: the latest checkpoint is used.)
            raise UserError(
                f"config.train.monitor={eng.monitor!r} is not a reported metric (train:"
                f" {sorted(record['train'])}, validation: {sorted(record.get('validation', {}))});"
                " set it to val_<metric> or <metric>"
            )
        improvement = -1
        if _improved(value, es["best"], eng.mode, float(es_cfg.min_delta)):
            es["best"], es["best_step"], es["wait"] = value, step, 0
            es["improvements"] += 1
            improvement = es["improvements"]
        else:
            es["wait"] += 1
        # As Keras: only an evaluation that did not improve stops a run (patience 0 stops at the first
        # such one, as 1 does), and never the run's first evaluation.
        stop = bool(
            es_cfg.enabled
            and improvement < 0
            and es["wait"] >= int(es_cfg.patience)
            and len(history) > 1
        )
        if stop:
            stopped_early = True
            logging.info(
                "early stopping at step %d: %s has not improved on %.6g (step %s) for %d evaluations",
                step,
                eng.monitor,
                es["best"],
                es["best_step"],
                es["wait"],
            )
        logging.info(
            "epoch %.2f (step %d): train %s | %s",
            record["epoch"],
            step,
            format_metrics(record["train"]),
            " | ".join(
                f"{s} {format_metrics(record[s])}" for s in task.periodic_eval if s in record
            ),
        )
        store.save(step, state, meta_now(), improvement=improvement)
        # Logged once saved: metrics.jsonl's evaluation records each stand for a checkpoint written.
        for s in task.periodic_eval:
            if s in record:
                logger.write(s, step, record[s])
        return stop

    def meta_now() -> dict[str, Any]:
        """The checkpoint's meta: where training is and what resuming needs to continue exactly."""
        return {
            "position": {"epoch": epoch, "batch": index},
            "history": history,
            "early_stopping": es,
            "stopped_early": stopped_early,
            "since_eval": since_eval,  # train sums since the last evaluation (None right after one)
            "wall_time_s": wall_before + time.time() - t_start,
            "total_steps": eng.total_steps,
            "steps_per_epoch": eng.steps_per_epoch,
            "data_fingerprint": task.data_fingerprint,
        }

    def interrupt(signum: int) -> None:
        """Saves the state after the current step (unless an evaluation just did) and raises."""
        if store.latest_step() != step:
            meta = meta_now()
            if acc is not None and interval_examples:  # the steps since the last flush, as they are
                host = fetch_acc()
                meta["unlogged"] = {
                    "sums": {k: float(v) for k, v in host["sums"].items()},
                    "last_loss": float(host["last_loss"]),
                    "examples": interval_examples,
                    # Their training time: the resumed interval's examples per second cover them too.
                    "seconds": time.time() - interval_start,
                }
            store.save(step, state, meta)
        raise Interrupted(
            f"{signal.Signals(signum).name} at step {step} of {eng.total_steps} (epoch {epoch + 1}):"
            f" saved a checkpoint in {store.directory}; run the same command again to resume from it",
            signum,
        )

    with _StopSignals() as stops:
        while not finished:
            if index >= eng.steps_per_epoch:
                epoch, index = epoch + 1, 0
            if index == 0 and "carry" in state:
                state["carry"] = eng.make_carry(eng.train_batch_size)
            progress.start_epoch(epoch, index, step)
            batches = eng.prefetch_train(task.train_batches(epoch, index))
            try:
                for examples, batch in batches:
                    if acc is None:
                        acc = eng.zero_acc(eng.sums_shape(state, batch, train=True))
                        if unlogged:  # resumed after a signal: the float32 sums continue exactly
                            acc["sums"] = {
                                k: v + np.float32(unlogged["sums"][k])
                                for k, v in acc["sums"].items()
                            }
                            acc["last_loss"] = acc["last_loss"] + np.float32(unlogged["last_loss"])
                            interval_examples = int(unlogged["examples"])
                            # (absent in checkpoints saved before it was kept: 0 s)
                            interval_start = time.time() - float(unlogged.get("seconds", 0.0))
                            unlogged = None
                    state, acc = eng.train_step(state, batch, acc)
                    step, index = step + 1, index + 1
                    if eng.max_ahead and step % eng.max_ahead == 0:
                        jax.block_until_ready(acc)
                    interval_examples += examples
                    progress.advance()
                    end_of_epoch = index >= eng.steps_per_epoch
                    every = int(config.train.eval_every_steps)
                    do_eval = (
                        end_of_epoch or step >= eng.total_steps or (every and step % every == 0)
                    )
                    if do_eval or step % int(config.train.log_every_steps) == 0:
                        flush()
                    if do_eval:
                        stop = evaluate_and_save()
                        # The evaluation and its checkpoint are no training time: the next logged
                        # interval's examples per second count from here.
                        interval_start = time.time()
                        if stop:
                            finished = True
                            break
                    if step >= eng.total_steps:
                        finished = True
                        break
                    if stops.signum is not None:
                        interrupt(stops.signum)
                    if end_of_epoch:
                        break
                else:
                    if index < eng.steps_per_epoch:
                        raise UserError(
                            f"the training data of epoch {epoch + 1} ended after {index} batches but the"
                            f" task declared steps_per_epoch={eng.steps_per_epoch}; fix the task's"
                            " train_batches"
                        )
            finally:
                batches.close()
                progress.end_epoch()

        # -- the end: restore best, final evaluation, results ------------------------------------------------
        # A signal from here on stops at once: there is no step left to wait for, and the checkpoint of the
        # last step is saved (every run's last step is evaluated and saved), which the same command
        # finishes from without training.
        try:
            stops.at_once()
            final_params = state["params"]
            restored_best = False
            best_unreadable: dict[str, Any] | None = None
            best_step = es.get("best_step")
            best_is_earlier = best_step is not None and best_step != step

            def read_best_params() -> Any:
                # Only the parameters: the optimizer state's layout may differ (clipping switched on resume).
                target = _with_shardings(abstract, eng.state_shardings(abstract))["params"]
                return store.restore_params(best_step, target)

            if es_cfg.enabled and es_cfg.restore_best_weights and best_is_earlier:
                try:
                    best_params = read_best_params()
                except Exception as e:  # noqa: BLE001 (any read/decode failure: the files are damaged)
                    refused = not_permitted(e, os.path.join(store.directory, str(best_step)))
                    if refused is not None:  # another user's files, not damaged ones: nothing moved
                        raise refused from e
                    moved = store.quarantine(best_step)
                    best_unreadable = {
                        "step": best_step,
                        "error": root_reason(e),
                        "moved_to": moved,
                    }
                    logging.warning(
                        "the best checkpoint (step %d) in %s cannot be read (%s); %s; evaluating the last"
                        " weights (step %d) instead",
                        best_step,
                        store.directory,
                        best_unreadable["error"],
                        f"moved it to {moved}" if moved else "it is no longer there",
                        step,
                    )
                else:
                    final_params = best_params
                    restored_best = True
                    logging.info(
                        "restored the best weights (step %d, %s=%.6g)",
                        best_step,
                        eng.monitor,
                        es["best"],
                    )

            final: dict[str, dict[str, float]] = {}
            last = history[-1] if history else {}
            todo = []  # the splits the last periodic evaluation did not cover with these weights
            for split in task.eval_batches:
                if not restored_best and last.get("step") == step and split in last:
                    final[split] = last[split]
                else:
                    todo.append(split)
            final_model = eng.merge(final_params)
            if todo and task.final_metrics is not None:
                computed = {s: dict(m) for s, m in task.final_metrics(final_model, todo).items()}
                if sorted(computed) != sorted(todo):
                    raise ValueError(
                        f"task.final_metrics returned splits {sorted(computed)}, expected {sorted(todo)}"
                    )
            else:
                computed = {s: eng.evaluate(final_params, s) for s in todo}
            for split in todo:
                final[split] = computed[split]
                logger.write(f"final_{split}", step, final[split])
            final = {s: final[s] for s in task.eval_batches}
            best_record = next((r for r in history if r["step"] == best_step), None)
            results: dict[str, Any] = {
                "status": "finished",
                "metrics": {
                    "final": final,
                    "best": None
                    if best_record is None
                    else {"monitor": eng.monitor, "value": es["best"], **best_record},
                    "evaluated_weights": "best" if restored_best else "last",
                },
                **({"best_checkpoint_unreadable": best_unreadable} if best_unreadable else {}),
                "history": history,
                "config": config_utils.saved_config_dict(config),
                "wall_time_s": round(wall_before + time.time() - t_start, 3),
                "steps": step,
                "epochs": round(step / eng.steps_per_epoch, 4),
                "stopped_early": stopped_early,
                "best_step": best_step,
                "devices": _devices_info(),
                "data": dict(task.data_info),
                "workdir": workdir,
                "provenance": provenance(task, resumed_from_step=start_step),
            }
            if eng.is_main:
                curves = plot_training_curves(
                    history, os.path.join(workdir, CURVES_FILE), title=os.path.basename(workdir)
                )
                results["plots"] = [os.path.basename(curves)] if curves else []
            if task.extra_results is not None:
                extra_model = final_model
                if (
                    task.extra_results_on_best
                    and best_is_earlier
                    and not restored_best
                    and best_unreadable is None
                ):
                    try:
                        extra_model = eng.merge(read_best_params())
                        logging.info(
                            "samples from the best checkpoint (step %d), the one --mode=generate"
                            " loads",
                            best_step,
                        )
                    except Exception as e:  # noqa: BLE001 (damaged files: the final weights instead)
                        logging.warning(
                            "the best checkpoint (step %d) cannot be read (%s); samples from the"
                            " last weights (step %d)",
                            best_step,
                            root_reason(e),
                            step,
                        )
                results.update(task.extra_results(extra_model, results))
            # Nothing is left to stop but the (atomic) write itself: a signal from here on lets it finish.
            stops.done()
            if eng.is_main:
                write_json(os.path.join(workdir, RESULTS_FILE), results)
            logging.info(
                "finished at step %d: %s",
                step,
                " | ".join(f"{s} {format_metrics(m)}" for s, m in final.items()),
            )
            return results
        except _StopNow as e:
            raise Interrupted(
                f"{signal.Signals(e.signum).name} after the last step (step {step} of"
                f" {eng.total_steps}), during the final evaluation and reports: {RESULTS_FILE} was not"
                f" written; the checkpoint of step {step} in {store.directory} is intact; run the same"
                " command again to finish from it (no more training: it redoes the final evaluation,"
                f" reports and {RESULTS_FILE})",
                e.signum,
            ) from None


def _check_free_space(store: CheckpointStore, abstract: Any, step: int | None) -> None:
    """`UserError` before anything is trained when the disk of `store.directory` has less space free than
    one checkpoint takes (the size of the checkpoint of `step` being resumed, else the state's bytes): the
    run would otherwise train until its first save and fail there, throwing those steps away."""
    if step is not None:
        need = _tree_size(os.path.join(store.directory, str(step)))
    else:
        need = sum(
            int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(abstract)
        )
    try:
        info = os.statvfs(store.directory)
    except (OSError, AttributeError):  # pragma: no cover (no statvfs: not POSIX)
        return
    free = info.f_bavail * info.f_frsize
    if free >= need:
        return
    then = (
        "starts training from step 0"
        if step is None
        else f"resumes from the checkpoint of step {step}"
    )
    raise UserError(
        f"{store.workdir} is on a disk with {_size(free)} free, less than one checkpoint of this run"
        f" takes ({_size(need)}); free some space (the same command then {then}) or pass a --workdir"
        f" on another disk{'' if step is None else ' (a new run there, from step 0)'}; nothing was"
        " trained or written"
    )


def _tree_size(path: str) -> int:
    """The bytes of the files under `path`."""
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(folder, name))
    return total


def _size(n: int) -> str:
    """`n` bytes as "512 KB", "3.58 MB", "1.50 GB"."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{max(n, 0) // 1000} KB"


def _check_same_data(
    meta: Mapping[str, Any],
    task: Task,
    step: int,
    workdir: str,
    saved_config: ml_collections.ConfigDict | None,
    config: ml_collections.ConfigDict | None = None,
) -> None:
    """`UserError` when the checkpoint being resumed was trained on other data than the task loaded now
    (both fingerprints known and different); naming the task's `data_fix` when it has one. A run resumed
    from another ``data.path`` (`MOVABLE_DATA_FIELD`) needs both fingerprints to say it is the same data."""
    saved, now = meta.get("data_fingerprint"), task.data_fingerprint
    old_path = _data_path(saved_config)
    new_path = _data_path(config)
    if old_path != new_path and saved_config is not None and config is not None:
        if not (saved and now):
            raise UserError(
                f"config.data.path differs from the run saved in {workdir} (saved {old_path!r}, given"
                f" {new_path!r}), and its checkpoint of step {step} holds no fingerprint of its data to"
                " check that this is the same data; put the data back at the saved path to resume, or"
                " use a new --workdir"
            )
        if saved == now:
            logging.info(
                "the run's data moved from %s to %s (the same data: fingerprint %s)",
                old_path,
                new_path,
                now,
            )
    if saved and now and saved != now:
        source = task.data_info.get("source")
        what = (
            f"the data loaded now{f' from {source}' if source else ''} differs from the data the run"
            f" in {workdir} trained on up to step {step} (fingerprint {now}, saved {saved})"
        )
        fix = None
        if task.data_fix is not None and saved_config is not None:
            fix = task.data_fix(saved_config, saved)
        if fix:
            raise UserError(f"{what}: {fix}")
        raise UserError(
            f"{what}: the file"
            " was changed, another file has its name, or this version of lstm_jax splits or encodes"
            " it differently (the fake-news validation split rounds as Keras' since 2026-12-05, 884/222"
            " rows of 1,106, not 885/221); restore that data to resume, or use a new --workdir to"
            " train on this data (--mode=eval and --mode=predict still read this workdir)"
        )


def _data_path(config: ml_collections.ConfigDict | None) -> Any:
    """`config.data.path`, or None when the config has none."""
    if config is None or "data" not in config:
        return None
    return config.data.get("path")


def _check_fresh_start(
    store: CheckpointStore, workdir: str, metrics_lines: list[bytes] | None
) -> None:
    """Before a run starts from step 0 in a workdir with no usable checkpoint: a `UserError` when the
    workdir holds a run that got further (damaged checkpoints moved to corrupt_checkpoints/, now or
    before; a finished run; evaluation or resume records in metrics.jsonl, each of which came with a
    checkpoint), so that a new run's records never follow an old one's as if they were one; a warning
    when `metrics.jsonl` has only training records (a run killed before its first checkpoint), which
    then move aside (`_set_aside_another_start`, or `MetricsLogger.restart_at` for the same config).
    `metrics_lines`: the lines of ``<workdir>/metrics.jsonl`` (`read_lines`; None when it is absent)."""
    fix = "to train again from step 0, use a new --workdir (or empty this one)"
    corrupt = store.corrupt_directory
    if store.quarantined or (os.path.isdir(corrupt) and os.listdir(corrupt)):
        steps = ", ".join(str(s) for s in store.quarantined) or "earlier"
        raise UserError(
            f"no checkpoint in {store.directory} can be read: the damaged one(s) of step(s) {steps}"
            f" were moved to {corrupt}, and {workdir}'s records belong to them; {fix}"
        )
    results = os.path.join(workdir, RESULTS_FILE)
    if os.path.exists(results):
        raise UserError(
            f"{workdir} holds a finished run ({RESULTS_FILE}) but no checkpoint in"
            f" {store.directory}; restore that folder to resume or evaluate it, or, {fix}"
        )
    metrics = os.path.join(workdir, "metrics.jsonl")
    kinds = _record_kinds(metrics_lines or ())
    if kinds - {"train"}:  # an evaluation or a resume: a checkpoint was saved, and is gone
        raise UserError(
            f"{workdir} holds a run that saved checkpoints ({os.path.basename(metrics)} has its"
            f" evaluations) but none is left in {store.directory}; restore that folder to resume, or,"
            f" {fix}"
        )
    if kinds:
        logging.warning(
            "no checkpoint in %s: training from step 0; %s already holds records of an earlier start"
            " that stopped before its first checkpoint: with the same config they move to %s, so that"
            " the new records do not follow them (another config's move to earlier_start-<time>/)",
            store.directory,
            metrics,
            ORPHANED_FILE,
        )


def _set_aside_another_start(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Before a run starts from step 0 where an earlier start with another config stopped before its
    first checkpoint (a non-finite loss, whose error advises another learning rate; a kill): that start's
    config.json, metrics.jsonl and TensorBoard events go to ``<workdir>/earlier_start-<unix time>/``
    (kept, not deleted), so that the two runs' records never read as one."""
    path = os.path.join(workdir, config_utils.CONFIG_FILE)
    if not os.path.exists(path):
        return
    try:
        changed = config_utils.config_diff(config_utils.load_config(workdir), config)
    except UserError:  # a damaged config.json of a start that never checkpointed
        changed = ["config.json"]
    if not changed:
        return  # the same run started again: its records move to metrics.orphaned.jsonl (`_run`)
    aside = os.path.join(workdir, f"earlier_start-{int(time.time())}")
    os.makedirs(aside, exist_ok=True)
    for name in (config_utils.CONFIG_FILE, "metrics.jsonl", ORPHANED_FILE, "tensorboard"):
        if os.path.exists(os.path.join(workdir, name)):
            shutil.move(os.path.join(workdir, name), os.path.join(aside, name))
    logging.warning(
        "%s held an earlier start with another config (%s) that stopped before its first"
        " checkpoint; moved its config.json and records to %s",
        workdir,
        ", ".join(changed[:3]) + (" ..." if len(changed) > 3 else ""),
        aside,
    )


def _warn_schedule_change(eng: _Engine, meta: Mapping[str, Any], step: int) -> None:
    """A warning when the run resumed at `step` trains for another number of steps than its checkpoint
    was trained for (``train.num_epochs`` / ``num_steps`` changed, a finished run extended) under a
    schedule laid over the total (`optim.schedule_depends_on_total`): the learning rate from `step` on is
    not the one the saved schedule had there, and the line names both."""
    saved = meta.get("total_steps")
    opt = eng.config.optimizer
    if saved is None or int(saved) == eng.total_steps or not optim.schedule_depends_on_total(opt):
        return
    saved = int(saved)
    per_epoch = int(meta.get("steps_per_epoch") or eng.steps_per_epoch)

    def length(total: int, per: int, adjective: bool) -> str:
        if total % per:
            return f"{total}-step" if adjective else f"{total} steps"
        epochs = total // per
        return (
            f"{epochs}-epoch ({total} steps)" if adjective else f"{epochs} epochs ({total} steps)"
        )

    before = float(optim.make_schedule(opt, saved)(step))
    now = float(eng.schedule(step))
    logging.warning(
        "learning rate at step %d was %.3g under the saved %s %s schedule and is now %.3g under %s:"
        " the schedule spans the run's total steps, so changing train.num_epochs/num_steps re-times"
        " it from the resumed step on; the run goes on under the new one (to keep a single decay,"
        " train the new length from step 0 in a new --workdir)",
        step,
        before,
        length(saved, per_epoch, True),
        opt.schedule,
        now,
        length(eng.total_steps, eng.steps_per_epoch, False),
    )


def _set_aside_orphaned_records(
    logger: MetricsLogger, step: int, *, redo_final: bool, lines: list[bytes] | None
) -> None:
    """`MetricsLogger.restart_at(step)` (of metrics.jsonl's `lines`, read once), with a warning naming
    what it moved to metrics.orphaned.jsonl."""
    moved = logger.restart_at(step, redo_final=redo_final, lines=lines)
    if not moved:
        return
    steps = [r["step"] for r in moved if isinstance(r.get("step"), int)]
    logging.warning(
        "%s held %d record(s)%s written after %s by a run that stopped without saving them (a crash,"
        " kill or full disk); this run logs those steps again, so they were moved to %s (TensorBoard"
        " drops them too)",
        logger.path,
        len(moved),
        f" of steps {min(steps)}-{max(steps)}" if steps else "",
        f"the checkpoint of step {step}" if step else "the start",
        os.path.join(logger.workdir, ORPHANED_FILE),
    )


def _log_lost_evaluation(
    logger: MetricsLogger,
    history: Sequence[Mapping[str, Any]],
    step: int,
    splits: Sequence[str],
    lines: list[bytes] | None,
) -> None:
    """Logs the evaluation records of the checkpoint of `step` that metrics.jsonl lacks.

    An evaluation's records are logged once its checkpoint is saved (each stands for a checkpoint
    written); a run killed in between (kill -9, the OOM killer, a full disk at that write) left a
    checkpoint whose evaluation neither metrics.jsonl nor TensorBoard got, and the run resumed from it
    would go on without them. They are in the checkpoint's history (its last record, when that is of
    `step`: a checkpoint saved by a signal between evaluations has none of its own), and are written now,
    where the uninterrupted run wrote them: after the train records up to `step`. `lines`: metrics.jsonl's
    lines as `_run` read them once (None: absent); the set-aside before this keeps every evaluation record
    of `step`, so they tell which are logged."""
    last = history[-1] if history else None
    if not logger.enabled or not last or last.get("step") != step:
        return
    records = (parse_record(line) for line in lines or ())
    logged = {(r.get("kind"), r["step"]) for r in records if r is not None}
    for split in splits:
        if split in last and (split, step) not in logged:
            logger.write(split, step, last[split])
            logging.warning(
                "the %s evaluation of step %d was saved with its checkpoint but not logged (the run"
                " stopped in between); logged it now from the checkpoint",
                split,
                step,
            )


def _record_kinds(lines: Iterable[bytes]) -> set[str]:
    """The `kind`s of the records among a metrics.jsonl's lines (a line cut short by a crash is
    skipped)."""
    kinds = set()
    for line in lines:
        with contextlib.suppress(ValueError, AttributeError):
            kinds.add(str(json.loads(line).get("kind")))
    return kinds


def _real_rows(batch: Batch) -> int:
    """The examples of a host batch: its rows of weight > 0 (all of its rows without a ``weight``)."""
    if "weight" in batch:
        return int(np.count_nonzero(np.asarray(batch["weight"])))
    return int(next(np.shape(v)[0] for v in batch.values() if np.ndim(v) > 0))


def _padded_size(batch_size: int, multiple: int) -> int:
    return -(-batch_size // multiple) * multiple


def _numbers(v: Any) -> bool:
    """A dict of metric values: numbers, or null for one that was not finite (`json_ready`)."""
    return isinstance(v, dict) and all(x is None or json_number(x) for x in v.values())


def _history_record(r: Any) -> bool:
    return (
        isinstance(r, dict)
        and json_int(r.get("step"))
        and json_number(r.get("epoch"))
        and all(_numbers(v) for k, v in r.items() if k not in ("step", "epoch"))
    )


# What `_run` reads from a checkpoint's meta (each key optional): a check and what it should hold.
_META_FIELDS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    (
        "position",
        lambda v: isinstance(v, dict) and json_int(v.get("epoch")) and json_int(v.get("batch")),
        '{"epoch": <int>, "batch": <int>}',
    ),
    (
        "history",
        lambda v: isinstance(v, list) and all(_history_record(r) for r in v),
        'a list of {"step": <int>, "epoch": <number>, <split>: {<metric>: <number>}}',
    ),
    (
        "early_stopping",
        lambda v: (
            isinstance(v, dict)
            and (v.get("best") is None or json_number(v["best"]))
            and (v.get("best_step") is None or json_int(v["best_step"]))
            and json_int(v.get("wait"))
            and json_int(v.get("improvements"))
        ),
        '{"best": <number or null>, "best_step": <int or null>, "wait": <int>, "improvements": <int>}',
    ),
    ("stopped_early", lambda v: isinstance(v, bool), "true or false"),
    ("since_eval", lambda v: v is None or _numbers(v), "null or {<name>: <number>}"),
    (
        "unlogged",
        lambda v: (
            v is None
            or (
                isinstance(v, dict)
                and _numbers(v.get("sums"))
                and json_number(v.get("last_loss"))
                and json_int(v.get("examples"))
                and json_number(v.get("seconds", 0.0))
            )
        ),
        'null or {"sums": {<name>: <number>}, "last_loss": <number>, "examples": <int>, ...}',
    ),
    ("wall_time_s", json_number, "a number"),
    ("total_steps", lambda v: v is None or json_int(v), "an int"),
    ("steps_per_epoch", lambda v: v is None or json_int(v), "an int"),
)


def _check_meta(meta: Mapping[str, Any], store: CheckpointStore, step: int) -> None:
    """`UserError` naming the file and the fix when the meta of checkpoint `step` (its data position,
    history, early-stopping state: JSON beside the arrays, ``<step>/meta/metadata``) holds a field of
    another type than the engine writes (a hand-edited file), which `_run` would stop on with a bare
    ValueError or TypeError."""
    for key, ok, want in _META_FIELDS:
        if key in meta and not ok(meta[key]):
            shown = repr(meta[key])
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            folder = os.path.join(store.directory, str(step))
            raise UserError(
                f'{os.path.join(folder, "meta", "metadata")} holds "{key}": {shown}, not {want};'
                " the checkpoint's meta was edited or is damaged: restore the file, or move"
                f" {folder} out of {store.directory} (into"
                f" {store.corrupt_directory}, say) to resume from the checkpoint before it"
            )


def _restore_latest(
    eng: _Engine, store: CheckpointStore, abstract: Any
) -> tuple[int, Any, dict[str, Any]] | None:
    """The newest usable checkpoint of `eng`'s workdir as `(step, state, meta)`, or None.

    A run resumed with gradient clipping switched on or off (what the non-finite-loss error advises) keeps
    its optimizer state: clipping is `optax.chain(clip_by_global_norm, <optimizer>)`, whose state is the
    optimizer's behind the clip's empty one. Which of the two layouts a checkpoint holds is read from the
    checkpoint's own metadata (never from config.json, which a later start may have rewritten), and its
    optimizer state is wrapped or unwrapped to this config's. Any other change of the state's arrays is a
    UserError (`CheckpointStore.restore_latest`)."""
    clip_now = float(eng.config.optimizer.clip_norm) > 0
    other_opt = ml_collections.ConfigDict(eng.config.optimizer.to_dict())
    other_opt.clip_norm = 0.0 if clip_now else 1.0  # only the structure matters here
    other_tx = optim.make_optimizer(other_opt, eng.total_steps)
    other = dict(abstract, opt_state=jax.eval_shape(other_tx.init, abstract["params"]))
    restored = store.restore_latest(
        _with_shardings(abstract, eng.state_shardings(abstract)),
        alternate=_with_shardings(other, eng.state_shardings(other)),
    )
    if restored is None:
        return None
    step, state, meta, switched = restored
    _check_meta(meta, store, step)
    if not switched:
        return step, state, meta
    opt_state = state["opt_state"]
    state = dict(state, opt_state=(optax.EmptyState(), opt_state) if clip_now else opt_state[1])
    logging.info(
        "resuming the checkpoint at step %d with gradient clipping %s (optimizer.clip_norm=%s): the"
        " optimizer's state is kept",
        step,
        "switched on" if clip_now else "switched off",
        eng.config.optimizer.clip_norm,
    )
    return step, state, meta


def _with_shardings(abstract: Any, shardings: Any) -> Any:
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
