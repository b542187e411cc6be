"""Numerical parity with Keras 3's LSTM (JAX backend) and the PyTorch-layout importer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax import (
    bidirectional,
    core,
    from_keras,
    from_torch,
    from_torch_lstm,
    lstm_layer,
    lstm_step,
    to_keras,
)
from lstm_jax.core import LSTMState

keras = pytest.importorskip("keras")


@pytest.fixture(scope="module", autouse=True)
def _jax_backend():
    assert keras.backend.backend() == "jax", "tests/conftest.py must select KERAS_BACKEND=jax"


def _keras_lstm(units, in_dim, t, **kwargs):
    layer = keras.layers.LSTM(units, return_sequences=True, return_state=True, **kwargs)
    layer.build((None, t, in_dim))
    return layer


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_keras_parity(masked, go_backwards):
    rng = np.random.default_rng(0)
    b, t, f, h = 4, 9, 5, 7
    x = rng.normal(size=(b, t, f)).astype(np.float32)
    layer = _keras_lstm(h, f, t, zero_output_for_mask=True, go_backwards=go_backwards)
    # Random weights (not just the initialiser's) with a non-trivial bias.
    layer.set_weights(
        [w + 0.1 * rng.normal(size=w.shape).astype(np.float32) for w in layer.get_weights()]
    )
    params = from_keras(layer.get_weights())
    mask = None
    if masked:
        lengths = np.array([9, 6, 3, 1])
        mask = np.arange(t)[None, :] < lengths[:, None]  # post-padding, as Keras' Masking expects
    k_seq, k_h, k_c = (np.asarray(a) for a in layer(x, mask=mask))
    outs, st = lstm_layer(
        params,
        jnp.asarray(x),
        mask=None if mask is None else jnp.asarray(mask),
        reverse=go_backwards,
    )
    np.testing.assert_allclose(st.h, k_h, atol=1e-5)
    np.testing.assert_allclose(st.c, k_c, atol=1e-5)
    # Keras' go_backwards returns the sequence in reversed time order; ours stays aligned with the input.
    ours = np.asarray(outs)[:, ::-1] if go_backwards else np.asarray(outs)
    if mask is None:
        np.testing.assert_allclose(ours, k_seq, atol=1e-5)
    else:
        m = mask[:, ::-1] if go_backwards else mask
        np.testing.assert_allclose(ours[m], k_seq[m], atol=1e-5)
        np.testing.assert_array_equal(ours[~m], 0.0)
        np.testing.assert_allclose(k_seq[~m], 0.0, atol=1e-7)


def test_keras_parity_default_init_and_round_trip():
    layer = _keras_lstm(6, 3, 4)
    params = from_keras(layer.get_weights())
    # Keras' default unit_forget_bias: ones on the forget gate only.
    np.testing.assert_array_equal(params["bias"], np.r_[np.zeros(6), np.ones(6), np.zeros(12)])
    for a, b in zip(to_keras(params), layer.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(1).normal(size=(2, 4, 3)).astype(np.float32)
    k_seq, _, _ = layer(x)
    np.testing.assert_allclose(lstm_layer(params, jnp.asarray(x))[0], k_seq, atol=1e-5)


def test_from_keras_takes_a_layer_and_refuses_other_activations():
    """Weights alone cannot say they were trained with `recurrent_activation="hard_sigmoid"`: such a
    layer's weights imported silently and computed another function. A layer passed itself is checked."""
    layer = _keras_lstm(5, 3, 4)
    for a, b in zip(
        jax.tree.leaves(from_keras(layer)),
        jax.tree.leaves(from_keras(layer.get_weights())),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    hard = _keras_lstm(5, 3, 4, recurrent_activation="hard_sigmoid")
    with pytest.raises(ValueError, match=r"recurrent_activation is hard_sigmoid.*'sigmoid'"):
        from_keras(hard)
    relu = _keras_lstm(5, 3, 4, activation="relu")
    with pytest.raises(ValueError, match=r"activation is relu.*activation='tanh'"):
        from_keras(relu)
    with pytest.raises(
        ValueError, match="Dense has no recurrent_activation; pass a keras.layers.LSTM"
    ):
        from_keras(keras.layers.Dense(3))
    gru = keras.layers.GRU(
        5
    )  # an LSTM's default activations, 3 arrays: "inconsistent shapes" before
    gru.build((None, 4, 3))
    with pytest.raises(ValueError, match=r"from_keras: GRU is a GRU layer, not an LSTM"):
        from_keras(gru)


@pytest.mark.parametrize("shape", [(1,), (8, 1), (4,)])
def test_from_torch_refuses_a_bias_of_another_shape(shape):
    """A [1] or [4H, 1] bias broadcast into b_ih + b_hh silently (a [4H, 4H] bias for [4H, 1]); a [H]
    one raised NumPy's unnamed broadcast error."""
    sd = {
        "weight_ih_l0": np.zeros((8, 3)),
        "weight_hh_l0": np.zeros((8, 2)),
        "bias_ih_l0": np.zeros((8,)),
        "bias_hh_l0": np.zeros(shape),
    }
    with pytest.raises(ValueError, match=r"bias_hh_l0 has shape .*, expected \(8,\)"):
        from_torch(sd)
    sd["bias_hh_l0"] = np.ones((8,))
    np.testing.assert_array_equal(from_torch(sd)["bias"], np.ones(8))


def test_from_keras_rejects_missing_bias():
    with pytest.raises(ValueError, match="use_bias"):
        from_keras([np.zeros((3, 8)), np.zeros((2, 8))])


def test_from_keras_of_an_unbuilt_layer_says_to_build_it():
    """A fresh `keras.layers.LSTM(8)` has no weights until called: from_keras once said it held 0
    arrays and to build it with use_bias=True, which it was."""
    layer = keras.layers.LSTM(8)
    with pytest.raises(ValueError, match=r"not built.*call it on a batch") as e:
        from_keras(layer)
    assert "use_bias" not in str(e.value)


def test_from_keras_names_the_directions_of_a_bidirectional_layer():
    """A `Bidirectional(LSTM)` wrapper's get_weights() holds both directions (6 arrays): the error says to
    pass each direction's layer (it used to say "build the Keras LSTM with use_bias=True", which the
    layer was), and the weights of each direction import and run as Keras' wrapper does."""
    rng = np.random.default_rng(4)
    b, t, f, h = 2, 5, 3, 4
    wrapper = keras.layers.Bidirectional(keras.layers.LSTM(h, return_sequences=True))
    wrapper.build((None, t, f))
    wrapper.set_weights(
        [w + 0.1 * rng.normal(size=w.shape).astype(np.float32) for w in wrapper.get_weights()]
    )
    with pytest.raises(ValueError, match="6.*forward_layer.get_weights.*backward_layer") as e:
        from_keras(wrapper.get_weights())
    assert "use_bias" not in str(e.value)
    x = rng.normal(size=(b, t, f)).astype(np.float32)
    ours, _ = bidirectional(
        from_keras(wrapper.forward_layer.get_weights()),
        from_keras(wrapper.backward_layer.get_weights()),
        jnp.asarray(x),
    )
    np.testing.assert_allclose(ours, np.asarray(wrapper(x)), atol=1e-5)


def _torch_reference(sd, x, layer=0, reverse=False):
    """PyTorch's LSTM equations written out for one direction in NumPy (gate order i, f, g, o)."""
    sfx = f"_l{layer}" + ("_reverse" if reverse else "")
    w_ih, w_hh = sd[f"weight_ih{sfx}"], sd[f"weight_hh{sfx}"]
    b = sd[f"bias_ih{sfx}"] + sd[f"bias_hh{sfx}"]
    n = w_hh.shape[1]
    h = np.zeros((x.shape[0], n))
    c = np.zeros((x.shape[0], n))
    outs = [None] * x.shape[1]
    order = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
    sig = lambda v: 1 / (1 + np.exp(-v))
    for t in order:
        z = x[:, t] @ w_ih.T + h @ w_hh.T + b
        i, f, g, o = (
            sig(z[:, :n]),
            sig(z[:, n : 2 * n]),
            np.tanh(z[:, 2 * n : 3 * n]),
            sig(z[:, 3 * n :]),
        )
        c = f * c + i * g
        h = o * np.tanh(c)
        outs[t] = h
    return np.stack(outs, 1), h, c


def _torch_state_dict(rng, in_dim, h, layers=1, bidirectional=False):
    sd = {}
    for k in range(layers):
        for sfx in [f"_l{k}"] + ([f"_l{k}_reverse"] if bidirectional else []):
            d = in_dim if k == 0 else h * (2 if bidirectional else 1)
            sd[f"weight_ih{sfx}"] = rng.normal(size=(4 * h, d)).astype(np.float32) * 0.4
            sd[f"weight_hh{sfx}"] = rng.normal(size=(4 * h, h)).astype(np.float32) * 0.4
            sd[f"bias_ih{sfx}"] = rng.normal(size=(4 * h,)).astype(np.float32) * 0.2
            sd[f"bias_hh{sfx}"] = rng.normal(size=(4 * h,)).astype(np.float32) * 0.2
    return sd


def test_torch_importer_matches_torch_equations():
    rng = np.random.default_rng(0)
    sd = _torch_state_dict(rng, 4, 5, layers=2)
    x = rng.normal(size=(3, 6, 4)).astype(np.float32)
    layers = from_torch_lstm(sd)
    assert len(layers) == 2
    h = jnp.asarray(x)
    ref = x.astype(np.float64)
    for k, p in enumerate(layers):
        h, st = lstm_layer(p, h)
        ref, ref_h, ref_c = _torch_reference(sd, ref, layer=k)
        np.testing.assert_allclose(h, ref, atol=1e-5)
        np.testing.assert_allclose(st.c, ref_c, atol=1e-5)
    # A single step agrees too (the importer's bias is b_ih + b_hh).
    p0 = from_torch(sd, 0)
    st, _ = lstm_step(p0, LSTMState(jnp.zeros((3, 5)), jnp.zeros((3, 5))), jnp.asarray(x[:, 0]))
    np.testing.assert_allclose(st.h, _torch_reference(sd, x[:, :1])[1], atol=1e-5)


def test_torch_importer_bidirectional():
    rng = np.random.default_rng(1)
    sd = _torch_state_dict(rng, 3, 4, bidirectional=True)
    ((pf, pb),) = from_torch_lstm(sd)
    x = rng.normal(size=(2, 5, 3)).astype(np.float32)
    out_b, _ = lstm_layer(pb, jnp.asarray(x), reverse=True)
    ref_b, _, _ = _torch_reference(sd, x, reverse=True)
    np.testing.assert_allclose(out_b, ref_b, atol=1e-5)
    with pytest.raises(KeyError, match="weight_ih_l3"):
        from_torch(sd, layer=3)


def test_torch_importer_reads_a_whole_models_state_dict():
    """`model.state_dict()` keys carry the module path ("encoder.lstm.weight_ih_l0")."""
    rng = np.random.default_rng(3)
    sd = _torch_state_dict(rng, 4, 5, layers=2)
    model_sd = {f"encoder.lstm.{k}": v for k, v in sd.items()}
    model_sd["head.weight"] = np.zeros((2, 5), np.float32)
    for got, want in zip(from_torch_lstm(model_sd), from_torch_lstm(sd), strict=True):
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
    two = {**model_sd, **{f"decoder.{k}": v for k, v in sd.items()}}
    with pytest.raises(
        ValueError, match=r"several LSTMs \(decoder\., encoder\.lstm\.\); pass prefix="
    ):
        from_torch_lstm(two)
    assert len(from_torch_lstm(two, prefix="decoder.")) == 2
    # The module path without its trailing dot (as `named_modules()` gives it) names the same LSTM; it
    # used to strip "encoder.lstm" from the keys and find no ".weight_ih_l*" key starting a name.
    named = from_torch_lstm(two, prefix="encoder.lstm")
    for got, want in zip(named, from_torch_lstm(sd), strict=True):
        np.testing.assert_array_equal(got["kernel"], want["kernel"])


def test_torch_importer_names_the_lstms_when_the_prefix_matches_none():
    """A misspelt prefix, or the path of the module that holds the LSTM ("encoder" for
    "encoder.lstm."), names the LSTMs the dict holds; it used to ask "is this an nn.LSTM state dict?"."""
    rng = np.random.default_rng(5)
    sd = _torch_state_dict(rng, 4, 5)
    model_sd = {**{f"encoder.lstm.{k}": v for k, v in sd.items()}, "head.weight": np.zeros((2, 5))}
    for prefix in ("encoder.lstn.", "encoder", "head"):
        with pytest.raises(
            ValueError, match=rf"prefix='{prefix}'.*LSTMs at 'encoder\.lstm\.'.*pass one"
        ):
            from_torch_lstm(model_sd, prefix=prefix)
    with pytest.raises(ValueError, match="is this an nn.LSTM state dict"):
        from_torch_lstm({"head.weight": np.zeros((2, 5))}, prefix="head")


def test_torch_importer_refuses_a_gap_in_the_layer_numbers():
    """weight_ih_l0 and weight_ih_l2 without l1 (a layer dropped from the dict) were imported as a
    2-layer stack without a word; so were layers starting at 1. Now a ValueError names the missing."""
    rng = np.random.default_rng(7)
    sd = _torch_state_dict(rng, 4, 4, layers=3)
    gap = {k: v for k, v in sd.items() if "_l1" not in k}
    with pytest.raises(ValueError, match=r"layers \[0, 2\] but none of layer\(s\) \[1\]"):
        from_torch_lstm(gap)
    no_first = {k: v for k, v in sd.items() if "_l0" not in k}
    with pytest.raises(ValueError, match=r"none of layer\(s\) \[0\]"):
        from_torch_lstm(no_first)
    assert len(from_torch_lstm(sd)) == 3


def test_importers_name_the_shapes_of_arrays_of_the_wrong_rank():
    """The shape checks indexed a second dimension: a 1-D kernel (arrays in another order) was an
    IndexError "tuple index out of range", a 1-D weight_hh "not enough values to unpack", and a 1-D
    weight_ih came back as a 1-D kernel."""
    with pytest.raises(ValueError, match=r"from_keras: inconsistent shapes kernel \(8,\)"):
        from_keras([np.zeros(8), np.zeros((2, 8)), np.zeros((3, 8))])
    for w_ih, w_hh in [((8, 3), (8,)), ((8,), (8, 2))]:
        sd = {"weight_ih_l0": np.zeros(w_ih), "weight_hh_l0": np.zeros(w_hh)}
        with pytest.raises(ValueError, match=r"from_torch: inconsistent shapes.*\[4H, in\]"):
            from_torch(sd)


def test_torch_importer_accepts_jax_arrays():
    rng = np.random.default_rng(2)
    sd = {k: jax.numpy.asarray(v) for k, v in _torch_state_dict(rng, 2, 3).items()}
    p = from_torch(sd)
    assert p["kernel"].shape == (2, 12) and p["recurrent_kernel"].shape == (3, 12)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_torch_importer_reads_low_precision_tensors(dtype):
    """A PyTorch LSTM kept in bfloat16 (or float16) imports as float32 weights equal to its own (the
    importer used to call `.numpy()`, which has no bfloat16: TypeError "unsupported ScalarType")."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 4).to(getattr(torch, dtype))
    sd = lstm.state_dict()
    p = from_torch(sd)
    assert {a.dtype for a in p.values()} == {jnp.dtype(jnp.float32)}
    np.testing.assert_array_equal(p["kernel"], sd["weight_ih_l0"].float().numpy().T)
    np.testing.assert_array_equal(
        p["bias"], (sd["bias_ih_l0"].float() + sd["bias_hh_l0"].float()).numpy()
    )


# Flax: the cell's weights in our layout, its (c, h) carry as LSTMState(h=carry[1], c=carry[0]).
@pytest.mark.parametrize("cell_type", ["OptimizedLSTMCell", "LSTMCell"])
@pytest.mark.parametrize("source", ["cell", "state", "pure_dict"])
def test_from_flax_nnx_cells_compute_what_nnx_rnn_computes(cell_type, source):
    from flax import nnx

    from lstm_jax import from_flax

    b, t, f, h = 3, 6, 4, 5
    cell = getattr(nnx, cell_type)(f, h, rngs=nnx.Rngs(0))
    # Nonzero biases so that a bias left out or misplaced shows.
    for path, param in nnx.iter_graph(cell):
        if isinstance(param, nnx.Param) and path[-1] == "bias":
            param[...] = jax.random.normal(jax.random.key(len(path[0])), param[...].shape)
    xs = jax.random.normal(jax.random.key(1), (b, t, f))
    c0 = jax.random.normal(jax.random.key(2), (b, h))
    h0 = jax.random.normal(jax.random.key(3), (b, h))
    lengths = jnp.array([t, 4, 1])
    carry, ys = nnx.RNN(cell, return_carry=True)(xs, initial_carry=(c0, h0), seq_lengths=lengths)
    given = {
        "cell": cell,
        "state": nnx.state(cell),
        "pure_dict": nnx.state(cell).to_pure_dict(),
    }[source]
    params = from_flax(given)
    mask = jnp.arange(t)[None, :] < lengths[:, None]
    outs, state = lstm_layer(params, xs, mask=mask, initial_state=LSTMState(h=h0, c=c0))
    np.testing.assert_allclose(state.c, carry[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.h, carry[1], rtol=1e-5, atol=1e-6)
    # nnx.RNN leaves whatever it computed at padding; ours are zeros there
    np.testing.assert_allclose(outs[mask], ys[mask], rtol=1e-5, atol=1e-6)


def test_from_flax_linen_cell_params():
    from flax import linen

    from lstm_jax import from_flax

    b, f, h = 2, 3, 4
    for cell in (linen.LSTMCell(h), linen.OptimizedLSTMCell(h)):
        carry = (jnp.ones((b, h)) * 0.3, jnp.ones((b, h)) * -0.2)  # (c, h)
        x = jax.random.normal(jax.random.key(0), (b, f))
        variables = cell.init(jax.random.key(1), carry, x)
        variables = jax.tree.map(lambda a: a + 0.1, variables)  # nonzero biases
        (c1, h1), y = cell.apply(variables, carry, x)
        for given in (variables, variables["params"]):
            state, out = lstm_step(from_flax(given), LSTMState(h=carry[1], c=carry[0]), x)
            np.testing.assert_allclose(state.c, c1, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(state.h, h1, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(out, y, rtol=1e-5, atol=1e-6)


def test_from_flax_refuses_other_activations_and_other_weights():
    from flax import nnx

    from lstm_jax import from_flax

    cell = nnx.OptimizedLSTMCell(3, 4, activation_fn=jax.nn.relu, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="sigmoid / tanh"):
        from_flax(cell)
    with pytest.raises(ValueError, match="no Flax LSTM cell weights"):
        from_flax({"kernel": np.zeros((3, 16))})
    # A GRU cell has gate_fn / activation_fn and dense_i / dense_h too: once a KeyError 'bias'.
    gru = nnx.GRUCell(3, 4, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="got GRUCell"):
        from_flax(gru)
    with pytest.raises(ValueError, match="dense_h holds no bias"):
        from_flax(nnx.state(gru, nnx.Param))


def test_from_torch_lstm_bidirectional_forward_direction_is_the_forward_weights():
    """Each pair is (forward, backward): the forward direction was not checked against the equations."""
    rng = np.random.default_rng(11)
    sd = _torch_state_dict(rng, 3, 4, layers=2, bidirectional=True)
    pairs = from_torch_lstm(sd)
    assert len(pairs) == 2
    for k, (pf, pb) in enumerate(pairs):
        np.testing.assert_array_equal(pf["kernel"], sd[f"weight_ih_l{k}"].T)
        np.testing.assert_array_equal(pb["kernel"], sd[f"weight_ih_l{k}_reverse"].T)
    x = rng.normal(size=(2, 5, 3)).astype(np.float32)
    out_f, _ = lstm_layer(pairs[0][0], jnp.asarray(x))
    np.testing.assert_allclose(out_f, _torch_reference(sd, x)[0], atol=1e-5)


def test_from_torch_without_biases_and_with_a_projection():
    """`nn.LSTM(bias=False)` has no bias_* keys (a zero bias); `proj_size > 0` is refused by name."""
    rng = np.random.default_rng(12)
    sd = _torch_state_dict(rng, 3, 4)
    no_bias = {k: v for k, v in sd.items() if not k.startswith("bias")}
    p = from_torch(no_bias)
    np.testing.assert_array_equal(p["bias"], np.zeros(16))
    np.testing.assert_array_equal(p["recurrent_kernel"], sd["weight_hh_l0"].T)
    proj = {**sd, "weight_hh_l0": sd["weight_hh_l0"][:, :2], "weight_hr_l0": np.zeros((2, 4))}
    with pytest.raises(ValueError, match="proj_size > 0 are not supported"):
        from_torch(proj)


def test_from_torch_refuses_weights_of_different_hidden_sizes():
    """weight_ih [4H', in] beside weight_hh [4H, H] (layers mixed up) is refused, not imported."""
    sd = {"weight_ih_l0": np.zeros((12, 3)), "weight_hh_l0": np.zeros((8, 2))}
    with pytest.raises(ValueError, match=r"from_torch: inconsistent shapes weight_ih \(12, 3\)"):
        from_torch(sd)
    # weight_hh not [4H, H] (a GRU's [3H, H], say)
    sd = {"weight_ih_l0": np.zeros((9, 3)), "weight_hh_l0": np.zeros((9, 3))}
    with pytest.raises(ValueError, match=r"from_torch: inconsistent shapes .*\(9, 3\)"):
        from_torch(sd)
    # A missing layer names the keys there are.
    with pytest.raises(KeyError, match=r"'weight_ih_l1' not in the state dict \(keys: \["):
        from_torch(sd, layer=1)


def test_importers_return_float32_from_float64_arrays():
    """The core's parameters are float32 whatever the source dtype (NumPy float64 here), under
    jax_enable_x64 too (where jnp.asarray alone would keep float64)."""
    rng = np.random.default_rng(13)
    sd = {k: v.astype(np.float64) for k, v in _torch_state_dict(rng, 3, 4).items()}
    keras_w = [np.zeros((3, 16)), np.zeros((4, 16)), np.zeros(16)]
    with jax.enable_x64(True):
        for p in (from_torch(sd), from_keras(keras_w)):
            assert {a.dtype for a in p.values()} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize(
    "shapes",
    [
        [(3, 16), (4, 16), (16, 1)],
        [(3, 16), (4, 16), (12,)],
        [(3, 12), (4, 16), (16,)],
    ],
)
def test_from_keras_refuses_a_bias_or_kernel_of_another_width(shapes):
    with pytest.raises(ValueError, match="from_keras: inconsistent shapes"):
        from_keras([np.zeros(s) for s in shapes])


def test_from_flax_params_mappings():
    """A dense_i bias is added to dense_h's; a gate_fn other than sigmoid and mismatched shapes are
    refused."""
    from flax import nnx

    from lstm_jax import from_flax

    rng = np.random.default_rng(14)
    d = {
        "dense_i": {"kernel": rng.normal(size=(3, 16)), "bias": rng.normal(size=16)},
        "dense_h": {"kernel": rng.normal(size=(4, 16)), "bias": rng.normal(size=16)},
    }
    np.testing.assert_allclose(
        from_flax(d)["bias"], d["dense_i"]["bias"] + d["dense_h"]["bias"], rtol=1e-6
    )
    bad = {**d, "dense_i": {**d["dense_i"], "kernel": np.zeros((3, 12))}}
    with pytest.raises(ValueError, match=r"from_flax: inconsistent shapes kernel \(3, 12\)"):
        from_flax(bad)
    cell = nnx.OptimizedLSTMCell(3, 4, gate_fn=jax.nn.hard_sigmoid, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="sigmoid / tanh"):
        from_flax(cell)


def test_from_flax_names_a_dense_i_bias_of_another_shape():
    """A dense_i bias was added to dense_h's before any shape check: a [12] one beside a [16] one was
    NumPy's unnamed "operands could not be broadcast", a [16, 1] one broadcast to [16, 16]."""
    from lstm_jax import from_flax

    for shape in [(12,), (16, 1)]:
        d = {
            "dense_i": {"kernel": np.zeros((3, 16)), "bias": np.zeros(shape)},
            "dense_h": {"kernel": np.zeros((4, 16)), "bias": np.zeros(16)},
        }
        with pytest.raises(
            ValueError, match=r"from_flax: dense_i bias has shape .*, dense_h's \(16,\)"
        ):
            from_flax(d)


def test_keras_conversions_of_the_wrong_container_name_the_fix():
    """`from_keras(params_dict)` was NumPy's "could not convert string to float: 'kernel'";
    `to_keras` of a list or of another layout's dict a bare KeyError / "list indices must be integers"."""
    params = core.init_lstm(jax.random.key(0), 3, 4)
    with pytest.raises(TypeError, match="got a mapping.*already lstm_jax's params"):
        from_keras(params)
    with pytest.raises(TypeError, match="to_keras: params must be the dict.*got list"):
        to_keras([params])
    with pytest.raises(ValueError, match=r"to_keras: params lacks.*from_torch"):
        to_keras({"weight_ih_l0": np.ones((16, 3))})
