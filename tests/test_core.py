"""Tests of the functional LSTM core against independent references."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from lstm_jax import core
from lstm_jax.core import LSTMState, init_lstm, lstm_layer, lstm_step

IMPLS = ("scan", "fused", "per_step", "native")
B, T, F, H = 3, 7, 5, 6


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def numpy_step(params, h, c, x):
    """The six LSTM equations, written independently of the library, per gate."""
    k = np.asarray(params["kernel"], np.float64)
    r = np.asarray(params["recurrent_kernel"], np.float64)
    b = np.asarray(params["bias"], np.float64)
    n = r.shape[0]
    u = {g: k[:, j * n : (j + 1) * n] for j, g in enumerate("ifco")}
    w = {g: r[:, j * n : (j + 1) * n] for j, g in enumerate("ifco")}
    bb = {g: b[j * n : (j + 1) * n] for j, g in enumerate("ifco")}
    f = _sigmoid(x @ u["f"] + h @ w["f"] + bb["f"])
    i = _sigmoid(x @ u["i"] + h @ w["i"] + bb["i"])
    c_tilde = np.tanh(x @ u["c"] + h @ w["c"] + bb["c"])
    c_new = f * c + i * c_tilde
    o = _sigmoid(x @ u["o"] + h @ w["o"] + bb["o"])
    h_new = o * np.tanh(c_new)
    return h_new, c_new


def numpy_layer(params, xs, h=None, c=None):
    """Runs `numpy_step` over `xs [T, F]` for a single sequence; returns outputs [T, H] and (h, c)."""
    n = params["recurrent_kernel"].shape[0]
    h = np.zeros(n) if h is None else h
    c = np.zeros(n) if c is None else c
    outs = []
    for x in np.asarray(xs, np.float64):
        h, c = numpy_step(params, h, c, x)
        outs.append(h)
    return np.stack(outs) if outs else np.zeros((0, n)), (h, c)


@pytest.fixture
def params():
    p = init_lstm(jax.random.key(0), F, H)
    # Non-trivial biases so every gate term is exercised.
    return {**p, "bias": p["bias"] + 0.1 * jax.random.normal(jax.random.key(9), p["bias"].shape)}


@pytest.fixture
def xs():
    return jax.random.normal(jax.random.key(1), (B, T, F))


def lengths_mask(lengths, t, padding):
    """Bool mask [B, t] with `lengths` real tokens, padded at the start ("pre") or end ("post")."""
    pos = np.arange(t)[None, :]
    ln = np.asarray(lengths)[:, None]
    return jnp.asarray(pos >= t - ln if padding == "pre" else pos < ln)


# 1. The step against the six equations.
def test_step_matches_numpy_equations(params):
    x = np.random.default_rng(0).normal(size=(B, F)).astype(np.float32)
    h = np.random.default_rng(1).normal(size=(B, H)).astype(np.float32)
    c = np.random.default_rng(2).normal(size=(B, H)).astype(np.float32)
    (h1, c1), out = lstm_step(params, LSTMState(jnp.asarray(h), jnp.asarray(c)), jnp.asarray(x))
    h_ref, c_ref = numpy_step(params, h.astype(np.float64), c.astype(np.float64), x)
    np.testing.assert_allclose(h1, h_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c1, c_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out, h1)


def test_init_matches_keras_defaults():
    p = init_lstm(jax.random.key(3), 10, 8)
    assert p["kernel"].shape == (10, 32)
    assert p["recurrent_kernel"].shape == (8, 32)
    assert p["bias"].shape == (32,)
    np.testing.assert_array_equal(p["bias"], np.r_[np.zeros(8), np.ones(8), np.zeros(16)])
    # Glorot uniform: |w| <= sqrt(6 / (fan_in + fan_out)).
    assert np.abs(p["kernel"]).max() <= np.sqrt(6 / (10 + 32)) + 1e-6
    # Orthogonal recurrent kernel [8, 32]: its rows are orthonormal.
    r = np.asarray(p["recurrent_kernel"])
    np.testing.assert_allclose(r @ r.T, np.eye(8), atol=1e-5)
    p0 = init_lstm(jax.random.key(3), 10, 8, forget_bias=0.0)
    np.testing.assert_array_equal(p0["bias"], np.zeros(32))


# 2. The scanned layer against a Python loop, for every arrangement.
@pytest.mark.parametrize("impl", IMPLS)
def test_layer_matches_python_loop(params, xs, impl):
    h0 = LSTMState(
        jax.random.normal(jax.random.key(4), (B, H)), jax.random.normal(jax.random.key(5), (B, H))
    )
    outs, final = lstm_layer(params, xs, initial_state=h0, impl=impl)
    state, ref = h0, []
    for t in range(T):
        state, h = lstm_step(params, state, xs[:, t])
        ref.append(h)
    np.testing.assert_allclose(outs, jnp.stack(ref, 1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(final.h, state.h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(final.c, state.c, rtol=1e-5, atol=1e-6)
    ref_np, (h_np, c_np) = numpy_layer(params, xs[0], np.asarray(h0.h[0]), np.asarray(h0.c[0]))
    np.testing.assert_allclose(outs[0], ref_np, rtol=1e-4, atol=1e-5)


def test_hoisted_projection_equals_per_step(params, xs):
    a = lstm_layer(params, xs, impl="scan")
    b = lstm_layer(params, xs, impl="per_step")
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


# 3. Masks: every example of a padded batch equals that example run alone.
@pytest.mark.parametrize(
    "impl,padding,reverse", list(itertools.product(IMPLS, ("pre", "post"), (False, True)))
)
def test_padded_batch_matches_each_example_alone(params, xs, impl, padding, reverse):
    lengths = [T, 4, 1]
    mask = lengths_mask(lengths, T, padding)
    outs, final = lstm_layer(params, xs, mask=mask, reverse=reverse, impl=impl)
    for n, ln in enumerate(lengths):
        real = np.nonzero(np.asarray(mask[n]))[0]
        alone_out, alone = lstm_layer(params, xs[n : n + 1, real], reverse=reverse, impl=impl)
        np.testing.assert_allclose(final.h[n], alone.h[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(final.c[n], alone.c[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(outs[n, real], alone_out[0], rtol=1e-5, atol=1e-6)
        pad = np.nonzero(~np.asarray(mask[n]))[0]
        np.testing.assert_array_equal(outs[n, pad], 0.0)
        assert len(real) == ln


@pytest.mark.parametrize(
    "impl,reverse,in_kernel",
    [(i, r, False) for i in IMPLS for r in (False, True)] + [("native", False, True)],
)
def test_nan_and_inf_at_padded_inputs_do_not_reach_outputs_or_gradients(
    params, xs, impl, reverse, in_kernel, monkeypatch
):
    """Padded positions may hold garbage (NaN, inf): the outputs, final state and every gradient equal
    those of the same batch with zeros there, and the padded inputs' gradient is zero."""
    if impl == "native":  # either native form: the kernel's per-step projection or XLA's
        fraction = 1e9 if in_kernel else 0.0
        monkeypatch.setattr(core, "NATIVE_INPUT_PROJECTION_MAX_L2_FRACTION", fraction)
    mask = lengths_mask([T, 4, 2], T, "post").at[1, 0].set(False)  # a hole as well
    pad = ~np.asarray(mask)
    garbage = np.where(np.arange(F) % 2 == 0, np.nan, np.inf).astype(np.float32)
    dirty = jnp.where(pad[..., None], garbage, xs)
    clean = jnp.where(pad[..., None], 0.0, xs)
    h0 = LSTMState(jnp.full((B, H), 0.2), jnp.full((B, H), -0.3))
    dmask = jnp.asarray(np.random.default_rng(0).uniform(0.5, 1.5, (B, F)), jnp.float32)

    def loss(p, x, st):
        outs, fin = lstm_layer(
            p, x, mask=mask, initial_state=st, reverse=reverse, impl=impl, input_dropout_mask=dmask
        )
        return jnp.sum(jnp.sin(outs)) + jnp.sum(fin.h**2) + jnp.sum(fin.c), (outs, fin)

    grad = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)
    g_dirty, aux_dirty = grad(params, dirty, h0)
    g_clean, aux_clean = grad(params, clean, h0)
    dirty_leaves, clean_leaves = (
        jax.tree.leaves((g_dirty, aux_dirty)),
        jax.tree.leaves((g_clean, aux_clean)),
    )
    for a, b in zip(dirty_leaves, clean_leaves, strict=True):
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(g_dirty[1][pad], 0.0)


@pytest.mark.parametrize(
    "impl,reverse,in_kernel",
    [(i, r, False) for i in IMPLS for r in (False, True)] + [("native", True, True)],
)
def test_a_nan_cotangent_at_padded_outputs_does_not_reach_the_gradients(
    params, xs, impl, reverse, in_kernel, monkeypatch
):
    """A padded output is a constant zero, so its cotangent (here NaN and inf) is dropped by every impl,
    as autodiff of the reference scan's selection drops it: the custom VJPs used to multiply it by the
    mask (0 * NaN = NaN)."""
    if impl == "native":
        fraction = 1e9 if in_kernel else 0.0
        monkeypatch.setattr(core, "NATIVE_INPUT_PROJECTION_MAX_L2_FRACTION", fraction)
    mask = lengths_mask([T, 4, 2], T, "pre").at[0, 3].set(False)
    pad = ~np.asarray(mask)
    rng = np.random.default_rng(0)
    d_outs = rng.normal(size=(B, T, H)).astype(np.float32)
    d_outs[pad] = np.where(np.arange(H) % 2 == 0, np.nan, np.inf)
    d_fin = LSTMState(*(jnp.asarray(rng.normal(size=(B, H)), jnp.float32) for _ in range(2)))
    h0 = LSTMState(jnp.full((B, H), 0.2), jnp.full((B, H), -0.3))

    def grads(which):
        def f(p, x, st):
            return lstm_layer(p, x, mask=mask, initial_state=st, reverse=reverse, impl=which)

        _, vjp = jax.vjp(f, params, xs, h0)
        return vjp((jnp.asarray(d_outs), d_fin))

    got, want = grads(impl), grads("scan")
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_a_mask_may_be_a_list_or_a_numpy_array(params, xs, impl):
    mask = lengths_mask([T, 4, 1], T, "post")
    want = lstm_layer(params, xs, mask=mask, impl=impl)
    for like in (np.asarray(mask).tolist(), np.asarray(mask), np.asarray(mask, np.int32).tolist()):
        got = lstm_layer(params, xs, mask=like, impl=impl)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(a, b)
    out, _ = core.bidirectional(params, params, xs, mask=np.asarray(mask).tolist(), impl=impl)
    np.testing.assert_array_equal(out[~np.asarray(mask)], 0.0)


@pytest.mark.parametrize("impl", IMPLS)
def test_inputs_may_be_a_list_or_a_numpy_array(params, xs, impl):
    """`xs` as nested lists (what a notebook user types) or NumPy: the same as the jax array, not an
    AttributeError on `.ndim`; token ids with `embedding=` (a list table too)."""
    want = lstm_layer(params, xs, impl=impl)
    for like in (np.asarray(xs).tolist(), np.asarray(xs)):
        got = lstm_layer(params, like, impl=impl)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(a, b)
    table = np.asarray(jax.random.normal(jax.random.key(1), (7, xs.shape[-1])))
    ids = [[1, 2, 3] * 2, [6, 0, 5] * 2]
    want_ids = lstm_layer(params, jnp.asarray(ids), embedding=table, impl=impl)
    for table_like in (table, table.tolist()):
        got_ids = lstm_layer(params, ids, embedding=table_like, impl=impl)
        for a, b in zip(jax.tree.leaves(got_ids), jax.tree.leaves(want_ids), strict=True):
            np.testing.assert_array_equal(a, b)


def test_reverse_is_flipped_forward(params, xs):
    out_r, st_r = lstm_layer(params, xs, reverse=True)
    out_f, st_f = lstm_layer(params, xs[:, ::-1])
    np.testing.assert_allclose(out_r, out_f[:, ::-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(st_r.h, st_f.h, rtol=1e-5, atol=1e-6)


# 4. Gradients against finite differences.
@pytest.mark.parametrize("impl,masked", list(itertools.product(IMPLS, (False, True))))
def test_gradients_match_finite_differences(impl, masked):
    p = init_lstm(jax.random.key(0), 3, 4)
    p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    x = np.random.default_rng(0).normal(size=(2, 5, 3))
    mask = lengths_mask([5, 3], 5, "pre") if masked else None
    h0 = LSTMState(np.full((2, 4), 0.1), np.full((2, 4), -0.2))
    rmask = np.array([[1.0, 0.0, 2.0, 1.0], [2.0, 2.0, 0.0, 1.0]])

    def f(params, x, h, c):
        outs, st = lstm_layer(
            params,
            x,
            mask=mask,
            initial_state=LSTMState(h, c),
            recurrent_dropout_mask=jnp.asarray(rmask),
            impl=impl,
        )
        return jnp.sum(jnp.sin(outs)) + jnp.sum(st.h * st.c) + jnp.sum(st.c)

    with jax.enable_x64(True):
        check_grads(f, (p64, x, h0.h, h0.c), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


# 5. unroll and remat do not change results (values and gradients).
@pytest.mark.parametrize(
    "impl,unroll,remat",
    list(itertools.product(("scan", "fused", "per_step", "native"), (1, 2, 4, 8), (False, True))),
)
def test_unroll_and_remat_agree(params, xs, impl, unroll, remat):
    mask = lengths_mask([T, 5, 2], T, "pre")

    def loss(p, x):
        outs, st = lstm_layer(p, x, mask=mask, unroll=unroll, remat=remat, impl=impl)
        return jnp.sum(outs**2) + jnp.sum(st.c)

    def ref(p, x):
        outs, st = lstm_layer(p, x, mask=mask, impl="scan")
        return jnp.sum(outs**2) + jnp.sum(st.c)

    v, g = jax.value_and_grad(loss, argnums=(0, 1))(params, xs)
    v0, g0 = jax.value_and_grad(ref, argnums=(0, 1))(params, xs)
    np.testing.assert_allclose(v, v0, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g0), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(
    jax.default_backend() != "cpu", reason="XLA:CPU's memory analysis, CPU impl choice"
)
@pytest.mark.parametrize("impl", ["auto", "native", "per_step"])
def test_remat_saves_memory_on_a_long_sequence(impl):
    # remat=True used to run "fused" (auto, native) or "scan" (per_step), whose backward passes keep
    # [T, B, 4H] arrays with or without remat: more temporaries than remat=False (auto: 228 MB against
    # native's 167 at B8 T5000 H128). Now per_step with a checkpointed step: only h, c and x per step.
    b, t, f, h = 8, 2000, 16, 64
    p = init_lstm(jax.random.key(0), f, h)
    x = jnp.zeros((b, t, f))
    mask = jnp.ones((b, t), bool)

    def temp_bytes(remat):
        def loss(p, x):
            outs, st = lstm_layer(p, x, mask=mask, remat=remat, impl=impl)
            return jnp.sum(outs**2) + jnp.sum(st.c)

        compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(p, x).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    with_remat, without = temp_bytes(True), temp_bytes(False)
    assert with_remat < 0.6 * without, (with_remat, without)


@pytest.mark.parametrize("impl", IMPLS)
def test_unroll_may_be_a_numpy_integer(params, xs, impl):
    # np.int64(2) was refused with "unroll must be a positive int, got np.int64(2)".
    expected, _ = lstm_layer(params, xs, unroll=2, impl=impl)
    outs, _ = lstm_layer(params, xs, unroll=np.int64(2), impl=impl)
    np.testing.assert_allclose(outs, expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="unroll must be a positive int"):
        lstm_layer(params, xs, unroll=np.int32(0), impl=impl)


def test_an_initial_state_with_a_none_half_names_it(params, xs):
    # LSTMState(h, None) raised JAX's "None is not a valid value for jnp.array".
    h = jnp.zeros((xs.shape[0], H))
    with pytest.raises(ValueError, match=r"initial_state\.c is None"):
        lstm_layer(params, xs, initial_state=LSTMState(h, None))
    with pytest.raises(ValueError, match=r"initial_state\.h is None"):
        lstm_layer(params, xs, initial_state=LSTMState(None, h))


def test_misnamed_impls_malformed_states_and_empty_sizes_are_clear_errors(params, xs):
    """A misspelt impl is refused (not run as "scan"), an initial state that is not a pair `(h, c)` is
    refused (a `[2, batch, H]` array's rows are not taken for h and c), and a layer of no units or no
    inputs cannot be initialised."""
    with pytest.raises(ValueError, match="unknown impl 'fuzed'"):
        lstm_layer(params, xs, impl="fuzed")
    h = jnp.zeros((B, H))
    with pytest.raises(
        ValueError, match=r"initial_state must be LSTMState\(h, c\), got \w+ of shape"
    ):
        lstm_layer(params, xs, initial_state=jnp.stack([h, h]))
    with pytest.raises(ValueError, match=r"initial_state must be LSTMState\(h, c\), got 3 items"):
        lstm_layer(params, xs, initial_state=(h, h, h))
    for sizes in ((0, H), (F, 0)):
        with pytest.raises(ValueError, match="must be positive"):
            init_lstm(jax.random.key(0), *sizes)


def test_fused_gradients_match_scan_with_dropout_masks_and_state(params, xs):
    """The custom VJP against autodiff, for every differentiable input."""
    in_mask, rec_mask = core.variational_dropout_masks(
        jax.random.key(2), B, F, H, dropout=0.3, recurrent_dropout=0.4
    )
    mask = lengths_mask([T, 3, 5], T, "post")
    h0 = LSTMState(jnp.full((B, H), 0.3), jnp.full((B, H), -0.1))

    def loss(p, x, st, impl, reverse):
        outs, fin = lstm_layer(
            p,
            x,
            mask=mask,
            initial_state=st,
            input_dropout_mask=in_mask,
            recurrent_dropout_mask=rec_mask,
            reverse=reverse,
            impl=impl,
        )
        return jnp.sum(jnp.tanh(outs) * 1.3) + jnp.sum(fin.h**2) + jnp.sum(fin.c)

    for impl, reverse in itertools.product(("fused", "native"), (False, True)):
        ga = jax.grad(loss, argnums=(0, 1, 2))(params, xs, h0, impl, reverse)
        gb = jax.grad(loss, argnums=(0, 1, 2))(params, xs, h0, "scan", reverse)
        for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", ["fused", "native"])
def test_the_recurrent_dropout_masks_gradient_equals_autodiffs(params, xs, impl):
    """A recurrent dropout mask is a differentiable input (a learned per-unit gate, say): the custom VJPs'
    gradient for it, `[batch, H]` or broadcast from `[H]`, equals autodiff's ("scan")."""
    mask = lengths_mask([T, 4, 2], T, "pre")
    rng = np.random.default_rng(0)

    def loss(r, which, reverse):
        outs, fin = lstm_layer(
            params, xs, mask=mask, recurrent_dropout_mask=r, reverse=reverse, impl=which
        )
        return jnp.sum(jnp.sin(outs)) + jnp.sum(fin.h * fin.c)

    for shape, reverse in (((B, H), False), ((H,), True)):
        r = jnp.asarray(rng.uniform(0.5, 1.5, shape), jnp.float32)
        got, want = jax.grad(loss)(r, impl, reverse), jax.grad(loss)(r, "scan", reverse)
        assert got.shape == shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_every_impl_at_full_xla_optimization(params, xs, impl, full_xla_optimization):
    """The suite compiles at LLVM -O0 (conftest); users' programs get XLA's full optimisation. Here each
    impl, compiled fresh at full optimisation, against the float64 equations (values, masked and
    reversed) and the float64 per-step impl (gradients of every input)."""
    assert not jax.config.read("jax_disable_most_optimizations")
    mask = lengths_mask([T, 4, 1], T, "pre")
    h0 = LSTMState(jnp.full((B, H), 0.2), jnp.full((B, H), -0.3))

    def run(p, x, h, c, impl):
        return lstm_layer(p, x, mask=mask, initial_state=LSTMState(h, c), reverse=True, impl=impl)

    def loss(p, x, h, c, impl):
        outs, st = run(p, x, h, c, impl)
        return jnp.sum(jnp.sin(outs)) + jnp.sum(st.h * st.c) + jnp.sum(st.c)

    outs, st = jax.jit(functools.partial(run, impl=impl))(params, xs, h0.h, h0.c)
    for n in range(B):
        real = np.nonzero(np.asarray(mask[n]))[0]
        ref, (h_ref, c_ref) = numpy_layer(
            params, np.asarray(xs[n, real])[::-1], np.asarray(h0.h[n]), np.asarray(h0.c[n])
        )
        np.testing.assert_allclose(outs[n, real], ref[::-1], rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(outs[n, np.nonzero(~np.asarray(mask[n]))[0]], 0.0)
        np.testing.assert_allclose(st.h[n], h_ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(st.c[n], c_ref, rtol=1e-4, atol=1e-5)

    args = (params, xs, h0.h, h0.c)
    got = jax.jit(jax.grad(functools.partial(loss, impl=impl), argnums=(0, 1, 2, 3)))(*args)
    with jax.enable_x64(True):
        args64 = jax.tree.map(lambda a: np.asarray(a, np.float64), args)
        want = jax.jit(jax.grad(functools.partial(loss, impl="per_step"), argnums=(0, 1, 2, 3)))(
            *args64
        )
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert a.dtype == jnp.float32
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_jit_and_auto_impl(params, xs):
    f = jax.jit(lambda p, x: lstm_layer(p, x)[0])
    np.testing.assert_allclose(f(params, xs), lstm_layer(params, xs, impl="scan")[0], atol=1e-6)


def test_bfloat16_compute_is_close_and_state_stays_float32(params, xs):
    outs, st = lstm_layer(params, xs, compute_dtype=jnp.bfloat16)
    ref, _ = lstm_layer(params, xs)
    assert st.h.dtype == jnp.float32 and st.c.dtype == jnp.float32
    np.testing.assert_allclose(outs, ref, atol=3e-2)
    assert not np.allclose(outs, ref, atol=1e-7)  # it really ran in bfloat16


def test_bfloat16_compute_covers_the_recurrent_and_folded_matmuls(params, xs):
    """`compute_dtype` runs every matmul in it: the recurrent `h @ recurrent_kernel` (alone here, with a
    zero input kernel) and a folded embedding's `table @ kernel` (alone, with a zero recurrent kernel)."""
    recurrent_only = {**params, "kernel": jnp.zeros_like(params["kernel"])}
    lo, _ = lstm_layer(recurrent_only, xs, compute_dtype=jnp.bfloat16)
    ref, _ = lstm_layer(recurrent_only, xs, impl="scan")
    np.testing.assert_allclose(lo, ref, atol=3e-2)
    assert not np.allclose(lo, ref, rtol=0, atol=1e-6)
    input_only = {**params, "recurrent_kernel": jnp.zeros_like(params["recurrent_kernel"])}
    table = jax.random.normal(jax.random.key(5), (9, F))
    ids = jax.random.randint(jax.random.key(6), (B, T), 0, 9)
    lo, _ = lstm_layer(input_only, ids, embedding=table, compute_dtype=jnp.bfloat16)
    ref, _ = lstm_layer(input_only, ids, embedding=table, impl="scan")
    np.testing.assert_allclose(lo, ref, atol=3e-2)
    assert not np.allclose(lo, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("impl", (*IMPLS, "auto"))
def test_bfloat16_parameters_take_float32_inputs_and_dropout_masks(params, xs, impl):
    """bfloat16 parameters with float32 inputs, a float32 recurrent dropout mask (as
    `variational_dropout_masks` returns by default) and a float32 initial state: every impl runs them as
    "scan" does (per_step and auto, which picks per_step for small bfloat16 layers, used to fail on the
    scan carry's dtype; fused and native on the mask's)."""
    p16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    _, rmask = core.variational_dropout_masks(jax.random.key(2), B, F, H, recurrent_dropout=0.3)
    assert rmask.dtype == jnp.float32
    state = LSTMState(jnp.full((B, H), 0.1), jnp.full((B, H), -0.2))
    for kw in ({}, {"recurrent_dropout_mask": rmask}, {"initial_state": state}):
        ref, ref_state = lstm_layer(p16, xs, impl="scan", **kw)
        out, state = lstm_layer(p16, xs, impl=impl, **kw)
        assert out.dtype == state.h.dtype == jnp.bfloat16
        np.testing.assert_allclose(
            np.asarray(out, np.float32), np.asarray(ref, np.float32), atol=2e-2
        )
        np.testing.assert_allclose(
            np.asarray(state.c, np.float32), np.asarray(ref_state.c, np.float32), atol=2e-2
        )


@pytest.mark.parametrize("impl", IMPLS)
def test_an_input_dropout_mask_keeps_its_scale_on_integer_inputs(params, impl):
    """Integer inputs (one-hot ids, counts) with an input dropout mask run as the same inputs in float32:
    the mask's kept entries 1 / keep used to be cast to the inputs' int dtype (1 / 0.7 -> 1)."""
    ids = jax.random.randint(jax.random.key(3), (B, T, F), 0, 3)
    dmask, _ = core.variational_dropout_masks(jax.random.key(4), B, F, H, dropout=0.3)
    out, state = lstm_layer(params, ids, input_dropout_mask=dmask, impl=impl)
    ref, ref_state = lstm_layer(
        params, ids.astype(jnp.float32), input_dropout_mask=dmask, impl="scan"
    )
    np.testing.assert_allclose(out, ref, atol=1e-6)
    np.testing.assert_allclose(state.c, ref_state.c, atol=1e-6)


def test_bfloat16_init_works_on_cpu():
    """The orthogonal recurrent kernel is drawn in float32 and cast (XLA:CPU has no bfloat16 QR)."""
    p = init_lstm(jax.random.key(0), F, H, dtype=jnp.bfloat16)
    assert {a.dtype for a in p.values()} == {jnp.dtype(jnp.bfloat16)}
    r = np.asarray(p["recurrent_kernel"], np.float32)
    np.testing.assert_allclose(r @ r.T, np.eye(H), atol=2e-2)  # orthonormal rows, to bf16 rounding


@pytest.mark.parametrize(
    "impl,remat", [(i, False) for i in IMPLS] + [("fused", True), ("native", True)]
)
def test_empty_sequences_return_the_initial_state(params, impl, remat):
    h0 = jax.random.normal(jax.random.key(3), (B, H))
    c0 = jax.random.normal(jax.random.key(4), (B, H))
    outs, state = lstm_layer(
        params, jnp.zeros((B, 0, F)), initial_state=LSTMState(h0, c0), impl=impl, remat=remat
    )
    assert outs.shape == (B, 0, H)
    np.testing.assert_array_equal(state.h, h0)
    np.testing.assert_array_equal(state.c, c0)


@pytest.mark.parametrize("impl", (*IMPLS, "auto"))
@pytest.mark.parametrize("embed", [False, True])
def test_an_empty_batch_has_zero_gradients(params, impl, embed):
    """A batch of no sequences: empty outputs and zero gradients with every impl ("fused" used to fail
    reshaping its 0-row projection gradient, "native" to kill the process with SIGFPE)."""
    table = jnp.ones((4, F))
    xs = jnp.zeros((0, T), jnp.int32) if embed else jnp.zeros((0, T, F))

    def loss(p):
        outs, state = lstm_layer(p, xs, impl=impl, embedding=table if embed else None)
        assert outs.shape == (0, T, H) and state.h.shape == (0, H)
        return outs.sum() + state.c.sum()

    grads = jax.grad(loss)(params)
    for name, g in grads.items():
        np.testing.assert_array_equal(g, np.zeros_like(params[name]))


@pytest.mark.parametrize("impl,in_kernel", [("fused", False), ("native", False), ("native", True)])
@pytest.mark.parametrize("wrt", ["kernel", "xs", "recurrent_kernel"])
def test_hessians_of_the_reverse_mode_impls_match_scan(monkeypatch, impl, in_kernel, wrt):
    """Forward-over-reverse (`jax.hessian`) through the custom VJPs, the input projection's included
    (its forward pass used to call the custom_vjp function itself, which forward mode cannot enter)."""
    if impl == "native" and core.impl_unavailable_reason("native"):
        pytest.skip(core.impl_unavailable_reason("native"))
    monkeypatch.setattr(core, "NATIVE_INPUT_PROJECTION_MAX_L2_FRACTION", 1.0 if in_kernel else 0.0)
    p = init_lstm(jax.random.key(0), 2, 3)
    x = jax.random.normal(jax.random.key(1), (2, 4, 2))

    def loss(which):
        def f(a):
            q, inputs = (p, a) if wrt == "xs" else ({**p, wrt: a}, x)
            return jnp.sum(jnp.sin(lstm_layer(q, inputs, impl=which)[0]))

        return f

    arg = x if wrt == "xs" else p[wrt]
    np.testing.assert_allclose(
        jax.hessian(loss(impl))(arg), jax.hessian(loss("scan"))(arg), rtol=1e-4, atol=1e-6
    )


def test_return_gates_reconstructs_the_outputs(params, xs):
    mask = lengths_mask([T, 4, 2], T, "pre")
    outs, st, gates = lstm_layer(params, xs, mask=mask, return_gates=True)
    ref, st_ref = lstm_layer(params, xs, mask=mask)
    np.testing.assert_allclose(outs, ref, atol=1e-6)
    np.testing.assert_allclose(st.c, st_ref.c, atol=1e-6)
    for g in gates:
        assert g.shape == (B, T, H)
    m = np.asarray(mask)[..., None]
    np.testing.assert_allclose(np.where(m, gates.o * np.tanh(gates.c), 0.0), outs, atol=1e-6)
    assert float(jnp.min(gates.f)) >= 0.0 and float(jnp.max(gates.f)) <= 1.0
    np.testing.assert_allclose(gates.c[:, -1], st.c, atol=1e-6)
    # Padded steps hold zeros in the four gates (and the carried cell state in c), as `Gates` says.
    for g in (gates.i, gates.f, gates.g, gates.o):
        np.testing.assert_array_equal(np.where(m, 0.0, g), 0.0)
    assert np.all(np.asarray(gates.f)[np.broadcast_to(m, gates.f.shape)] > 0.0)
    np.testing.assert_allclose(gates.c[1, : T - 4], 0.0)  # the zero initial state, carried


def test_bad_shapes_raise_clear_errors(params):
    with pytest.raises(ValueError, match="features"):
        lstm_layer(params, jnp.ones((2, 3, F + 1)))
    with pytest.raises(ValueError, match=r"\[batch, time, features\]"):
        lstm_layer(params, jnp.ones((3, F)))
    with pytest.raises(ValueError, match="mask"):
        lstm_layer(params, jnp.ones((2, 3, F)), mask=jnp.ones((2, 4), bool))
    with pytest.raises(ValueError, match="unroll"):
        lstm_layer(params, jnp.ones((2, 3, F)), unroll=0)


@pytest.mark.parametrize("impl", (*IMPLS, "auto"))
def test_a_bias_or_recurrent_kernel_of_the_wrong_size_is_an_error_with_every_impl(params, impl):
    """The native kernel reads 4H bias floats and an [H, 4H] recurrent kernel whatever their sizes: a [2H]
    bias used to be read past its end and an [8H] one cut to its first 4H, silently ("auto" on CPU)."""
    xs = jnp.ones((2, 3, F))
    for bias in (jnp.zeros(2 * H), jnp.zeros(8 * H), jnp.zeros((1, 4 * H))):
        with pytest.raises(ValueError, match=r"bias must be \[4H\]"):
            lstm_layer({**params, "bias": bias}, xs, impl=impl)
    for rk in (jnp.zeros((H, 8 * H)), jnp.zeros((H, 2 * H))):
        with pytest.raises(ValueError, match=r"recurrent_kernel must be \[H, 4H\]"):
            lstm_layer({**params, "recurrent_kernel": rk}, xs, impl=impl)


@pytest.mark.parametrize("impl", (*IMPLS, "auto"))
@pytest.mark.parametrize(
    "name,dtype", [("bias", "float64"), ("kernel", "float64"), ("bias", "bfloat16")]
)
def test_parameters_of_mixed_dtypes_run_in_the_recurrent_kernels_dtype(
    params, xs, impl, name, dtype
):
    """A bias or kernel in another dtype than the recurrent kernel (float64 NumPy weights under x64) is
    cast to the recurrent kernel's: the numbers of all-float32 parameters, each gradient in its own
    parameter's dtype. "fused", "native" and "per_step" used to fail (dtype errors in their scans, an FFI
    operand error from the native kernel, also for a bfloat16 bias)."""

    def loss(p):
        outs, st = lstm_layer(p, xs, mask=lengths_mask([T, 5, 2], T, "pre"), impl=impl)
        return jnp.sum(outs**2) + jnp.sum(st.c)

    with jax.enable_x64(True):
        mixed = {**params, name: params[name].astype(dtype)}
        ref = {**params, name: mixed[name].astype(jnp.float32)}
        v, g = jax.value_and_grad(loss)(mixed)
        v0, g0 = jax.value_and_grad(loss)(ref)
    assert v.dtype == jnp.float32 and g[name].dtype == jnp.dtype(dtype)
    np.testing.assert_allclose(v, v0, rtol=1e-5)
    for k in g:
        np.testing.assert_allclose(
            np.asarray(g[k], np.float32),
            g0[k],
            rtol=1e-4,
            atol=1e-5 if dtype != "bfloat16" else 1e-2,
        )


@pytest.mark.parametrize("impl", IMPLS)
def test_row_states_and_masks_broadcast_and_other_shapes_are_errors(params, xs, impl):
    """A `[H]` or `[1, H]` initial state / recurrent dropout mask is broadcast over the batch by every
    impl (the native kernel once read past a `[1, H]` buffer); other shapes are one ValueError."""
    row = jax.random.normal(jax.random.key(5), (1, H))
    full = jnp.broadcast_to(row, (B, H))
    rmask = jnp.asarray(np.random.default_rng(0).integers(0, 2, (1, H)) * 2.0, jnp.float32)
    mask = lengths_mask([T, 4, 2], T, "post")
    want, st = lstm_layer(
        params,
        xs,
        mask=mask,
        initial_state=LSTMState(full, -full),
        recurrent_dropout_mask=jnp.broadcast_to(rmask, (B, H)),
        impl=impl,
    )
    for shape in ((1, H), (H,)):
        got, gst = lstm_layer(
            params,
            xs,
            mask=mask,
            initial_state=LSTMState(row.reshape(shape), -row.reshape(shape)),
            recurrent_dropout_mask=rmask.reshape(shape),
            impl=impl,
        )
        np.testing.assert_allclose(got, want, atol=1e-6)
        np.testing.assert_allclose(gst.c, st.c, atol=1e-6)
    # The gradient of a learned [H] initial state sums over the batch.
    g = jax.grad(
        lambda h: lstm_layer(params, xs, initial_state=LSTMState(h, h), impl=impl)[0].sum()
    )
    g_full = jax.grad(
        lambda h: lstm_layer(params, xs, initial_state=LSTMState(h, h), impl=impl)[0].sum()
    )
    np.testing.assert_allclose(g(row[0]), g_full(full).sum(0), atol=1e-5)
    bad = jnp.zeros((2, H))
    with pytest.raises(ValueError, match=r"initial_state\.h must be \[batch, 6\] = \(3, 6\)"):
        lstm_layer(params, xs, initial_state=LSTMState(bad, jnp.zeros((B, H))), impl=impl)
    with pytest.raises(ValueError, match=r"recurrent_dropout_mask must be \[batch, 6\]"):
        lstm_layer(params, xs, recurrent_dropout_mask=jnp.ones((B, H + 1)), impl=impl)
    with pytest.raises(ValueError, match=r"input_dropout_mask must be \[batch, 5\]"):
        lstm_layer(params, xs, input_dropout_mask=jnp.ones((2, F)), impl=impl)


def test_bidirectional_takes_one_initial_state_per_direction(params, xs):
    pb = init_lstm(jax.random.key(7), F, H)
    sf = LSTMState(*jax.random.normal(jax.random.key(3), (2, B, H)))
    sb = LSTMState(*jax.random.normal(jax.random.key(4), (2, B, H)))
    out, _ = core.bidirectional(params, pb, xs, initial_state=(sf, sb))
    of, _ = lstm_layer(params, xs, initial_state=sf)
    ob, _ = lstm_layer(pb, xs, initial_state=sb, reverse=True)
    np.testing.assert_allclose(out, jnp.concatenate([of, ob], -1), atol=1e-6)
    with pytest.raises(ValueError, match=r"\(forward_state, backward_state\)"):
        core.bidirectional(params, pb, xs, initial_state=sf)
    with pytest.raises(ValueError, match=r"\(forward_state, backward_state\)"):
        core.bidirectional(params, pb, xs, initial_state=(sf, sb, sb))  # not the first two


def test_bidirectional_takes_none_for_a_directions_zero_state_and_refuses_reverse(params, xs):
    """`initial_state=(None, backward_state)`: zeros for the forward direction (as documented), not a
    ValueError; `reverse=` is refused by name (it was a TypeError about a repeated keyword)."""
    pb = init_lstm(jax.random.key(7), F, H)
    sb = LSTMState(*jax.random.normal(jax.random.key(4), (2, B, H)))
    out, _ = core.bidirectional(params, pb, xs, initial_state=(None, sb))
    of, _ = lstm_layer(params, xs)
    ob, _ = lstm_layer(pb, xs, initial_state=sb, reverse=True)
    np.testing.assert_allclose(out, jnp.concatenate([of, ob], -1), atol=1e-6)
    with pytest.raises(ValueError, match="bidirectional: do not pass reverse"):
        core.bidirectional(params, pb, xs, reverse=True)


# 7. Bidirectional, stacked, dropout.
@pytest.mark.parametrize("merge", ["concat", "sum", "ave", "mul", None])
def test_bidirectional_merges(params, xs, merge):
    pb = init_lstm(jax.random.key(7), F, H)
    mask = lengths_mask([T, 5, 3], T, "post")
    out, (sf, sb) = core.bidirectional(params, pb, xs, mask=mask, merge=merge)
    of, stf = lstm_layer(params, xs, mask=mask)
    ob, stb = lstm_layer(pb, xs, mask=mask, reverse=True)
    expected = {
        "concat": jnp.concatenate([of, ob], -1),
        "sum": of + ob,
        "ave": (of + ob) / 2,
        "mul": of * ob,
        None: (of, ob),
    }[merge]
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(sb.h, stb.h, atol=1e-6)
    np.testing.assert_allclose(sf.h, stf.h, atol=1e-6)


def test_the_wrappers_refuse_return_gates_with_a_clear_error(params, xs):
    """`bidirectional` and `stacked_lstm` pass their other keywords to `lstm_layer`; return_gates made it
    return three values, which they unpacked into two ("too many values to unpack")."""
    with pytest.raises(ValueError, match="bidirectional: return_gates"):
        core.bidirectional(params, params, xs, return_gates=True)
    with pytest.raises(ValueError, match="stacked_lstm: return_gates"):
        core.stacked_lstm([params], xs, return_gates=True)
    core.bidirectional(params, params, xs, return_gates=False)  # False is the default: accepted


def test_stacked_matches_layer_by_layer(xs):
    ps = core.init_stacked_lstm(jax.random.key(0), F, [H, 4])
    out, states = core.stacked_lstm(ps, xs)
    h1, s1 = lstm_layer(ps[0], xs)
    h2, s2 = lstm_layer(ps[1], h1)
    assert out.shape == (B, T, 4) and len(states) == 2
    np.testing.assert_allclose(out, h2, atol=1e-6)
    np.testing.assert_allclose(states[0].c, s1.c, atol=1e-6)
    # Dropout between layers is active only in training mode and needs a key.
    out_d, _ = core.stacked_lstm(
        ps, xs, dropout_rate=0.5, key=jax.random.key(1), deterministic=False
    )
    assert not np.allclose(out_d, out)
    out_e, _ = core.stacked_lstm(ps, xs, dropout_rate=0.5, key=jax.random.key(1))
    np.testing.assert_allclose(out_e, out, atol=1e-6)
    with pytest.raises(ValueError, match="key"):
        core.stacked_lstm(ps, xs, dropout_rate=0.5, deterministic=False)


def test_stacked_takes_one_initial_state_per_layer(xs):
    """Layer n starts from `initial_states[n]`; a list of another length is a ValueError (one too many
    would be ignored silently, one too few an IndexError)."""
    ps = core.init_stacked_lstm(jax.random.key(0), F, [H, 4])
    s0 = LSTMState(jnp.full((B, H), 0.5), jnp.full((B, H), -0.5))
    s1 = LSTMState(jnp.full((B, 4), 0.3), jnp.full((B, 4), 0.2))
    out, states = core.stacked_lstm(ps, xs, initial_states=[s0, s1])
    h1, st1 = lstm_layer(ps[0], xs, initial_state=s0)
    h2, st2 = lstm_layer(ps[1], h1, initial_state=s1)
    np.testing.assert_allclose(out, h2, atol=1e-6)
    np.testing.assert_allclose(states[0].c, st1.c, atol=1e-6)
    np.testing.assert_allclose(states[1].c, st2.c, atol=1e-6)
    for wrong in ([s0], [s0, s1, s1]):
        with pytest.raises(ValueError, match=rf"one LSTMState per layer \(2\), got {len(wrong)}"):
            core.stacked_lstm(ps, xs, initial_states=wrong)


def test_stacked_dropout_is_between_layers_never_after_the_last(xs):
    """Dropout in training mode acts on each layer's outputs before the next layer only: the last layer's
    outputs are returned undropped (its final `h` is its output at the last step), and a one-layer stack
    in training mode is the layer itself."""
    ps = core.init_stacked_lstm(jax.random.key(0), F, [H, 4])
    key = jax.random.key(1)
    out, states = core.stacked_lstm(ps, xs, dropout_rate=0.5, key=key, deterministic=False)
    assert not np.allclose(out, core.stacked_lstm(ps, xs)[0])  # dropout did act between the layers
    np.testing.assert_allclose(out[:, -1], states[-1].h, atol=1e-6)
    assert np.all(np.asarray(out) != 0.0)  # no output unit was dropped
    one, _ = core.stacked_lstm(ps[:1], xs, dropout_rate=0.5, key=key, deterministic=False)
    np.testing.assert_allclose(one, lstm_layer(ps[0], xs)[0], atol=1e-6)


def test_variational_masks_constant_over_time_and_differ_across_sequences(params):
    in_mask, rec_mask = core.variational_dropout_masks(
        jax.random.key(0), 64, F, H, dropout=0.5, recurrent_dropout=0.5
    )
    assert in_mask.shape == (64, F) and rec_mask.shape == (64, H)
    assert set(np.unique(np.asarray(in_mask))) <= {0.0, 2.0}
    assert len({tuple(r) for r in np.asarray(in_mask)}) > 1  # different across sequences
    # Constant over time: with zero recurrent weights and the input mask applied once per sequence, a
    # constant input sequence gives the same pre-activation at every step, so the dropped features stay
    # dropped at every step. Check it through the layer: zeroing an input feature everywhere is equivalent.
    xs = jnp.ones((64, 5, F))
    p = {**params, "recurrent_kernel": jnp.zeros_like(params["recurrent_kernel"])}
    out_masked, _ = lstm_layer(p, xs, input_dropout_mask=in_mask)
    out_manual, _ = lstm_layer(p, xs * in_mask[:, None, :])
    np.testing.assert_allclose(out_masked, out_manual, atol=1e-6)
    none = core.variational_dropout_masks(jax.random.key(0), 4, F, H)
    assert none == (None, None)
    with pytest.raises(ValueError, match="dropout"):
        core.variational_dropout_masks(jax.random.key(0), 4, F, H, dropout=1.0)


def test_dropout_rates_outside_zero_to_one_are_errors(xs):
    """A rate of 1 (nothing kept: every output zero) or below 0 (a keep probability above 1) is a
    ValueError in the variational masks and between stacked layers, not silently run."""
    for rate in (1.0, -0.1):
        for kw in ({"dropout": rate}, {"recurrent_dropout": rate}):
            with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
                core.variational_dropout_masks(jax.random.key(0), 4, F, H, **kw)
        with pytest.raises(ValueError, match=r"stacked_lstm: dropout_rate must be in \[0, 1\)"):
            core.stacked_lstm([init_lstm(jax.random.key(0), F, H)], xs, dropout_rate=rate)


def test_dropout_rates_are_the_probabilities_of_dropping(xs, monkeypatch):
    """A rate is the fraction of units dropped (not kept), and the kept ones are scaled by
    `1 / (1 - rate)`: for the variational masks and for the dropout between stacked layers. Rates other
    than 0.5, where dropping and keeping look alike."""
    in_mask, rec_mask = core.variational_dropout_masks(
        jax.random.key(0), 4000, F, H, dropout=0.2, recurrent_dropout=0.7
    )
    for mask, rate in ((in_mask, 0.2), (rec_mask, 0.7)):
        m = np.asarray(mask)
        assert abs((m == 0).mean() - rate) < 0.02
        np.testing.assert_allclose(m[m != 0], 1 / (1 - rate), rtol=1e-6)
    inputs = []  # what each layer of the stack is given
    layer = core.lstm_layer

    def spy(p, h, **kwargs):
        inputs.append(np.asarray(h))
        return layer(p, h, **kwargs)

    monkeypatch.setattr(core, "lstm_layer", spy)
    big = jnp.tile(xs, (200, 1, 1))
    ps = core.init_stacked_lstm(jax.random.key(0), F, [H, 4])
    core.stacked_lstm(ps, big, dropout_rate=0.2, key=jax.random.key(1), deterministic=False)
    undropped = np.asarray(layer(ps[0], big)[0])
    dropped = inputs[1] == 0
    assert abs(dropped.mean() - 0.2) < 0.02
    np.testing.assert_allclose(inputs[1][~dropped], undropped[~dropped] / 0.8, rtol=1e-5)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU choice of impl='auto'")
def test_auto_impl_follows_the_measured_cpu_crossover(monkeypatch):
    from lstm_jax.core import CPU_PER_STEP_MAX_HIDDEN, _resolve_impl

    small, large = CPU_PER_STEP_MAX_HIDDEN, CPU_PER_STEP_MAX_HIDDEN + 1
    # With the native kernel: it, for float32 without remat, at every size.
    assert _resolve_impl("auto", None, False, small) == "native"
    assert _resolve_impl("auto", None, False, large) == "native"
    assert _resolve_impl("auto", None, False, large, dtype=jnp.float64) == "fused"
    # Without it (no compiler, or LSTM_JAX_NATIVE=off): the XLA impls by the measured crossover.
    monkeypatch.setattr(core, "_native_available", lambda: False)
    assert _resolve_impl("auto", None, False, small) == "per_step"
    assert _resolve_impl("auto", None, False, large) == "fused"
    assert _resolve_impl("auto", None, False, small, remat=True) == "per_step"
    assert _resolve_impl("auto", None, False, large, remat=True) == "per_step"
    assert _resolve_impl("auto", jnp.bfloat16, False, small) == "scan"
    assert _resolve_impl("auto", None, True, large) == "scan"
    # an explicit per_step falls back to scan for what it lacks, as fused does; native to fused
    assert _resolve_impl("per_step", None, True, small) == "scan"
    assert _resolve_impl("per_step", None, False, small, remat=True) == "per_step"
    assert _resolve_impl("native", None, False, small, remat=True) == "per_step"
    assert _resolve_impl("native", jnp.bfloat16, False, small) == "scan"
    assert _resolve_impl("native", None, False, small, dtype=jnp.float64) == "fused"


def test_auto_impl_off_the_cpu_is_scan_and_native_is_refused(monkeypatch):
    """On a GPU or TPU "auto" picks the reference "scan" (the native kernel and per_step's crossover are
    CPU rules), and an explicit "native" is a ValueError saying why, with remat too (on the CPU it would
    run "per_step")."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    for hidden, remat in ((32, False), (512, False), (32, True)):
        assert core._resolve_impl("auto", None, False, hidden, remat=remat) == "scan"
    for remat in (False, True):
        with pytest.raises(ValueError, match="it is a CPU kernel .*; use impl='auto'"):
            core._resolve_impl("native", None, False, 32, remat=remat)


def test_per_step_with_return_gates_still_returns_gates():
    params = init_lstm(jax.random.key(0), 3, 4)
    xs = jax.random.normal(jax.random.key(1), (2, 5, 3))
    out, state, gates = lstm_layer(params, xs, impl="per_step", return_gates=True)
    ref, ref_state = lstm_layer(params, xs, impl="scan")
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gates.c[:, -1], ref_state.c, rtol=1e-6, atol=1e-6)


# The embedding lookup folded into the input projection (`lstm_layer(..., embedding=table)`).
def _has_table_product(fn, *args, vocab: int) -> bool:
    """Whether `fn`'s jaxpr multiplies the `[vocab, F]` table by the kernel (the folded projection)."""
    text = str(jax.make_jaxpr(fn)(*args))
    return f"f32[{vocab},{4 * H}] = dot_general" in text


@pytest.mark.parametrize(
    "impl,vocab,masked,reverse,in_kernel",
    [
        ("fused", 11, True, False, False),  # 11 <= B*T = 21: folded
        ("fused", 11, False, True, False),
        ("scan", 11, True, True, False),
        ("fused", 40, True, False, False),  # more rows than positions: looked up first
        ("per_step", 11, True, False, False),  # no hoisted projection: looked up first
        ("native", 11, True, True, False),  # the folded rows feed the native kernel
        ("native", 11, True, False, False),
        ("native", 11, False, True, False),
        ("native", 11, False, False, False),
        ("native", 40, False, False, False),
        ("native", 11, True, True, True),  # the kernel projects the looked-up rows itself: no fold
        ("native", 11, False, False, True),
    ],
)
def test_embedding_input_equals_looking_up_first(
    params, impl, vocab, masked, reverse, in_kernel, monkeypatch
):
    """Outputs, final state and the gradients of every input (table, kernels, bias, state) equal those
    of `lstm_layer(params, table[ids])` with the reference impl "scan"; the fold is used exactly when
    `vocab <= batch * time` and the native kernel does not project the inputs itself."""
    if impl == "native":  # small weights go into the kernel's per-step matmul; force either way
        fraction = 1e9 if in_kernel else 0.0
        monkeypatch.setattr(core, "NATIVE_INPUT_PROJECTION_MAX_L2_FRACTION", fraction)
    table = jax.random.normal(jax.random.key(5), (vocab, F))
    ids = jax.random.randint(jax.random.key(6), (B, T), 0, vocab)
    mask = lengths_mask([T, 3, 5], T, "pre") if masked else None
    h0 = LSTMState(jnp.full((B, H), 0.2), jnp.full((B, H), -0.3))

    def loss(p, tab, st, folded):
        kw = {"mask": mask, "initial_state": st, "reverse": reverse}
        if folded:
            outs, fin = lstm_layer(p, ids, embedding=tab, impl=impl, **kw)
        else:
            outs, fin = lstm_layer(p, jnp.take(tab, ids, axis=0), impl="scan", **kw)
        return jnp.sum(jnp.tanh(outs) * 1.7) + jnp.sum(fin.h**2) + jnp.sum(fin.c), (outs, fin)

    grad = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)
    gb, (outs_b, fin_b) = grad(params, table, h0, False)
    folds = impl != "per_step" and vocab <= B * T and not in_kernel
    folded_loss = functools.partial(loss, folded=True)
    # impl "native" reads the folded rows by id inside its forward call, or from XLA's gather
    for by_id in (True, False) if impl == "native" else (True,):
        monkeypatch.setattr(core, "NATIVE_FOLDED_ROWS_BY_ID", by_id)
        ga, (outs_a, fin_a) = grad(params, table, h0, True)
        np.testing.assert_allclose(outs_a, outs_b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(fin_a.c, fin_b.c, rtol=1e-5, atol=1e-6)
        for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        assert _has_table_product(folded_loss, params, table, h0, vocab=vocab) == folds
        jaxpr = str(jax.make_jaxpr(jax.grad(lambda *a: folded_loss(*a)[0]))(params, table, h0))
        assert ("lstm_jax_native_forward_ids" in jaxpr) == (impl == "native" and folds and by_id)


@pytest.mark.parametrize(
    "impl,vocab,in_kernel",
    [
        ("scan", 11, False),  # folded
        ("fused", 11, False),
        ("fused", 40, False),  # looked up first
        ("per_step", 11, False),
        ("native", 11, False),  # folded, the rows read by id in the kernel
        ("native", 11, True),  # looked up first, projected in the kernel
    ],
)
def test_out_of_range_padding_ids_do_not_reach_outputs_or_gradients(
    params, impl, vocab, in_kernel, monkeypatch
):
    """Padding ids outside the table (-1, vocab: jnp.take reads NaN rows for them) at masked positions
    give the outputs and gradients of the same batch padded with id 0."""
    if impl == "native":
        fraction = 1e9 if in_kernel else 0.0
        monkeypatch.setattr(core, "NATIVE_INPUT_PROJECTION_MAX_L2_FRACTION", fraction)
    table = jax.random.normal(jax.random.key(5), (vocab, F))
    ids = jax.random.randint(jax.random.key(6), (B, T), 0, vocab)
    mask = lengths_mask([T, 3, 5], T, "post")
    pad = ~np.asarray(mask)
    garbage = jnp.where(pad, jnp.where(jnp.arange(T) % 2 == 0, -1, vocab + 3), ids)
    clean = jnp.where(pad, 0, ids)

    def loss(p, tab, x):
        outs, fin = lstm_layer(p, x, embedding=tab, mask=mask, impl=impl)
        return jnp.sum(jnp.tanh(outs) * 1.7) + jnp.sum(fin.h**2) + jnp.sum(fin.c), outs

    grad = jax.grad(loss, argnums=(0, 1), has_aux=True)
    got, want = grad(params, table, garbage), grad(params, table, clean)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_embedding_with_input_dropout_or_bfloat16(params):
    table = jax.random.normal(jax.random.key(5), (9, F))
    ids = jax.random.randint(jax.random.key(6), (B, T), 0, 9)
    looked_up = jnp.take(table, ids, axis=0)
    in_mask, _ = core.variational_dropout_masks(jax.random.key(2), B, F, H, dropout=0.5)
    # An input dropout mask sits between lookup and projection, so the rows are looked up first.
    a, _ = lstm_layer(params, ids, embedding=table, input_dropout_mask=in_mask, impl="fused")
    b, _ = lstm_layer(params, looked_up, input_dropout_mask=in_mask, impl="fused")
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # bfloat16 matmuls (impl "scan"): the folded table product in bfloat16, close to float32.
    lo, st = lstm_layer(params, ids, embedding=table, compute_dtype=jnp.bfloat16)
    ref, _ = lstm_layer(params, looked_up, impl="scan")
    assert st.h.dtype == jnp.float32
    np.testing.assert_allclose(lo, ref, atol=3e-2)


def test_embedding_input_errors(params):
    table = jnp.ones((9, F))
    with pytest.raises(ValueError, match="integer token ids"):
        lstm_layer(params, jnp.ones((B, T)), embedding=table)
    with pytest.raises(ValueError, match="integer token ids"):
        lstm_layer(params, jnp.ones((B, T, F), jnp.int32), embedding=table)
    with pytest.raises(ValueError, match=r"embedding must be \[vocab, F\]"):
        lstm_layer(params, jnp.ones((B, T), jnp.int32), embedding=jnp.ones((9, F, 1)))
    with pytest.raises(ValueError, match="kernel has shape"):
        lstm_layer(params, jnp.ones((B, T), jnp.int32), embedding=jnp.ones((9, F + 1)))


def test_the_readme_core_snippet_runs():
    """The README's first code block under "The core" is run as written (it once had a line that was a
    SyntaxError)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## The core", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md (The core)", "exec"), namespace)
    assert namespace["outputs"].shape == (8, 100, 32)


def test_params_of_another_layout_name_the_fix(params, xs):
    """A PyTorch state dict, Flax cell weights, an NNX module, a list of layers, or a misnamed key gave
    KeyError 'kernel' / "list indices must be integers" / "'LSTM' object is not subscriptable"."""
    torch_sd = {"weight_ih_l0": np.ones((4 * H, F)), "weight_hh_l0": np.ones((4 * H, H))}
    with pytest.raises(ValueError, match=r"lacks \['kernel'.*from_torch"):
        lstm_layer(torch_sd, xs)
    with pytest.raises(ValueError, match=r"lacks.*from_flax"):
        lstm_layer({"dense_i": {}, "dense_h": {}}, xs)
    misnamed = {"w": params["kernel"], "recurrent_kernel": params["recurrent_kernel"], "bias": 0}
    with pytest.raises(
        ValueError, match=r"lacks \['kernel'\].*got keys \['bias', 'recurrent_kernel'"
    ):
        lstm_layer(misnamed, xs)
    with pytest.raises(TypeError, match="got list; a list of layers' params goes to stacked_lstm"):
        lstm_layer(list(params.values()), xs)
    with pytest.raises(ValueError, match=r"lacks \['recurrent_kernel'\]"):
        lstm_step(
            {"kernel": params["kernel"], "bias": params["bias"]}, core.zero_state(B, H), xs[:, 0]
        )
    with pytest.raises(TypeError, match=r"got one dict; pass \[params\]"):
        core.stacked_lstm(params, xs)


def test_step_checks_its_shapes_and_takes_a_pair(params, xs):
    """`lstm_step` gave AttributeError for a plain (h, c) tuple (which `lstm_layer` takes), XLA's
    dot_general / broadcasting errors for shapes that do not fit, and for `x [batch, time, F]` whose
    batch equals its time a [B, T, H] "state" with no error."""
    zeros = jnp.zeros((B, H))
    ref, out = lstm_step(params, LSTMState(zeros, zeros), xs[:, 0])
    got, out2 = lstm_step(params, (zeros, zeros), xs[:, 0])
    np.testing.assert_array_equal(out, out2)
    np.testing.assert_array_equal(ref.c, got.c)
    with pytest.raises(ValueError, match=rf"x must be \[batch, {F}\].*got shape \({B}, {F + 1}\)"):
        lstm_step(params, (zeros, zeros), jnp.ones((B, F + 1)))
    with pytest.raises(ValueError, match=r"state.h must be \[batch, H\]"):
        lstm_step(params, (jnp.zeros((B, B)), zeros), jnp.ones((B, B, F)))
    with pytest.raises(ValueError, match=r"state.c must be \[batch, H\]"):
        lstm_step(params, (zeros, jnp.zeros((B, H + 1))), xs[:, 0])
    with pytest.raises(ValueError, match=r"recurrent_kernel \[H, 4H\]"):
        lstm_step(
            {**params, "recurrent_kernel": params["recurrent_kernel"].T}, (zeros, zeros), xs[:, 0]
        )
    with pytest.raises(ValueError, match=r"state must be LSTMState"):
        lstm_step(params, zeros, xs[:, 0])


def test_xs_of_rank_2_says_what_it_needs(params):
    with pytest.raises(ValueError, match=r"integer token ids \[batch, time\] need embedding="):
        lstm_layer(params, jnp.ones((B, T), jnp.int32))
    with pytest.raises(ValueError, match=r"xs\[\.\.\., None\]"):
        lstm_layer(params, jnp.ones((T, F)))


def test_compute_dtype_must_be_floating(params, xs):
    """An integer or bool compute_dtype truncated the matmuls' operands: outputs off by ~0.3, silently."""
    for dtype in (jnp.int32, jnp.int8, jnp.bool_):
        with pytest.raises(ValueError, match="compute_dtype must be a floating dtype"):
            lstm_layer(params, xs, compute_dtype=dtype)
    with pytest.raises(TypeError, match="compute_dtype 'floaty' is not a dtype"):
        lstm_layer(params, xs, compute_dtype="floaty")
    out, _ = lstm_layer(params, xs, compute_dtype="float16")
    ref, _ = lstm_layer(params, xs, impl="scan")
    np.testing.assert_allclose(out, ref, atol=5e-3)


def test_init_sizes_must_be_ints():
    with pytest.raises(TypeError, match="hidden_size must be an int, got float 4.0"):
        init_lstm(jax.random.key(0), 3, 4.0)
    with pytest.raises(TypeError, match="input_size must be an int"):
        init_lstm(jax.random.key(0), True, 4)
    assert init_lstm(jax.random.key(0), np.int64(3), 4)["kernel"].shape == (3, 16)


def test_a_bool_dropout_mask_is_refused(params, xs):
    """A bool keep mask was multiplied in unscaled (no 1 / keep): dropout whose training inputs are
    smaller than evaluation's, silently."""
    with pytest.raises(TypeError, match="input_dropout_mask is bool.*1 / keep"):
        lstm_layer(params, xs, input_dropout_mask=jnp.ones((B, F), bool))
    with pytest.raises(TypeError, match="recurrent_dropout_mask is bool"):
        lstm_layer(params, xs, recurrent_dropout_mask=np.ones((B, H), bool))


def test_init_stacked_of_one_int_names_the_tuple():
    with pytest.raises(
        TypeError, match=r"init_stacked_lstm: hidden_sizes must be a sequence.*\(4,\)"
    ):
        core.init_stacked_lstm(jax.random.key(0), 3, 4)


def test_integer_params_name_the_cast(params, xs):
    """An integer recurrent kernel was jax.nn.sigmoid's "logistic does not accept dtype int32"."""
    bad = {**params, "recurrent_kernel": params["recurrent_kernel"].astype(jnp.int32)}
    with pytest.raises(
        TypeError, match=r"params\['recurrent_kernel'\] must be floating point, got int32"
    ):
        lstm_layer(bad, xs)
