"""The Flax NNX modules compute what the functional core computes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lstm_jax import core
from lstm_jax.nn import LSTM, Bidirectional, StackedLSTM


@pytest.fixture
def xs():
    return jax.random.normal(jax.random.key(0), (4, 6, 3))


def test_lstm_module_equals_core(xs):
    layer = LSTM(3, 5, rngs=nnx.Rngs(0))
    mask = jnp.asarray(np.arange(6)[None, :] >= np.array([[0], [2], [4], [5]]))
    out, st = layer(xs, mask=mask)
    ref, st_ref = core.lstm_layer(layer.params_dict(), xs, mask=mask)
    np.testing.assert_allclose(out, ref, atol=1e-6)
    np.testing.assert_allclose(st.c, st_ref.c, atol=1e-6)
    assert out.shape == (4, 6, 5)
    params = nnx.state(layer, nnx.Param)
    assert {k for k in params} == {"kernel", "recurrent_kernel", "bias"}


def test_load_params_and_shape_check(xs):
    layer = LSTM(3, 5, rngs=nnx.Rngs(0))
    p = core.init_lstm(jax.random.key(42), 3, 5)
    layer.load_params(p)
    np.testing.assert_allclose(layer(xs)[0], core.lstm_layer(p, xs)[0], atol=1e-6)
    with pytest.raises(ValueError, match="kernel"):
        layer.load_params(core.init_lstm(jax.random.key(1), 4, 5))


@pytest.mark.parametrize("forget_bias", [0.0, 2.0])
def test_forget_bias_sets_the_forget_gate_slice_of_the_bias(forget_bias):
    """`LSTM(forget_bias=...)` initialises the forget gate's bias (gates i, f, c, o) to it, the other
    gates' to 0 (Keras' `unit_forget_bias`, 1.0 by default; 0.0 turns it off)."""
    bias = np.asarray(LSTM(3, 5, rngs=nnx.Rngs(0), forget_bias=forget_bias).bias[...])
    np.testing.assert_array_equal(bias[5:10], forget_bias)
    np.testing.assert_array_equal(np.delete(bias, np.s_[5:10]), 0.0)


def test_variational_dropout_only_in_training(xs):
    layer = LSTM(3, 5, rngs=nnx.Rngs(0), dropout=0.5, recurrent_dropout=0.5)
    eval_out, _ = layer(xs)
    np.testing.assert_allclose(eval_out, core.lstm_layer(layer.params_dict(), xs)[0], atol=1e-6)
    a, _ = layer(xs, deterministic=False, key=jax.random.key(1))
    b, _ = layer(xs, deterministic=False, key=jax.random.key(1))
    c, _ = layer(xs, deterministic=False, key=jax.random.key(2))
    np.testing.assert_array_equal(a, b)  # same key, same masks
    assert not np.allclose(a, c)
    assert not np.allclose(a, eval_out)
    with pytest.raises(ValueError, match="key"):
        layer(xs, deterministic=False)


def test_recurrent_mask_is_per_sequence_and_constant_over_time(xs):
    """Within a training call the dropped recurrent units are the same at every step."""
    layer = LSTM(3, 5, rngs=nnx.Rngs(0), recurrent_dropout=0.5)
    key = jax.random.key(3)
    _, rec_mask = core.variational_dropout_masks(key, 4, 3, 5, recurrent_dropout=0.5)
    ref, _ = core.lstm_layer(layer.params_dict(), xs, recurrent_dropout_mask=rec_mask)
    out, _ = layer(xs, deterministic=False, key=key)
    np.testing.assert_allclose(out, ref, atol=1e-6)
    rows = {tuple(r) for r in np.asarray(rec_mask)}
    assert len(rows) > 1  # differs across sequences


def test_bidirectional_module(xs):
    bi = Bidirectional(3, 5, rngs=nnx.Rngs(0))
    out, (sf, sb) = bi(xs)
    assert out.shape == (4, 6, 10) and bi.out_features == 10
    of, _ = core.lstm_layer(bi.forward.params_dict(), xs)
    ob, _ = core.lstm_layer(bi.backward.params_dict(), xs, reverse=True)
    np.testing.assert_allclose(out, jnp.concatenate([of, ob], -1), atol=1e-6)
    assert not np.allclose(bi.forward.kernel[...], bi.backward.kernel[...])  # separate parameters
    s = Bidirectional(3, 5, rngs=nnx.Rngs(0), merge="sum")
    assert s(xs)[0].shape == (4, 6, 5) and s.out_features == 5
    with pytest.raises(ValueError, match="merge"):
        Bidirectional(3, 5, rngs=nnx.Rngs(0), merge="max")


def test_a_state_that_is_not_a_pair_is_an_error_not_taken_apart():
    # With a batch of 2 an array [2, H] (or one LSTMState for a Bidirectional) has two items, and was
    # silently split: rows 0 and 1 of h as the state (h, c), broadcast over the batch.
    xs = jax.random.normal(jax.random.key(0), (2, 6, 3))
    h = jax.random.normal(jax.random.key(1), (2, 5))
    state = core.LSTMState(h, -h)
    with pytest.raises(
        ValueError, match=r"must be LSTMState\(h, c\), got ArrayImpl of shape \(2, 5\)"
    ):
        LSTM(3, 5, rngs=nnx.Rngs(0))(xs, initial_state=h)
    with pytest.raises(ValueError, match="pair of LSTMState"):
        Bidirectional(3, 5, rngs=nnx.Rngs(0))(xs, initial_state=state)
    out, _ = Bidirectional(3, 5, rngs=nnx.Rngs(0))(xs, initial_state=(state, state))
    assert out.shape == (2, 6, 10)
    out, _ = LSTM(3, 5, rngs=nnx.Rngs(0))(xs, initial_state=[h, -h])  # a list (h, c) still works
    assert out.shape == (2, 6, 5)


def test_bidirectional_takes_each_directions_state_as_an_lstm_does():
    # The pair check refused what nn.Bidirectional took before it and each LSTM still takes: a direction's
    # state as a list [h, c], or None for its zero state.
    xs = jax.random.normal(jax.random.key(0), (2, 6, 3))
    h = jax.random.normal(jax.random.key(1), (2, 5))
    state, zeros = core.LSTMState(h, -h), core.LSTMState(jnp.zeros_like(h), jnp.zeros_like(h))
    bi = Bidirectional(3, 5, rngs=nnx.Rngs(0))
    want = bi(xs, initial_state=(state, zeros))[0]
    params = (bi.forward.params_dict(), bi.backward.params_dict())
    for pair in (([h, -h], zeros), (state, None), [[h, -h], None]):
        np.testing.assert_allclose(bi(xs, initial_state=pair)[0], want, atol=1e-6)
        np.testing.assert_allclose(
            core.bidirectional(*params, xs, initial_state=pair)[0], want, atol=1e-6
        )
    for wrong in (state, (h, -h), (state, state, state)):
        with pytest.raises(ValueError, match="pair of LSTMState"):
            bi(xs, initial_state=wrong)
        with pytest.raises(ValueError, match="pair of LSTMState"):
            core.bidirectional(*params, xs, initial_state=wrong)


def test_a_stack_needs_one_initial_state_per_layer(xs):
    # Too few states raised a bare IndexError; too many were silently ignored.
    stack = StackedLSTM(3, (5, 4), rngs=nnx.Rngs(0))
    _, states = stack(xs)
    params = [layer.params_dict() for layer in stack.layers]
    for wrong in (states[:1], states + states):
        with pytest.raises(ValueError, match=r"one state per layer \(2\), got"):
            stack(xs, initial_state=wrong)
        with pytest.raises(ValueError, match=r"one LSTMState per layer \(2\), got"):
            core.stacked_lstm(params, xs, initial_states=wrong)
    np.testing.assert_allclose(
        stack(xs, initial_state=states)[0],
        core.stacked_lstm(params, xs, initial_states=states)[0],
        atol=1e-6,
    )


@pytest.mark.parametrize("bidirectional", [False, True])
def test_stacked_module(xs, bidirectional):
    m = StackedLSTM(3, (5, 4), rngs=nnx.Rngs(0), dropout_between=0.3, bidirectional=bidirectional)
    out, states = m(xs)
    assert out.shape == (4, 6, 8 if bidirectional else 4) and len(states) == 2
    if not bidirectional:
        h1, _ = m.layers[0](xs)
        h2, _ = m.layers[1](h1)
        np.testing.assert_allclose(out, h2, atol=1e-6)
    train_out, _ = m(xs, deterministic=False, key=jax.random.key(0))
    assert not np.allclose(train_out, out)


def test_stacked_module_drops_between_layers_not_after_the_last(xs):
    """`dropout_between` acts on the outputs of every layer but the last: in training mode the stack's
    output is the last layer run on the dropped outputs of the one before, undropped itself."""
    m = StackedLSTM(3, (5, 4), rngs=nnx.Rngs(0), dropout_between=0.5)
    out, states = m(xs, deterministic=False, key=jax.random.key(0))
    assert not np.allclose(out, m(xs)[0])  # dropout did act between the layers
    np.testing.assert_allclose(out[:, -1], states[-1].h, atol=1e-6)
    assert np.all(np.asarray(out) != 0.0)  # no output unit of the last layer was dropped
    one = StackedLSTM(3, (5,), rngs=nnx.Rngs(0), dropout_between=0.5)
    np.testing.assert_allclose(
        one(xs, deterministic=False, key=jax.random.key(0))[0], one(xs)[0], atol=1e-6
    )


def test_stacked_dropout_between_without_a_key_names_the_missing_key(xs):
    """Training mode with `dropout_between` and no `key=` says so in the stack's own words (it used to
    be nnx.Dropout's complaint about an `rngs` argument the stack has no way to take)."""
    m = StackedLSTM(3, (5, 4), rngs=nnx.Rngs(0), dropout_between=0.5)
    with pytest.raises(
        ValueError, match="StackedLSTM: dropout_between in training mode needs key="
    ):
        m(xs, deterministic=False)
    assert m(xs)[0].shape == (4, 6, 4)  # evaluation needs no key


def test_a_bidirectional_stack_refuses_merge_none(xs):
    """merge=None would hand the next layer a pair of arrays (an AttributeError deep in the core); the
    stack refuses it when built. The other merge modes stack, sum / ave / mul at width H."""
    with pytest.raises(ValueError, match="StackedLSTM: merge=None"):
        StackedLSTM(3, (5, 4), rngs=nnx.Rngs(0), bidirectional=True, merge=None)
    m = StackedLSTM(3, (5, 4), rngs=nnx.Rngs(0), bidirectional=True, merge="sum")
    assert m(xs)[0].shape == (4, 6, 4) and m.out_features == 4


def _recurrent_masks_drawn(monkeypatch) -> list[np.ndarray]:
    """The recurrent dropout masks `core.variational_dropout_masks` draws from now on, in order."""
    drawn = []
    draw = core.variational_dropout_masks

    def spy(key, *args, **kwargs):
        masks = draw(key, *args, **kwargs)
        drawn.append(np.asarray(masks[1]))
        return masks

    monkeypatch.setattr(core, "variational_dropout_masks", spy)
    return drawn


def test_stacked_layers_draw_their_variational_masks_from_their_own_keys(xs, monkeypatch):
    """In training mode each layer of a stack draws its own dropout masks (one key per layer), so two
    layers of the same width do not drop the same units."""
    drawn = _recurrent_masks_drawn(monkeypatch)
    m = StackedLSTM(3, (16, 16, 16), rngs=nnx.Rngs(0), recurrent_dropout=0.5)
    m(xs, deterministic=False, key=jax.random.key(0))
    assert len(drawn) == 3
    assert not np.array_equal(drawn[0], drawn[1]) and not np.array_equal(drawn[1], drawn[2])


def test_module_jits_through_split_merge(xs):
    m = StackedLSTM(3, (5,), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(m)

    @jax.jit
    def f(state, x):
        return nnx.merge(graphdef, state)(x)[0]

    np.testing.assert_allclose(f(state, xs), m(xs)[0], atol=1e-6)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_stacked_module_takes_token_ids_with_an_embedding(bidirectional):
    """`StackedLSTM(ids, embedding=table)` equals `StackedLSTM(table[ids])`, values and gradients, with
    impl "fused" (the first layer folds the 10-row table: 10 <= 4 * 6 positions)."""
    stack = StackedLSTM(3, (5, 4), rngs=nnx.Rngs(0), bidirectional=bidirectional, impl="fused")
    table = jax.random.normal(jax.random.key(1), (10, 3))
    ids = jax.random.randint(jax.random.key(2), (4, 6), 0, 10)
    mask = jnp.asarray(np.arange(6)[None, :] >= np.array([[0], [2], [4], [5]]))
    graphdef, params = nnx.split(stack, nnx.Param)

    def loss(params, table, use_ids):
        model = nnx.merge(graphdef, params)
        if use_ids:
            out, _ = model(ids, mask=mask, embedding=table)
        else:
            out, _ = model(jnp.take(table, ids, axis=0), mask=mask)
        return jnp.sum(jnp.sin(out)), out

    (va, out_a), ga = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, table, True)
    (vb, out_b), gb = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, table, False)
    assert out_a.shape == (4, 6, 8 if bidirectional else 4)
    np.testing.assert_allclose(out_a, out_b, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_bfloat16_parameters_with_dropout(xs):
    """`param_dtype=jnp.bfloat16` builds on CPU (the orthogonal init) and trains with both dropouts,
    whose masks follow the parameters' dtype."""
    layer = LSTM(xs.shape[-1], 8, rngs=nnx.Rngs(0), param_dtype=jnp.bfloat16, recurrent_dropout=0.3)
    assert layer.recurrent_kernel[...].dtype == jnp.bfloat16
    outputs, state = layer(xs, deterministic=False, key=jax.random.key(1))
    assert outputs.shape == (*xs.shape[:2], 8) and state.h.dtype == jnp.bfloat16
    assert np.isfinite(np.asarray(outputs, np.float32)).all()


def _modules_with_dropout():
    from lstm_jax.models import LanguageModel, TextClassifier

    kw = {"dropout": 0.5, "recurrent_dropout": 0.5}
    ids = jax.random.randint(jax.random.key(5), (4, 6), 0, 11)
    return [
        (LSTM(3, 5, rngs=nnx.Rngs(0), **kw), None),
        (Bidirectional(3, 5, rngs=nnx.Rngs(0), **kw), None),
        (StackedLSTM(3, (5, 4), rngs=nnx.Rngs(0), dropout_between=0.5, **kw), None),
        (LanguageModel(11, (5,), rngs=nnx.Rngs(0), embed_dim=3, dropout=0.5), ids),
        (TextClassifier(11, 3, (5,), rngs=nnx.Rngs(0), embed_dropout=0.5, dropout=0.5), ids),
    ]


@pytest.mark.parametrize("n", range(5))
def test_train_and_eval_switch_dropout_as_nnx_modules_do(xs, n):
    # model.train() used to change nothing: calls stayed deterministic (their default True) and
    # dropped nothing, silently.
    module, ids = _modules_with_dropout()[n]
    inputs = xs if ids is None else ids

    def out(**kw):
        y = module(inputs, **kw)
        return np.asarray(jax.tree.leaves(y)[0])

    built = out()
    module.train()
    with pytest.raises(ValueError, match="key="):
        out()  # training mode, dropout, no key: the error names what is missing
    trained = out(key=jax.random.key(1))
    assert not np.allclose(trained, built)
    np.testing.assert_array_equal(out(key=jax.random.key(1), deterministic=False), trained)
    np.testing.assert_array_equal(out(deterministic=True), built)  # an explicit True still wins
    module.eval()
    np.testing.assert_array_equal(out(), built)
    np.testing.assert_array_equal(out(key=jax.random.key(1)), built)


@pytest.mark.parametrize(
    "make",
    [
        lambda: LSTM(3, 5, rngs=nnx.Rngs(0), dropout=0.2),
        lambda: Bidirectional(3, 5, rngs=nnx.Rngs(0), recurrent_dropout=0.2),
        lambda: StackedLSTM(3, (5, 5), rngs=nnx.Rngs(0), dropout=0.2),
    ],
)
def test_inputs_may_be_a_nested_list_in_training_mode(xs, make):
    """A nested list is taken as `core.lstm_layer` takes it, with dropout too (the masks' batch size was
    read from `xs.shape`: AttributeError)."""
    m = make()
    got, _ = m(np.asarray(xs).tolist(), deterministic=False, key=jax.random.key(0))
    want, _ = m(xs, deterministic=False, key=jax.random.key(0))
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_bad_arguments_are_refused_when_built():
    """Rates outside [0, 1), an empty stack and `reverse=` for a Bidirectional are ValueErrors from the
    constructor in the module's own words (a rate of 1.0 used to surface only at the first training
    step, as the core's error, or as an all-zero dropout; `reverse=` as a TypeError)."""
    for kw in ({"dropout": 1.0}, {"recurrent_dropout": 1.0}, {"dropout": -0.1}):
        name = next(iter(kw))
        with pytest.raises(ValueError, match=rf"LSTM: {name} must be in \[0, 1\), got"):
            LSTM(3, 5, rngs=nnx.Rngs(0), **kw)
    for rate in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"StackedLSTM: dropout_between must be in \[0, 1\)"):
            StackedLSTM(3, (5, 4), rngs=nnx.Rngs(0), dropout_between=rate)
    with pytest.raises(ValueError, match="StackedLSTM: hidden_sizes must name at least one layer"):
        StackedLSTM(3, (), rngs=nnx.Rngs(0))
    for reverse in (True, False):
        with pytest.raises(ValueError, match="Bidirectional: do not pass reverse"):
            Bidirectional(3, 5, rngs=nnx.Rngs(0), reverse=reverse)


def test_training_mode_without_anything_to_drop_needs_no_key(xs):
    """A stack without dropout, or with `dropout_between` but one layer (nothing between), trains without
    `key=` and computes what evaluation does."""
    for m in (
        StackedLSTM(3, (5, 4), rngs=nnx.Rngs(0)),
        StackedLSTM(3, (5,), rngs=nnx.Rngs(0), dropout_between=0.5),
    ):
        np.testing.assert_allclose(m(xs, deterministic=False)[0], m(xs)[0], atol=1e-6)


def test_bidirectional_directions_draw_their_own_masks(xs, monkeypatch):
    """In training mode the forward and the backward layer draw their dropout masks from keys of their
    own, so the two directions do not drop the same units."""
    drawn = _recurrent_masks_drawn(monkeypatch)
    Bidirectional(3, 16, rngs=nnx.Rngs(0), recurrent_dropout=0.5)(
        xs, deterministic=False, key=jax.random.key(0)
    )
    assert len(drawn) == 2 and not np.array_equal(drawn[0], drawn[1])


@pytest.mark.parametrize("bidirectional", [False, True])
def test_every_layer_of_a_stack_skips_the_padding(xs, bidirectional):
    """The mask reaches every layer: two post-padded steps of any content change no layer's final state
    (and no output at a real position) against the same sequences without them. (Post-padding: the
    zeros a masked first layer outputs at pre-padded steps leave a zero state zero anyway.)"""
    m = StackedLSTM(3, (5, 4), rngs=nnx.Rngs(0), bidirectional=bidirectional)
    junk = 5.0 * jax.random.normal(jax.random.key(9), (4, 2, 3))
    mask = jnp.asarray(np.arange(8)[None, :] < 6).repeat(4, 0)
    out_p, states_p = m(jnp.concatenate([xs, junk], 1), mask=mask)
    out, states = m(xs)
    np.testing.assert_allclose(out_p[:, :6], out, atol=1e-5)
    for a, b in zip(jax.tree.leaves(states_p), jax.tree.leaves(states), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_load_params_casts_to_the_parameters_dtype(xs):
    """float32 weights (as `convert.from_keras` gives) load into a bfloat16 layer as bfloat16, without
    JAX's warning about an unsafe implicit cast (a future error)."""
    import warnings

    layer = LSTM(3, 5, rngs=nnx.Rngs(0), param_dtype=jnp.bfloat16)
    p = core.init_lstm(jax.random.key(42), 3, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer.load_params({k: np.asarray(v) for k, v in p.items()})
    for name in ("kernel", "recurrent_kernel", "bias"):
        got = getattr(layer, name)[...]
        assert got.dtype == jnp.bfloat16
        np.testing.assert_array_equal(got, p[name].astype(jnp.bfloat16))


def test_stacked_hidden_sizes_of_one_int_names_the_tuple():
    """`StackedLSTM(3, 4, ...)` (Keras' `LSTM(4)`) was "'int' object is not iterable"."""
    with pytest.raises(
        TypeError, match=r"StackedLSTM: hidden_sizes must be a sequence.*one layer is \(4,\)"
    ):
        StackedLSTM(3, 4, rngs=nnx.Rngs(0))


def test_an_rngs_or_an_int_seed_for_key_names_the_fix():
    """`key=nnx.Rngs(...)` (Flax's habit) was JAX's "unexpected PRNG key type Rngs", and `key=0` (an int
    seed, as `torch.manual_seed` takes) "invalid PRNG key data"."""
    xs = jnp.ones((2, 5, 3))
    layer = LSTM(3, 4, rngs=nnx.Rngs(0), dropout=0.5)
    with pytest.raises(TypeError, match=r"got nnx.Rngs; pass key=rngs.dropout\(\)"):
        layer(xs, deterministic=False, key=nnx.Rngs(0))
    with pytest.raises(TypeError, match=r"key= must be a PRNG key, e.g. jax.random.key\(3\)"):
        layer(xs, deterministic=False, key=3)
    stack = StackedLSTM(3, (4, 4), rngs=nnx.Rngs(0), dropout_between=0.5)
    with pytest.raises(TypeError, match="got nnx.Rngs"):
        stack(xs, deterministic=False, key=nnx.Rngs(0))
    with pytest.raises(TypeError, match="must be a PRNG key"):
        stack(xs, deterministic=False, key=jnp.uint32(3))
    # A legacy raw key (uint32 [2]) is a key.
    assert stack(xs, deterministic=False, key=jax.random.PRNGKey(0))[0].shape == (2, 5, 4)


def test_one_state_for_a_stack_and_a_load_of_torch_weights_name_the_fix():
    """One `LSTMState` for a two-layer stack was split into h for layer 0 and c for layer 1 ("not an
    LSTMState"); `load_params` of another layout's dict was a bare KeyError."""
    xs = jnp.ones((2, 5, 3))
    zeros = jnp.zeros((2, 4))
    stack = StackedLSTM(3, (4, 4), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"one state per layer \(2\), got one LSTMState"):
        stack(xs, initial_state=core.LSTMState(zeros, zeros))
    params = [core.init_lstm(jax.random.key(0), 3, 4), core.init_lstm(jax.random.key(1), 4, 4)]
    with pytest.raises(ValueError, match=r"one LSTMState per layer \(2\), got one LSTMState"):
        core.stacked_lstm(params, xs, initial_states=core.LSTMState(zeros, zeros))
    with pytest.raises(ValueError, match=r"LSTM.load_params: params lacks.*from_torch"):
        LSTM(3, 4, rngs=nnx.Rngs(0)).load_params({"weight_ih_l0": np.ones((16, 3))})
