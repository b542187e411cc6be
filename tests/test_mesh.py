"""Data parallelism: the same training on 1 and on 8 (simulated CPU) devices gives the same numbers
(without dropout: each device draws its own dropout masks), and every device gets its own dropout key.

Each run happens in a fresh subprocess, because the device count is fixed when JAX starts
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)

SCRIPT = r"""
import json, sys
import jax
import numpy as np
from flax import nnx
import engine_fixtures as ef
from lstm_jax.train import restore_model, train_and_evaluate

out_dir = sys.argv[1]
report = {"devices": jax.device_count()}

# A: char-rnn style LM, carry sharded over the batch, batch 8 (divisible by 1 and 8).
config = ef.base_config(num_steps=6, eval_every_steps=3)
config.model.classes = 12
config.model.dropout = 0.0
res = train_and_evaluate(config, out_dir + "/lm", ef.lm_task(config))
report["lm"] = res["history"]

# The same LM with dropout trains (finite numbers) with a dropout key per device.
config_d = ef.base_config(num_steps=3, eval_every_steps=3)
config_d.model.classes = 12
res_d = train_and_evaluate(config_d, out_dir + "/lm_dropout", ef.lm_task(config_d))
report["lm_dropout_loss"] = res_d["history"][-1]["train"]["loss"]

# B: classifier with batch 6 and eval batch 5: padded with weight-0 rows on 8 devices.
config_b = ef.base_config(num_epochs=1, batch_size=6)
config_b.model.dropout = 0.0
res_b = train_and_evaluate(config_b, out_dir + "/clf", ef.classification_task(config_b, eval_bs=5))
report["clf"] = res_b["history"]
report["clf_test"] = res_b["metrics"]["final"]["test"]

for name, cfg in (("lm", config), ("clf", config_b)):
    model, _ = restore_model(cfg, out_dir + "/" + name, ef.build_model, which="latest")
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    np.savez(out_dir + f"/{name}_params.npz", *[np.asarray(x) for x in leaves])
# Prediction (`predict_logits`): batches split over the devices, equal to one device's logits.
from experiments.imdb_sentiment.configs import test as imdb_test
from lstm_jax.tasks import classification as clf

cfg = imdb_test.get_config()
cfg.model.bidirectional = True
classifier = clf.build_model(cfg, nnx.Rngs(0))
# As restored from a checkpoint: parameters committed to one device.
nnx.update(classifier, jax.device_put(nnx.state(classifier), jax.devices()[0]))
rng = np.random.default_rng(0)
mask = np.arange(24)[None, :] < rng.integers(1, 25, 13)[:, None]
ids = np.where(mask, rng.integers(2, 200, (13, 24)), 0).astype(np.int32)
np.save(out_dir + "/logits.npy", clf.predict_logits(classifier, ids, mask, 8, quantum=4))

# Per-device dropout keys and count-weighted gradients, straight through `data_parallel_grads`.
import jax.numpy as jnp
from lstm_jax.train import data_parallel_grads, make_mesh

def loss_and_grads(params, batch, key, carry):
    w = batch["weight"]
    sums = {"loss": jnp.sum(w * batch["x"] * params), "count": jnp.sum(w)}
    loss = sums["loss"] / jnp.maximum(sums["count"], 1e-9)
    grad = jnp.sum(w * batch["x"]) / jnp.maximum(sums["count"], 1e-9)
    draws = jnp.broadcast_to(jax.random.uniform(key), carry.shape)
    return loss, sums, draws, grad

n = jax.device_count()
batch = {"x": jnp.arange(1.0, 4 * n + 1), "weight": jnp.asarray([1.0] * (4 * n - 3) + [0.0] * 3)}
fn = jax.jit(data_parallel_grads(loss_and_grads, make_mesh()))
loss, sums, draws, grad = fn(jnp.float32(2.0), batch, jax.random.PRNGKey(0), jnp.zeros(4 * n))
report["dp"] = {"loss": float(loss), "grad": float(grad), "count": float(sums["count"]),
                "draws": [float(x) for x in draws]}
print("REPORT" + json.dumps(report))
"""


def _start(tmp_path, devices: int) -> tuple[subprocess.Popen, object]:
    out = tmp_path / f"d{devices}"
    out.mkdir()
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONPATH"] = os.pathsep.join([TESTS, REPO, env.get("PYTHONPATH", "")])
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, out


def _finish(proc: subprocess.Popen, out) -> tuple[dict, dict]:
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    line = next(x for x in stdout.splitlines() if x.startswith("REPORT"))
    params = {name: list(np.load(out / f"{name}_params.npz").values()) for name in ("lm", "clf")}
    params["logits"] = np.load(out / "logits.npy")
    return json.loads(line[len("REPORT") :]), params


def _assert_close_records(a, b):
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        assert ra["step"] == rb["step"]
        for split in ("train", "validation"):
            for key, value in ra[split].items():
                np.testing.assert_allclose(rb[split][key], value, rtol=2e-5, atol=1e-6, err_msg=key)


def test_one_and_eight_devices_give_the_same_training(tmp_path):
    runs = [_start(tmp_path, 1), _start(tmp_path, 8)]  # concurrently: each is mostly compile time
    (one, params_one), (eight, params_eight) = (_finish(*run) for run in runs)
    assert one["devices"] == 1 and eight["devices"] == 8
    _assert_close_records(one["lm"], eight["lm"])
    _assert_close_records(one["clf"], eight["clf"])
    assert one["clf_test"]["count"] == eight["clf_test"]["count"] == 15  # padding rows not counted
    for name in ("lm", "clf"):
        for x, y in zip(params_one[name], params_eight[name], strict=True):
            np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-5)
    assert params_eight["logits"].shape == (13,)
    np.testing.assert_allclose(params_eight["logits"], params_one["logits"], rtol=1e-5, atol=1e-6)
    for report in (one, eight):
        assert np.isfinite(report["lm_dropout_loss"])
        # Weighted mean over the 4n - 3 unpadded rows of x = 1..4n (the last 3 rows are padding).
        kept = np.arange(1.0, 4 * report["devices"] - 2)
        assert report["dp"]["count"] == len(kept)
        np.testing.assert_allclose(report["dp"]["grad"], kept.mean(), rtol=1e-6)
        np.testing.assert_allclose(report["dp"]["loss"], 2 * kept.mean(), rtol=1e-6)
    # Four rows per device: the rows of one device share a draw, every device draws differently.
    draws = np.asarray(eight["dp"]["draws"]).reshape(8, 4)
    assert (draws == draws[:, :1]).all()
    assert len(set(draws[:, 0])) == 8


PACED = r"""
import json, sys
import jax
import engine_fixtures as ef
import lstm_jax.train as train

if sys.argv[2] == "unpaced":  # the engine as it was: the host queues steps without limit
    train.CPU_MULTI_DEVICE_MAX_AHEAD = 0
config = ef.base_config(num_epochs=1, batch_size=40, log_every_steps=100_000)
config.model.hidden = 128
config.model.dropout = 0.0
data = ef.classification_data(20_000, t=50)  # 500 steps, none of them waited for by a log line
task = ef.classification_task(config, data, ef.classification_data(4_000, t=50, seed=1), eval_bs=20)
res = train.train_and_evaluate(config, sys.argv[1], task)
print("REPORT" + json.dumps({"devices": jax.device_count(), "steps": res["history"][-1]["step"]}))
"""


def test_two_cpu_devices_do_not_deadlock_when_the_host_runs_ahead(tmp_path):
    # Without the engine's pacing (CPU_MULTI_DEVICE_MAX_AHEAD; the script's "unpaced") this run hung
    # in an all-reduce and XLA aborted the process after 60 s (2026-12-05; `--cpu_devices=2` on the
    # Macbeth config did the same); 200 eval batches of 20 rows pace the evaluation loop too.
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env["PYTHONPATH"] = os.pathsep.join([TESTS, REPO, env.get("PYTHONPATH", "")])
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", PACED, str(tmp_path / "w"), "paced"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("REPORT"))
    assert json.loads(line[len("REPORT") :]) == {"devices": 2, "steps": 500}
