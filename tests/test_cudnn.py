"""impl="cudnn" (`jax.experimental.rnn`'s cuDNN LSTM), tested on CPU.

cuDNN itself needs an NVIDIA GPU (`python -m benchmarks.gpu_check` checks the real call there). Here JAX's
own reference of the same op, `jax.experimental.rnn.lstm_ref` (PyTorch/cuDNN semantics: `W_ih [4H, F]`,
two biases, post-padded sequences of given lengths), stands in for the cuDNN call, so everything lstm_jax
adds around it is tested: the packing of Keras-layout weights into cuDNN's flat vector, the gathering of
post- and pre-padded, forward and reverse rows into cuDNN's post-padded form and back, rows without real
tokens, the run-time fallback for masks with holes, and the gradients of all of it, against impl="scan".
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental import rnn

from lstm_jax import core
from lstm_jax import nn as lnn
from lstm_jax.core import LSTMState, init_lstm, lstm_layer

B, T, F, H = 5, 7, 3, 4


def _reference_rnn(xs, h0, c0, weights, lengths, features, hidden):
    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(weights, features, hidden, 1, False)
    ys, h, c = rnn.lstm_ref(
        xs, h0[None], c0[None], w_ih, w_hh, b_ih, b_hh, lengths, features, hidden, 1, 0.0, False
    )
    return ys, h[0], c[0]


@pytest.fixture
def cudnn_calls(monkeypatch):
    """Routes impl="cudnn" to JAX's reference of the cuDNN op; returns the list of calls' lengths."""
    calls = []

    def fake(xs, h0, c0, weights, lengths, features, hidden):
        assert lengths.dtype == jnp.int32 and weights.shape == (
            4 * hidden * (features + hidden + 2),
        )
        calls.append(lengths)
        return _reference_rnn(xs, h0, c0, weights, lengths, features, hidden)

    monkeypatch.setattr(core, "_cudnn_rnn", fake)
    monkeypatch.setattr(core, "_cudnn_unavailable_reason", lambda: None)
    return calls


def _params(seed=0, features=F):
    p = init_lstm(jax.random.key(seed), features, H)
    # A non-zero bias in every gate, so a misplaced gate or bias cannot go unnoticed.
    p["bias"] = p["bias"] + 0.1 * jax.random.normal(jax.random.key(seed + 1), (4 * H,))
    return p


def _inputs(seed=2):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    xs = jax.random.normal(k1, (B, T, F))
    state = LSTMState(0.5 * jax.random.normal(k2, (B, H)), 0.5 * jax.random.normal(k3, (B, H)))
    return xs, state


def _masks():
    lengths = np.array([7, 4, 1, 0, 5])
    post = np.arange(T)[None, :] < lengths[:, None]
    pre = post[:, ::-1].copy()
    holes = post.copy()
    holes[0, 3] = False  # row 0: tokens 0-2 and 4-6
    return {"none": None, "post": post, "pre": pre, "holes": holes}


def _loss_and_grads(impl, params, xs, state, mask, reverse):
    def loss(params, xs, h0, c0):
        outs, (h, c) = lstm_layer(
            params, xs, mask=mask, initial_state=LSTMState(h0, c0), reverse=reverse, impl=impl
        )
        w = jnp.arange(outs.size, dtype=outs.dtype).reshape(outs.shape) / outs.size
        return jnp.sum(w * outs) + jnp.sum(h * h) + jnp.sum(jnp.cos(c)), (outs, h, c)

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))
    return fn(params, xs, *state)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("mask_kind", ["none", "post", "pre", "holes"])
def test_cudnn_matches_scan(cudnn_calls, mask_kind, reverse):
    params = _params()
    xs, state = _inputs()
    mask = _masks()[mask_kind]
    (loss_s, aux_s), grads_s = _loss_and_grads("scan", params, xs, state, mask, reverse)
    (loss_c, aux_c), grads_c = _loss_and_grads("cudnn", params, xs, state, mask, reverse)
    assert cudnn_calls, "impl='cudnn' did not reach the cuDNN call"
    for a, b in zip(aux_s, aux_c, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(loss_c), float(loss_s), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads_s), jax.tree.leaves(grads_c), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
    if mask is not None:
        outs = np.asarray(aux_c[0])
        assert np.all(outs[~mask] == 0.0)  # zeros at padding, as the masked scan
        np.testing.assert_array_equal(np.asarray(aux_c[1])[3], np.asarray(state.h)[3])  # no tokens


@pytest.mark.parametrize("mask_kind", ["none", "post", "pre", "holes"])
def test_cudnn_layer_runs_contiguous_masks_and_flags_holes(cudnn_calls, mask_kind):
    params = _params()
    xs, state = _inputs()
    mask = _masks()[mask_kind]
    *_, ok = core._cudnn_layer(
        params["kernel"], params["recurrent_kernel"], params["bias"], xs, mask, *state, False
    )
    assert bool(ok) == (mask_kind != "holes")
    expected = {"none": [T] * B, "holes": [6, 4, 1, 1, 5]}.get(mask_kind, [7, 4, 1, 1, 5])
    # (a row without tokens runs one step, whose results are discarded)
    np.testing.assert_array_equal(np.asarray(cudnn_calls[-1]), expected)


def test_cudnn_weight_packing_is_cudnn_layout():
    """The packed vector unpacks (with jax.experimental.rnn's own unpacker) to PyTorch/cuDNN's
    `W_ih [4H, F]`, `W_hh [4H, H]`, `b_ih`, `b_hh = 0`, gates in the same order as Keras'."""
    p = _params()
    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(
        core._cudnn_weights(p["kernel"], p["recurrent_kernel"], p["bias"]), F, H, 1, False
    )
    np.testing.assert_array_equal(np.asarray(w_ih[0]), np.asarray(p["kernel"]).T)
    np.testing.assert_array_equal(np.asarray(w_hh[0]), np.asarray(p["recurrent_kernel"]).T)
    np.testing.assert_array_equal(np.asarray(b_ih[0]), np.asarray(p["bias"]))
    np.testing.assert_array_equal(np.asarray(b_hh[0]), np.zeros(4 * H))
    # The forget gate (second block) of Keras' layout is cuDNN's forget gate: init puts 1.0 there.
    assert np.all(np.asarray(init_lstm(jax.random.key(0), F, H)["bias"])[H : 2 * H] == 1.0)


def test_cudnn_with_embedding_ids(cudnn_calls):
    params = _params(features=6)
    table = jax.random.normal(jax.random.key(5), (11, 6))
    ids = jax.random.randint(jax.random.key(6), (B, T), 0, 11)
    mask = _masks()["post"]
    ref = lstm_layer(params, ids, mask=mask, embedding=table, impl="scan")
    got = lstm_layer(params, ids, mask=mask, embedding=table, impl="cudnn")
    assert cudnn_calls
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)


def test_cudnn_in_nnx_bidirectional_stack(cudnn_calls):
    ids_mask = _masks()["pre"]
    xs, _ = _inputs()

    def run(impl):
        model = lnn.StackedLSTM(F, (H, H), rngs=nnx.Rngs(9), bidirectional=True, impl=impl)
        outs, _ = model(xs, mask=ids_mask)
        return outs

    ref = run("scan")
    got = run("cudnn")
    assert len(cudnn_calls) == 4  # two layers, two directions
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-6)


def test_cudnn_falls_back_to_scan_where_cudnn_cannot(cudnn_calls):
    params = _params()
    xs, state = _inputs()
    rmask = jnp.full((B, H), 2.0)
    ref = lstm_layer(params, xs, recurrent_dropout_mask=rmask, impl="scan")
    got = lstm_layer(params, xs, recurrent_dropout_mask=rmask, impl="cudnn")
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(ref[0]))
    lstm_layer(jax.tree.map(lambda a: a.astype(jnp.bfloat16), params), xs, impl="cudnn")
    lstm_layer(params, xs, impl="cudnn", compute_dtype=jnp.bfloat16)
    lstm_layer(params, xs, impl="cudnn", return_gates=True)
    assert cudnn_calls == []


def test_cudnn_off_nvidia_gpus_is_a_clear_error():
    if jax.default_backend() == "gpu":
        pytest.skip("this backend has a GPU")
    params = _params()
    xs, _ = _inputs()
    with pytest.raises(
        ValueError, match="impl='cudnn' is unavailable here: it needs an NVIDIA GPU"
    ):
        lstm_layer(params, xs, impl="cudnn")


def test_gpu_check_script_runs_and_catches_a_mismatch(monkeypatch, tmp_path, capsys):
    """`python -m benchmarks.gpu_check`, the script a GPU session runs, checked off a GPU with JAX's
    reference op standing in for cuDNN; a wrong cuDNN result must make it fail."""
    from benchmarks import gpu_check

    monkeypatch.setattr(core, "_cudnn_rnn", core._cudnn_rnn)  # restored after the test
    monkeypatch.setattr(core, "_cudnn_unavailable_reason", core._cudnn_unavailable_reason)
    if jax.default_backend() != "gpu":
        assert gpu_check.main(["--shapes", "C", "--no-timing"]) == 2
    out = tmp_path / "gpu.json"
    argv = ["--emulate", "--shapes", "C", "--max-time", "4", "--rounds", "1", "--out", str(out)]
    assert gpu_check.main(argv) == 0
    saved = json.loads(out.read_text())
    assert [r["case"] for r in saved["parity"]][:4] == ["none", "post", "pre", "post, reverse"]
    assert all(r["ok"] for r in saved["parity"]) and saved["timing"][0]["shape"] == "C"
    assert "every case within tolerance" in capsys.readouterr().out

    reference = core._cudnn_rnn  # the emulation installed by the run above

    def off_by_a_little(*args):
        ys, h, c = reference(*args)
        return ys, h * (1 + 1e-3), c

    monkeypatch.setattr(gpu_check, "_emulate_cudnn", lambda: None)
    monkeypatch.setattr(core, "_cudnn_rnn", off_by_a_little)
    assert gpu_check.main(["--shapes", "C", "--max-time", "4", "--no-timing"]) == 1
    assert "MISMATCH" in capsys.readouterr().out
