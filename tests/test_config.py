"""Config validation (one-line errors naming the field), the config JSON, and the CLI entry point."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import engine_fixtures as ef
import ml_collections
import pytest
from flax import nnx

from lstm_jax import cli, config_utils
from lstm_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("optimizer.learning_rate", -1, "config.optimizer.learning_rate must be > 0, got -1"),
        ("optimizer.learning_rate", 0.0, "config.optimizer.learning_rate must be > 0, got 0.0"),
        (
            "optimizer.name",
            "adamax",
            "config.optimizer.name must be one of adam, adamw, rmsprop, sgd",
        ),
        ("train.batch_size", 0, "config.train.batch_size must be an integer > 0, got 0"),
        ("train.batch_size", 2.5, "config.train.batch_size must be an integer, got 2.5"),
        ("optimizer.schedule", "linear", "config.optimizer.schedule must be one of constant"),
        ("optimizer.clip_norm", -0.5, "config.optimizer.clip_norm must be >= 0"),
        ("optimizer.b2", 1.0, "config.optimizer.b2 must be in [0, 1), got 1.0"),
        ("train.monitor_mode", "best", "config.train.monitor_mode must be one of auto, min, max"),
        ("early_stopping.patience", -1, "config.early_stopping.patience must be an integer >= 0"),
        ("train.log_every_steps", 0, "config.train.log_every_steps must be an integer > 0"),
        ("optimizer.decay_steps", -1, "config.optimizer.decay_steps must be an integer >= 0"),
        ("optimizer.decay_steps", 2.5, "config.optimizer.decay_steps must be an integer"),
        ("seed", -3, "config.seed must be an integer in [0, 4294967295], got -3"),
        # sklearn's random_state stops at 2**32 - 1 (an error that named validation_fraction), and
        # jax.random.key raised a bare OverflowError past 2**64 - 1.
        ("seed", 2**32, "config.seed must be an integer in [0, 4294967295], got 4294967296"),
        ("seed", 2**64, "config.seed must be an integer in [0, 4294967295]"),
        ("optimizer.learning_rate", float("inf"), "config.optimizer.learning_rate must be finite"),
        ("optimizer.learning_rate", float("nan"), "config.optimizer.learning_rate must be finite"),
        ("train.batch_size", True, "config.train.batch_size must be an integer, got True"),
        ("optimizer.b1", 1.0, "config.optimizer.b1 must be in [0, 1), got 1.0"),
        ("optimizer.rho", 1.0, "config.optimizer.rho must be in [0, 1), got 1.0"),
        ("optimizer.momentum", 1.0, "config.optimizer.momentum must be in [0, 1), got 1.0"),
        ("optimizer.nesterov", "yes", "config.optimizer.nesterov must be True or False"),
        ("train.checkpoint_keep", 0, "config.train.checkpoint_keep must be an integer >= 1, got 0"),
        ("train.monitor", " ", "config.train.monitor must be a metric name such as 'val_loss'"),
        ("early_stopping.enabled", 1, "config.early_stopping.enabled must be True or False, got 1"),
        (
            "early_stopping.restore_best_weights",
            "no",
            "config.early_stopping.restore_best_weights must be True or False, got 'no'",
        ),
    ],
)
def test_bad_values_give_one_line_errors_naming_the_field(field, value, expected):
    config = config_utils.engine_defaults().to_dict()  # plain dicts: no ConfigDict type checks
    *path, name = field.split(".")
    node = config
    for part in path:
        node = node[part]
    node[name] = value
    with pytest.raises(UserError) as err:
        config_utils.validate_config(config)
    message = str(err.value)
    assert message.startswith(expected), message
    assert "\n" not in message and f"--config.{field}=" in message


@pytest.mark.parametrize(
    "fields",
    [
        {"seed": config_utils.MAX_SEED},  # the largest seed every consumer takes
        {"optimizer.schedule": "cosine", "optimizer.min_lr_ratio": 1.0},  # a cosine that holds
        {"train.num_epochs": 0, "train.num_steps": 5},  # the run's length set by num_steps alone
        {"train.prefetch": 0, "train.checkpoint_keep": 1, "early_stopping.patience": 0},
    ],
)
def test_values_at_the_ends_of_their_ranges_are_valid(fields):
    config = config_utils.engine_defaults().to_dict()
    for field, value in fields.items():
        *path, name = field.split(".")
        node = config
        for part in path:
            node = node[part]
        node[name] = value
    config_utils.validate_config(config)


def test_the_largest_split_seed_a_size_of_1_and_a_saved_runs_missing_fields_are_valid():
    config_utils.check_split_seed({"split_seed": config_utils.MAX_SEED})
    assert config_utils.positive_int({"embed_dim": 1}, "embed_dim") == 1
    assert config_utils.layer_sizes({"hidden_sizes": (1,)}) == (1,)
    assert config_utils.dense_layers({"dense_layers": ((1, "relu"),)}, ("relu",)) == [(1, "relu")]
    # A run saved before train.drop_remainder existed dropped the remainder.
    assert config_utils.drop_remainder({"train": {}}) is True


@pytest.mark.parametrize("name", ["adam", "adamw", "rmsprop", "sgd"])
def test_an_epsilon_of_0_is_refused_where_the_update_divides_by_it(name):
    """eps=0 passed validation and the run stopped at step 2 with a NaN loss and the advice to lower the
    learning rate: Adam's m / (sqrt(v) + eps) and RMSprop's g / sqrt(v + eps) are 0 / 0 for a weight
    whose gradient is 0 (an unused embedding row). SGD does not read eps."""
    config = config_utils.engine_defaults()
    config.optimizer.name = name
    config.optimizer.eps = 0.0
    if name == "sgd":
        config_utils.validate_config(config)
        return
    with pytest.raises(UserError) as err:
        config_utils.validate_config(config)
    assert str(err.value).startswith(
        f"config.optimizer.eps must be > 0 with optimizer.name={name!r}"
    ), err.value
    assert "--config.optimizer.eps=" in str(err.value)


def test_defaults_are_valid_and_keras_like():
    config = config_utils.engine_defaults()
    config_utils.validate_config(config)
    assert config.optimizer.learning_rate == 1e-3 and config.optimizer.eps == 1e-7
    assert config.optimizer.rho == 0.9


def test_missing_section_and_warmup_without_steps():
    config = config_utils.engine_defaults()
    del config["early_stopping"]
    with pytest.raises(UserError, match=r"config.early_stopping is missing"):
        config_utils.validate_config(config)
    config = config_utils.engine_defaults()
    config.optimizer.schedule = "warmup_cosine"
    with pytest.raises(UserError, match="config.optimizer.warmup_steps must be > 0"):
        config_utils.validate_config(config)
    config.optimizer.warmup_steps = config.optimizer.decay_steps = 10
    with pytest.raises(UserError, match=r"config.optimizer.decay_steps must be > optimizer.warmup"):
        config_utils.validate_config(config)
    config.optimizer.decay_steps = 11
    config_utils.validate_config(config)
    del config.optimizer["decay_steps"]  # a run saved before the field existed
    config_utils.validate_config(config)


@pytest.mark.parametrize("value", [1.0, 1.5, -0.1, float("nan"), "half"])
def test_dropout_rates_outside_0_1_are_user_errors(value):
    model = {"dropout": 0.2, "recurrent_dropout": value}
    with pytest.raises(UserError) as err:
        config_utils.dropout_rates(model, ("dropout", "recurrent_dropout"))
    message = str(err.value)
    assert message.startswith(f"config.model.recurrent_dropout={value} is not a dropout rate")
    assert "\n" not in message and "--config.model.recurrent_dropout=0.2" in message


def test_dropout_rates_reads_fields_and_defaults_optional_ones():
    model = {"dropout": 0.5, "embed_dropout": 0}
    rates = config_utils.dropout_rates(model, ("dropout", "embed_dropout"), optional={"token": 0.0})
    assert rates == {"dropout": 0.5, "embed_dropout": 0.0, "token": 0.0}
    model["token"] = 0.3  # present: read, and checked like the others
    rates = config_utils.dropout_rates(model, ("dropout",), optional={"token": 0.0})
    assert rates == {"dropout": 0.5, "token": 0.3}
    model["token"] = 2.0
    with pytest.raises(UserError, match=r"config\.model\.token=2\.0 is not a dropout rate"):
        config_utils.dropout_rates(model, ("dropout",), optional={"token": 0.0})


TASK_MODULES = {
    "char_textgen": "lstm_jax.tasks.char_lm",
    "word_textgen": "lstm_jax.tasks.word_lm",
    "imdb_sentiment": "lstm_jax.tasks.classification",
    "fake_news": "lstm_jax.tasks.classification",
}


def _task_test_config(task: str) -> tuple[Any, ml_collections.ConfigDict]:
    """`(build_model, the experiment's test config)` of a task, with a vocabulary size where it needs one."""
    build_model = importlib.import_module(TASK_MODULES[task]).build_model
    config = importlib.import_module(f"experiments.{task}.configs.test").get_config()
    if "vocab_size" in config.model:
        config.model.vocab_size = 40
    return build_model, config


@pytest.mark.parametrize(
    ("task", "field"),
    [
        ("char_textgen", "dropout"),
        ("char_textgen", "recurrent_dropout"),
        ("word_textgen", "dropout"),
        ("imdb_sentiment", "embed_dropout"),
        ("fake_news", "dropout"),
    ],
)
def test_every_task_rejects_an_impossible_dropout_rate_before_building(task, field):
    build_model, config = _task_test_config(task)
    build_model(config, nnx.Rngs(0))  # the test config builds
    config.model[field] = 1.0
    with pytest.raises(UserError, match=rf"config\.model\.{field}=1\.0 is not a dropout rate"):
        build_model(config, nnx.Rngs(0))


@pytest.mark.parametrize("task", list(TASK_MODULES))
def test_every_task_checks_the_engine_config_and_workdir_before_reading_data(task, tmp_path):
    """`train` names a bad engine field (a batch size of 0 once divided by zero in the char streams) or
    a workdir that is a file before it touches the data (the path here does not exist) or the workdir."""
    train = importlib.import_module(TASK_MODULES[task]).train
    config = importlib.import_module(f"experiments.{task}.configs.test").get_config()
    config.data.path = str(tmp_path / "no_such_data")
    config.train.batch_size = 0
    workdir = tmp_path / "run"
    with pytest.raises(
        UserError, match=r"^config\.train\.batch_size must be an integer > 0, got 0"
    ):
        train(config, str(workdir))
    assert not workdir.exists()
    config.train.batch_size = 4
    workdir.write_text("results of something else")
    with pytest.raises(UserError, match=r"is a file, not a directory; pass a run directory"):
        train(config, str(workdir))
    assert workdir.read_text() == "results of something else"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("hidden_sizes", (0,), "config.model.hidden_sizes=(0,) must be one positive integer per"),
        ("hidden_sizes", (), "config.model.hidden_sizes=() must be one positive integer per"),
        ("hidden_sizes", (32, 2.5), "config.model.hidden_sizes=(32, 2.5) must be one positive"),
        ("embed_dim", 0, "config.model.embed_dim=0 must be a positive integer"),
        ("embed_dim", -3, "config.model.embed_dim=-3 must be a positive integer"),
    ],
)
@pytest.mark.parametrize("task", ["char_textgen", "word_textgen", "imdb_sentiment"])
def test_every_task_rejects_impossible_layer_sizes(task, field, value, expected):
    build_model, config = _task_test_config(task)
    config = ml_collections.ConfigDict(config.to_dict())  # a copy without type checks: any value
    _assert_build_error(build_model, config, field, value, expected)


def _assert_build_error(build_model, config, field: str, value: Any, expected: str) -> None:
    """Building with ``config.model.<field> = value`` raises a one-line UserError starting `expected`."""
    config.model[field] = value
    with pytest.raises(UserError) as err:
        build_model(config, nnx.Rngs(0))
    message = str(err.value)
    assert message.startswith(expected), message
    assert "\n" not in message and f"--config.model.{field}=" in message


@pytest.mark.parametrize("task", ["char_textgen", "word_textgen"])
@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        (
            "impl",
            "bogus",
            "config.model.impl='bogus' is not an LSTM implementation; pass one of auto",
        ),
        ("unroll", 0, "config.model.unroll=0 must be a positive integer"),
    ],
)
def test_language_models_reject_unknown_impls_and_unroll(task, field, value, expected):
    build_model, config = _task_test_config(task)
    _assert_build_error(build_model, config, field, value, expected)


@pytest.mark.parametrize(
    ("task", "field", "value", "expected"),
    [
        (
            "imdb_sentiment",
            "pool",
            "avg",
            "config.model.pool='avg' is not a pooling; pass one of last,",
        ),
        (
            "char_textgen",
            "input_mode",
            "bytes",
            "config.model.input_mode='bytes' is not an input mode",
        ),
        (
            "imdb_sentiment",
            "dense_layers",
            ((64, "gelu"),),
            "config.model.dense_layers=((64, 'gelu'),)",
        ),
        (
            "imdb_sentiment",
            "dense_layers",
            ((0, "relu"),),
            "config.model.dense_layers=((0, 'relu'),)",
        ),
        ("word_textgen", "dense_layers", (64,), "config.model.dense_layers=(64,) must be (units,"),
        (
            "word_textgen",
            "dense_layers",
            ((64, "relu", 2),),
            "config.model.dense_layers=((64, 'relu', 2),) must be (units,",
        ),
    ],
)
def test_tasks_reject_unknown_pools_input_modes_and_dense_layers(task, field, value, expected):
    build_model, config = _task_test_config(task)
    config = ml_collections.ConfigDict(config.to_dict())  # a copy without type checks: any value
    _assert_build_error(build_model, config, field, value, expected)


@pytest.mark.parametrize(
    ("config_name", "field", "value", "expected"),
    [
        ("imdb_sentiment.configs.test", "split_seed", -1, "config.data.split_seed=-1 must be"),
        ("imdb_sentiment.configs.test", "split_seed", 2**32, "config.data.split_seed=4294967296"),
        ("fake_news.configs.test", "split_seed", 2**40, "config.data.split_seed=1099511627776"),
        ("fake_news.configs.test", "num_buckets", 1, "config.data.num_buckets=1 leaves no id"),
        # 2 ids are 0 (unused) and 1 (out-of-vocabulary): every metadata token was silently OOV.
        (
            "fake_news.configs.test_liar",
            "meta_vocab_size",
            2,
            "config.data.meta_vocab_size=2 leaves no id for a metadata token (0 is unused, 1 the",
        ),
        # --config.data.metadata=speaker,party_affiliation parses as one name: the error shows a tuple.
        (
            "fake_news.configs.test_liar",
            "metadata",
            ("speaker,party_affiliation",),
            "config.data.metadata has unknown LIAR column(s) ['speaker,party_affiliation']",
        ),
    ],
)
def test_classification_data_fields_out_of_range_name_the_field(
    config_name, field, value, expected
):
    """A split seed sklearn cannot take was reported as a bad validation/test fraction; a fake-news
    num_buckets < 2 as a bare `num_buckets=` without the --config.data. flag to fix it."""
    from lstm_jax.tasks import classification

    config = importlib.import_module(f"experiments.{config_name}").get_config()
    config.data[field] = value
    with pytest.raises(UserError) as err:
        classification.prepare_data(config)  # before any data is read
    message = str(err.value)
    assert message.startswith(expected), message
    assert f"--config.data.{field}=" in message
    if field == "metadata":
        assert """--config.data.metadata='("speaker", "party_affiliation")'""" in message


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"optimizer.weight_decay": 0.01},
            "config.optimizer.weight_decay=0.01 has no effect with config.optimizer.name='adam'"
            " (only 'adamw' reads it); pass --config.optimizer.name='adamw' to use it, or set it to 0.0",
        ),
        (
            {"optimizer.warmup_steps": 100},
            "config.optimizer.warmup_steps=100 has no effect with config.optimizer.schedule='constant'",
        ),
        (
            {
                "optimizer.min_lr_ratio": 0.1,
                "optimizer.schedule": "warmup_constant",
                "optimizer.warmup_steps": 5,
            },
            "config.optimizer.min_lr_ratio=0.1 has no effect with config.optimizer.schedule=",
        ),
        (
            {"optimizer.decay_steps": 1000},
            "config.optimizer.decay_steps=1000 has no effect with config.optimizer.schedule='constant'",
        ),
        ({"optimizer.momentum": 0.9}, "config.optimizer.momentum=0.9 has no effect"),
        ({"optimizer.rho": 0.5, "optimizer.name": "sgd"}, "config.optimizer.rho=0.5 has no effect"),
        (
            {"optimizer.nesterov": True, "optimizer.name": "sgd"},
            "config.optimizer.nesterov=True has no effect with config.optimizer.momentum=0",
        ),
        (
            {"early_stopping.patience": 5},
            "config.early_stopping.patience=5 has no effect with config.early_stopping.enabled=False"
            " (only True reads it); pass --config.early_stopping.enabled=True",
        ),
    ],
)
def test_a_field_the_chosen_settings_never_read_is_named(fields, expected):
    """A field set away from its default but read by none of the config's choices (weight decay with
    Adam, a warmup with the constant schedule) did nothing, silently; `ignored_fields` names it."""
    config = config_utils.engine_defaults()
    for field, value in fields.items():
        section, name = field.split(".")
        config[section][name] = value
    config_utils.validate_config(config)
    (line,) = config_utils.ignored_fields(config)
    assert line.startswith(expected), line


def test_training_warns_of_a_field_its_settings_never_read(tmp_path, caplog):
    import logging

    import engine_fixtures as ef

    from lstm_jax.train import train_and_evaluate

    config = ef.base_config(num_epochs=1)
    config.optimizer.weight_decay = 0.01  # Adam: no effect
    with caplog.at_level(logging.WARNING):
        train_and_evaluate(config, str(tmp_path / "run"), ef.classification_task(config))
    assert any(
        r.getMessage().startswith("config.optimizer.weight_decay=0.01 has no effect")
        for r in caplog.records
    )


@pytest.mark.parametrize("schedule", ["warmup_cosine", "warmup_constant"])
def test_training_warns_of_a_warmup_as_long_as_the_run(tmp_path, caplog, schedule):
    """warmup_steps at or above the run's steps (decay_steps 0): the rate rose for the whole run and
    never reached learning_rate nor decayed, silently; now a warning names both numbers."""
    import logging

    import engine_fixtures as ef

    from lstm_jax import optim
    from lstm_jax.train import train_and_evaluate

    config = ef.base_config(num_epochs=1)
    config.optimizer.schedule, config.optimizer.warmup_steps = schedule, 1000
    with caplog.at_level(logging.WARNING):
        train_and_evaluate(config, str(tmp_path / "run"), ef.classification_task(config))
    (line,) = [r.getMessage() for r in caplog.records if "warmup_steps=1000" in r.getMessage()]
    assert "is not shorter than the run's" in line and "never reaches learning_rate" in line
    config.optimizer.warmup_steps = 3
    assert optim.warmup_problem(config.optimizer, 4) is None
    assert optim.warmup_problem(config.optimizer, 3) is not None
    config.optimizer.schedule = "cosine"
    assert optim.warmup_problem(config.optimizer, 2) is None


def test_shipped_configs_set_no_field_their_settings_ignore():
    for module in CONFIG_FILES:
        config = importlib.import_module(module).get_config()
        assert config_utils.ignored_fields(config) == [], module
    config = config_utils.engine_defaults()
    config.optimizer.name, config.optimizer.weight_decay = "adamw", 0.01
    config.optimizer.schedule, config.optimizer.warmup_steps = "warmup_cosine", 10
    assert config_utils.ignored_fields(config) == []


def test_dense_layers_accept_lists_from_saved_configs_and_none():
    acts = ("relu", "tanh")
    assert config_utils.dense_layers({"dense_layers": [[399, "relu"], [43.0, "tanh"]]}, acts) == [
        (399, "relu"),
        (43, "tanh"),
    ]
    assert config_utils.dense_layers({"dense_layers": ()}, acts) == []


def test_layer_sizes_accept_lists_from_saved_configs():
    assert config_utils.layer_sizes({"hidden_sizes": [128, 64]}) == (128, 64)
    assert config_utils.positive_int({"embed_dim": 16.0}, "embed_dim") == 16
    for bad in (float("nan"), float("inf"), True, "64"):
        with pytest.raises(UserError, match="config.model.embed_dim=.* must be a positive integer"):
            config_utils.positive_int({"embed_dim": bad}, "embed_dim")


def test_monitor_mode_auto_follows_keras():
    assert config_utils.monitor_mode("val_loss", "auto") == "min"
    assert config_utils.monitor_mode("val_accuracy", "auto") == "max"
    assert config_utils.monitor_mode("val_loss", "max") == "max"
    for name in ("val_auc", "auc", "val_fmeasure", "acc"):  # Keras' other "higher is better" names
        assert config_utils.monitor_mode(name, "auto") == "max", name
    assert config_utils.monitor_mode("val_mae", "auto") == "min"


def test_a_relative_data_path_is_saved_absolute(tmp_path, monkeypatch):
    """eval/predict/baseline read the saved config from any directory: the path must not depend on the
    directory training ran in; the same file given relative or absolute is no config change."""
    monkeypatch.chdir(tmp_path)
    config = config_utils.engine_defaults()
    config.data.path = "csv/news.csv"
    config_utils.save_config(config, str(tmp_path / "run"))
    loaded = config_utils.load_config(str(tmp_path / "run"))
    assert loaded.data.path == str(tmp_path / "csv" / "news.csv")
    assert config_utils.config_diff(config, loaded) == []
    loaded.data.path = "csv/other.csv"
    assert config_utils.config_diff(config, loaded) == ["data.path"]
    config.data.path = ""  # empty: $LSTM_JAX_DATA's copy, kept empty
    config_utils.save_config(config, str(tmp_path / "run2"))
    assert config_utils.load_config(str(tmp_path / "run2")).data.path == ""


def test_save_load_and_diff(tmp_path):
    config = config_utils.engine_defaults()
    config.model.sizes = (3, 4)
    config.data.path = "/data/x.txt"
    config_utils.save_config(config, str(tmp_path))
    loaded = config_utils.load_config(str(tmp_path))
    assert config_utils.config_diff(config, loaded) == []
    assert loaded.model.sizes == [3, 4] and loaded.data.path == "/data/x.txt"
    loaded.optimizer.learning_rate = 0.5
    loaded.model.extra = 1
    assert config_utils.config_diff(config, loaded) == ["model.extra", "optimizer.learning_rate"]
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(UserError, match="config.json is not valid JSON .*line 1 column 2"):
        config_utils.load_config(str(tmp_path))
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="holds a JSON list, not a config object"):
        config_utils.load_config(str(tmp_path))
    with pytest.raises(UserError, match="does not exist"):
        config_utils.load_config(str(tmp_path / "nowhere"))


MAIN = textwrap.dedent(
    """
    import json, signal, sys
    from lstm_jax import cli
    from lstm_jax.errors import Interrupted, UserError

    def train(config, workdir):
        print("TRAIN", json.dumps({"lr": config.optimizer.learning_rate, "workdir": workdir,
                                   "args": cli.positional_args()}))

    train.takes_arguments = True

    def broken(config, workdir):
        raise UserError("data.csv row 3 has no label; fix the file")

    def stopped(config, workdir):
        raise Interrupted("SIGTERM at step 7 of 12 (epoch 1): saved a checkpoint", signal.SIGTERM)

    def ctrl_c(config, workdir):
        raise KeyboardInterrupt

    def read_only(config, workdir):
        raise PermissionError(13, "Permission denied", workdir + "/config.json.tmp4242")

    def full(config, workdir):
        raise OSError(28, "No space left on device", workdir + "/checkpoints")

    def not_found(config, workdir):  # a bug, not a user's mistake: its traceback is kept
        raise FileNotFoundError(2, "No such file or directory", "/nowhere/internal.bin")

    if __name__ == "__main__":
        cli.run({"train": train, "predict": broken, "stopped": stopped, "ctrl_c": ctrl_c,
                 "read_only": read_only, "full": full, "not_found": not_found})
    """
)


def _cli(tmp_path, *args):
    return ef.run_cli_script(tmp_path, MAIN, *args)


def test_cli_overrides_modes_and_user_errors(tmp_path):
    workdir = str(tmp_path / "run")
    ok = _cli(
        tmp_path,
        "--config=cfg.py",
        "--config.optimizer.learning_rate=0.05",
        f"--workdir={workdir}",
        "hello",
        "world",
    )
    assert ok.returncode == 0, ok.stderr
    line = next(x for x in ok.stdout.splitlines() if x.startswith("TRAIN"))
    assert json.loads(line[5:]) == {"lr": 0.05, "workdir": workdir, "args": ["hello", "world"]}

    bad = _cli(tmp_path, "--config=cfg.py", f"--workdir={workdir}", "--mode=predict")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == "error: data.csv row 3 has no label; fix the file"
    assert "Traceback" not in bad.stderr

    a_file = _cli(tmp_path, "--config=cfg.py", f"--workdir={tmp_path / 'cfg.py'}")
    assert a_file.returncode == 2 and "is a file, not a directory" in a_file.stderr
    under_a_file = _cli(tmp_path, "--config=cfg.py", f"--workdir={tmp_path / 'cfg.py' / 'run'}")
    assert under_a_file.returncode == 2 and "Traceback" not in under_a_file.stderr
    assert "cfg.py, which is a file, not a directory" in under_a_file.stderr

    (tmp_path / "saved.json").write_text('{"seed": 0, "flag": false}')
    a_json = _cli(tmp_path, "--config=saved.json", f"--workdir={workdir}")
    assert a_json.returncode == 2 and "Traceback" not in a_json.stderr
    assert "a .json file is a run's saved config, not a config file; omit --config" in a_json.stderr

    stray = _cli(tmp_path, "--config=cfg.py", f"--workdir={workdir}", "--mode=stopped", "blue")
    assert stray.returncode == 2 and "Traceback" not in stray.stderr
    assert "--mode=stopped takes no arguments, but got 'blue'; a flag value with spaces" in (
        stray.stderr
    )

    no_config = _cli(tmp_path, f"--workdir={workdir}")
    assert no_config.returncode == 2 and "error: no --config given" in no_config.stderr

    unknown = _cli(tmp_path, "--config=cfg.py", f"--workdir={workdir}", "--mode=dance")
    assert (
        unknown.returncode == 2
        and "error: --mode=dance is not one of train, predict" in unknown.stderr
    )

    # A signal: the shell's 128 + signum, one line, no traceback.
    stopped = _cli(tmp_path, "--config=cfg.py", f"--workdir={workdir}", "--mode=stopped")
    assert stopped.returncode == 143 and "Traceback" not in stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1] == (
        "error: SIGTERM at step 7 of 12 (epoch 1): saved a checkpoint"
    )
    ctrl_c = _cli(tmp_path, "--config=cfg.py", f"--workdir={workdir}", "--mode=ctrl_c")
    assert ctrl_c.returncode == 130 and "Traceback" not in ctrl_c.stderr
    assert (
        ctrl_c.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: interrupted (Ctrl-C); what was already written in {workdir} is intact")
    )


LOST_CTRL_C_MAIN = textwrap.dedent(
    """
    import gc, signal, time
    from lstm_jax import cli

    # Ctrl-C raises KeyboardInterrupt, as in a process started from a terminal (Python leaves SIGINT
    # ignored in a process whose parent ignored it: a test run started in the background with `&`).
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def train(config, workdir):
        def in_gc(phase, info):  # Ctrl-C handled while a gc callback runs (JAX's _xla_gc_callback)
            if phase == "start":
                gc.callbacks.remove(in_gc)
                signal.raise_signal(signal.SIGINT)

        gc.callbacks.append(in_gc)
        gc.collect()
        time.sleep(3)
        print("FINISHED")

    if __name__ == "__main__":
        cli.run({"train": train})
    """
)


def test_cli_ctrl_c_python_could_not_raise_in_a_gc_callback_still_stops_the_run(tmp_path):
    """Ctrl-C landing in a garbage-collector callback was "Exception ignored in: <function
    _xla_gc_callback>" and a traceback, and the run went on to its end with exit status 0."""
    out = ef.run_cli_script(tmp_path, LOST_CTRL_C_MAIN, "--config=cfg.py", "--workdir=w")
    assert "FINISHED" not in out.stdout and "Exception ignored" not in out.stderr, out.stderr
    assert out.returncode == 130 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: interrupted (Ctrl-C);")


MODE_FLAG_MAIN = textwrap.dedent(
    """
    from absl import flags
    from lstm_jax import cli

    flags.DEFINE_integer("length", None, "generate: characters to generate (default: config).")
    flags.DEFINE_string("meta", None, "predict (LIAR models): metadata as field=value")

    def train(config, workdir):
        print("TRAINED")

    def generate(config, workdir):
        print("GENERATED", flags.FLAGS.length)

    if __name__ == "__main__":
        cli.run({"train": train, "generate": generate, "predict": train})
    """
)


def test_cli_a_flag_of_another_mode_is_an_error_not_ignored(tmp_path):
    """``--mode=train --length=3`` (char_textgen) trained and sampled with the config's length, and
    ``--mode=eval --meta=...`` (fake_news) evaluated without it: both exit status 0."""
    cfg = ("--config=cfg.py", "--workdir=w")
    out = ef.run_cli_script(tmp_path, MODE_FLAG_MAIN, *cfg, "--length=3")
    assert out.returncode == 2 and "TRAINED" not in out.stdout, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        "error: --length is read by --mode=generate only, and this is --mode=train; drop it, or"
        " pass --mode=generate"
    )
    meta = ef.run_cli_script(tmp_path, MODE_FLAG_MAIN, *cfg, "--mode=generate", "--meta=a=b")
    assert meta.returncode == 2 and "error: --meta is read by --mode=predict only" in meta.stderr
    ok = ef.run_cli_script(tmp_path, MODE_FLAG_MAIN, *cfg, "--mode=generate", "--length=3")
    assert ok.returncode == 0 and "GENERATED 3" in ok.stdout, ok.stderr


def test_cli_a_mode_reading_a_trained_run_names_a_workdir_without_one(tmp_path):
    """--mode=predict (eval, generate) on a missing or empty workdir advised "pass --config=...",
    which then failed on the missing checkpoint: the workdir (a typo?) is the problem."""
    gone = str(tmp_path / "no_such_run")
    no_run = _cli(tmp_path, f"--workdir={gone}", "--mode=predict")
    assert no_run.returncode == 2 and "Traceback" not in no_run.stderr
    assert f"error: --workdir={gone} does not exist; --mode=predict reads a trained run: pass" in (
        no_run.stderr
    )
    os.makedirs(gone)
    empty = _cli(tmp_path, f"--workdir={gone}", "--mode=predict")
    assert f"error: --workdir={gone} holds no trained run (no config.json); --mode=predict" in (
        empty.stderr
    )
    assert "train one there first (--mode=train --config=" in empty.stderr


def test_a_workdir_under_the_home_directory_is_expanded(tmp_path, monkeypatch):
    """`--workdir=~/run` (the shell expands no ~ after "=") made a directory named "~" in the current
    one; data.path was expanded, the workdir was not."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    ok = _cli(tmp_path, "--config=cfg.py", "--workdir=~/run")
    assert ok.returncode == 0, ok.stderr
    line = next(x for x in ok.stdout.splitlines() if x.startswith("TRAIN"))
    assert json.loads(line[5:])["workdir"] == str(home / "run")
    assert not (tmp_path / "~").exists()


def test_help_lists_the_shared_flags_and_os_errors_are_one_line(tmp_path):
    helped = _cli(tmp_path, "--help")  # absl exits with status 1 after --help
    for flag in ("--config", "--workdir", "--mode", "--cpus", "--cpu_devices"):
        assert f"  {flag}:" in helped.stdout, flag
    workdir = str(tmp_path / "run")
    for mode, fix in [
        ("read_only", "Permission denied; check the permissions of that path"),
        ("full", "No space left on device; the disk is full"),
    ]:
        proc = _cli(tmp_path, "--config=cfg.py", f"--workdir={workdir}", f"--mode={mode}")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: {workdir}/") and fix in last, last
        assert ".tmp4242" not in last  # atomic_write's temporary name is not what the user knows
    bug = _cli(tmp_path, "--config=cfg.py", f"--workdir={workdir}", "--mode=not_found")
    assert bug.returncode == 1 and "Traceback" in bug.stderr


PARSE = """
import sys
from lstm_jax import cli
cli.define_flags(["train"])
cli._parse_flags(["main.py", *sys.argv[1:]])
print("parsed")
"""


def test_bad_flags_and_config_files_are_one_line_errors_with_status_2(tmp_path):
    """Flag parsing (absl, ml_collections) errors: one `error:` line naming the flag and the fix, exit
    status 2, never a traceback (a missing --config file and an unknown --config.x.y field were)."""
    (tmp_path / "cfg.py").write_text(ef.ENGINE_DEFAULTS_CONFIG)
    cases = {
        "good": (["--config=cfg.py", "--config.train.batch_size=3", "--workdir=w"], None),
        "missing file": (
            ["--config=nope.py", "--workdir=w"],
            "error: --config=nope.py: cannot load the config file ([Errno 2] No such file",
        ),
        "missing file, two words": (
            ["--config", "nope.py", "--workdir=w"],
            "error: --config=nope.py: cannot load the config file",
        ),
        "misspelt field": (
            ["--config=cfg.py", "--config.optimizer.learning_rat=0.1"],
            "error: --config.optimizer.learning_rat: the config has no field 'learning_rat';"
            " did you mean learning_rate?",
        ),
        "misspelt section": (
            ["--config=cfg.py", "--config.optimiser.learning_rate=0.1"],
            "error: --config.optimiser.learning_rate: the config has no field 'optimiser'",
        ),
        "bad value": (
            ["--config=cfg.py", "--config.train.batch_size=abc"],
            "error: flag --config.train.batch_size=abc: invalid literal for int()",
        ),
        "unknown flag": (["--bogus=1"], "error: Unknown command line flag 'bogus'"),
        # A text to predict that starts with '-' is read as the flag '1 stars': the fix is named.
        "text read as a flag": (
            ["--workdir=w", "-1 stars, awful"],
            "error: Unknown command line flag '1 stars, awful'; a text that starts with '-' is read"
            " as a flag: put -- before the texts",
        ),
        # Was "Unknown command line flag 'config.train.batch_size'", as if the field did not exist.
        "override without --config": (
            ["--workdir=w", "--config.train.batch_size=3"],
            "error: --config.train.batch_size overrides a field of a --config file, and none was"
            " given; pass --config=experiments/<experiment>/configs/<name>.py as well",
        ),
        "not python": (
            ["--config=notes.md", "--workdir=w"],
            "error: --config=notes.md: the config file is not valid Python (",
        ),
        "no get_config": (
            ["--config=empty.py", "--workdir=w"],
            "error: --config=empty.py: the config file has no get_config() function",
        ),
        # A config file whose code raises: a traceback (NameError, ImportError) or one line holding
        # ml_collections' whole traceback as text (ValueError, TypeError) before.
        "config file raises NameError": (
            ["--config=typo.py", "--workdir=w"],
            "error: --config=typo.py: the config file raised NameError at line 5: name 'batch'"
            " is not defined; fix it, or pass a config file such as",
        ),
        "config file raises at import": (
            ["--config=imports.py", "--workdir=w"],
            "error: --config=imports.py: the config file raised ModuleNotFoundError at line 1: No"
            " module named 'no_such_module_here'; fix it",
        ),
        "config file sets a wrong type": (
            ["--config=float_batch.py", "--workdir=w"],
            "error: --config=float_batch.py: the config file raised TypeError at line 5: Could not"
            " override field 'batch_size'",
        ),
        "get_config given an argument it does not take": (
            ["--config=cfg.py:small", "--workdir=w"],
            "error: --config=cfg.py:small: the config file raised TypeError: get_config() takes 0"
            " positional arguments but 1 was given; fix it",
        ),
        # Malformed override paths were tracebacks (or "no field 'int'" for --config.seed.x).
        "override path that is no field name": (
            ["--config=cfg.py", "--config.train.=3", "--workdir=w"],
            "error: --config.train.: 'train.' is not a config field; an override names one by its"
            " dotted path, as in --config.train.batch_size=64",
        ),
        "override path through a value": (
            ["--config=cfg.py", "--config.optimizer.name.x=1", "--workdir=w"],
            "error: --config.optimizer.name.x: config.optimizer.name is a value ('adam'), not a"
            " section with fields; pass --config.optimizer.name=<value>",
        ),
        "override path through an int": (
            ["--config=cfg.py", "--config.seed.x=1", "--workdir=w"],
            "error: --config.seed.x: config.seed is a value (0), not a section with fields",
        ),
        "override indexing a section": (
            ["--config=cfg.py", "--config.train[0]=1", "--workdir=w"],
            "error: --config.train[0]: config.train is a section, not a list; pass"
            " --config.train.<field>=<value>",
        ),
        # One past the end of a list (its items are [0] and [1], or [-1] and [-2]).
        "override indexing past a list's end": (
            ["--config=lists.py", "--config.model.sizes[2]=1", "--workdir=w"],
            "error: --config.model.sizes[2]: config.model.sizes has no item [2]; it has 2",
        ),
        # Was "no --config given and w has no saved config.json", below ml_collections' warning.
        "get_config returns None": (
            ["--config=no_return.py", "--workdir=w"],
            "error: --config=no_return.py: get_config() returned None, not a config (a missing"
            " return statement?)",
        ),
    }
    base = "from lstm_jax.config_utils import engine_defaults\ndef get_config():\n    c = engine_defaults()\n"
    (tmp_path / "typo.py").write_text(
        base + "    c.train.batch_size = 4\n    c.seed = batch\n    return c\n"
    )
    (tmp_path / "imports.py").write_text("import no_such_module_here\n" + base + "    return c\n")
    (tmp_path / "float_batch.py").write_text(
        base + "    c.seed = 1\n    c.train.batch_size = 4.0\n    return c\n"
    )
    (tmp_path / "no_return.py").write_text(base)
    (tmp_path / "lists.py").write_text(base + "    c.model.sizes = [4, 5]\n    return c\n")
    (tmp_path / "notes.md").write_text("# A README\n\nIt's not a config.\n")
    (tmp_path / "empty.py").write_text("import ml_collections\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    procs = {  # one process per case (flag definitions are per process), all at once
        name: subprocess.Popen(
            [sys.executable, "-c", PARSE, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=str(tmp_path),
        )
        for name, (argv, _) in cases.items()
    }
    for name, (_, expected) in cases.items():
        stdout, stderr = procs[name].communicate(timeout=120)
        if expected is None:
            assert procs[name].returncode == 0 and stdout.strip() == "parsed", stderr
            continue
        assert procs[name].returncode == 2, (name, stderr)
        assert expected in stderr, (name, stderr)
        assert stderr.count("\n") == 1 and stderr.startswith("error: "), (name, stderr)


CONFIG_FILES = sorted(
    f"experiments.{task}.configs.{name[:-3]}"
    for task in TASK_MODULES
    for name in os.listdir(os.path.join(REPO, "experiments", task, "configs"))
    if name.endswith(".py") and name != "__init__.py"
)


@pytest.mark.parametrize("module", CONFIG_FILES)
def test_every_shipped_config_is_valid_and_builds_its_model(module):
    """Each config file an experiment ships passes the engine's checks and its task builds the model it
    describes (shapes only: `nnx.eval_shape` allocates no parameters)."""
    task = module.split(".")[1]
    config = importlib.import_module(module).get_config()
    config_utils.validate_config(config)
    if int(config.model.get("vocab_size", -1)) == 0:  # filled in from the data at run time
        config.model.vocab_size = 40
    build_model = importlib.import_module(TASK_MODULES[task]).build_model
    model = nnx.eval_shape(lambda: build_model(config, nnx.Rngs(0)))
    assert nnx.state(model, nnx.Param)


def test_the_fast_fashion_config_is_the_tutorial_model_with_another_optimiser_setting():
    from experiments.word_textgen.configs import fashion, fashion_fast

    tutorial, fast = fashion.get_config(), fashion_fast.get_config()
    assert fast.model.to_dict() == tutorial.model.to_dict()
    assert fast.data.to_dict() == tutorial.data.to_dict()
    assert (fast.optimizer.learning_rate, fast.optimizer.clip_norm) == (1e-2, 1.0)
    assert (fast.train.batch_size, fast.train.num_epochs) == (64, 16)


# The tutorials' training settings, which no model shape reflects (module -> dotted field -> value).
TUTORIAL_SETTINGS = {
    "experiments.imdb_sentiment.configs.imdb": {
        "optimizer.name": "rmsprop",  # model.compile(optimizer="rmsprop"), Keras' defaults
        "optimizer.learning_rate": 1e-3,
        "optimizer.rho": 0.9,
        "optimizer.eps": 1e-7,
        "optimizer.schedule": "constant",
        "train.batch_size": 100,
        "train.num_epochs": 10,
        "data.vocab_size": 15000,  # TextVectorization(max_tokens=15000, output_sequence_length=228)
        "data.maxlen": 228,
        "data.padding": "post",
        "data.truncating": "post",
        "data.validation_fraction": 0.25,
        "data.split_seed": 100,
        "early_stopping.enabled": False,
    },
    "experiments.fake_news.configs.fake_news": {
        "optimizer.name": "adam",
        "optimizer.learning_rate": 1e-3,
        "optimizer.schedule": "constant",
        "train.batch_size": 64,
        "train.num_epochs": 50,
        "train.monitor": "val_loss",  # EarlyStopping(monitor="val_loss", patience=5)
        "early_stopping.enabled": True,
        "early_stopping.patience": 5,
        "data.num_buckets": 10000,  # one_hot(words, 10000), pad_sequences(maxlen=500) pre/pre
        "data.maxlen": 500,
        "data.padding": "pre",
        "data.truncating": "pre",
        "data.test_fraction": 0.33,  # train_test_split(test_size=0.33, random_state=42)
        "data.split_seed": 42,
        "data.validation_fraction": 0.2,
    },
    "experiments.char_textgen.configs.macbeth": {
        "optimizer.name": "adam",
        "optimizer.learning_rate": 1e-3,
        "optimizer.eps": 1e-7,
        "optimizer.schedule": "constant",
        "train.batch_size": 40,
        "train.num_epochs": 200,
        "data.seq_length": 50,
        "data.window_stride": 1,
    },
    "experiments.word_textgen.configs.fashion": {
        "optimizer.name": "adam",
        "optimizer.learning_rate": 1e-3,
        "optimizer.schedule": "constant",
        "train.batch_size": 128,
        "train.num_epochs": 80,
        "data.validation_fraction": 0.2,
    },
}


@pytest.mark.parametrize("module", sorted(TUTORIAL_SETTINGS))
def test_the_tutorial_configs_keep_the_tutorials_training_settings(module):
    """Each tutorial config trains as its Keras tutorial does: optimizer, batches, epochs, padding,
    splits and early stopping (the models' shapes are pinned by the parameter-count tests)."""
    config = importlib.import_module(module).get_config()
    for field, expected in TUTORIAL_SETTINGS[module].items():
        section, name = field.split(".")
        assert config[section][name] == expected, field


def _experiment(main: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m experiments.<main>.main <args>` from the repository on CPU (stdin /dev/null)."""
    return subprocess.run(
        [sys.executable, "-m", f"experiments.{main}.main", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


# Runs an experiment's main.py as `python -m` does, its task functions replaced by spies: prints the
# mode table it hands `cli.run` and what the mode's task function was called with, then exits as the
# CLI does.
_SPIED_MAIN = """
import functools, json, runpy, sys
from absl.flags import FLAGS
from lstm_jax import cli
from lstm_jax.tasks import char_lm, classification, word_lm


def spy(module, name):
    real = getattr(module, name)

    @functools.wraps(real)
    def called(config, workdir, **kwargs):
        call = {"workdir": workdir, "kwargs": kwargs, "texts": cli.positional_args()}
        print("CALL", f"{module.__name__}.{name}", json.dumps(call, sort_keys=True))

    setattr(module, name, called)


for module, name in [(char_lm, "train"), (char_lm, "generate_samples"), (word_lm, "train"),
                     (word_lm, "generate_samples"), (classification, "train"),
                     (classification, "evaluate"), (classification, "predict"),
                     (classification, "baseline"), (classification, "ensemble")]:
    spy(module, name)
real_run = cli.run


def run(modes):
    table = {
        mode: [f.__module__, f.__qualname__, getattr(f, "takes_arguments", False),
               getattr(f, "needs_config", True)]
        for mode, f in modes.items()
    }
    print("MODES", json.dumps(table))
    defaults = {flag.name: flag.default for flag in FLAGS.get_flags_for_module("__main__")}
    print("DEFAULTS", json.dumps(defaults))
    real_run(modes)


cli.run = run
runpy.run_module(f"experiments.{sys.argv.pop(1)}.main", run_name="__main__", alter_sys=True)
"""

_CLASSIFICATION_MODES = {
    "train": ["lstm_jax.tasks.classification", "train", False, True],
    "eval": ["lstm_jax.tasks.classification", "evaluate", False, True],
    "predict": ["lstm_jax.tasks.classification", "predict", True, True],
    "baseline": ["lstm_jax.tasks.classification", "baseline", False, True],
    "ensemble": ["lstm_jax.tasks.classification", "ensemble", True, False],
}


@pytest.mark.parametrize(
    "main, mode, flags, modes, called, kwargs, texts",
    [
        (
            "char_textgen",
            "generate",
            {"prime": "ab", "length": 7, "top_k": 3, "sample_seed": 9},
            {
                "train": ["lstm_jax.tasks.char_lm", "train", False, True],
                "generate": ["__main__", "generate", False, True],
            },
            "char_lm.generate_samples",
            {
                "prime": "ab",
                "length": 7,
                "temperature": None,
                "top_k": 3,
                "num_samples": None,
                "seed": 9,
            },
            [],
        ),
        (
            "word_textgen",
            "generate",
            {"seed_text": "red dress", "num_words": 4, "temperature": 0.25},
            {
                "train": ["lstm_jax.tasks.word_lm", "train", False, True],
                "generate": ["__main__", "generate", False, True],
            },
            "word_lm.generate_samples",
            {
                "seed_text": "red dress",
                "num_words": 4,
                "temperature": 0.25,
                "top_k": None,
                "seed": None,
            },
            [],
        ),
        (
            "imdb_sentiment",
            "predict",
            {},
            _CLASSIFICATION_MODES,
            "classification.predict",
            {},
            ["A great movie", "--not a flag"],
        ),
        (
            "fake_news",
            "predict",
            {"meta": ["speaker=x", "party_affiliation=y"]},
            {**_CLASSIFICATION_MODES, "predict": ["__main__", "predict", True, True]},
            "classification.predict",
            {"meta": ["speaker=x", "party_affiliation=y"]},
            ["Says so"],
        ),
    ],
)
def test_each_experiments_main_hands_its_modes_and_flags_to_the_task(
    tmp_path, main, mode, flags, modes, called, kwargs, texts
):
    """Each `experiments/<name>/main.py` is a table of modes and the flags its modes read: every
    mode runs its task's function, and every generate/predict flag given (or its absence, None: the
    saved config's value) reaches the function as the keyword it sets."""
    args = [f"--config=experiments/{main}/configs/test.py", f"--workdir={tmp_path / 'w'}"]
    for name, value in flags.items():
        for one in value if isinstance(value, list) else [value]:
            args.append(f"--{name}={one}")
    (tmp_path / "spied.py").write_text(_SPIED_MAIN)
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "spied.py"), main, *args, f"--mode={mode}", "--", *texts],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO},
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    (table,) = [json.loads(line[6:]) for line in lines if line.startswith("MODES ")]
    assert table == modes
    (defaults,) = [json.loads(line[9:]) for line in lines if line.startswith("DEFAULTS ")]
    # An unset flag is None (the saved config's value), or no --meta at all.
    assert defaults == {name: [] if name == "meta" else None for name in defaults}
    assert sorted(defaults) == sorted(
        {
            "char_textgen": [
                "prime",
                "length",
                "temperature",
                "top_k",
                "num_samples",
                "sample_seed",
            ],
            "word_textgen": ["seed_text", "num_words", "temperature", "top_k", "sample_seed"],
            "imdb_sentiment": [],
            "fake_news": ["meta"],
        }[main]
    )
    (call,) = [line.split(" ", 2)[1:] for line in lines if line.startswith("CALL ")]
    assert call[0] == f"lstm_jax.tasks.{called}"
    assert json.loads(call[1]) == {"workdir": str(tmp_path / "w"), "kwargs": kwargs, "texts": texts}


@pytest.mark.parametrize(
    "main, config",
    [
        ("char_textgen", "imdb_sentiment/configs/imdb.py"),
        ("fake_news", "word_textgen/configs/fashion.py"),
        ("word_textgen", "char_textgen/configs/quick.py"),
    ],
)
def test_another_experiments_config_is_one_line_error(tmp_path, main, config):
    """A config of another experiment once failed with a traceback (AttributeError: 'layout')."""
    proc = _experiment(main, f"--config=experiments/{config}", f"--workdir={tmp_path / 'w'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --config=experiments/{config} is not a config of {main}"), last
    assert "Traceback" not in proc.stderr and not (tmp_path / "w").exists()


def test_a_saved_run_of_another_experiment_is_named(tmp_path, monkeypatch):
    """`--mode=generate --workdir=<a char run>` to word_textgen once failed with KeyError tracebacks."""
    import types

    from lstm_jax import cli

    main_file = os.path.join(REPO, "experiments", "word_textgen", "main.py")
    name, keys = cli.family_keys(main_file)
    assert name == "word_textgen" and "data.form" in keys
    monkeypatch.setitem(sys.modules, "__main__", types.SimpleNamespace(__file__=main_file))
    char = importlib.import_module("experiments.char_textgen.configs.test").get_config()
    with pytest.raises(UserError, match="holds a run of another experiment than word_textgen"):
        cli.check_config_family(char, str(tmp_path))
    own = importlib.import_module("experiments.word_textgen.configs.test").get_config()
    cli.check_config_family(own, str(tmp_path))  # its own config passes
    del own.generate["top_k"]  # so does a run saved before a field existed
    cli.check_config_family(own, str(tmp_path))


def test_a_mode_on_the_workdir_of_a_char_run_run_by_word_textgen_names_the_run(tmp_path):
    """The CLI checks the config saved in a workdir against the running experiment before the mode
    runs: --mode=generate of word_textgen on a char_textgen run is one error line, not a traceback."""
    config = importlib.import_module("experiments.char_textgen.configs.test").get_config()
    workdir = tmp_path / "run"
    config_utils.save_config(config, workdir)
    proc = _experiment("word_textgen", "--mode=generate", f"--workdir={workdir}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"error: {workdir} holds a run of another experiment than word_textgen (its config.json"
        " lacks config."
    ), last
    assert "Traceback" not in proc.stderr


def test_training_with_a_config_of_this_experiment_on_another_experiments_run_names_the_run(
    tmp_path,
):
    """A --config of word_textgen on a char_textgen run's workdir was "config.model.dropout, ... and 9
    more differ from the run saved in ...; ... or drop the override to resume this one" (none was given)."""
    config = importlib.import_module("experiments.char_textgen.configs.test").get_config()
    workdir = tmp_path / "run"
    config_utils.save_config(config, workdir)
    proc = _experiment(
        "word_textgen",
        "--config=experiments/word_textgen/configs/test.py",
        f"--config.data.path={tmp_path / 'none.csv'}",
        f"--workdir={workdir}",
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"error: {workdir} holds a run of another experiment than word_textgen (its config.json"
            " lacks config."
        )
    )
    assert proc.stderr.strip().endswith("or pass another --workdir")


def test_a_config_lacking_half_of_the_fields_marking_an_experiment_is_still_its_own(monkeypatch):
    """A config lacking most (more than half) of the fields that mark an experiment's configs is another
    experiment's; one lacking half of them (a run saved before they existed) is not refused."""
    monkeypatch.setattr(
        cli,
        "family_keys",
        lambda main_file: ("fake_news", {"data.a", "data.b", "data.c", "data.d"}),
    )
    cli.check_config_family({"data": {"a": 1, "b": 2}}, "run", experiment="fake_news")
    with pytest.raises(
        UserError, match=r"lacks config\.data\.b, config\.data\.c, config\.data\.d\)"
    ):
        cli.check_config_family({"data": {"a": 1}}, "run", experiment="fake_news")


def test_a_saved_true_or_false_and_a_number_are_kinds_of_their_own(tmp_path, monkeypatch):
    """`check_saved_types` tells true/false from a number (Python's bool is an int): a config.json
    edited to hold `"temperature": true` or `"enabled": 1` is named, the saved file as it is passes."""
    import types

    main_file = os.path.join(REPO, "experiments", "char_textgen", "main.py")
    monkeypatch.setitem(sys.modules, "__main__", types.SimpleNamespace(__file__=main_file))
    saved = importlib.import_module("experiments.char_textgen.configs.test").get_config().to_dict()
    cli.check_saved_types(ml_collections.ConfigDict(saved), str(tmp_path))
    for section, field, value, kinds in [
        ("generate", "temperature", True, "is true or false, not a number"),
        ("early_stopping", "enabled", 1, "is a number, not true or false"),
    ]:
        edited = json.loads(json.dumps(saved))
        edited[section][field] = value
        with pytest.raises(UserError, match=rf"config\.{section}\.{field}={value} {kinds} as in"):
            cli.check_saved_types(ml_collections.ConfigDict(edited), str(tmp_path))


@pytest.mark.parametrize(
    "section,field,value,message",
    [
        (
            "generate",
            "temperature",
            "hot",
            "config.generate.temperature='hot' is a string, not a number",
        ),
        ("train", None, 3, "config.train=3 is a number, not a section of fields"),
    ],
)
def test_a_hand_edited_config_json_of_a_wrong_type_is_one_error_naming_it(
    tmp_path, section, field, value, message
):
    """A saved config.json edited to hold another kind of value ("temperature": "hot", "train": 3)
    stopped --mode=generate with a ValueError or AttributeError traceback. Now: one error line naming
    the file, the field and the fix, exit status 2, the file left as it is."""
    config = importlib.import_module("experiments.char_textgen.configs.test").get_config()
    workdir = tmp_path / "run"
    path = config_utils.save_config(config, workdir)
    saved = json.loads(open(path).read())
    if field is None:
        saved[section] = value
    else:
        saved[section][field] = value
    text = json.dumps(saved)
    open(path, "w").write(text)
    proc = _experiment("char_textgen", "--mode=generate", f"--workdir={workdir}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {path}: {message}"), last
    assert "restore it" in last and "Traceback" not in proc.stderr
    assert open(path).read() == text


def test_a_saved_run_of_another_experiment_is_named_for_a_named_experiment(tmp_path):
    """The notebooks load a workdir they are given (LSTM_JAX_IMDB_WORKDIR): a run of another experiment
    was a KeyError ('reports') or an AttributeError ('vocab_size') deep in model building."""
    from lstm_jax import cli

    word = importlib.import_module("experiments.word_textgen.configs.test").get_config()
    imdb = importlib.import_module("experiments.imdb_sentiment.configs.test").get_config()
    with pytest.raises(
        UserError, match="another experiment than imdb_sentiment.*a run of imdb_sentiment$"
    ):
        cli.check_config_family(word, str(tmp_path), experiment="imdb_sentiment")
    with pytest.raises(UserError, match="another experiment than word_textgen"):
        cli.check_config_family(imdb, str(tmp_path), experiment="word_textgen")
    cli.check_config_family(imdb, str(tmp_path), experiment="imdb_sentiment")
    cli.check_config_family(word, str(tmp_path), experiment="word_textgen")


def test_the_damaged_checkpoint_noise_filters_pass_everything_else():
    """After a failed checkpoint read (one `error:` line), TensorStore's callbacks and Orbax's read
    coroutines report the same failure again as tracebacks; the CLI's hooks drop those and only those."""
    import asyncio
    import types

    seen = []
    excepthook = cli._quiet_closed_loop_excepthook(lambda *a: seen.append(a[1]))
    loop = asyncio.new_event_loop()
    loop.close()
    try:
        loop.call_soon_threadsafe(print)
    except RuntimeError as e:
        closed = e
    excepthook(RuntimeError, closed, closed.__traceback__)
    other = RuntimeError("Event loop is closed")  # raised elsewhere: kept
    excepthook(RuntimeError, other, None)
    assert seen == [other]
    thread_hook = cli._quiet_closed_loop_thread_excepthook(lambda a: seen.append(a.exc_value))
    thread_hook(
        types.SimpleNamespace(
            exc_type=RuntimeError, exc_value=closed, exc_traceback=closed.__traceback__
        )
    )
    thread_hook(types.SimpleNamespace(exc_type=RuntimeError, exc_value=other, exc_traceback=None))
    assert seen == [other, other]
    seen.clear()

    unraisable = cli._quiet_failed_reads_unraisablehook(lambda u: seen.append(u))

    async def _read_array_index_and_device_put():  # the hook looks at the code's file, not the name
        pass

    coroutine = _read_array_index_and_device_put()
    coroutine.close()
    fake_code = types.SimpleNamespace(co_filename="/x/orbax/checkpoint/serialization.py")
    dropped = types.SimpleNamespace(
        object=types.SimpleNamespace(cr_code=fake_code),
        exc_value=Exception("Encountered error while reading array index: (slice(0, 7, 1),)"),
    )
    kept = types.SimpleNamespace(object=coroutine, exc_value=ValueError("a real problem"))
    # Another failure of an Orbax coroutine is a problem of its own: kept.
    orbax_other = types.SimpleNamespace(
        object=types.SimpleNamespace(cr_code=fake_code), exc_value=ValueError("a real problem")
    )
    unraisable(dropped)
    unraisable(kept)
    unraisable(orbax_other)
    assert seen == [kept, orbax_other]


def test_num_epochs_beside_a_configs_num_steps_is_refused(tmp_path):
    """quick.py (`make run`) sets train.num_steps: `--config.train.num_epochs=10` beside it trained the
    config's 1,500 steps, silently. Now one error names the override and the fix, before any data is
    read and with nothing written."""
    workdir = tmp_path / "w"
    proc = _experiment(
        "char_textgen",
        "--config=experiments/char_textgen/configs/quick.py",
        "--config.train.num_epochs=10",
        f"--workdir={workdir}",
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert error == (
        "error: --config.train.num_epochs=10 has no effect while config.train.num_steps=1500 sets"
        " the run's length; add --config.train.num_steps=0 to train for num_epochs, or pass"
        " --config.train.num_steps=<steps> instead"
    )
    assert not workdir.exists()
    config = importlib.import_module("experiments.char_textgen.configs.quick").get_config()
    config.train.num_steps = 0  # the fix: num_epochs is read
    cli.check_read_overrides(config, ["main", "--config.train.num_epochs=10"])
    config.train.num_steps = 7
    cli.check_read_overrides(config, ["main", "--config.train.num_steps=7"])  # no num_epochs given
    with pytest.raises(UserError, match="num_epochs=13 has no effect"):
        cli.check_read_overrides(config, ["main", "--config.train.num_epochs=13"])
    # After "--" the arguments are texts (predict's), not flags: no override to refuse.
    cli.check_read_overrides(config, ["main", "--", "--config.train.num_epochs=13"])
