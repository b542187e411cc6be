"""The shared absl entry point: every ``experiments/<name>/main.py`` is a few lines around `run`.

Example ``experiments/imdb_sentiment/main.py``::

    from lstm_jax import cli
    from lstm_jax.tasks import classification

    if __name__ == "__main__":
        cli.run({"train": classification.train, "predict": classification.predict})

Flags: ``--config`` (an ml_collections config file, fields overridable as ``--config.train.batch_size=64``),
``--workdir`` (required), ``--mode`` (one of the registered handlers; default the first), ``--cpus`` (the
CPU cores to run on, `lstm_jax.runtime.set_cpu_affinity`), ``--cpu_devices`` (data parallelism over the
CPU's cores, `lstm_jax.runtime.set_cpu_devices`). A handler is called
as ``handler(config, workdir)``; ``config`` is the ``--config`` file when given, else the config saved in the
workdir (so eval/generate/predict need only ``--workdir``); a handler with ``needs_config = False`` is called
with ``config=None`` when neither exists. Without either, the first mode (training) and a handler with
``starts_run = True`` (baseline) are told to pass --config; the others read a trained run, and the error
names the workdir. Extra flags for a mode (``--seed_text``) are
defined with absl in the experiment's main.py before calling `run`; positional arguments after the flags are
available as `positional_args()` to a handler with ``takes_arguments = True`` (predict's texts, ensemble's
workdirs); for any other they are an error (an unquoted ``--seed_text=red blue`` once dropped "blue"). So is
an extra flag whose help names another mode (``"generate: ..."``: ``--length`` given to ``--mode=train``).

JAX's persistent compilation cache is on (``~/.cache/lstm_jax/jax_compilation_cache``; see
`lstm_jax.runtime.enable_compilation_cache`, ``LSTM_JAX_COMPILATION_CACHE=off`` to disable).

Training stopped by Ctrl-C or SIGTERM saves a checkpoint and exits with 130 or 143 (`errors.Interrupted`;
after the last step, during the final evaluation and reports, it stops at once with the same statuses);
Ctrl-C anywhere else is one line and status 130.
A `UserError` anywhere becomes ``error: <message>`` on stderr and exit status 2, without a traceback; so
does a bad flag (unknown, malformed, a --config file that cannot be read or whose code raises, a
--config.x.y field the config lacks).
Under a locale whose encoding lacks characters of the output (``LC_ALL=C`` without Python's UTF-8 mode),
stdout and stderr print those as backslash escapes (``caf\\xe9``) rather than stopping at them with a
UnicodeEncodeError (`escape_unencodable`); UTF-8 output is unchanged.
"""

from __future__ import annotations

import codecs
import errno
import glob
import importlib
import importlib.util
import logging as py_logging
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags
from ml_collections.config_flags import config_path

from lstm_jax import config_utils
from lstm_jax.errors import UserError

__all__ = ["run", "main", "define_flags", "positional_args", "escape_unencodable", "Handler"]

Handler = Callable[[ml_collections.ConfigDict, str], Any]
FLAGS = flags.FLAGS
_POSITIONAL: list[str] = []


def define_flags(modes: Sequence[str]) -> None:
    """Defines --config, --workdir and --mode once per process."""
    if "workdir" not in FLAGS:
        config_flags.DEFINE_config_file(
            "config",
            None,
            "Experiment config file (fields overridable: --config.x.y=value).",
            lock_config=True,
        )
        flags.DEFINE_string(
            "workdir", None, "Run directory: checkpoints, config, logs and results."
        )
        flags.DEFINE_string("mode", modes[0], f"What to do: {', '.join(modes)}.")
        flags.DEFINE_string(
            "cpus",
            None,
            "CPU cores this run may use (Linux): a list such as 0-3,8, or k/n for the k-th of n equal"
            " shares of the available cores (e.g. two runs side by side with --cpus=1/2 and --cpus=2/2)."
            " Default: all.",
        )
        flags.DEFINE_string(
            "cpu_devices",
            None,
            "Split the CPU into this many XLA devices and train data-parallel over them (one per core:"
            " each core runs the whole step on its slice of the batch), or auto for one per available"
            " core. Default: one device using all cores. See lstm_jax.runtime.set_cpu_devices.",
        )
    # --help and --helpshort list the main module's key flags: make these five key flags of the
    # experiment's main.py (absl names `python -m` mains by their file, sys.argv[0]).
    for name in ("config", "workdir", "mode", "cpus", "cpu_devices"):
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])


def positional_args() -> list[str]:
    """Arguments left after flag parsing (e.g. texts for predict mode)."""
    return list(_POSITIONAL)


class _QuietOrbax(py_logging.Filter):
    """Drops Orbax's and absl-internal INFO chatter from the console; warnings still pass."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        if "orbax" not in record.pathname:
            return True
        if _SIGNALING_THREAD in str(record.msg):
            # A worker thread's exception, logged with its traceback, is raised again where the save or
            # restore waits for it: reported there (one line for a full disk), not twice.
            return False
        return record.levelno >= py_logging.WARNING


# The message Orbax's `_SignalingThread` logs (at ERROR, with a traceback) for the exception it re-raises.
_SIGNALING_THREAD = "_SignalingThread.run() raised an exception"


def main(argv: Sequence[str], modes: Mapping[str, Handler]) -> int:
    """Runs the selected handler; returns the exit status (0, or 2 for a `UserError`)."""
    _POSITIONAL[:] = list(argv[1:])
    if FLAGS.workdir:
        # The shell leaves ~ after "--workdir=" as it is (a directory named "~" in the current one);
        # config.data.path is expanded the same way (`config_utils.absolute_data_path`).
        FLAGS.workdir = os.path.expanduser(FLAGS.workdir)
    try:
        from lstm_jax import runtime
        from lstm_jax.train import initialize_distributed

        if FLAGS.cpus:  # before anything starts JAX's backend, which sizes its thread pools then
            cores = runtime.set_cpu_affinity(FLAGS.cpus)
            logging.info("--cpus=%s: running on core(s) %s", FLAGS.cpus, cores)
        if FLAGS.cpu_devices:  # also before the backend starts: XLA reads its flags then
            count = runtime.set_cpu_devices(FLAGS.cpu_devices)
            logging.info("--cpu_devices=%s: %d CPU device(s)", FLAGS.cpu_devices, count)
        initialize_distributed()
        runtime.enable_compilation_cache()
        if "tensorflow" in sys.modules:  # keep TF (tf.data, TFDS) off any accelerator JAX needs
            sys.modules["tensorflow"].config.set_visible_devices([], "GPU")
        mode = FLAGS.mode
        if mode not in modes:
            raise UserError(f"--mode={mode} is not one of {', '.join(modes)}; pick one of those")
        if _POSITIONAL and not getattr(modes[mode], "takes_arguments", False):
            raise UserError(
                f"--mode={mode} takes no arguments, but got {' '.join(map(repr, _POSITIONAL))}; a"
                " flag value with spaces needs quotes (--seed_text='women black'), and every other"
                " setting is a --flag"
            )
        workdir = FLAGS.workdir
        if not workdir:
            raise UserError("--workdir is required; pass --workdir=<run directory>")
        if os.path.exists(workdir) and not os.path.isdir(workdir):
            raise UserError(f"--workdir={workdir} is a file, not a directory; pass a run directory")
        above = os.path.dirname(os.path.abspath(workdir))
        while not os.path.exists(above) and os.path.dirname(above) != above:
            above = os.path.dirname(above)
        if not os.path.isdir(above):
            raise UserError(
                f"--workdir={workdir} lies under {above}, which is a file, not a directory; pass a"
                " run directory"
            )
        config = FLAGS.config
        if config is not None:
            check_config_family(config, None)
            if os.path.isfile(os.path.join(workdir, config_utils.CONFIG_FILE)):
                # A --config of this experiment on another experiment's run: named as such, not as
                # the dozens of fields that "differ from the run saved" there.
                try:
                    saved = config_utils.load_config(workdir)
                except UserError:
                    saved = None  # a damaged config.json: the mode's own checks report it
                if saved is not None:
                    check_config_family(saved, workdir)
            if mode == "train":
                # sys.argv: ml_collections defines the --config.x.y flags from it (its `sys_argv`
                # default), so every override that was parsed is there.
                check_read_overrides(config, sys.argv)
        elif getattr(modes[mode], "needs_config", True):
            if not os.path.exists(os.path.join(workdir, config_utils.CONFIG_FILE)):
                if os.path.exists(os.path.join(workdir, "ensemble.json")):
                    raise UserError(
                        f"{workdir} holds an ensemble (ensemble.json: its reports), not a trained"
                        f" model; --mode={mode} takes one of its members' workdirs (named in"
                        " ensemble.json)"
                    )
                if mode == next(iter(modes)) or getattr(modes[mode], "starts_run", False):
                    raise UserError(
                        f"no --config given and {workdir} has no saved config.json; pass"
                        " --config=experiments/<name>/configs/<config>.py"
                    )
                # eval, predict, generate: a --config would not help (a workdir without a trained
                # run has no checkpoint or vocabulary either); a typo in the path is likelier.
                state = (
                    "does not exist"
                    if not os.path.exists(workdir)
                    else "holds no trained run (no config.json)"
                )
                raise UserError(
                    f"--workdir={workdir} {state}; --mode={mode} reads a trained run: pass the"
                    " --workdir of one, or train one there first (--mode="
                    f"{next(iter(modes))} --config=experiments/<name>/configs/<config>.py)"
                )
            config = config_utils.load_config(workdir)
            check_config_family(config, workdir)
            check_saved_types(config, workdir)
        check_mode_flags(mode, modes, config)
        modes[mode](config, workdir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return int(getattr(e, "exit_status", 2))
    except OSError as e:
        if e.errno not in _USER_OS_ERRORS:
            raise
        # atomic_write's temporary name (`<file>.tmp<pid>`) is the file the user knows.
        where = f"{re.sub(r'[.]tmp[0-9]+$', '', str(e.filename))}: " if e.filename else ""
        intact = (
            f" (what was already written in {FLAGS.workdir} is intact: files are written whole or"
            " not at all)"
            if FLAGS.workdir and os.path.isdir(FLAGS.workdir)
            else ""
        )
        # Training adds where the same command goes on from (`train.train_and_evaluate`).
        hint = getattr(e, "resume_hint", None)
        then = f"; {hint}" if hint else ""
        print(
            f"error: {where}{e.strerror or e}; {_USER_OS_ERRORS[e.errno]}{then}{intact}",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:  # a mode other than training, or a second Ctrl-C during training
        where = f" in {FLAGS.workdir}" if FLAGS.workdir else ""
        print(
            f"error: interrupted (Ctrl-C); what was already written{where} is intact (checkpoints and"
            " results are written whole or not at all); run the command again to go on",
            file=sys.stderr,
        )
        return 130
    return 0


# Operating-system errors a user fixes (a read-only or full disk, a folder without write permission):
# one line naming the path, not a traceback. Others (a bug) keep their traceback.
_USER_OS_ERRORS = {
    errno.EACCES: "check the permissions of that path, or pass another --workdir",
    errno.EPERM: "check the permissions of that path, or pass another --workdir",
    errno.EROFS: "the file system is read-only; pass a --workdir on a writable one",
    errno.ENOSPC: "the disk is full; free some space or pass a --workdir on another disk",
    errno.EDQUOT: "the disk quota is used up; free some space or pass another --workdir",
    errno.ENOTDIR: "a part of that path is a file, not a folder; pass another --workdir",
}


def _config_fields(path: str) -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location(f"_lstm_jax_config_{abs(hash(path))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return config_utils.flatten_config(module.get_config())


def _config_keys(path: str) -> set[str]:
    return set(_config_fields(path))


def _kind(value: Any) -> str:
    """The JSON kind of a config value: what a saved config.json must hold where a config file has it."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if value is None:
        return "null"
    return type(value).__name__


def check_saved_types(config: ml_collections.ConfigDict, workdir: str) -> None:
    """`UserError` naming ``<workdir>/config.json``, the field and the fix when a field of that saved
    config holds another kind of value (a number, a string, true/false, a list, a section) than every
    config file of the running experiment gives it: a hand-edited file (``"temperature": "hot"``,
    ``"train": 3``) would otherwise stop the mode with a bare ValueError, TypeError or AttributeError.
    Fields no config file has, or one has as None (filled in from the data), are not checked."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    here = os.path.dirname(os.path.abspath(main_file)) if main_file else ""
    if os.path.basename(os.path.dirname(here)) != "experiments":
        return
    kinds: dict[str, set[str]] = {}
    for path in _experiment_configs(here):
        for key, value in _config_fields(path).items():
            kinds.setdefault(key, set()).add(_kind(value))
    sections = {k.rsplit(".", i)[0] for k in kinds for i in range(1, k.count(".") + 1)}
    for key, value in sorted(config_utils.flatten_config(config).items()):
        if key in sections:
            want = "a section of fields"
        elif key in kinds and "null" not in kinds[key] and _kind(value) not in kinds[key]:
            want = " or ".join(sorted(kinds[key]))
        else:
            continue
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise UserError(
            f"{os.path.join(workdir, config_utils.CONFIG_FILE)}: config.{key}={shown} is"
            f" {_kind(value)}, not {want} as in the experiment's configs; the file was edited or is"
            " damaged: restore it (a finished run's results.json holds its config under"
            ' "config"), or pass the config it was trained with as --config'
        )


def _experiment_configs(folder: str) -> list[str]:
    return [
        p
        for p in sorted(glob.glob(os.path.join(folder, "configs", "*.py")))
        if not p.endswith("__init__.py")
    ]


def family_keys(main_file: str) -> tuple[str, set[str]] | None:
    """`(experiment name, the config fields that mark its configs)` for ``experiments/<name>/main.py``:
    the fields every config in its ``configs/`` has and some other experiment's config lacks (None when
    `main_file` is not such an entry point)."""
    here = os.path.dirname(os.path.abspath(main_file))
    root = os.path.dirname(here)
    if os.path.basename(root) != "experiments":
        return None  # another script calling `run`: its folder's files are not ours to import
    mine = [_config_keys(p) for p in _experiment_configs(here)]
    if not mine:
        return None
    common = set.intersection(*mine)
    others = [
        _config_keys(p)
        for d in sorted(glob.glob(os.path.join(root, "*")))
        if os.path.isdir(d) and d != here
        for p in _experiment_configs(d)
    ]
    return os.path.basename(here), {k for k in common if any(k not in o for o in others)}


def check_config_family(
    config: ml_collections.ConfigDict, workdir: str | None, experiment: str | None = None
) -> None:
    """`UserError` when `config` (from --config, or saved in `workdir`) belongs to another experiment
    than the running ``experiments/<name>/main.py``: it lacks most of the fields that mark this one's
    configs (a run saved before a few of them existed still passes). `experiment` ("imdb_sentiment")
    names the experiment instead, for callers that are not its main.py (the notebooks)."""
    if experiment is not None:
        package = importlib.import_module(f"experiments.{experiment}")
        main_file = os.path.join(os.path.dirname(os.fspath(package.__file__)), "main.py")
    else:
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    family = family_keys(main_file) if main_file else None
    if not family or not family[1]:
        return
    name, keys = family
    missing = sorted(keys - set(config_utils.flatten_config(config)))
    if len(missing) * 2 <= len(keys):
        return
    lacks = ", ".join(f"config.{k}" for k in missing[:3]) + (" ..." if len(missing) > 3 else "")
    if workdir is None:
        raise UserError(
            f"{_config_arg(sys.argv)} is not a config of {name} (it lacks {lacks}); pass one of"
            f" experiments/{name}/configs/*.py, or run the experiment the config is for"
        )
    fix = (
        "run the main.py of the experiment that trained it, or pass another --workdir"
        if experiment is None
        else f"pass the workdir of a run of {name}"
    )
    raise UserError(
        f"{workdir} holds a run of another experiment than {name} (its config.json lacks {lacks});"
        f" {fix}"
    )


def check_mode_flags(
    mode: str, modes: Mapping[str, Handler], config: ml_collections.ConfigDict | None
) -> None:
    """`UserError` for a flag of another mode given on the command line: an experiment's flags name the
    mode that reads them at the start of their help ("generate: characters to generate"), and the
    others ignore them (``--mode=train --length=500 --temperature=0`` trained, then sampled with the
    config's length and temperature, exit status 0)."""
    for name in sorted(FLAGS):
        flag = FLAGS[name]
        if name != flag.name or not flag.present:
            continue  # a short name's entry, or a flag not on the command line
        reader = re.match(r"(\w+)(?: \([^)]*\))?:", flag.help or "")
        if reader is None or reader.group(1) not in modes or reader.group(1) == mode:
            continue
        section = config.get(reader.group(1)) if config is not None else None
        setting = (
            f"; after training, --config.{reader.group(1)}.{name} sets it"
            if mode == next(iter(modes))
            and isinstance(section, ml_collections.ConfigDict)
            and name in section
            else ""
        )
        raise UserError(
            f"--{name} is read by --mode={reader.group(1)} only, and this is --mode={mode}; drop it,"
            f" or pass --mode={reader.group(1)}{setting}"
        )


def _flag_error(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _config_arg(args: Sequence[str], field: str | None = None) -> str:
    """The ``--config...`` argument of `args` that names `field` (the ``--config=`` one if None)."""
    if field is not None:
        for flag, path in _overrides(args):
            if field in path.split("."):
                return flag
        return "--config"
    for i, a in enumerate(args):
        if a in ("--config", "-config") and i + 1 < len(args):
            return f"--config={args[i + 1]}"
        if a.startswith(("--config=", "-config=")):
            return a
    return "--config"


def _parse_flags(args: list[str]) -> list[str]:
    """absl's flag parsing, with a one-line error and exit status 2 for every bad flag: an unknown or
    malformed flag, a --config file that cannot be read or whose code raises (`_config_file_failure`), a
    --config.x.y override the config lacks (ml_collections raises those as tracebacks)."""
    given = _config_arg(args)
    if given.endswith((".json", ".json'", '.json"')):
        _flag_error(
            f"{given}: a .json file is a run's saved config, not a config file; omit --config to use"
            " the workdir's saved config.json, or pass experiments/<experiment>/configs/<name>.py"
            " (with --config.x=y overrides)"
        )
    for flag, path in _overrides(args):
        try:
            config_path.split(path)
        except Exception:  # noqa: BLE001 (ml_collections raises SyntaxError, ValueError, ...)
            _flag_error(
                f"{flag}: {path!r} is not a config field; an override names one by its dotted path,"
                " as in --config.train.batch_size=64"
            )
    absl_logger = logging.get_absl_logger()
    absl_logger.addFilter(_not_returned_none)  # reported below, as the one line
    try:
        try:
            rest = FLAGS(args)
        finally:
            absl_logger.removeFilter(_not_returned_none)
        # ml_collections keeps a --config file that failed to load as an object raising on first use.
        value = FLAGS["config"].value
        failed = getattr(value, "__dict__", {}).get("_error") if value is not None else None
        if failed is not None:
            raise failed
        if value is None and given != "--config":
            _flag_error(
                f"{given}: get_config() returned None, not a config (a missing return statement?);"
                " end it with `return config`, see experiments/<experiment>/configs/*.py"
            )
        if value is not None and not isinstance(value, ml_collections.ConfigDict):
            _flag_error(
                f"{given}: get_config() returned a {type(value).__name__}, not an"
                " ml_collections.ConfigDict; see experiments/<experiment>/configs/*.py"
            )
        return rest
    except flags.Error as e:
        if failure := _config_file_failure(e, args):  # a ValueError or TypeError of the file's code
            _flag_error(failure)
        unknown = re.search(r"Unknown command line flag '(config\.[^']+)'", str(e))
        if unknown and _config_arg(args) == "--config":  # an override without a --config file
            _flag_error(
                f"--{unknown.group(1)} overrides a field of a --config file, and none was given; pass"
                " --config=experiments/<experiment>/configs/<name>.py as well (a run's saved"
                " config.json is used as it is: eval and predict need only --workdir, and generate"
                " takes its settings as flags, see --helpshort)"
            )
        message = " ".join(str(e).split())
        name = re.search(r"Unknown command line flag '([^']*)'", message)
        if name and not re.fullmatch(r"[A-Za-z_][\w.-]*", name.group(1)):
            # "-1 stars" as a text to predict: absl reads it as the flag "1 stars".
            _flag_error(
                f"{message}; a text that starts with '-' is read as a flag: put -- before the texts,"
                " as in --mode=predict -- '-1 stars, awful'"
            )
        _flag_error(f"{message}; see --helpshort for the flags")
    except SyntaxError as e:  # --config=<file> is not Python (a README, a typo in a config file)
        _flag_error(
            f"{_config_arg(args)}: the config file is not valid Python ({e.msg}, line {e.lineno});"
            " fix it or pass a config file such as experiments/<experiment>/configs/<name>.py"
        )
    except OSError as e:  # --config=<file> missing or unreadable
        reason = str(e).strip().splitlines()[-1].strip()
        _flag_error(
            f"{_config_arg(args)}: cannot load the config file ({reason}); pass the path of a config"
            " file such as experiments/<experiment>/configs/<name>.py"
        )
    except (AttributeError, KeyError) as e:  # --config.a.b=value where the config has no such field
        if failure := _config_file_failure(e, args):
            _flag_error(failure)
        if problem := _override_problem(args):  # --config.seed.x=1: "no field 'int'" before
            _flag_error(problem)
        text = str(e).replace("\\'", "'").replace("\\n", "\n")
        if "get_config" in text:
            _flag_error(
                f"{_config_arg(args)}: the config file has no get_config() function returning the"
                " config; see experiments/<experiment>/configs/*.py"
            )
        names = re.findall(r"'([A-Za-z_][A-Za-z0-9_]*)'", text)
        if not names:
            raise
        hint = re.search(r'Did you mean "([^"]+)"', text)
        fix = f"did you mean {hint.group(1)}?" if hint else "check the name against the config file"
        _flag_error(f"{_config_arg(args, names[0])}: the config has no field {names[0]!r}; {fix}")
    except Exception as e:  # the --config file's code raised (a NameError, an ImportError, ...)
        if failure := _config_file_failure(e, args):
            _flag_error(failure)
        if problem := _override_problem(args):  # --config.data.path.x=1, --config.x.sizes[0]=1
            _flag_error(problem)
        raise


def check_read_overrides(config: ml_collections.ConfigDict, args: Sequence[str]) -> None:
    """`UserError` for a ``--config.train.num_epochs`` override that training would not read: while
    ``train.num_steps`` is set (by the config file, as quick.py for ``make run`` does, or another
    override) it sets the run's length, and the epochs asked for were silently not trained."""
    tr = config.get("train")
    if tr is None or not int(tr.get("num_steps", 0) or 0):
        return
    for flag, path in _overrides(args):
        if path == "train.num_epochs":
            raise UserError(
                f"{flag}={tr.num_epochs} has no effect while config.train.num_steps={tr.num_steps}"
                " sets the run's length; add --config.train.num_steps=0 to train for num_epochs, or"
                " pass --config.train.num_steps=<steps> instead"
            )


def _overrides(args: Sequence[str]) -> list[tuple[str, str]]:
    """`(flag, field path)` of each ``--config.<path>`` override in `args` (``--noconfig.<path>``
    too), up to a ``--`` that ends the flags."""
    found = []
    for a in args[1:]:
        if a == "--":
            break
        m = re.match(r"-{1,2}(?:no)?config[.]([^=]*)", a)
        if m:
            found.append((f"--config.{m.group(1)}", m.group(1)))
    return found


def _override_problem(args: Sequence[str]) -> str | None:
    """One line naming the first override of `args` whose path goes through a field that is not a
    section (``--config.seed.x``: an int) or indexes a tuple (replaced whole), for the exceptions
    ml_collections raises for them; None when there is none (or the --config file cannot be loaded)."""
    given = _config_arg(args)
    if given == "--config":
        return None
    try:
        config = FLAGS["config"].parser.parse(given.split("=", 1)[1])
    except Exception:  # noqa: BLE001 (reported by its own handler, not here)
        return None
    for flag, path in _overrides(args):
        node, walked = config, "config"
        for part in config_path.split(path):
            if isinstance(part, int):
                if isinstance(node, tuple):
                    return (
                        f"{flag}: {walked} is a tuple, which an override replaces whole; pass e.g."
                        f" --{walked}='{node!r}'"
                    )
                if isinstance(node, Mapping | ml_collections.ConfigDict):
                    return f"{flag}: {walked} is a section, not a list; pass --{walked}.<field>=<value>"
                if not isinstance(node, list):
                    return f"{flag}: {walked} is a value ({node!r}), not a list"
                if not -len(node) <= part < len(node):
                    return f"{flag}: {walked} has no item [{part}]; it has {len(node)}"
                node, walked = node[part], f"{walked}[{part}]"
            elif isinstance(node, Mapping | ml_collections.ConfigDict):
                if part not in node:
                    break  # an unknown field: named by the handler of ml_collections' error
                node, walked = node[part], f"{walked}.{part}"
            else:
                return (
                    f"{flag}: {walked} is a value ({node!r}), not a section with fields; pass"
                    f" --{walked}=<value>"
                )
    return None


def _config_file_failure(e: BaseException, args: Sequence[str]) -> str | None:
    """The one-line report of an exception that the --config file raised (its code at import or in
    get_config(), or get_config() called with arguments it does not take): the exception and the file's
    line; None when `e` did not come from the file. ml_collections re-raises a ValueError or TypeError of
    the file as one whose text is the whole traceback, which absl wraps in a flags.Error: the original is
    the root of the chain."""
    given = _config_arg(args)
    if given == "--config":
        return None
    target = os.path.realpath(given.split("=", 1)[1].split(":", 1)[0])
    chain: list[BaseException] = []
    cause: BaseException | None = e
    while cause is not None and all(cause is not c for c in chain):
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    for exc in reversed(chain):  # the root cause first
        frames = [
            f
            for f in traceback.extract_tb(exc.__traceback__)
            if os.path.realpath(f.filename) == target
        ]
        text = " ".join(str(exc).split())
        called = isinstance(exc, TypeError) and text.startswith("get_config()")
        if frames or called:
            where = f" at line {frames[-1].lineno}" if frames else ""
            return (
                f"{given}: the config file raised {type(exc).__name__}{where}"
                f"{': ' + text[:300] if text else ''}; fix it, or pass a config file such as"
                " experiments/<experiment>/configs/<name>.py"
            )
    return None


def _not_returned_none(record: py_logging.LogRecord) -> bool:
    """Drops ml_collections' warning that get_config() returned None (`_parse_flags` reports it as an
    error): absl would print it, and a line about logging before flag parsing, above the error."""
    return "get_config() returned None" not in str(record.msg)


def _closed_loop_noise(etype: Any, value: Any, tb: Any) -> bool:
    """Whether an uncaught exception is the "Event loop is closed" RuntimeError that TensorStore's
    callbacks raise in asyncio after a failed checkpoint read, once Orbax's event loop has closed:
    noise after the one-line error about the damaged checkpoint, not a problem of its own."""
    frames = traceback.extract_tb(tb)
    return (
        etype is RuntimeError
        and str(value) == "Event loop is closed"
        and bool(frames)
        and frames[-1].filename.endswith(os.path.join("asyncio", "base_events.py"))
    )


def _quiet_closed_loop_excepthook(hook: Callable[..., Any]) -> Callable[..., Any]:
    """`sys.excepthook` (TensorStore's callbacks print through `PyErr_Print`) without
    `_closed_loop_noise`."""

    def excepthook(etype, value, tb):  # noqa: ANN001, ANN202 (sys.excepthook's signature)
        if not _closed_loop_noise(etype, value, tb):
            hook(etype, value, tb)

    return excepthook


def _quiet_closed_loop_thread_excepthook(hook: Callable[..., Any]) -> Callable[..., Any]:
    """`threading.excepthook` (one of Orbax's worker threads raising) without `_closed_loop_noise`."""

    def excepthook(args):  # noqa: ANN001, ANN202 (threading.excepthook's signature)
        if not _closed_loop_noise(args.exc_type, args.exc_value, args.exc_traceback):
            hook(args)

    return excepthook


def _quiet_failed_reads_unraisablehook(hook: Callable[..., Any]) -> Callable[..., Any]:
    """`sys.unraisablehook` without the reports of Orbax's array-read coroutines that failed on a
    damaged checkpoint (each prints TensorStore's whole spec when garbage-collected): the failure is
    already reported in one line (moved aside on resume, an error in eval)."""

    def unraisablehook(unraisable):  # noqa: ANN001, ANN202 (sys.unraisablehook's signature)
        if _closed_loop_noise(  # TensorStore's callbacks after a failed checkpoint write (full disk)
            getattr(unraisable, "exc_type", None),
            getattr(unraisable, "exc_value", None),
            getattr(unraisable, "exc_traceback", None),
        ):
            return
        code = getattr(unraisable.object, "cr_code", None)
        if code is not None and "orbax" in code.co_filename and unraisable.exc_value is not None:
            if str(unraisable.exc_value).startswith("Encountered error while reading array"):
                return
        hook(unraisable)

    return unraisablehook


def _redeliver_lost_interrupt_unraisablehook(hook: Callable[..., Any]) -> Callable[..., Any]:
    """`sys.unraisablehook` that sends SIGINT again for a KeyboardInterrupt Python could not raise.

    Ctrl-C handled while a garbage-collector callback ran (JAX's `_xla_gc_callback`, which runs after
    long C calls such as imports and compilation) or a `__del__` is "Exception ignored in ..." with a
    traceback, and dropped: the run went on to its end and exited 0. A thread sends the signal again a
    moment later, when the main thread is back in ordinary code: the one-line error and status 130, or
    in training the checkpoint of the step in flight."""

    def unraisablehook(unraisable):  # noqa: ANN001, ANN202 (sys.unraisablehook's signature)
        etype = getattr(unraisable, "exc_type", None)
        if isinstance(etype, type) and issubclass(etype, KeyboardInterrupt):
            again = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT))
            again.daemon = True
            again.start()
            return
        hook(unraisable)

    return unraisablehook


# The error handler `escape_unencodable` sets on stdout and stderr.
_ESCAPE = "lstm_jax.escape"


def _escape_errors(e: UnicodeError) -> tuple[str | bytes, int]:
    """Encoding errors: undecodable bytes Python carried as surrogates (argv, the C locale's stdin) written
    back as those bytes (``surrogateescape``), any other character the encoding lacks as ``\\xe9``,
    ``\\u2014`` (``backslashreplace``)."""
    if isinstance(e, UnicodeEncodeError) and all(
        0xDC80 <= ord(c) <= 0xDCFF for c in e.object[e.start : e.end]
    ):
        return codecs.lookup_error("surrogateescape")(e)
    return codecs.backslashreplace_errors(e)


def escape_unencodable(*streams: Any) -> None:
    """Makes text streams whose encoding cannot encode every character (ASCII under ``LC_ALL=C`` with
    ``PYTHONUTF8=0``, Latin-1) write the characters it lacks as backslash escapes instead of raising
    UnicodeEncodeError in the middle of the output (a predicted review, a generated sample). Streams in
    a UTF encoding, or that cannot be reconfigured (a test's capture), are left as they are."""
    try:
        codecs.lookup_error(_ESCAPE)
    except LookupError:
        codecs.register_error(_ESCAPE, _escape_errors)
    for stream in streams or (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None)
        if not encoding or not hasattr(stream, "reconfigure"):
            continue
        try:
            name = codecs.lookup(encoding).name
        except LookupError:
            continue
        if name.startswith("utf") or getattr(stream, "errors", None) not in (
            "strict",
            "surrogateescape",
        ):
            continue  # every character encodes, or the stream already replaces what does not
        try:
            stream.reconfigure(errors=_ESCAPE)
        except (OSError, ValueError):  # a closed or detached stream
            continue


def run(modes: Mapping[str, Handler], argv: Sequence[str] | None = None) -> None:
    """Parses flags and runs `modes[--mode](config, workdir)`; exits with 0 or 2 (`UserError`)."""
    if not modes:
        raise ValueError("cli.run needs at least one mode handler")
    escape_unencodable()
    sys.excepthook = _quiet_closed_loop_excepthook(sys.excepthook)
    threading.excepthook = _quiet_closed_loop_thread_excepthook(threading.excepthook)
    sys.unraisablehook = _redeliver_lost_interrupt_unraisablehook(
        _quiet_failed_reads_unraisablehook(sys.unraisablehook)
    )
    define_flags(list(modes))
    logging.get_absl_handler().addFilter(_QuietOrbax())
    logging.set_verbosity(logging.INFO)

    def _main(args: Sequence[str]) -> None:
        sys.exit(main(args, modes))

    app.run(_main, argv=None if argv is None else list(argv), flags_parser=_parse_flags)
