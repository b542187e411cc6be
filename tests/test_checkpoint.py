"""Checkpoints: round trip, keep-last-N plus best, corrupt-latest fallback, config and artefacts."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil

import engine_fixtures as ef
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lstm_jax import config_utils
from lstm_jax.checkpoint import CheckpointStore, load_artefact, save_artefacts
from lstm_jax.errors import UserError
from lstm_jax.logging_utils import read_jsonl
from lstm_jax.train import restore_model, train_and_evaluate


def _state(scale: float = 1.0):
    params = {"layers": {"0": {"w": jnp.arange(12.0).reshape(3, 4) * scale}}, "b": jnp.ones(4)}
    tx = optax.adam(1e-3)
    return {
        "step": jnp.int32(7),
        "params": params,
        "opt_state": tx.init(params),
        "rng": jax.random.PRNGKey(3),
        "carry": (jnp.zeros((2, 5)), jnp.full((2, 5), scale)),
    }


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_of_state_and_meta(tmp_path):
    store = CheckpointStore(str(tmp_path), keep=2)
    state = _state()
    meta = {"position": {"epoch": 1, "batch": 3}, "history": [{"step": 7, "train": {"loss": 0.5}}]}
    store.save(7, state, meta)
    restored_state, restored_meta = store.restore(7, jax.eval_shape(lambda: _state()))
    store.close()
    _assert_trees_equal(state, restored_state)
    assert restored_meta == meta
    # The optimizer state comes back as optax's own NamedTuples, not dicts.
    assert type(restored_state["opt_state"][0]).__name__ == "ScaleByAdamState"


def test_keeps_the_last_n_and_the_best(tmp_path):
    store = CheckpointStore(str(tmp_path), keep=2)
    for step, improvement in [(1, 1), (2, 2), (3, -1), (4, -1), (5, -1)]:
        store.save(step, _state(step), {"step": step}, improvement=improvement)
    assert store.all_steps() == [2, 4, 5]
    assert store.best_step() == 2 and store.latest_step() == 5
    store.close()


@pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning"
)  # tensorstore teardown
@pytest.mark.parametrize("what", ["every file", "array data only"])
def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog, what):
    store = CheckpointStore(str(tmp_path), keep=3)
    store.save(1, _state(1.0), {"step": 1})
    store.save(2, _state(2.0), {"step": 2})
    state_dir = tmp_path / "checkpoints" / "2" / "state"
    for root, _, files in os.walk(state_dir):
        if what == "array data only" and os.path.basename(root) != "d":
            continue
        for name in files:
            path = os.path.join(root, name)
            size = os.path.getsize(path)
            with open(path, "wb") as f:
                f.write(b"\x00corrupt" * (size // 8 + 1))
    with caplog.at_level(logging.WARNING):
        step, state, meta, _ = store.restore_latest(jax.eval_shape(lambda: _state()))
    store.close()
    assert step == 1 and meta == {"step": 1}
    _assert_trees_equal(state, _state(1.0))
    assert any(
        "step 2" in r.getMessage() and "could not be restored" in r.getMessage()
        for r in caplog.records
    )
    assert os.listdir(tmp_path / "checkpoints") == ["1"]
    (moved,) = os.listdir(tmp_path / "corrupt_checkpoints")
    assert moved.startswith("2-")  # kept for inspection, not deleted


def test_the_same_step_quarantined_again_in_one_second_is_kept_each_time(tmp_path, monkeypatch):
    """`<step>-<unix time>` named a second quarantine of the step within the same second the same as
    the first, and shutil.move put it inside that folder; now each gets a folder of its own (a third
    too: the suffix counts on, it does not stop at -2)."""
    from lstm_jax import checkpoint

    def quarantine_at_the_same_second():
        with (
            monkeypatch.context() as m
        ):  # the clock only around the move: Orbax's saves read it too
            m.setattr(checkpoint.time, "time", lambda: 1_700_000_000.5)
            return store.quarantine(2)

    store = CheckpointStore(str(tmp_path), keep=3)
    moved = []
    for scale in (2.0, 3.0, 4.0):
        store.save(2, _state(scale), {"step": 2})
        moved.append(quarantine_at_the_same_second())
    store.close()
    assert len(set(moved)) == 3
    assert sorted(os.listdir(tmp_path / "corrupt_checkpoints")) == [
        "2-1700000000",
        "2-1700000000-2",
        "2-1700000000-3",
    ]
    for path in moved:
        assert not os.path.exists(os.path.join(path, "2"))  # not nested


# tensorstore may report its event loop closing late; harmless.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_training_resumes_from_the_previous_checkpoint_when_the_latest_is_corrupt(tmp_path):
    config = ef.base_config(num_epochs=1, eval_every_steps=2)  # checkpoints at 2, 4, 5
    train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    latest = tmp_path / "checkpoints" / "5" / "state" / "manifest.ocdbt"
    latest.write_bytes(b"not a manifest")
    config.train.num_epochs = 2
    results = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert results["steps"] == 10
    assert [r["step"] for r in results["history"]] == [2, 4, 5, 6, 8, 10]
    assert os.listdir(tmp_path / "corrupt_checkpoints")


def test_workdir_round_trip_config_vocabulary_and_params(tmp_path):
    config = ef.base_config(num_epochs=1)
    vocab = {"<pad>": 0, "<oov>": 1, "the": 2, "ünïcode": 3}
    task = ef.classification_task(
        config, artefacts={"vocab.json": vocab, "preprocessing.txt": "lowercase\n"}
    )
    results = train_and_evaluate(config, str(tmp_path), task)
    assert load_artefact(str(tmp_path), "vocab.json") == vocab
    assert load_artefact(str(tmp_path), "preprocessing.txt") == "lowercase\n"
    saved = config_utils.load_config(str(tmp_path))
    assert config_utils.config_diff(saved, config) == []
    assert saved.model.hidden == 16 and saved.optimizer.name == "adam"
    # The model comes back from the saved config alone and reproduces the final evaluation.
    model, step = restore_model(saved, str(tmp_path), ef.build_model, which="latest")
    assert step == results["steps"] == 5
    data = ef.classification_data(15, seed=1)
    logits = model.classify(jnp.asarray(data["tokens"]))
    accuracy = float(np.mean(np.argmax(np.asarray(logits), -1) == data["label"]))
    assert accuracy == pytest.approx(results["metrics"]["final"]["validation"]["accuracy"])
    assert isinstance(model, nnx.Module)


class _NoReadout(nnx.Module):
    """TinyLSTM's embedding and LSTM weights without its read-out: a subset of its parameters."""

    def __init__(self, config, rngs):
        full = ef.build_model(config, rngs)
        self.embed = full.embed
        self.kernel, self.recurrent_kernel, self.bias = (
            full.kernel,
            full.recurrent_kernel,
            full.bias,
        )


def test_a_config_of_another_model_is_named_not_called_damage_nor_loaded_in_part(tmp_path):
    """A run without config.json (one from before configs were saved) cannot be checked against the
    --config given to eval/predict/generate: the checkpoint's own metadata is. Another size was "the
    files are damaged: move the checkpoint out", and a model with fewer parameters was loaded from a
    part of the checkpoint without a word."""
    config = ef.base_config(num_epochs=1)
    train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    (tmp_path / "config.json").unlink()
    other = ef.base_config(num_epochs=1)
    other.model.hidden = 8
    with pytest.raises(UserError) as info:
        restore_model(other, str(tmp_path), ef.build_model)
    assert "another model than this config builds" in str(info.value)
    assert "params/bias: [64] float32 on disk, [32] float32 here" in str(info.value)
    assert "damaged" not in str(info.value)
    with pytest.raises(UserError, match=r"params/out/bias: \[3\] float32 on disk, absent here"):
        restore_model(config, str(tmp_path), lambda c, rngs: _NoReadout(c, rngs))
    model, step = restore_model(
        config, str(tmp_path), ef.build_model
    )  # the trained model still loads
    assert step == 5 and isinstance(model, nnx.Module)


def test_artefact_errors(tmp_path):
    with pytest.raises(UserError, match="plain file name"):
        save_artefacts(str(tmp_path), {"sub/vocab.json": {}})
    with pytest.raises(UserError, match="missing"):
        load_artefact(str(tmp_path), "vocab.json")
    with pytest.raises(UserError, match="no checkpoint"):
        restore_model(ef.base_config(), str(tmp_path), ef.build_model)
    assert not (tmp_path / "checkpoints").exists()  # a wrong --workdir is not littered


def test_an_incompatible_optimizer_on_resume_is_a_user_error_and_damages_nothing(tmp_path):
    config = ef.base_config(num_epochs=1)
    train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    before = {
        p: p.read_bytes()
        for p in tmp_path.rglob("*")
        if p.is_file() and "tensorboard" not in str(p) and p.name != "metrics.jsonl"
    }
    config.optimizer.name = "sgd"  # a different optimizer state tree
    config.optimizer.momentum = 0.9
    config.train.num_epochs = 2
    # Named by the saved config's check (since 2026-12-05), before the checkpoint's tree is compared.
    with pytest.raises(
        UserError,
        match=r"config.optimizer.momentum, config.optimizer.name differ from the run saved",
    ):
        train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert not (tmp_path / "corrupt_checkpoints").exists()
    after = {p: p.read_bytes() for p in before}
    assert after == before  # checkpoints, config.json and results.json untouched


def test_another_optimizer_tree_with_the_same_arrays_is_a_user_error_not_a_corrupt_checkpoint(
    tmp_path,
):
    """Gradient clipping adds a level to the optimizer state but no array: the checkpoint's arrays are
    compared by path, so such a mismatch is the user's config, not damage (it used to be moved aside as
    corrupt, and training restarted from step 0)."""
    store = CheckpointStore(str(tmp_path), keep=2)
    store.save(7, _state(), {"step": 7})
    clipped = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    abstract = jax.eval_shape(lambda: dict(_state(), opt_state=clipped.init(_state()["params"])))
    with pytest.raises(UserError, match="first difference: opt_state/0/count"):
        store.restore_latest(abstract)
    assert not (tmp_path / "corrupt_checkpoints").exists()
    # Offered as the alternate layout (the engine passes the other clipping layout), it is read as that.
    step, state, _, alternate = store.restore_latest(abstract, alternate=jax.eval_shape(_state))
    assert step == 7 and alternate
    _assert_trees_equal(state, _state())
    step, state, _, alternate = store.restore_latest(jax.eval_shape(_state), alternate=abstract)
    store.close()
    assert step == 7 and not alternate
    _assert_trees_equal(state, _state())


def test_resuming_with_clipping_switched_on_or_off_keeps_the_optimizer_state(tmp_path):
    """The non-finite-loss error advises `optimizer.clip_norm`: a run resumed with it switched on (or
    off again) continues from its checkpoint with the same Adam moments, and nothing is moved aside."""
    from lstm_jax.train import _Engine, _restore_latest

    config = ef.base_config(num_epochs=1)  # 5 steps
    train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    store = CheckpointStore(str(tmp_path), keep=3)
    plain = _Engine(config, str(tmp_path), ef.classification_task(config))
    step0, state0, _ = _restore_latest(plain, store, jax.eval_shape(plain.init_state))

    config.optimizer.clip_norm = 1.0
    clipped = _Engine(config, str(tmp_path), ef.classification_task(config))
    abstract = jax.eval_shape(clipped.init_state)
    step, state, _ = _restore_latest(clipped, store, abstract)
    store.close()
    assert step == step0 == 5
    assert jax.tree.structure(state) == jax.tree.structure(abstract)
    _assert_trees_equal(state["opt_state"][1], state0["opt_state"])
    nu = jax.tree.leaves(state["opt_state"][1][0].nu)
    assert max(float(jnp.abs(x).max()) for x in nu) > 0  # trained moments, not a fresh state

    config.train.num_epochs = 2
    results = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert results["steps"] == 10
    config.optimizer.clip_norm = 0.0
    config.train.num_epochs = 3
    results = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert results["steps"] == 15
    assert [r["step"] for r in results["history"]] == [5, 10, 15]
    assert not (tmp_path / "corrupt_checkpoints").exists()
    resumes = [
        json.loads(line)
        for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
        if '"resume"' in line
    ]
    assert [r["from_step"] for r in resumes] == [5, 10]


def test_the_clipping_layout_is_read_from_the_checkpoint_not_from_config_json(tmp_path):
    """A start with clip_norm switched that was killed before its first checkpoint left a config.json
    that disagrees with the checkpoints' optimizer layout; resuming with clipping on or off works, and
    a finished run whose best checkpoint is another step keeps it (it was moved aside as damaged)."""
    config = ef.base_config(num_epochs=1)
    train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["optimizer"]["clip_norm"] = 1.0  # what the killed start wrote
    (tmp_path / "config.json").write_text(json.dumps(saved))
    for clip, epochs in ((1.0, 2), (0.0, 3), (1.0, 4)):
        config.optimizer.clip_norm = clip
        config.train.num_epochs = epochs
        results = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
        assert results["steps"] == 5 * epochs
    assert not (tmp_path / "corrupt_checkpoints").exists()


def test_switching_clipping_on_resume_keeps_the_best_checkpoint(tmp_path):
    config = _best_first_config()
    first = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert first["best_step"] == 2
    config.train.num_epochs = 3
    config.optimizer.clip_norm = 1.0
    results = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert results["steps"] == 15 and results["best_step"] == 2
    assert results["metrics"]["evaluated_weights"] == "best"
    assert "best_checkpoint_unreadable" not in results
    assert not (tmp_path / "corrupt_checkpoints").exists()
    _, used = restore_model(config, str(tmp_path), ef.build_model, which="best")
    assert used == 2


# What a read of another user's checkpoint files (in step directory `d`) raises: epath's (the JSON items)
# and TensorStore's.
_REFUSALS = {
    "json item": lambda d: PermissionError(13, "Permission denied", f"{d}/meta/metadata"),
    "arrays": lambda d: ValueError(
        'PERMISSION_DENIED: Error opening "zarr" driver: Error reading "carry.0/.zarray" in OCDBT'
        f' database at local file "{d}/state/": Error reading local file'
        f' "{d}/state/manifest.ocdbt": Failed to open: [OS error: Permission denied]'
    ),
}


def _raised_while_reading(d) -> Exception:
    """Orbax's own error raised while it handled the refusal (the PermissionError its `__context__`)."""
    error = RuntimeError("could not restore the checkpoint")
    error.__context__ = PermissionError(13, "Permission denied", f"{d}/meta/metadata")
    return error


# The file each refusal names: the refused file where it is known, else the step directory.
_REFUSED_FILES = {
    "json item": ("meta", "metadata"),
    "arrays": (),
    "raised while reading": ("meta", "metadata"),
}


@pytest.mark.parametrize("refused", sorted(_REFUSED_FILES))
def test_a_checkpoint_this_user_may_not_read_is_a_permission_error_that_moves_nothing(
    tmp_path, monkeypatch, refused
):
    """Checkpoints another user wrote (files 0600 in a shared folder) are not damaged: each used to be
    moved to corrupt_checkpoints/ in turn (and the run then refused as having none readable), and eval
    called them damaged and advised moving them. Now: the PermissionError the CLI words (naming the path,
    "check the permissions"), and every checkpoint stays where it is."""
    store = CheckpointStore(str(tmp_path), keep=3)
    store.save(1, _state(1.0), {"step": 1})
    store.save(2, _state(2.0), {"step": 2})

    refusals = {**_REFUSALS, "raised while reading": _raised_while_reading}

    def refuse(*args, **kwargs):
        raise refusals[refused](os.path.join(store.directory, "2"))

    monkeypatch.setattr(store._manager, "restore", refuse)
    with pytest.raises(PermissionError) as info:
        store.restore_latest(jax.eval_shape(_state))
    store.close()
    assert info.value.errno == errno.EACCES
    assert info.value.filename == os.path.join(store.directory, "2", *_REFUSED_FILES[refused])
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]
    assert not (tmp_path / "corrupt_checkpoints").exists()


@pytest.mark.parametrize("refused", sorted(_REFUSALS))
def test_eval_of_a_checkpoint_this_user_may_not_read_says_so_not_damaged(
    tmp_path, monkeypatch, refused
):
    config = ef.base_config(num_epochs=1)
    train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    step_dir = str(tmp_path / "checkpoints" / "5")

    def refuse(*args, **kwargs):
        raise _REFUSALS[refused](step_dir)

    monkeypatch.setattr("lstm_jax.train.restore_params", refuse)
    with pytest.raises(PermissionError) as info:
        restore_model(config, str(tmp_path), ef.build_model, which="latest")
    assert info.value.errno == errno.EACCES and info.value.filename.startswith(step_dir)


def test_a_full_disk_during_a_save_is_an_os_error_the_cli_words(tmp_path, monkeypatch):
    """TensorStore reports ENOSPC as a ValueError; the store raises the OSError it is (the CLI turns
    ENOSPC into one line naming the fix), and the checkpoints saved before are intact."""
    import errno

    store = CheckpointStore(str(tmp_path), keep=2)
    store.save(1, _state(), {"step": 1})

    def full(*args, **kwargs):
        raise ValueError(
            "RESOURCE_EXHAUSTED: Error writing file: No space left on device [OS error: 28]"
        )

    monkeypatch.setattr(store._manager, "save", full)
    with pytest.raises(OSError) as info:
        store.save(2, _state(2.0), {"step": 2})
    assert info.value.errno == errno.ENOSPC and info.value.filename == store.directory

    def metadata_full(*args, **kwargs):  # Orbax's _CHECKPOINT_METADATA (epath's write_text)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store._manager, "save", metadata_full)
    with pytest.raises(OSError) as info:
        store.save(2, _state(2.0), {"step": 2})
    assert info.value.errno == errno.ENOSPC and info.value.filename == store.directory
    named = os.path.join(store.directory, "2.orbax-checkpoint-tmp-1", "meta", "metadata")

    def file_full(*args, **kwargs):  # a write that names its file: that name is kept
        raise OSError(errno.ENOSPC, "No space left on device", named)

    monkeypatch.setattr(store._manager, "save", file_full)
    with pytest.raises(OSError) as info:
        store.save(2, _state(2.0), {"step": 2})
    assert info.value.errno == errno.ENOSPC and info.value.filename == named
    monkeypatch.undo()
    step, state, _, _ = store.restore_latest(jax.eval_shape(_state))
    store.close()
    assert step == 1
    _assert_trees_equal(state, _state())


def test_a_failed_save_removes_only_its_own_temporary_folder(tmp_path, monkeypatch):
    """The space a failed save of step 2 took is given back (its `2.orbax-checkpoint-tmp*` folder), and
    nothing else: not a finished checkpoint, not step 20's."""
    store = CheckpointStore(str(tmp_path), keep=5)
    store.save(2, _state(), {"step": 2})
    store.save(20, _state(2.0), {"step": 20})
    os.makedirs(os.path.join(store.directory, "20.orbax-checkpoint-tmp-7"))

    def full(*args, **kwargs):
        os.makedirs(os.path.join(store.directory, "2.orbax-checkpoint-tmp-9", "state"))
        raise ValueError("RESOURCE_EXHAUSTED: Error writing file: No space left on device")

    monkeypatch.setattr(store._manager, "save", full)
    with pytest.raises(OSError):
        store.save(2, _state(3.0), {"step": 2})
    monkeypatch.undo()
    store.close()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "20", "20.orbax-checkpoint-tmp-7"]


@pytest.mark.parametrize(
    "content,reason",
    [
        ("", "JSONDecodeError: Expecting value"),
        ("{broken", "JSONDecodeError: Expecting property name"),
        ("[1]", "a JSON list, not an object"),
    ],
)
def test_a_damaged_checkpoint_metrics_file_is_one_error_naming_it(tmp_path, content, reason):
    """Orbax reads every checkpoint's metrics file when it starts; a damaged one was a bare
    JSONDecodeError in every mode. Now: a UserError naming the file, what is wrong with it and the
    checkpoint folder to move (the step's, not the whole checkpoints/ folder)."""
    store = CheckpointStore(str(tmp_path), keep=3)
    store.save(1, _state(), {"step": 1}, improvement=1)
    store.save(2, _state(2.0), {"step": 2})
    store.close()
    metrics = tmp_path / "checkpoints" / "2" / "metrics" / "metrics"
    assert metrics.exists()
    metrics.write_text(content)
    with pytest.raises(
        UserError, match=r"checkpoints/2/metrics/metrics cannot be read .* move"
    ) as info:
        CheckpointStore(str(tmp_path), keep=3)
    message, checkpoints = str(info.value), tmp_path / "checkpoints"
    assert f"{checkpoints / '2' / 'metrics' / 'metrics'} cannot be read ({reason}" in message
    assert f"move {checkpoints / '2'} out of {checkpoints} (into" in message
    shutil.move(tmp_path / "checkpoints" / "2", tmp_path / "elsewhere")
    store = CheckpointStore(str(tmp_path), keep=3)
    assert store.all_steps() == [1]
    store.close()


def test_what_orbax_skips_does_not_stop_the_store(tmp_path):
    """The temporary folder a killed save left (its metrics file may be empty) is no checkpoint, and a
    _CHECKPOINT_METADATA that does not parse Orbax logs and skips: neither is damage that stops every
    mode, and the checkpoint beside them still restores."""
    store = CheckpointStore(str(tmp_path), keep=3)
    store.save(2, _state(2.0), {"step": 2})
    store.close()
    leftover = tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp-1700000000" / "metrics"
    leftover.mkdir(parents=True)
    (leftover / "metrics").write_text("")
    (tmp_path / "checkpoints" / "2" / "_CHECKPOINT_METADATA").write_text("{broken")
    store = CheckpointStore(str(tmp_path), keep=3)
    step, state, meta, _ = store.restore_latest(jax.eval_shape(_state))
    store.close()
    assert step == 2 and meta == {"step": 2}
    _assert_trees_equal(state, _state(2.0))


@pytest.mark.parametrize(
    "name,content",
    [
        ("metrics/metrics", '{"improvement": "x"}'),
        ("metrics/metrics", '{"improvement": [1]}'),
        ("metrics/metrics", '{"improvement": null}'),
        ("_CHECKPOINT_METADATA", "[1]"),
        ("_CHECKPOINT_METADATA", '{"metrics": 3}'),
        ("_CHECKPOINT_METADATA", '{"commit_timestamp_nsecs": "x"}'),
    ],
)
def test_checkpoint_json_of_a_wrong_type_is_one_error_naming_the_file(tmp_path, name, content):
    """JSON that Orbax keeps beside a checkpoint, parsed but of a wrong type (hand-edited), stopped
    Orbax's manager with a bare ValueError or TypeError. Now: a UserError naming the file and the fix;
    nothing is moved."""
    store = CheckpointStore(str(tmp_path), keep=3)
    store.save(1, _state(), {"step": 1}, improvement=1)
    store.save(2, _state(2.0), {"step": 2})
    store.close()
    path = tmp_path / "checkpoints" / "2" / name
    assert path.exists()
    path.write_text(content)
    with pytest.raises(
        UserError, match=rf"checkpoints/2/{name} cannot be read .* restore the file"
    ):
        CheckpointStore(str(tmp_path), keep=3)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]


@pytest.mark.parametrize(
    "key,value",
    [
        ("position", "x"),
        ("position", {"epoch": "x", "batch": 1}),
        ("wall_time_s", "abc"),
        ("history", 3),
        ("early_stopping", [1]),
        ("total_steps", "x"),
        ("since_eval", 3),
    ],
)
def test_a_checkpoint_meta_of_a_wrong_type_is_one_error_naming_the_file(tmp_path, key, value):
    """The checkpoint's meta (JSON beside its arrays: data position, history, early stopping), when
    hand-edited to another type, stopped a resume with a bare ValueError or TypeError. Now: a
    UserError naming the file, the field and the fix, and nothing in the workdir changes."""
    config = ef.base_config(num_epochs=1)
    train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    path = tmp_path / "checkpoints" / "5" / "meta" / "metadata"
    meta = json.loads(path.read_text())
    meta[key] = value
    path.write_text(json.dumps(meta))
    before = {
        p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "lock" not in p.name
    }
    config.train.num_epochs = 2
    with pytest.raises(UserError, match=rf'5/meta/metadata holds "{key}": .* restore the file'):
        train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "lock" not in p.name}
    assert after == before


def test_a_metrics_file_this_user_may_not_read_is_a_permission_error_not_damage(
    tmp_path, monkeypatch
):
    """Another user's checkpoint (files 0600): its metrics file was called damaged, with the advice to
    move the checkpoint aside. Now: the PermissionError naming the file (the CLI says to check the
    permissions of that path)."""
    import builtins

    store = CheckpointStore(str(tmp_path), keep=3)
    store.save(1, _state(), {"step": 1}, improvement=1)
    store.close()
    metrics = str(tmp_path / "checkpoints" / "1" / "metrics" / "metrics")
    real_open = builtins.open

    def refusing_open(file, *args, **kwargs):
        if os.fspath(file) == metrics:
            raise PermissionError(errno.EACCES, "Permission denied", metrics)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    with pytest.raises(PermissionError) as info:
        CheckpointStore(str(tmp_path), keep=3)
    monkeypatch.undo()
    assert info.value.errno == errno.EACCES and info.value.filename == metrics
    assert os.listdir(tmp_path / "checkpoints") == ["1"]


def _damage_arrays(step_dir) -> None:
    """Overwrites a checkpoint's array data (the `d/` files of its OCDBT store) with junk."""
    for root, _, files in os.walk(step_dir / "state"):
        if os.path.basename(root) == "d":
            for name in files:
                path = os.path.join(root, name)
                with open(path, "wb") as f:
                    f.write(b"\x00corrupt" * (os.path.getsize(path) // 8 + 1))


def _digests(workdir) -> dict[str, bytes]:
    return {
        name: (workdir / name).read_bytes()
        for name in ("config.json", "metrics.jsonl", "results.json")
        if (workdir / name).exists()
    }


def _best_first_config(**train):
    """Only the first evaluation counts as an improvement (min_delta 100), so the best checkpoint is
    step 2's while the run goes on to its end."""
    config = ef.base_config(num_epochs=2, eval_every_steps=2, **train)
    config.early_stopping.enabled = True
    config.early_stopping.patience = 100
    config.early_stopping.min_delta = 100.0
    return config


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_damaged_best_checkpoint_is_one_error_in_eval_and_a_warning_at_the_end_of_training(
    tmp_path, caplog
):
    config = _best_first_config()
    first = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert first["best_step"] == 2 and first["metrics"]["evaluated_weights"] == "best"
    _damage_arrays(tmp_path / "checkpoints" / "2")
    before = _digests(tmp_path)
    # Eval / predict / generate: one error naming the checkpoint and the fix; nothing is moved.
    with pytest.raises(
        UserError, match=r"the best checkpoint \(step 2\) in .* cannot be read .* move"
    ):
        restore_model(config, str(tmp_path), ef.build_model, which="best")
    assert (tmp_path / "checkpoints" / "2").is_dir() and _digests(tmp_path) == before
    # Training on: the best weights cannot be restored at the end, so the last ones are evaluated.
    config.train.num_epochs = 3
    with caplog.at_level(logging.WARNING):
        results = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert results["steps"] == 15 and results["metrics"]["evaluated_weights"] == "last"
    unreadable = results["best_checkpoint_unreadable"]
    assert unreadable["step"] == 2 and "corrupt_checkpoints" in unreadable["moved_to"]
    assert any("best checkpoint (step 2)" in r.getMessage() for r in caplog.records)
    # And again: the best checkpoint is gone now, which is said, not a traceback.
    config.train.num_epochs = 4
    results = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert results["steps"] == 20 and results["best_checkpoint_unreadable"]["moved_to"] is None
    # Eval / predict then use the checkpoint Orbax now ranks best, and say that the run's best is gone.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _, used = restore_model(config, str(tmp_path), ef.build_model, which="best")
    assert used != 2
    assert any("best checkpoint (step 2) is no longer in" in r.getMessage() for r in caplog.records)


def test_a_best_checkpoint_this_user_may_not_read_is_not_moved_as_damaged(tmp_path, monkeypatch):
    """restore_best_weights at the end of training took a best checkpoint it was refused (another user's
    files) for a damaged one: moved it into corrupt_checkpoints/ and evaluated the last weights. Now the
    PermissionError names it and nothing is moved, as on resume; readable again, the same run finishes
    with the best weights."""
    from lstm_jax.checkpoint import CheckpointStore

    config = _best_first_config()
    train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    config.train.num_epochs = 3
    real = CheckpointStore.restore_params

    def refused(self, step, target):
        raise PermissionError(13, "Permission denied", os.path.join(self.directory, str(step), "x"))

    monkeypatch.setattr(CheckpointStore, "restore_params", refused)
    with pytest.raises(PermissionError, match="Permission denied"):
        train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert (tmp_path / "checkpoints" / "2").is_dir()
    assert not (tmp_path / "corrupt_checkpoints").exists()
    monkeypatch.setattr(CheckpointStore, "restore_params", real)
    results = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert results["steps"] == 15 and results["metrics"]["evaluated_weights"] == "best"
    assert "best_checkpoint_unreadable" not in results


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_no_readable_checkpoint_left_is_an_error_not_a_silent_restart(tmp_path):
    config = ef.base_config(num_epochs=1, checkpoint_keep=1)
    train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    (step_dir,) = (tmp_path / "checkpoints").iterdir()
    _damage_arrays(step_dir)
    before = _digests(tmp_path)
    config.train.num_epochs = 2
    with pytest.raises(UserError, match=r"no checkpoint in .* can be read.*use a new --workdir"):
        train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert _digests(tmp_path) == before
    assert os.listdir(tmp_path / "corrupt_checkpoints")  # moved aside, not deleted
    # The same command again: the same error (the damaged ones lie in corrupt_checkpoints/).
    with pytest.raises(UserError, match=r"no checkpoint in .* can be read.*earlier"):
        train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    # A finished run whose checkpoints are gone: the same, not a run from step 0.
    shutil.rmtree(tmp_path / "corrupt_checkpoints")
    with pytest.raises(
        UserError, match=r"holds a finished run \(results\.json\) but no checkpoint"
    ):
        train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert _digests(tmp_path) == before
    # An unfinished one (no results.json) whose metrics.jsonl has evaluations: each came with a checkpoint.
    (tmp_path / "results.json").unlink()
    before = _digests(tmp_path)
    with pytest.raises(UserError, match=r"holds a run that saved checkpoints .* but none is left"):
        train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert _digests(tmp_path) == before


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_run_killed_before_its_first_checkpoint_starts_again_with_a_warning(tmp_path, caplog):
    old = '{"kind": "train", "step": 2, "time": 0, "loss": 1}\n'
    (tmp_path / "metrics.jsonl").write_text(old)
    config = ef.base_config(num_epochs=1)
    with caplog.at_level(logging.WARNING):
        results = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert results["steps"] == 5
    assert any("training from step 0" in r.getMessage() for r in caplog.records)
    # The earlier start's records are set aside: metrics.jsonl holds the new run's one history.
    assert (tmp_path / "metrics.orphaned.jsonl").read_text() == old
    steps = [r["step"] for r in read_jsonl(str(tmp_path / "metrics.jsonl")) if r["kind"] == "train"]
    assert steps == [2, 4, 5]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_metrics_jsonl_is_read_once_when_a_run_starts_again_or_resumes(tmp_path, monkeypatch):
    """A start again after a kill before the first checkpoint read metrics.jsonl three times (the fresh
    start's check of its record kinds, whether it had content, the set-aside of `restart_at`): now it is
    read once and its lines passed on; a resume reads it once too."""
    import builtins

    (tmp_path / "metrics.jsonl").write_text('{"kind": "train", "step": 2, "time": 0, "loss": 1}\n')
    real_open, reads = builtins.open, []

    def counting_open(file, mode="r", *args, **kwargs):
        if str(file).endswith("metrics.jsonl") and not set(mode) & set("wax+"):
            reads.append(str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    config = ef.base_config(num_epochs=1)
    train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert len(reads) == 1
    assert (tmp_path / "metrics.orphaned.jsonl").exists()  # the lines read once were set aside
    reads.clear()
    config.train.num_epochs = 2
    train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert len(reads) == 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_start_again_after_half_a_first_record_sets_the_half_line_aside(tmp_path):
    """A run killed while writing its very first record (a power cut) left only half a line: no record
    parses, but the new run's first record must not follow it on its line."""
    half = '{"kind": "train", "step": 2, "ti'
    (tmp_path / "metrics.jsonl").write_text(half)
    config = ef.base_config(num_epochs=1)
    train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    steps = [r["step"] for r in read_jsonl(str(tmp_path / "metrics.jsonl")) if r["kind"] == "train"]
    assert steps == [2, 4, 5]
    assert (tmp_path / "metrics.orphaned.jsonl").read_text() == half + "\n"


def test_a_second_training_run_of_the_same_workdir_is_refused_while_the_first_runs(tmp_path):
    """The same command started twice would interleave checkpoints and metrics: the workdir's lock
    (flock, released with its process) makes the second one an error that names the first."""
    import fcntl

    from lstm_jax.train import LOCK_FILE

    config = ef.base_config(num_epochs=1)
    train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert "pid" in (tmp_path / LOCK_FILE).read_text()
    before = _digests(tmp_path)
    with open(tmp_path / LOCK_FILE, "a+") as held:  # another run holding it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        config.train.num_epochs = 2
        with pytest.raises(UserError, match=r"is in use by another training run \(pid \d+ on "):
            train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
        assert _digests(tmp_path) == before
    results = train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    assert results["steps"] == 10  # released: the run goes on


def test_eval_reading_a_checkpoint_a_training_run_deletes_meanwhile_reads_the_one_left(
    tmp_path, monkeypatch
):
    """predict while a training run of the workdir went on: the best checkpoint, deleted between its
    lookup and its read (training keeps its last few), was a FileNotFoundError traceback, or "its files
    are damaged: move ... out"; now the checkpoint it reads instead is."""
    from lstm_jax import train as train_mod

    config = ef.base_config(num_epochs=2, eval_every_steps=2)
    train_and_evaluate(config, str(tmp_path), ef.classification_task(config))
    steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    assert len(steps) >= 2
    _, latest = restore_model(config, str(tmp_path), ef.build_model, which="latest")
    read = train_mod.restore_params
    moved = tmp_path / "elsewhere"

    def deleted_while_read(path, abstract):  # training deletes the checkpoint being read
        if os.path.basename(path) == str(latest):
            shutil.move(path, moved)
            raise FileNotFoundError(2, "No such file or directory", path)
        return read(path, abstract)

    monkeypatch.setattr(train_mod, "restore_params", deleted_while_read)
    _, step = restore_model(config, str(tmp_path), ef.build_model, which="latest")
    assert step == steps[-2]
