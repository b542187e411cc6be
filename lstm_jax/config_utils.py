"""Engine configuration: defaults, validation with one-line errors, and the config JSON in the workdir.

Every experiment config is an `ml_collections.ConfigDict` that starts from `engine_defaults()` and adds its own
`model` and `data` fields. The engine reads these sections:

* ``seed``: one integer in [0, 2**32 - 1]; parameters, dropout keys and data shuffling all derive from it.
* ``optimizer``: ``name`` (adam, adamw, rmsprop, sgd), ``learning_rate``, ``schedule`` (constant, cosine,
  warmup_cosine, warmup_constant), ``warmup_steps``, ``min_lr_ratio``, ``decay_steps`` (the cosine
  schedules' length, warmup included; 0 = the run's total steps), ``clip_norm`` (0 = no clipping),
  ``b1``, ``b2``, ``eps``, ``rho``, ``momentum``, ``nesterov``, ``weight_decay``.
* ``train``: ``batch_size``, ``eval_batch_size`` (0 = batch_size), ``num_epochs``, ``num_steps`` (0 = epochs
  times steps per epoch; while it is set, a ``--config.train.num_epochs`` override is refused),
  ``eval_every_steps`` (0 = once per epoch), ``log_every_steps``, ``checkpoint_keep``,
  ``monitor`` (``val_<metric>`` or a train ``<metric>``), ``monitor_mode`` (auto, min, max), ``prefetch``.
* ``early_stopping``: ``enabled``, ``patience``, ``min_delta``, ``restore_best_weights`` (Keras semantics;
  the defaults differ: ``patience=3`` and ``restore_best_weights=True`` where Keras' ``EarlyStopping``
  has 0 and False; early stopping is off unless a config or ``--config.early_stopping.enabled`` sets it).

Some fields are read only under some settings (``b1``/``b2`` by adam and adamw, ``rho`` by rmsprop,
``momentum``/``nesterov`` by rmsprop and sgd, ``weight_decay`` by adamw, ``warmup_steps`` by the warmup
schedules, ``min_lr_ratio`` and ``decay_steps`` by the cosine ones, ``patience``/``restore_best_weights`` with early stopping
on); one set away from its default where nothing reads it is a warning when training starts
(`ignored_fields`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, get_args

import ml_collections
from absl import logging

from lstm_jax import core
from lstm_jax.errors import UserError
from lstm_jax.logging_utils import atomic_write, json_ready, read_json

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "engine_defaults",
    "validate_config",
    "ignored_fields",
    "check_split_seed",
    "save_config",
    "load_config",
    "config_to_dict",
    "config_diff",
    "monitor_mode",
    "drop_remainder",
    "dropout_rates",
    "layer_sizes",
    "positive_int",
    "lstm_impl",
]

OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")
# The largest seed every consumer takes (config.seed, data.split_seed, generation's --sample_seed): sklearn's
# `random_state` (the validation splits) stops at 2**32 - 1, `jax.random.key` keeps 32 bits of a seed (2**32
# gives seed 0's tokens) and raises OverflowError from 2**63 on, and numpy's `default_rng` (the char task's
# choice of a saved prime) takes no negative seed.
MAX_SEED = 2**32 - 1
SCHEDULES = ("constant", "cosine", "warmup_cosine", "warmup_constant")
CONFIG_FILE = "config.json"


def engine_defaults() -> ml_collections.ConfigDict:
    """The engine's sections with Keras-compatible defaults; experiments add `model` and `data`."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.data = ml_collections.ConfigDict()
    config.data.path = ""  # a file or directory; empty = the default source (TFDS or LSTM_JAX_DATA)
    config.model = ml_collections.ConfigDict()

    config.optimizer = ml_collections.ConfigDict()
    opt = config.optimizer
    opt.name = "adam"
    opt.learning_rate = 1e-3  # Keras' default for Adam and RMSprop
    opt.schedule = "constant"
    opt.warmup_steps = 0
    opt.min_lr_ratio = 0.0  # cosine decays to learning_rate * min_lr_ratio
    # Steps over which the cosine schedules decay (warmup included), then hold learning_rate * min_lr_ratio:
    # Keras' decay_steps, PyTorch's T_max (which count the steps after a warmup: Keras' warmup_steps=W,
    # decay_steps=D is W+D here). 0 = the run's total steps (train.num_epochs / num_steps).
    opt.decay_steps = 0
    opt.clip_norm = 0.0  # global-norm clipping threshold; 0 disables it
    opt.b1 = 0.9
    opt.b2 = 0.999
    opt.eps = 1e-7  # Keras' epsilon (Adam: outside the sqrt; RMSprop: inside)
    opt.rho = 0.9  # RMSprop decay
    opt.momentum = 0.0  # sgd and rmsprop
    opt.nesterov = False
    opt.weight_decay = 0.0  # adamw (decoupled), Keras' AdamW default is 0.004

    config.train = ml_collections.ConfigDict()
    tr = config.train
    tr.batch_size = 32
    tr.eval_batch_size = 0  # 0 = batch_size
    tr.num_epochs = 10
    tr.num_steps = 0  # 0 = num_epochs * steps_per_epoch
    # True: each epoch's last `examples % batch_size` (shuffled) examples are left out, a different few each
    # epoch; False: they form a last, smaller batch, as in Keras' fit and PyTorch's DataLoader (padded with
    # weight-0 rows to the batch shape, so the same loss and gradient, and no second compilation).
    tr.drop_remainder = True
    tr.eval_every_steps = 0  # 0 = evaluate (and checkpoint) at the end of every epoch only
    tr.log_every_steps = 50
    tr.checkpoint_keep = 3  # the last N checkpoints; the best one is always kept as well
    tr.monitor = "val_loss"  # metric for the best checkpoint and early stopping
    tr.monitor_mode = "auto"  # auto: max for accuracy-like names, min otherwise (Keras)
    tr.prefetch = 2  # host batches prepared ahead in a background thread; 0 disables

    config.early_stopping = ml_collections.ConfigDict()
    es = config.early_stopping
    es.enabled = False
    es.patience = 3
    es.min_delta = 0.0
    es.restore_best_weights = True
    return config


def _get(config: Any, dotted: str) -> Any:
    node = config
    parts = dotted.split(".")
    for n, part in enumerate(parts):
        if not isinstance(node, Mapping | ml_collections.ConfigDict) or part not in node:
            missing = "config." + ".".join(parts[: n + 1])
            raise UserError(
                f"{missing} is missing; start the config from lstm_jax.config_utils.engine_defaults()"
                f" or add the field"
            )
        node = node[part]
    return node


def _fail(field: str, requirement: str, value: Any) -> None:
    raise UserError(
        f"config.{field} must be {requirement}, got {value!r}; fix the config file or pass"
        f" --config.{field}=<value>"
    )


def _number(config: Any, field: str, *, integer: bool = False) -> float:
    value = _get(config, field)
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(field, "an integer" if integer else "a number", value)
    if integer and not isinstance(value, int):
        if not float(value).is_integer():
            _fail(field, "an integer", value)
    if not math.isfinite(value):
        _fail(field, "finite", value)
    return value


def _check(config: Any, field: str, ok: Any, requirement: str, *, integer: bool = False) -> None:
    value = _number(config, field, integer=integer)
    if not ok(value):
        _fail(field, requirement, value)


def _choice(config: Any, field: str, choices: tuple[str, ...]) -> None:
    value = _get(config, field)
    if value not in choices:
        _fail(field, "one of " + ", ".join(choices), value)


def validate_config(config: Any) -> None:
    """Checks every engine field; raises `UserError` naming the first bad field and how to fix it."""
    # An impl this machine cannot run fails here, before anything is written.
    if "model" in config and "impl" in config["model"]:
        lstm_impl(config["model"])
    _check(
        config, "seed", lambda v: 0 <= v <= MAX_SEED, f"an integer in [0, {MAX_SEED}]", integer=True
    )
    _choice(config, "optimizer.name", OPTIMIZERS)
    _check(config, "optimizer.learning_rate", lambda v: v > 0, "> 0")
    _choice(config, "optimizer.schedule", SCHEDULES)
    _check(config, "optimizer.warmup_steps", lambda v: v >= 0, "an integer >= 0", integer=True)
    _check(config, "optimizer.min_lr_ratio", lambda v: 0 <= v <= 1, "in [0, 1]")
    _check(config, "optimizer.clip_norm", lambda v: v >= 0, ">= 0 (0 disables clipping)")
    _check(config, "optimizer.b1", lambda v: 0 <= v < 1, "in [0, 1)")
    _check(config, "optimizer.b2", lambda v: 0 <= v < 1, "in [0, 1)")
    _check(config, "optimizer.eps", lambda v: v >= 0, ">= 0")
    name = _get(config, "optimizer.name")
    if name in ("adam", "adamw", "rmsprop") and _get(config, "optimizer.eps") == 0:
        # The update divides by sqrt(v) + eps (rmsprop: sqrt(v + eps)), and v stays 0 for a weight whose
        # gradient is 0 (an unused embedding row): 0 / 0 makes it NaN in the first steps.
        _fail(
            "optimizer.eps",
            f"> 0 with optimizer.name={name!r} (its update divides by sqrt(v) and eps, v is 0 where a"
            " gradient is 0: eps=0 makes those weights NaN; Keras' default is 1e-7)",
            _get(config, "optimizer.eps"),
        )
    _check(config, "optimizer.rho", lambda v: 0 <= v < 1, "in [0, 1)")
    _check(config, "optimizer.momentum", lambda v: 0 <= v < 1, "in [0, 1)")
    _check(config, "optimizer.weight_decay", lambda v: v >= 0, ">= 0")
    if not isinstance(_get(config, "optimizer.nesterov"), bool):
        _fail("optimizer.nesterov", "True or False", _get(config, "optimizer.nesterov"))
    warmup = _get(config, "optimizer.warmup_steps")
    if _get(config, "optimizer.schedule").startswith("warmup") and warmup < 1:
        _fail("optimizer.warmup_steps", "> 0 for a warmup schedule", warmup)
    if "decay_steps" in config["optimizer"]:  # absent in runs saved before it existed: 0
        _check(
            config,
            "optimizer.decay_steps",
            lambda v: v >= 0,
            "an integer >= 0 (0 = the run's total steps)",
            integer=True,
        )
        decay = _get(config, "optimizer.decay_steps")
        if _get(config, "optimizer.schedule") == "warmup_cosine" and 0 < decay <= warmup:
            _fail(
                "optimizer.decay_steps",
                f"> optimizer.warmup_steps ({warmup}): the cosine's length includes the warmup",
                decay,
            )

    _check(config, "train.batch_size", lambda v: v > 0, "an integer > 0", integer=True)
    _check(config, "train.eval_batch_size", lambda v: v >= 0, "an integer >= 0", integer=True)
    _check(config, "train.num_epochs", lambda v: v >= 0, "an integer >= 0", integer=True)
    _check(config, "train.num_steps", lambda v: v >= 0, "an integer >= 0", integer=True)
    if _get(config, "train.num_epochs") == 0 and _get(config, "train.num_steps") == 0:
        _fail("train.num_epochs", "> 0 (or set train.num_steps)", 0)
    _check(config, "train.eval_every_steps", lambda v: v >= 0, "an integer >= 0", integer=True)
    _check(config, "train.log_every_steps", lambda v: v > 0, "an integer > 0", integer=True)
    _check(config, "train.checkpoint_keep", lambda v: v >= 1, "an integer >= 1", integer=True)
    _check(config, "train.prefetch", lambda v: v >= 0, "an integer >= 0", integer=True)
    if not isinstance(drop_remainder(config), bool):
        _fail("train.drop_remainder", "True or False", drop_remainder(config))
    monitor = _get(config, "train.monitor")
    if not isinstance(monitor, str) or not monitor.strip():
        _fail("train.monitor", "a metric name such as 'val_loss' or 'val_accuracy'", monitor)
    _choice(config, "train.monitor_mode", ("auto", "min", "max"))

    for flag in ("enabled", "restore_best_weights"):
        value = _get(config, f"early_stopping.{flag}")
        if not isinstance(value, bool):
            _fail(f"early_stopping.{flag}", "True or False", value)
    _check(config, "early_stopping.patience", lambda v: v >= 0, "an integer >= 0", integer=True)
    _check(config, "early_stopping.min_delta", lambda v: v >= 0, ">= 0")


# The engine fields that only some optimizers, schedules or settings read: (field, readers, what reads it).
_CONDITIONAL_FIELDS = (
    ("optimizer.b1", ("optimizer.name", ("adam", "adamw"))),
    ("optimizer.b2", ("optimizer.name", ("adam", "adamw"))),
    ("optimizer.eps", ("optimizer.name", ("adam", "adamw", "rmsprop"))),
    ("optimizer.rho", ("optimizer.name", ("rmsprop",))),
    ("optimizer.momentum", ("optimizer.name", ("rmsprop", "sgd"))),
    ("optimizer.nesterov", ("optimizer.name", ("rmsprop", "sgd"))),
    ("optimizer.weight_decay", ("optimizer.name", ("adamw",))),
    ("optimizer.warmup_steps", ("optimizer.schedule", ("warmup_cosine", "warmup_constant"))),
    ("optimizer.min_lr_ratio", ("optimizer.schedule", ("cosine", "warmup_cosine"))),
    ("optimizer.decay_steps", ("optimizer.schedule", ("cosine", "warmup_cosine"))),
    ("early_stopping.patience", ("early_stopping.enabled", (True,))),
    ("early_stopping.restore_best_weights", ("early_stopping.enabled", (True,))),
)


def ignored_fields(config: Any) -> list[str]:
    """One line per engine field set away from its `engine_defaults` value that this config's choices
    never read (``weight_decay`` with ``name='adam'``, ``warmup_steps`` with ``schedule='constant'``, a
    ``patience`` with early stopping off): naming the field, what would read it and the fix. The engine
    logs them as warnings when training starts, so that such a setting is not silently without effect."""
    defaults = flatten_config(engine_defaults())
    flat = flatten_config(config)
    lines = []
    for field, (switch, readers) in _CONDITIONAL_FIELDS:
        if field not in flat or switch not in flat or flat[field] == defaults[field]:
            continue
        if flat[switch] in readers:
            continue
        wanted = " or ".join(repr(r) for r in readers)
        lines.append(
            f"config.{field}={flat[field]!r} has no effect with config.{switch}={flat[switch]!r}"
            f" (only {wanted} reads it); pass --config.{switch}={readers[0]!r}"
            f" to use it, or set it to {defaults[field]!r}"
        )
    name = flat.get("optimizer.name")
    if flat.get("optimizer.nesterov") is True and name in ("rmsprop", "sgd"):
        if not flat.get("optimizer.momentum"):
            lines.append(
                "config.optimizer.nesterov=True has no effect with config.optimizer.momentum=0"
                " (Nesterov momentum needs momentum); pass e.g. --config.optimizer.momentum=0.9"
            )
    return lines


def check_split_seed(data: Any) -> None:
    """`UserError` unless the data section's ``split_seed`` (when it has one) is an integer in [0,
    `MAX_SEED`]: sklearn's `train_test_split` takes no other `random_state`. Tasks call it before any
    data is read."""
    if "split_seed" in data and not 0 <= int(data["split_seed"]) <= MAX_SEED:
        raise UserError(
            f"config.data.split_seed={data['split_seed']} must be an integer in [0, {MAX_SEED}]"
            " (sklearn's random_state); pass e.g. --config.data.split_seed=42"
        )


def fill_derived(config: Any, field: str, value: Any) -> None:
    """Sets `field` ("model.vocab_size"), which a task fills in from the data; a value the user gave
    that differs (--config.model.vocab_size=100) is not used, and a warning says so."""
    section, name = field.split(".")
    given = config[section].get(name, 0)
    if given not in (0, value):
        logging.warning(
            "config.%s=%r is not used: it is filled in from the data (%r here); leave it at 0",
            field,
            given,
            value,
        )
    config[section][name] = value


def drop_remainder(config: Any) -> Any:
    """`config.train.drop_remainder`; True (the behaviour before the field existed) in a run saved
    without it."""
    return config["train"].get("drop_remainder", True)


def dropout_rates(
    model: Mapping[str, Any] | ml_collections.ConfigDict,
    fields: tuple[str, ...],
    optional: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """`{field: rate}` read from a model config section, each checked to lie in [0, 1).

    `optional` maps fields that configs saved before the field existed may lack to their default. A value
    outside [0, 1) or not a number raises `UserError` naming ``config.model.<field>`` and a valid example,
    before any model is built (the layers would otherwise fail with a bare ValueError).
    """
    defaults = dict(optional or {})
    rates: dict[str, float] = {}
    for field in (*fields, *defaults):
        value = model[field] if field in model or field not in defaults else defaults[field]
        try:
            rate = float(value)
        except (TypeError, ValueError):
            rate = math.nan
        if not 0.0 <= rate < 1.0:  # NaN fails too
            raise UserError(
                f"config.model.{field}={value} is not a dropout rate; pass a value in [0, 1),"
                f" e.g. --config.model.{field}=0.2"
            )
        rates[field] = rate
    return rates


def _is_size(value: Any) -> bool:
    """True for a whole number >= 1 (an int, or a float such as 64.0 from a JSON round trip)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and value == int(value) and value >= 1


def positive_int(model: Mapping[str, Any] | ml_collections.ConfigDict, field: str) -> int:
    """`model[field]` as an int >= 1, else a `UserError` naming ``config.model.<field>`` and a fix."""
    value = model[field]
    if not _is_size(value):
        raise UserError(
            f"config.model.{field}={value!r} must be a positive integer; pass e.g."
            f" --config.model.{field}=64"
        )
    return int(value)


def choice(
    model: Mapping[str, Any] | ml_collections.ConfigDict,
    field: str,
    choices: Sequence[str],
    what: str,
) -> str:
    """`model[field]` if it is one of `choices`, else a `UserError` saying it is not `what` and listing them."""
    value = model[field]
    if value not in choices:
        raise UserError(
            f"config.model.{field}={value!r} is not {what}; pass one of {', '.join(choices)}"
            f" (e.g. --config.model.{field}={choices[0]})"
        )
    return value


def lstm_impl(model: Mapping[str, Any] | ml_collections.ConfigDict, field: str = "impl") -> str:
    """`model[field]`, one of `lstm_jax.core.lstm_layer`'s impls that can run on this machine, else a
    `UserError` listing them, or saying why it cannot run here and what to pass instead."""
    value = choice(model, field, get_args(core.Impl), "an LSTM implementation")
    reason = core.impl_unavailable_reason(value)
    if reason is not None:
        raise UserError(
            f"config.model.{field}={value!r} cannot run here: {reason}; pass "
            f"--config.model.{field}=auto (the fastest implementation this machine has)"
        )
    return value


def dense_layers(
    model: Mapping[str, Any] | ml_collections.ConfigDict,
    activations: Sequence[str],
    field: str = "dense_layers",
) -> list[tuple[int, str]]:
    """`model[field]` as `[(units, activation), ...]` (units >= 1, activation in `activations`; empty is
    fine), else a `UserError` naming the field and the expected form."""
    value = model[field]
    layers = list(value) if isinstance(value, list | tuple) else None
    ok = layers is not None and all(
        isinstance(layer, list | tuple)
        and len(layer) == 2
        and _is_size(layer[0])
        and layer[1] in activations
        for layer in layers
    )
    if not ok:
        raise UserError(
            f"config.model.{field}={value!r} must be (units, activation) pairs with units >= 1 and an"
            f" activation in {', '.join(activations)}; pass e.g."
            f" --config.model.{field}='((64, \"{activations[0]}\"),)' or '()' for none"
        )
    return [(int(u), str(a)) for u, a in layers]


def layer_sizes(
    model: Mapping[str, Any] | ml_collections.ConfigDict, field: str = "hidden_sizes"
) -> tuple[int, ...]:
    """`model[field]` (one LSTM width per layer) as a non-empty tuple of ints >= 1, else a `UserError`."""
    value = model[field]
    sizes = tuple(value) if isinstance(value, list | tuple) else ()
    if not sizes or not all(_is_size(h) for h in sizes):
        raise UserError(
            f"config.model.{field}={value!r} must be one positive integer per LSTM layer; pass e.g."
            f" --config.model.{field}='(128,)'"
        )
    return tuple(int(h) for h in sizes)


def monitor_mode(monitor: str, mode: str) -> str:
    """'min' or 'max' for a monitored metric; 'auto' is 'max' for accuracy-like names (Keras' rule)."""
    if mode != "auto":
        return mode
    name = monitor.removeprefix("val_")
    return (
        "max" if ("acc" in name or name.startswith("fmeasure") or name.startswith("auc")) else "min"
    )


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready plain dict of the config (tuples become lists; a non-finite number None, as strict
    JSON writes it, `json_ready`: a config compares equal to its config.json)."""
    if isinstance(config, ml_collections.ConfigDict | ml_collections.FrozenConfigDict):
        return json_ready(json.loads(config.to_json_best_effort(sort_keys=True)))
    return json_ready(json.loads(json.dumps(config, default=str)))


def saved_config_dict(config: Any) -> dict[str, Any]:
    """The config as a workdir records it (config.json, results.json): `config_to_dict` with a relative
    `data.path` made absolute (`absolute_data_path`)."""
    data = config_to_dict(config)
    if isinstance(data.get("data"), dict) and "path" in data["data"]:
        data["data"]["path"] = absolute_data_path(data["data"]["path"])
    return data


def save_config(config: Any, workdir: str | os.PathLike) -> str:
    """Writes `<workdir>/config.json` atomically (`saved_config_dict`: a relative `data.path` made
    absolute; strict JSON, `json_ready`) and returns its path."""
    path = os.path.join(os.fspath(workdir), CONFIG_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = json.dumps(
        json_ready(saved_config_dict(config)), indent=2, sort_keys=True, allow_nan=False
    )
    with atomic_write(path) as f:
        f.write(text + "\n")
    return path


def load_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """Reads `<workdir>/config.json` back into a `ConfigDict`; `UserError` if absent or unreadable."""
    path = os.path.join(os.fspath(workdir), CONFIG_FILE)
    if not os.path.exists(path):
        raise UserError(
            f"{path} does not exist; train first with --workdir={workdir} or pass --config=<config file>"
        )
    data = read_json(path)
    if not isinstance(data, dict):
        raise UserError(
            f"{path} holds a JSON {type(data).__name__}, not a config object; the file is damaged:"
            " restore it, or train again in a new --workdir"
        )
    return ml_collections.ConfigDict(data)


def _flatten(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(tree, Mapping):
        for key in sorted(tree):
            yield from _flatten(tree[key], f"{prefix}{key}.")
    else:
        yield prefix[:-1], tree


def flatten_config(config: Any) -> dict[str, Any]:
    """`{"train.batch_size": 32, ...}`: every leaf of a config (or nested dict) by its dotted name."""
    return dict(_flatten(config_to_dict(config)))


def config_diff(old: Any, new: Any) -> list[str]:
    """Dotted names of the fields that differ between two configs (added, removed or changed); a data
    path given relative and the same path given absolute do not differ (`absolute_data_path`)."""
    a, b = (
        _with_absolute_data_path(flatten_config(old)),
        _with_absolute_data_path(flatten_config(new)),
    )
    return sorted(k for k in a.keys() | b.keys() if a.get(k, object()) != b.get(k, object()))


def absolute_data_path(path: Any) -> Any:
    """`data.path` as saved in a workdir: a non-empty path made absolute (`~` expanded), so that eval,
    predict and baseline read the same file from any directory; anything else unchanged."""
    if isinstance(path, str) and path:
        return os.path.abspath(os.path.expanduser(path))
    return path


def _with_absolute_data_path(flat: dict[str, Any]) -> dict[str, Any]:
    if "data.path" in flat:
        flat = {**flat, "data.path": absolute_data_path(flat["data.path"])}
    return flat
