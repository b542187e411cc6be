"""The native CPU kernel (`impl="native"`, `lstm_jax.native`) against the XLA impls.

tests/test_core.py runs "native" through every impl-parameterized test (numpy equations, Python loop,
padded batches both ways, embedding fold, dropout masks and state); here: shapes that stress the
kernel's tiling (H not a multiple of the vector length, batches not a multiple of the row tile, one step,
one row), thread counts, transformations, and the build and fallback paths.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax import core, native
from lstm_jax.core import LSTMState, init_lstm, lstm_layer

pytestmark = [
    pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU kernel"),
]


def test_kernel_is_available():
    # ziglang is a dependency, so every supported install can build the kernel.
    assert native.available(), native.unavailable_reason()


@pytest.fixture(params=["in_kernel", "by_xla"])
def projection(request, monkeypatch):
    """Dense inputs reach impl "native" two ways: projected inside the kernel's per-step matmul (small
    weights) or by XLA first (weights large against the L2 cache); both are forced here whatever the size."""
    fraction = 1e9 if request.param == "in_kernel" else 0.0
    monkeypatch.setattr(core, "NATIVE_INPUT_PROJECTION_MAX_L2_FRACTION", fraction)
    return request.param


@pytest.fixture(params=["summed_in_kernel", "by_xla"])
def weight_grads(request, monkeypatch):
    """Small layers' weight gradients are summed inside the backward call, larger ones are single XLA
    matmuls after it; both are forced here whatever the size."""
    limit = 1e12 if request.param == "summed_in_kernel" else -1.0
    monkeypatch.setattr(core, "NATIVE_WEIGHT_GRADS_MAX_L2_FRACTION", limit)
    return request.param


def test_the_size_rule_picks_where_the_weight_gradients_are_summed(monkeypatch):
    """`[F + H, 4H]` up to 0.55 of a core's L2 (NATIVE_WEIGHT_GRADS_MAX_L2_FRACTION): in the kernel,
    above: by XLA; the call's attribute says which (1: weights and bias, 2: the bias only, which every
    native backward call sums)."""
    monkeypatch.setattr(native, "l2_cache_bytes", lambda: 2 << 20)  # a 2 MB L2 (Intel Xeon hosts)
    assert core._native_sums_weight_grads(16, 32)  # the IMDB tutorial's layer, 24.6 KB
    assert core._native_sums_weight_grads(64, 128)  # the word model's layers, 393 KB
    assert core._native_sums_weight_grads(128, 64)  # and 196 KB
    assert core._native_sums_weight_grads(128, 128)  # imdb_best's, 512 KB
    assert not core._native_sums_weight_grads(0, 300)  # the char model's, 1.4 MB
    assert not core._native_sums_weight_grads(300, 199)  # the fake-news model's, 1.55 MB
    monkeypatch.setattr(native, "l2_cache_bytes", lambda: 1 << 20)  # a 1 MB L2 (AMD Zen 4 hosts)
    assert core._native_sums_weight_grads(64, 128)  # 0.38 of it: measured faster in
    assert core._native_sums_weight_grads(128, 128)  # 0.5
    assert not core._native_sums_weight_grads(160, 160)  # 0.78: a tie when measured
    assert not core._native_sums_weight_grads(0, 300)
    monkeypatch.setattr(native, "l2_cache_bytes", lambda: 512 << 10)  # a 512 KB L2 (AMD EPYC hosts)
    assert core._native_sums_weight_grads(16, 32)
    assert core._native_sums_weight_grads(128, 64)
    assert not core._native_sums_weight_grads(64, 128)
    p, xs, st, mask, w = _case(4, 3, 2, 5)
    for fraction, expected in ((1e12, 1), (-1.0, 2)):
        monkeypatch.setattr(core, "NATIVE_WEIGHT_GRADS_MAX_L2_FRACTION", fraction)
        jaxpr = str(
            jax.make_jaxpr(jax.grad(_loss, has_aux=True), static_argnums=(6, 7))(
                p, xs, st, mask, w, None, False, "native"
            )
        )
        assert f"('weight_grads', np.int32({expected}))" in jaxpr


def test_the_cache_rule_picks_the_projection():
    """Weights `[F + H, 4H]` under half a core's L2 are projected inside the kernel, larger ones by XLA."""
    l2 = native.l2_cache_bytes()
    h = int((l2 / 32) ** 0.5)  # (h + h) * 4h * 4 bytes = 32 h^2, about the whole L2
    assert core._native_projects_inputs(h // 2, h // 2)  # a quarter of it
    assert not core._native_projects_inputs(h + 1, h + 1)


def _case(b, t, f, h, seed=0):
    k = jax.random.split(jax.random.key(seed), 7)
    p = init_lstm(k[0], f, h)
    p = {
        n: v + 0.2 * jax.random.normal(k[1], v.shape) for n, v in p.items()
    }  # non-trivial bias etc.
    xs = jax.random.normal(k[2], (b, t, f))
    st = LSTMState(jax.random.normal(k[3], (b, h)), jax.random.normal(k[4], (b, h)))
    mask = jax.random.uniform(k[5], (b, t)) > 0.3
    w = jax.random.normal(k[6], (b, t, h))
    return p, xs, st, mask, w


def _loss(p, xs, st, mask, w, rmask, reverse, impl):
    outs, fin = lstm_layer(
        p,
        xs,
        mask=mask,
        initial_state=st,
        recurrent_dropout_mask=rmask,
        reverse=reverse,
        impl=impl,
    )
    return jnp.sum(outs * w) + jnp.sum(fin.h**2) + 0.5 * jnp.sum(fin.c), (outs, fin)


@pytest.mark.parametrize(
    "b,t,f,h,masked,reverse,rdrop",
    [
        (1, 1, 1, 1, False, False, False),
        (7, 5, 3, 19, True, False, True),  # H and B off the vector and tile sizes
        (13, 9, 8, 33, True, True, False),
        (6, 12, 5, 16, False, True, True),  # exactly one vector per gate
        (20, 4, 2, 70, True, False, False),  # several column panels, a row tail
        (3, 30, 4, 8, True, True, True),
    ],
)
def test_values_and_gradients_equal_the_xla_impls(
    b, t, f, h, masked, reverse, rdrop, projection, weight_grads
):
    p, xs, st, mask, w = _case(b, t, f, h)
    mask = mask if masked else None
    rmask = (jax.random.uniform(jax.random.key(9), (b, h)) > 0.25) / 0.75 if rdrop else None
    grad = jax.jit(
        jax.grad(_loss, argnums=(0, 1, 2), has_aux=True), static_argnames=("reverse", "impl")
    )
    ref_g, (ref_o, ref_f) = grad(p, xs, st, mask, w, rmask, reverse=reverse, impl="scan")
    for impl in ("fused", "native"):
        g, (o, fin) = grad(p, xs, st, mask, w, rmask, reverse=reverse, impl=impl)
        np.testing.assert_allclose(o, ref_o, rtol=1e-5, atol=2e-6)
        np.testing.assert_allclose(fin.h, ref_f.h, rtol=1e-5, atol=2e-6)
        np.testing.assert_allclose(fin.c, ref_f.c, rtol=1e-5, atol=2e-6)
        for a, r in zip(jax.tree.leaves(g), jax.tree.leaves(ref_g), strict=True):
            np.testing.assert_allclose(a, r, rtol=1e-4, atol=2e-5)


def test_results_do_not_depend_on_the_thread_count():
    """Batch rows are split among threads; each row's arithmetic is the same whatever the split."""
    b, t, h = 23, 6, 21
    k = jax.random.split(jax.random.key(1), 5)
    rk = 0.3 * jax.random.normal(k[0], (h, 4 * h))
    bias = jax.random.normal(k[1], (4 * h,))
    zx = jax.random.normal(k[2], (t, b, 4 * h))
    mask = (jax.random.uniform(k[3], (t, b)) > 0.2).astype(jnp.float32)
    h0 = c0 = jnp.zeros((b, h))
    ones = jnp.ones((b, h))
    dout = jax.random.normal(k[4], (t, b, h))
    runs = []
    for threads in (1, 2, 3, 8):
        acts, outs, hT, cT, hc = native.forward(rk, bias, zx, mask, h0, c0, ones, False, threads)
        dz, dh0, dc0 = native.backward(rk, acts, hc, mask, dout, hT, cT, ones, False, threads)
        runs.append([outs, hT, cT, hc, dz, dh0, dc0])
    for other in runs[1:]:
        for a, r in zip(other, runs[0], strict=True):
            np.testing.assert_array_equal(a, r)
    kernel = 0.3 * jax.random.normal(k[0], (5, 4 * h))
    xs = jax.random.normal(k[2], (t, b, 5))
    runs = []
    for threads in (1, 2, 3, 8):
        acts, outs, hT, cT, hc = native.forward_x(
            kernel, rk, bias, xs, mask, h0, c0, ones, False, threads
        )
        dz, dxs, dh0, dc0 = native.backward_x(
            kernel, rk, acts, hc, mask, dout, hT, cT, ones, False, threads
        )
        runs.append([outs, hT, cT, hc, dz, dxs, dh0, dc0])
    for other in runs[1:]:
        for a, r in zip(other, runs[0], strict=True):
            np.testing.assert_array_equal(a, r)


def test_rows_read_by_id_equal_the_call_on_gathered_rows():
    """`forward_ids` gives exactly what `forward` gives on `jnp.take(table, ids)`, whatever the thread
    count: a negative id counts from the end; an id outside [-V, V) gives its row NaN (jnp.take's "fill"),
    and no other row."""
    v, b, t, h = 9, 11, 5, 13
    k = jax.random.split(jax.random.key(2), 4)
    rk = 0.3 * jax.random.normal(k[0], (h, 4 * h))
    bias = jax.random.normal(k[1], (4 * h,))
    table = jax.random.normal(k[2], (v, 4 * h))
    ids = jax.random.randint(k[3], (t, b), -v, v)
    ids = ids.at[2, 3].set(v).at[4, 0].set(-v - 1)  # two ids outside the table
    mask = jnp.ones((t, b)).at[:2, 5].set(0.0)
    h0 = c0 = jnp.zeros((b, h))
    ones = jnp.ones((b, h))
    gathered = jnp.take(table, ids, axis=0)
    assert np.isnan(gathered[2, 3]).all() and np.isnan(gathered[4, 0]).all()
    for reverse in (False, True):
        ref = native.forward(rk, bias, gathered, mask, h0, c0, ones, reverse, 2)
        for threads in (1, 2, 3):
            got = native.forward_ids(rk, bias, table, ids, mask, h0, c0, ones, reverse, threads)
            for a, r in zip(got, ref, strict=True):
                np.testing.assert_array_equal(a, r)
        outs = np.asarray(ref[1])
        bad_rows = {3, 0}  # a NaN reaches only its own sequence
        assert np.isnan(outs[:, sorted(bad_rows)]).any(axis=(0, 2)).all()
        good = [r for r in range(b) if r not in bad_rows]
        assert np.isfinite(outs[:, good]).all()


def test_scatter_rows_equals_xlas_scatter_add():
    """`scatter_rows` (the table gradient of rows read by id) equals XLA's scatter-add bit for bit,
    whatever the thread count: repeated ids summed in order, negative ids counted from the end, ids
    outside [-V, V) dropped, rows no id names zero; under vmap too."""
    v, n, g = 7, 300, 37
    k = jax.random.split(jax.random.key(3), 3)
    ids = jax.random.randint(k[0], (n,), -v - 2, v + 2)  # some outside the table
    ids = jnp.where((ids == 5) | (ids == -2), 4, ids)  # row 5 named by no id
    dz = jax.random.normal(k[1], (n, g)) * 1e3 + jax.random.normal(k[2], (n, g))
    ref = jnp.zeros((v, g)).at[ids].add(dz, mode="drop")
    assert not np.any(ref[5]) and np.all(ref[4] != 0)
    for threads in (1, 2, 3, 8):
        np.testing.assert_array_equal(native.scatter_rows(dz, ids, v, threads), ref)
    two = jax.vmap(lambda d: native.scatter_rows(d, ids.reshape(20, 15), v))(jnp.stack([dz, -dz]))
    np.testing.assert_array_equal(two, jnp.stack([ref, -ref]))


def test_scatter_rows_of_zero_columns_or_rows_is_zeros():
    """dz without columns (H = 0) or without rows gives `[vocab, G]` zeros as XLA's scatter-add does; G = 0
    was a ZeroDivisionError (`reshape(-1, 0)`)."""
    ids = jnp.array([[0, 2], [1, -1]])
    for shape, idx in (((2, 2, 0), ids), ((0, 5), jnp.zeros((0,), jnp.int32))):
        dz = jnp.ones(shape)
        want = jnp.zeros((3, shape[-1])).at[idx].add(dz, mode="drop")
        got = native.scatter_rows(dz, idx, 3)
        assert got.shape == want.shape == (3, shape[-1])
        np.testing.assert_array_equal(got, want)


def test_unsigned_ids_outside_the_table_do_not_wrap_into_it(monkeypatch):
    """uint32 ids are cast to the kernel's int32 without wrapping: `2**32 - 1` stays outside the table (a
    NaN row, its gradient dropped), as `jnp.take` and XLA's scatter-add have it, instead of becoming -1,
    the last row."""
    monkeypatch.setattr(core, "NATIVE_INPUT_PROJECTION_MAX_L2_FRACTION", 0.0)
    v, f, h = 5, 4, 3
    p = init_lstm(jax.random.key(0), f, h)
    table = jax.random.normal(jax.random.key(1), (v, f))
    ids = jnp.array([[0, 1, 2], [3, 2**32 - 1, 2**31]], jnp.uint32)
    ref = lstm_layer(p, jnp.take(table, ids, axis=0), impl="scan")[0]
    assert np.isnan(ref[1, 1:]).all()
    got = lstm_layer(p, ids, embedding=table, impl="native")[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    dz = jnp.ones((3, 8))
    flat = jnp.array([1, 2**32 - 1, 2**31], jnp.uint32)
    np.testing.assert_array_equal(
        native.scatter_rows(dz, flat, v), jnp.zeros((v, 8)).at[flat].add(dz, mode="drop")
    )


def test_int64_ids_count_from_the_end_and_never_wrap_into_the_table():
    """Ids of a dtype wider than int32 (numpy int64) name the rows that `jnp.take` and XLA's scatter-add
    name: `-1` the last row, `-V` the first; `2**32 + 1` and `-2**32 - 1` none (not rows 1 and -1)."""
    v, g = 5, 3
    ids64 = np.array([1, -1, -5, 2**32 + 1, -(2**32) - 1, 4], np.int64)
    same = jnp.array([1, -1, -5, v, v, 4], jnp.int32)
    dz = jax.random.normal(jax.random.key(0), (ids64.size, g))
    want = jnp.zeros((v, g)).at[same].add(dz, mode="drop")
    np.testing.assert_array_equal(native.scatter_rows(dz, ids64, v), want)
    h = 2
    table = jax.random.normal(jax.random.key(1), (v, 4 * h))
    args = (jnp.ones((1, 6)), jnp.zeros((6, h)), jnp.zeros((6, h)), jnp.ones((6, h)), False)
    rk, bias = jnp.zeros((h, 4 * h)), jnp.zeros(4 * h)
    got = native.forward_ids(rk, bias, table, ids64[None], *args)
    ref = native.forward_ids(rk, bias, table, same[None], *args)
    for a, r in zip(got, ref, strict=True):
        np.testing.assert_array_equal(a, r)
    assert np.isfinite(got[1][0, :3]).all() and np.isnan(got[1][0, 3:5]).all()


@pytest.mark.parametrize("impl", ["scan", "fused", "native"])
def test_an_empty_embedding_table_raises_in_every_impl(impl, monkeypatch):
    """A folded embedding with no rows raises jnp.take's error in every impl; the native kernel's by-id
    read would have returned NaN outputs instead."""
    monkeypatch.setattr(core, "NATIVE_INPUT_PROJECTION_MAX_L2_FRACTION", 0.0)
    p = init_lstm(jax.random.key(0), 4, 3)
    ids = jnp.zeros((2, 3), jnp.int32)
    with pytest.raises(IndexError, match="empty axis"):
        lstm_layer(p, ids, embedding=jnp.zeros((0, 4)), impl=impl)


@pytest.mark.parametrize("reverse", [False, True])
def test_rows_read_by_id_gradients_and_higher_derivatives(reverse, monkeypatch):
    """A folded embedding under impl "native": the table's rows read by id in the kernel give the values,
    gradients (table included, negative ids and padded steps too) and second derivatives of XLA's
    gather feeding the same kernel, and of impl "fused"."""
    monkeypatch.setattr(core, "NATIVE_INPUT_PROJECTION_MAX_L2_FRACTION", 0.0)
    v, b, t, f, h = 6, 3, 4, 5, 7
    k = jax.random.split(jax.random.key(4), 4)
    p = init_lstm(k[0], f, h)
    table = jax.random.normal(k[1], (v, f))
    ids = jax.random.randint(k[2], (b, t), -v, v)
    mask = jnp.arange(t)[None, :] >= jnp.array([0, 1, 3])[:, None]
    w = jax.random.normal(k[3], (b, t, h))

    def loss(q, tab, impl):
        outs, fin = lstm_layer(q, ids, embedding=tab, mask=mask, reverse=reverse, impl=impl)
        return jnp.sum(jnp.sin(outs) * w) + jnp.sum(fin.c**2)

    def second(impl):
        def g(q, tab):
            grads = jax.grad(loss, argnums=(0, 1))(q, tab, impl)
            return sum(jnp.sum(a**2) for a in jax.tree.leaves(grads))

        return jax.grad(g, argnums=(0, 1))(p, table)

    results = {}
    cases = (
        ("ids", "native", True, True),  # rows read by id, the table gradient by scatter_rows
        ("ids_xla_scatter", "native", True, False),
        ("gather", "native", False, True),
        ("fused", "fused", True, True),
    )
    for name, impl, by_id, scatter in cases:
        monkeypatch.setattr(core, "NATIVE_FOLDED_ROWS_BY_ID", by_id)
        monkeypatch.setattr(core, "NATIVE_SCATTER_ROWS", scatter)
        jaxpr = str(jax.make_jaxpr(jax.grad(loss, argnums=1), static_argnums=2)(p, table, impl))
        assert ("lstm_jax_native_forward_ids" in jaxpr) == name.startswith("ids")
        assert ("lstm_jax_native_scatter_rows" in jaxpr) == (name == "ids")
        value, grads = jax.value_and_grad(loss, argnums=(0, 1))(p, table, impl)
        results[name] = (value, grads, second(impl))
    for name in ("ids_xla_scatter", "gather", "fused"):
        for a, r in zip(
            jax.tree.leaves(results["ids"]), jax.tree.leaves(results[name]), strict=True
        ):
            np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-6)


def test_weight_gradients_summed_in_the_kernel_equal_the_matmuls():
    """With weight_grads (zx form) or xs (x form) the backward call also returns `dw` = sum over t of
    `[x_t, h_{t-1} * rmask]^T @ dz_t` and `d_bias` = sum of `dz`, with `bias_grad` alone `d_bias` only;
    each row block sums its steps and the blocks are added in order, so they agree across thread counts
    to float rounding, while every other output stays bit for bit the same as without them."""
    b, t, f, h = 23, 7, 5, 21
    k = jax.random.split(jax.random.key(3), 8)
    rk = 0.3 * jax.random.normal(k[0], (h, 4 * h))
    kernel = 0.3 * jax.random.normal(k[1], (f, 4 * h))
    bias = jax.random.normal(k[2], (4 * h,))
    xs = jax.random.normal(k[4], (t, b, f))
    mask = (jax.random.uniform(k[5], (t, b)) > 0.2).astype(jnp.float32)
    h0, c0 = jax.random.normal(k[6], (b, h)), jax.random.normal(k[7], (b, h))
    rm = (jax.random.uniform(k[3], (b, h)) > 0.3) / 0.7
    dout = jax.random.normal(k[3], (t, b, h))
    zx = jnp.einsum("tbf,fg->tbg", xs, kernel)
    for threads in (1, 2, 3):
        acts, _, h_t, c_t, hc = native.forward_x(
            kernel, rk, bias, xs, mask, h0, c0, rm, True, threads
        )
        plain = native.backward_x(kernel, rk, acts, hc, mask, dout, h_t, c_t, rm, True, threads)
        *same, dw, db = native.backward_x(
            kernel, rk, acts, hc, mask, dout, h_t, c_t, rm, True, threads, xs=xs
        )
        for a, r in zip(same, plain, strict=True):
            np.testing.assert_array_equal(a, r)
        dz = same[0].reshape(t * b, -1)
        rows = jnp.concatenate([xs, hc[..., :h] * rm], axis=-1).reshape(t * b, f + h)
        np.testing.assert_allclose(dw, rows.T @ dz, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(db, dz.sum(0), rtol=1e-5, atol=1e-5)
        *same, db_only = native.backward_x(
            kernel, rk, acts, hc, mask, dout, h_t, c_t, rm, True, threads, bias_grad=True
        )
        for a, r in zip(same, plain, strict=True):
            np.testing.assert_array_equal(a, r)
        np.testing.assert_array_equal(db_only, db)  # the same sums in the same order

        acts, _, h_t, c_t, hc = native.forward(rk, bias, zx, mask, h0, c0, rm, False, threads)
        plain = native.backward(rk, acts, hc, mask, dout, h_t, c_t, rm, False, threads)
        *same, d_rk, db = native.backward(
            rk, acts, hc, mask, dout, h_t, c_t, rm, False, threads, weight_grads=True
        )
        for a, r in zip(same, plain, strict=True):
            np.testing.assert_array_equal(a, r)
        dz = same[0].reshape(t * b, -1)
        hr = (hc[..., :h] * rm).reshape(t * b, h)
        np.testing.assert_allclose(d_rk, hr.T @ dz, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(db, dz.sum(0), rtol=1e-5, atol=1e-5)
        *same, db_only = native.backward(
            rk, acts, hc, mask, dout, h_t, c_t, rm, False, threads, bias_grad=True
        )
        for a, r in zip(same, plain, strict=True):
            np.testing.assert_array_equal(a, r)
        np.testing.assert_array_equal(db_only, db)


def test_stats_time_each_call_kind_and_shape():
    """`native.stats()` sums each call kind's wall time, the threads' time in the timesteps and in their
    matmuls (with the matmuls' FLOPs), and helper starts; a block holds only its own calls."""
    b, t, f, h = 24, 7, 5, 21
    k = jax.random.split(jax.random.key(3), 5)
    rk = 0.3 * jax.random.normal(k[0], (h, 4 * h))
    kernel = 0.3 * jax.random.normal(k[1], (f, 4 * h))
    bias = jax.random.normal(k[2], (4 * h,))
    zx = jax.random.normal(k[3], (t, b, 4 * h))
    xs = jax.random.normal(k[4], (t, b, f))
    mask = jnp.ones((t, b))
    h0 = c0 = ones = jnp.ones((b, h))
    dout = jnp.ones((t, b, h))
    native.forward(rk, bias, zx, mask, h0, c0, ones, False, 2)[1].block_until_ready()  # compiled
    with native.stats() as calls:
        for _ in range(3):
            acts, outs, hT, cT, hc = native.forward(rk, bias, zx, mask, h0, c0, ones, False, 2)
            jax.block_until_ready(native.backward(rk, acts, hc, mask, dout, hT, cT, ones, False, 2))
        jax.block_until_ready(native.forward_x(kernel, rk, bias, xs, mask, h0, c0, ones, False, 1))
        # with the weight gradients: a second product of the same size per step
        wg = native.backward(rk, acts, hc, mask, dout, hT, cT, ones, False, 2, weight_grads=True)
        jax.block_until_ready(wg)
    by_kind = {c["kind"]: c for c in calls}
    assert sorted(by_kind) == ["backward", "backward+wg", "forward", "forward_x"]
    for kind, n, threads, width, products in (
        ("forward", 3, 2, h, 1),
        ("backward", 3, 2, h, 1),
        ("backward+wg", 1, 2, h, 2),
        ("forward_x", 1, 1, f + h, 1),
    ):
        c = by_kind[kind]
        assert (c["T"], c["B"], c["H"], c["F"] + h) == (t, b, h, width)
        assert c["calls"] == n
        assert c["matmul_flops"] == 2.0 * t * b * width * 4 * h * n * products
        assert 0 < c["matmul"] <= c["steps"]
        assert 0 < c["wall"] < 60
        assert c["helpers"] == n * (threads - 1)
        assert 0 <= c["helpers_started"] <= c["helpers"] and c["helper_start"] >= 0
    with native.stats() as later:
        pass
    native.forward(rk, bias, zx, mask, h0, c0, ones, False, 2)[1].block_until_ready()  # not timed
    assert later == []
    with native.stats() as again:
        native.forward(rk, bias, zx, mask, h0, c0, ones, False, 2)[1].block_until_ready()
    assert [(c["kind"], c["calls"]) for c in again] == [("forward", 1)]


def test_fma_peak_bounds_the_kernels_own_matmul():
    """`native.fma_peak_gflops` (the benchmark's peak) is what no matmul can beat: one thread's peak is
    at least the kernel's own per-step matmul rate on one thread. Both are timed in short windows (a
    call of a few ms, a 3 ms probe), interleaved ten times, and the best of each compared, with 10% for
    noise: another test may share the core. A probe too slow to be a peak (too few chains in flight, a
    wrong vector width) fails here."""
    b, t, h = 24, 40, 128
    k = jax.random.split(jax.random.key(4), 2)
    rk = 0.1 * jax.random.normal(k[0], (h, 4 * h))
    zx = jax.random.normal(k[1], (t, b, 4 * h))
    bias = jnp.zeros((4 * h,))
    mask, h0, ones = jnp.ones((t, b)), jnp.zeros((b, h)), jnp.ones((b, h))
    native.forward(rk, bias, zx, mask, h0, h0, ones, False, 1)[1].block_until_ready()  # compiled
    best_matmul = peak = 0.0
    for _ in range(10):
        with native.stats() as calls:
            native.forward(rk, bias, zx, mask, h0, h0, ones, False, 1)[1].block_until_ready()
        (c,) = calls
        best_matmul = max(best_matmul, c["matmul_flops"] / c["matmul"] / 1e9)
        peak = max(peak, native.fma_peak_gflops(threads=1, seconds=0.003, repeats=1))
    assert peak >= 0.9 * best_matmul, (peak, best_matmul)


def test_the_fma_peak_sums_its_threads_and_keeps_the_best_round(monkeypatch):
    """The machine's peak is the sum of the threads' rates (the best of `repeats` rounds), with each
    thread timing `seconds`; here with a stand-in for the kernel's timing loop."""
    import threading

    rates = iter([1.0, 2.0, 3.0, 10.0, 20.0, 30.0, 4.0, 4.0, 4.0])
    lock = threading.Lock()
    asked = []

    class Lib:
        @staticmethod
        def lstm_jax_native_fma_gflops(seconds):
            with lock:
                asked.append(seconds)
                return next(rates)

    native._require()
    monkeypatch.setattr(native, "_LIB", Lib)
    assert native.fma_peak_gflops(threads=3, seconds=0.01, repeats=3) == 60.0
    assert asked == [0.01] * 9


def test_x86_builds_keep_512_bit_vectors(monkeypatch):
    """clang's tuning for Intel's AVX-512 CPUs splits 512-bit vectors in two unless asked not to; the
    build asks on x86 and passes nothing elsewhere (gcc on other architectures rejects the flag)."""
    for machine, want in (
        ("x86_64", ["-mprefer-vector-width=512"]),
        ("aarch64", []),
        ("arm64", []),
    ):
        monkeypatch.setattr(native.platform, "machine", lambda m=machine: m)
        assert native._vector_flags() == want


def test_zig_gets_its_cpu_names_and_baseline_link_other_compilers_neither(tmp_path, monkeypatch):
    """zig names CPU models with underscores (`x86_64_v3`) and links its libc++ for the baseline CPU;
    gcc and clang take `-march=x86-64-v3` and no `-mcpu` (gcc on x86 rejects `-mcpu=baseline`)."""
    seen = {}

    def record(cmd, flags, link_flags, include, target):
        seen[cmd[-1]] = (flags, link_flags)
        return "recorded"

    monkeypatch.setattr(native, "_compile", record)
    monkeypatch.setenv("LSTM_JAX_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setenv("LSTM_JAX_NATIVE_MARCH", "x86-64-v3")
    for cmd in (["/opt/zig/zig", "c++"], ["g++"]):
        with pytest.raises(RuntimeError, match="recorded"):
            native.build(cmd)
    zig_flags, zig_link = seen["c++"]
    gcc_flags, gcc_link = seen["g++"]
    assert "-march=x86_64_v3" in zig_flags and "-mcpu=baseline" in zig_link
    assert "-march=x86-64-v3" in gcc_flags and not any(f.startswith("-mcpu") for f in gcc_link)


@pytest.mark.parametrize("delay_us", [400, 200_000])
def test_a_late_helper_takes_over_mid_sequence_with_the_same_results(monkeypatch, delay_us):
    """A helper task that starts late (XLA's pool busy) claims a row block from the step the caller has
    reached and runs the rest of it; one that starts after the call is over finds nothing to do. Either
    way the results are bit for bit those of one thread (the block's state passes between threads)."""
    b, t, h, f = 24, 300, 40, 3
    k = jax.random.split(jax.random.key(7), 6)
    rk = 0.2 * jax.random.normal(k[0], (h, 4 * h))
    kernel = 0.3 * jax.random.normal(k[5], (f, 4 * h))
    bias = jax.random.normal(k[1], (4 * h,))
    zx = jax.random.normal(k[2], (t, b, 4 * h))
    xs = jax.random.normal(k[2], (t, b, f))
    mask = (jax.random.uniform(k[3], (t, b)) > 0.1).astype(jnp.float32)
    h0 = c0 = jnp.zeros((b, h))
    ones = jnp.ones((b, h))
    dout = jax.random.normal(k[4], (t, b, h))

    def run(threads):
        acts, outs, h_t, c_t, hc = native.forward(rk, bias, zx, mask, h0, c0, ones, False, threads)
        dz, dh0, dc0 = native.backward(rk, acts, hc, mask, dout, h_t, c_t, ones, False, threads)
        acts_x, outs_x, hx, cx, hcx = native.forward_x(
            kernel, rk, bias, xs, mask, h0, c0, ones, True, threads
        )
        dzx, dxs, dhx, dcx = native.backward_x(
            kernel, rk, acts_x, hcx, mask, dout, hx, cx, ones, True, threads
        )
        return [outs, h_t, c_t, hc, dz, dh0, dc0, outs_x, hx, cx, dzx, dxs, dhx, dcx]

    want = run(1)
    monkeypatch.setenv("LSTM_JAX_NATIVE_TEST_HELPER_DELAY_US", str(delay_us))
    for threads in (2, 3):
        for a, r in zip(run(threads), want, strict=True):
            np.testing.assert_array_equal(a, r)


def test_a_gradient_fading_below_float32_range_is_flushed_to_zero_as_xla_does():
    """A gradient that decays through a long sequence (forget gates near 0) passes the denormal range.
    XLA:CPU flushes denormals to zero; so must every kernel thread (a worker thread does not inherit the
    setting), or results depend on the thread split and the denormal arithmetic runs ~10x slower."""
    b, t, h = 12, 60, 20
    k = jax.random.split(jax.random.key(2), 3)
    rk = 0.01 * jax.random.normal(k[0], (h, 4 * h))
    bias = jnp.concatenate([jnp.zeros(h), jnp.full(h, -3.0), jnp.zeros(2 * h)])  # f ~ 0.05
    zx = 0.1 * jax.random.normal(k[1], (t, b, 4 * h))
    mask, ones = jnp.ones((t, b)), jnp.ones((b, h))
    h0 = c0 = jnp.zeros((b, h))
    tiny = float(np.finfo(np.float32).tiny)
    runs = []
    for threads in (1, 2, 3):
        acts, _, h_t, c_t, hc = native.forward(rk, bias, zx, mask, h0, c0, ones, False, threads)
        dz, dh0, dc0 = native.backward(
            rk,
            acts,
            hc,
            mask,
            None,
            jnp.full((b, h), 1e-30),
            jnp.full((b, h), 1e-30),
            ones,
            False,
            threads,
        )
        dz = np.asarray(dz)
        assert (dz[-1] != 0).all() and (dz[0] == 0).all()  # the gradient fades to zero on the way
        for a in (dz, dh0, dc0):
            a = np.abs(np.asarray(a))
            assert not ((a > 0) & (a < tiny)).any(), "denormal results: the kernel did not flush"
        runs.append([dz, dh0, dc0])
    for other in runs[1:]:
        for a, r in zip(other, runs[0], strict=True):
            np.testing.assert_array_equal(a, r)
    ref = core._fused_backward_states(
        rk,
        None,
        None,
        None,
        None,
        hc,
        acts,
        None,
        jnp.full((b, h), 1e-30),
        jnp.full((b, h), 1e-30),
        False,
        1,
        False,
    )
    np.testing.assert_allclose(runs[0][0], ref[0], rtol=1e-4, atol=0)


def test_inputs_of_the_wrong_shape_are_refused_not_read_past_their_end():
    """Each call reads exactly `4H` bias floats, `[T, B]` mask floats and `[B, H]` of each state, `[T, B,
    2H]` saved states and `[T, B, H]` output gradients, whatever the arrays hold: a `[H]` initial state was
    read past its end and a `[B, T]` mask read as `[T, B]`, with no error. Now each is an error that names
    the shapes."""
    t, b, h, f = 2, 5, 3, 4
    k = jax.random.split(jax.random.key(0), 3)
    rk = 0.1 * jax.random.normal(k[0], (h, 4 * h))
    kernel = 0.1 * jax.random.normal(k[1], (f, 4 * h))
    bias = jnp.zeros(4 * h)
    zx = jax.random.normal(k[2], (t, b, 4 * h))
    xs = zx[..., :f]
    mask, z, ones = jnp.ones((t, b)), jnp.zeros((b, h)), jnp.ones((b, h))
    table, ids = jax.random.normal(k[2], (6, 4 * h)), jnp.zeros((t, b), jnp.int32)
    good = dict(bias=bias, mask=mask, h0=z, c0=z, rmask=ones)
    bad = dict(
        bias=jnp.zeros(2 * h),
        mask=jnp.ones((b, t)),
        h0=jnp.zeros(h),
        c0=z[:1],
        rmask=jnp.ones((b, 1)),
    )
    calls = {
        "forward": lambda a: native.forward(rk, a["bias"], zx, *_args(a), False),
        "forward_x": lambda a: native.forward_x(kernel, rk, a["bias"], xs, *_args(a), False),
        "forward_ids": lambda a: native.forward_ids(rk, a["bias"], table, ids, *_args(a), False),
    }
    for call in calls.values():
        call(good)
        for key, value in bad.items():
            with pytest.raises(_KERNEL_ERRORS, match="shapes"):
                jax.block_until_ready(call({**good, key: value}))
    acts, _, h_t, c_t, hc = native.forward(rk, bias, zx, mask, z, z, ones, False)
    dout = jnp.ones((t, b, h))
    good = dict(hc=hc, mask=mask, dout=dout, dh=h_t, dc=c_t, rmask=ones)
    bad = dict(
        hc=hc[..., :h],
        mask=jnp.ones((b, t)),
        dout=dout[..., 0],
        dh=h_t[0],
        dc=c_t[:, :1],
        rmask=jnp.ones(h),
    )
    calls = {
        "backward": lambda a: native.backward(rk, acts, *_backward_args(a), False),
        "backward_x": lambda a: native.backward_x(kernel, rk, acts, *_backward_args(a), False),
    }
    for call in calls.values():
        call(good)
        for key, value in bad.items():
            with pytest.raises(_KERNEL_ERRORS, match="shapes"):
                jax.block_until_ready(call({**good, key: value}))


def test_an_empty_batch_gives_zero_gradients_not_a_crash():
    """With no batch rows a call has no row blocks: the backward calls (whose weight-gradient outputs are
    not empty, so XLA runs them) divided by a block size of 0 and killed the process (SIGFPE). Run in a
    child process so that the crash fails this test, not the session."""
    code = (
        "import jax.numpy as jnp, numpy as np\n"
        "from lstm_jax import native\n"
        "t, h, f = 3, 5, 2\n"
        "rk, kernel = jnp.ones((h, 4 * h)), jnp.ones((f, 4 * h))\n"
        "acts, hc, m = jnp.zeros((t, 0, 4 * h)), jnp.zeros((t, 0, 2 * h)), jnp.ones((t, 0))\n"
        "z = jnp.zeros((0, h))\n"
        "state = (acts, hc, m, None, z, z, z, False)\n"
        "for out in (\n"
        "    native.backward(rk, *state, weight_grads=True),\n"
        "    native.backward(rk, *state, bias_grad=True),\n"
        "    native.backward_x(kernel, rk, *state, xs=jnp.zeros((t, 0, f))),\n"
        "):\n"
        "    print(*(f'{a.shape}:{np.abs(np.asarray(a)).sum()}' for a in out))\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(__file__))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == [
        "(3, 0, 20):0.0 (0, 5):0.0 (0, 5):0.0 (5, 20):0.0 (20,):0.0",
        "(3, 0, 20):0.0 (0, 5):0.0 (0, 5):0.0 (20,):0.0",
        "(3, 0, 20):0.0 (3, 0, 2):0.0 (0, 5):0.0 (0, 5):0.0 (7, 20):0.0 (20,):0.0",
    ]


# A call's INVALID_ARGUMENT: a ValueError when XLA reports it at once, else a JaxRuntimeError.
_KERNEL_ERRORS = (ValueError, jax.errors.JaxRuntimeError)


def _args(a):
    return a["mask"], a["h0"], a["c0"], a["rmask"]


def _backward_args(a):
    return a["hc"], a["mask"], a["dout"], a["dh"], a["dc"], a["rmask"]


def test_independent_calls_in_one_program_share_xla_threads():
    """Each call runs its helper row blocks on XLA's intra-op thread pool, and XLA may run independent calls
    at the same time on that pool's threads: every call must still finish (a caller whose helper never gets
    a thread runs the blocks itself) and give what it gives alone."""
    k = jax.random.split(jax.random.key(3), 8)
    layers = [init_lstm(k[n], 6, 24) for n in range(4)]
    xs = [jax.random.normal(k[4 + n], (13, 9, 6)) for n in range(4)]

    def one(p, x):
        outs, fin = lstm_layer(p, x, impl="native")
        return jnp.sum(outs**2) + jnp.sum(fin.c)

    together = jax.jit(
        jax.grad(lambda ps, xs: sum(one(p, x) for p, x in zip(ps, xs, strict=True)))
    )(layers, xs)
    for p, x, g in zip(layers, xs, together, strict=True):
        alone = jax.jit(jax.grad(one))(p, x)
        for name in alone:
            np.testing.assert_allclose(g[name], alone[name], rtol=1e-6, atol=1e-7)


def test_vmap_and_a_stacked_bidirectional_model():
    p, xs, st, mask, _ = _case(4, 6, 3, 10)
    batched = jax.tree.map(lambda a: jnp.stack([a, 1.1 * a]), p)
    f = jax.vmap(lambda q: lstm_layer(q, xs, mask=mask, impl="native")[0])
    g = jax.vmap(lambda q: lstm_layer(q, xs, mask=mask, impl="scan")[0])
    np.testing.assert_allclose(f(batched), g(batched), rtol=1e-5, atol=2e-6)

    fw, bw = (init_lstm(jax.random.key(n), 3, 10) for n in (3, 4))
    stack = core.init_stacked_lstm(jax.random.key(5), 20, (7, 5))

    def run(impl):
        def loss(ps):
            fw, bw, stack = ps
            mid, _ = core.bidirectional(fw, bw, xs, mask=mask, impl=impl)
            outs, _ = core.stacked_lstm(stack, mid, mask=mask, impl=impl)
            return jnp.sum(jnp.sin(outs))

        return jax.value_and_grad(loss)((fw, bw, stack))

    (va, ga), (vb, gb) = run("native"), run("scan")
    np.testing.assert_allclose(va, vb, rtol=1e-5)
    for a, r in zip(jax.tree.leaves(ga), jax.tree.leaves(gb), strict=True):
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=2e-5)


def test_rows_read_by_id_under_vmap_per_example_gradients(monkeypatch):
    """Per-example gradients (`vmap` of `grad`) through a folded embedding read by id equal those of the
    reference impl, one example at a time."""
    monkeypatch.setattr(core, "NATIVE_INPUT_PROJECTION_MAX_L2_FRACTION", 0.0)
    v, b, t, f, h = 5, 3, 4, 2, 6
    p = init_lstm(jax.random.key(7), f, h)
    table = jax.random.normal(jax.random.key(8), (v, f))
    ids = jax.random.randint(jax.random.key(9), (4, b, t), 0, v)  # 4 examples of [b, t] ids

    def loss(q, tab, x, impl):
        outs, fin = lstm_layer(q, x, embedding=tab, impl=impl)
        return jnp.sum(jnp.cos(outs)) + jnp.sum(fin.h)

    per_example = jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(None, None, 0, None))
    jaxpr = str(jax.make_jaxpr(per_example, static_argnums=3)(p, table, ids, "native"))
    assert "lstm_jax_native_forward_ids" in jaxpr and "lstm_jax_native_scatter_rows" in jaxpr
    got = per_example(p, table, ids, "native")
    for n in range(ids.shape[0]):
        ref = jax.grad(loss, argnums=(0, 1))(p, table, ids[n], "scan")
        for a, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
            np.testing.assert_allclose(a[n], r, rtol=1e-4, atol=1e-5)


def test_a_failed_build_names_the_compiler_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("LSTM_JAX_NATIVE_CACHE", str(tmp_path))
    # the compiler's own complaint (its stderr, not only its command line) is in the message
    with pytest.raises(
        RuntimeError, match="could not compile the native LSTM kernel:\n.*: no compiler here$"
    ):
        native.build([sys.executable, "-c", "import sys; sys.exit('no compiler ' + 'here')"])
    # No half-written library or object file is left in the cache (only the build's lock file).
    assert [p.name for p in tmp_path.iterdir() if p.suffix != ".lock"] == []
    monkeypatch.setattr(native, "_compilers", lambda: [])
    with pytest.raises(RuntimeError, match="pip install ziglang"):
        native.build()


def test_lstm_jax_cxx_comes_first_and_a_failing_compiler_falls_through(tmp_path, monkeypatch):
    # $LSTM_JAX_CXX (split into words) is tried before zig and c++; a compiler that fails is followed by
    # the next candidate instead of ending the build.
    library = native.build()
    monkeypatch.setenv("LSTM_JAX_CXX", " my-cxx --target=x ")
    assert native._compilers()[0] == ["my-cxx", "--target=x"]
    copier = tmp_path / "copy_compiler.py"
    copier.write_text(
        "import shutil, sys\n"
        f"shutil.copyfile({str(library)!r}, sys.argv[sys.argv.index('-o') + 1])\n"
    )
    failing = [sys.executable, "-c", "import sys; sys.exit('no compiler here')"]
    # and a compiler that is not there at all (a stale $LSTM_JAX_CXX)
    missing = [str(tmp_path / "no-such-cxx")]
    compilers = [missing, failing, [sys.executable, str(copier)]]
    monkeypatch.setattr(native, "_compilers", lambda: compilers)
    monkeypatch.setenv("LSTM_JAX_NATIVE_CACHE", str(tmp_path / "cache"))
    assert native.build().read_bytes() == library.read_bytes()


def test_a_truncated_cached_library_is_rebuilt_not_loaded(tmp_path, monkeypatch):
    # dlopen of a truncated library (a cache copied or synced only in part) dies of SIGBUS; it was loaded.
    library = native.build()  # this machine's kernel, built as usual
    copier = (
        tmp_path / "copy_compiler.py"
    )  # a "compiler" that writes the real library as every output
    copier.write_text(
        "import shutil, sys\n"
        f"shutil.copyfile({str(library)!r}, sys.argv[sys.argv.index('-o') + 1])\n"
    )
    monkeypatch.setenv("LSTM_JAX_NATIVE_CACHE", str(tmp_path / "cache"))
    target = native.build([sys.executable, str(copier)])
    assert target.stat().st_size == library.stat().st_size
    target.write_bytes(library.read_bytes()[:4096])
    assert native.build([sys.executable, str(copier)]) == target
    assert target.read_bytes() == library.read_bytes()


def test_a_library_that_does_not_load_falls_back_with_the_reason(tmp_path, monkeypatch):
    # dlopen's OSError (a library for another architecture, a missing dependency) makes the kernel
    # unavailable, with dlopen's message as the reason and one warning, instead of raising at first use.
    junk = _write(tmp_path / "junk.so", b"not a shared library")
    monkeypatch.setattr(native, "build", lambda: junk)
    monkeypatch.delenv("LSTM_JAX_NATIVE", raising=False)
    monkeypatch.delenv("LSTM_JAX_NATIVE_MARCH", raising=False)
    reason = native._load.__wrapped__()
    assert reason and "junk.so" in reason


def test_a_cached_library_with_a_corrupt_header_is_not_intact(tmp_path):
    # A program-header entry size too small to hold p_filesz made the check itself raise struct.error.
    import struct

    good = native.build().read_bytes()
    assert native._intact(_write(tmp_path / "good.so", good))
    bad = bytearray(b"\x7fELF\x02\x01" + bytes(4096))  # zeros: every segment of size 0 at offset 0
    struct.pack_into("<QQ", bad, 0x20, 64, 0)  # e_phoff, e_shoff
    struct.pack_into(
        "<HHHH", bad, 0x36, 1, 100, 0, 0
    )  # e_phentsize 1 (an Elf64_Phdr is 56), e_phnum
    assert not native._intact(_write(tmp_path / "bad.so", bytes(bad)))
    assert not native._intact(_write(tmp_path / "empty.so", b""))
    # cut short inside the ELF header itself: not intact (no struct.error)
    assert not native._intact(_write(tmp_path / "short.so", good[:32]))
    # Section headers inside the file (none: stripped) but a segment's bytes past its end: cut short.
    cut = bytearray(b"\x7fELF\x02\x01" + bytes(4096))
    struct.pack_into("<QQ", cut, 0x20, 64, 0)
    struct.pack_into("<HHHH", cut, 0x36, 56, 1, 0, 0)
    struct.pack_into("<QQ", cut, 64 + 8, 0, 0)  # p_offset, p_vaddr
    struct.pack_into("<Q", cut, 64 + 32, len(cut) + 1)  # p_filesz: one byte more than the file
    assert not native._intact(_write(tmp_path / "cut.so", bytes(cut)))
    struct.pack_into("<Q", cut, 64 + 32, len(cut))  # the whole file: intact
    assert native._intact(_write(tmp_path / "whole.so", bytes(cut)))


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


_ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm{sve}
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: {part}
CPU revision\t: 1

processor\t: 1
"""


def test_the_cache_key_tells_arm_cpus_apart(monkeypatch):
    # -march=native builds for this CPU; ARM's /proc/cpuinfo has no "flags" or "model name" lines, so two
    # ARM CPUs (a home directory shared by a Graviton 2 and an SVE Graviton 3) shared one library: SIGILL.
    import io

    signatures = set()
    for part, sve in (("0xd0c", ""), ("0xd40", " sve")):
        text = _ARM_CPUINFO.format(part=part, sve=sve)
        monkeypatch.setattr(native, "open", lambda *a, t=text, **k: io.StringIO(t), raising=False)
        signatures.add(native._cpu_signature())
    assert len(signatures) == 2
    assert all("sve" in s or "0xd0c" in s for s in signatures)


def _cached_library_name(monkeypatch, compiler=("c++",)) -> str:
    """The cache file name `native.build` picks for a compiler (its key), without compiling anything."""
    monkeypatch.setattr(native, "_intact", lambda path: True)  # as if already built
    return native.build(list(compiler)).name


def test_the_cache_key_follows_jaxlib_and_its_ffi_headers_not_jax(tmp_path, monkeypatch):
    # The key took jax.__version__ for "the FFI headers", which come with jaxlib: a jaxlib upgrade under
    # the same jax (jax 0.x.1 runs on jaxlib 0.x.0) loaded a library compiled against other headers, and
    # a jax-only upgrade recompiled for nothing.
    import jaxlib.version

    monkeypatch.setenv("LSTM_JAX_NATIVE_CACHE", str(tmp_path / "cache"))
    base = _cached_library_name(monkeypatch)
    # Stable: the same environment, the same library.
    assert _cached_library_name(monkeypatch) == base
    monkeypatch.setattr(jax, "__version__", jax.__version__ + ".post1")
    assert _cached_library_name(monkeypatch) == base
    monkeypatch.setattr(jaxlib.version, "__version__", jaxlib.version.__version__ + ".post1")
    newer_jaxlib = _cached_library_name(monkeypatch)
    assert newer_jaxlib != base
    # The headers themselves: one changed byte (a jaxlib build that kept its version) changes the key.
    headers = tmp_path / "include"
    shutil.copytree(jax.ffi.include_dir(), headers)
    monkeypatch.setattr(jax.ffi, "include_dir", lambda: str(headers))
    assert _cached_library_name(monkeypatch) == newer_jaxlib
    header = next(p for p in sorted(headers.rglob("*.h")))
    header.write_bytes(header.read_bytes() + b"\n")
    assert _cached_library_name(monkeypatch) != newer_jaxlib


def test_the_cache_key_follows_the_source_compiler_march_and_cpu(tmp_path, monkeypatch):
    """A changed kernel source, another compiler, another `LSTM_JAX_NATIVE_MARCH` or another CPU each
    name another cached library: the old one was compiled from other code or for another instruction set
    (loading it would run stale code, or die of SIGILL)."""
    monkeypatch.setenv("LSTM_JAX_NATIVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LSTM_JAX_NATIVE_MARCH", raising=False)
    base = _cached_library_name(monkeypatch)
    names = {base}
    source = tmp_path / "lstm_cpu.cc"
    source.write_bytes(native._SOURCE.read_bytes() + b"\n")
    with monkeypatch.context() as patch:
        patch.setattr(native, "_SOURCE", source)
        names.add(_cached_library_name(patch))
    names.add(_cached_library_name(monkeypatch, ("clang++",)))
    with monkeypatch.context() as patch:
        patch.setenv("LSTM_JAX_NATIVE_MARCH", "x86-64-v3")
        names.add(_cached_library_name(patch))
    with monkeypatch.context() as patch:
        patch.setattr(native, "_cpu_signature", lambda: "another CPU")
        names.add(_cached_library_name(patch))
    assert len(names) == 5
    assert _cached_library_name(monkeypatch) == base


@pytest.mark.parametrize("value", ["0", "false", "no", " OFF "])
def test_every_spelling_of_off_turns_the_kernel_off(value, monkeypatch):
    # `_load` uncached: the documented values, any case, with spaces, turn it off before any build.
    monkeypatch.setenv("LSTM_JAX_NATIVE", value)
    monkeypatch.setattr(native, "build", lambda: pytest.fail("built although turned off"))
    assert native._load.__wrapped__() == "turned off by LSTM_JAX_NATIVE"


def test_a_stopped_compiler_step_takes_its_children_with_it(tmp_path):
    # A step run past its limit is killed as a process group: a child it started (clang under zig) is
    # killed too, not left running (and holding the output pipes) after the build gave up.
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        "open(sys.argv[1], 'w').write(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    with pytest.raises(subprocess.TimeoutExpired):
        native._run([sys.executable, "-c", script, str(pid_file)], 4.0)
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(child)


def _running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (Linux /proc)."""
    try:
        status = open(f"/proc/{pid}/status").read()
    except OSError:
        return False
    return "State:\tZ" not in status


def test_only_linux_x86_64_and_aarch64_build_the_kernel(monkeypatch):
    # `_load` uncached: another system or architecture is refused before any build (the kernel's
    # vector code is x86 and ARM only); Linux aarch64 goes on to build.
    def no_build():
        raise RuntimeError("build attempted")

    monkeypatch.delenv("LSTM_JAX_NATIVE", raising=False)
    monkeypatch.setattr(native, "build", no_build)
    for system, machine, reason in (
        ("Linux", "riscv64", "not built for Linux riscv64"),
        ("Darwin", "x86_64", "not built for Darwin x86_64"),
        ("Linux", "aarch64", "build attempted"),
    ):
        monkeypatch.setattr(native.platform, "system", lambda s=system: s)
        monkeypatch.setattr(native.platform, "machine", lambda m=machine: m)
        assert native._load.__wrapped__() == reason


def _host_application(tmp_path):
    """A stand-in for an embedded Python's `sys.executable` (uwsgi, an application hosting Python): not an
    interpreter, and started with any arguments it runs until killed."""
    host = tmp_path / "uwsgi"
    host.write_text("#!/bin/sh\nsleep 30\n")
    host.chmod(0o755)
    return str(host)


def test_an_embedded_python_never_runs_its_host_application(tmp_path, monkeypatch):
    # Under uwsgi or an application hosting Python, sys.executable is the host: zig was found as
    # `sys.executable -m ziglang c++` and the -march probe ran `sys.executable -c ...`, each of which
    # started the host application instead (the probe waited 120 s for it, the build up to 10 minutes).
    import time

    monkeypatch.setattr(sys, "executable", _host_application(tmp_path))
    zig = [cmd for cmd in native._compilers() if native._is_zig(cmd)]
    assert zig and all(sys.executable not in cmd for cmd in native._compilers())
    assert os.path.basename(zig[0][0]) == "zig" and os.access(zig[0][0], os.X_OK)
    python = native._python()
    assert python and python != sys.executable
    monkeypatch.setenv("LSTM_JAX_NATIVE_MARCH", "x86-64")
    start = time.monotonic()
    native._check_runs_here(tmp_path / "missing.so")  # the probe fails to load it: no verdict
    assert time.monotonic() - start < 20


def test_a_hanging_compiler_or_probe_is_stopped_and_the_build_falls_back(tmp_path, monkeypatch):
    # A compiler that never finishes (or a host application started in its place) was waited for 10 min
    # per step with no word of why; here each step stops after its limit, with its child processes, and
    # impl="auto" falls back to the XLA impls with one warning naming the cause and LSTM_JAX_CXX.
    import time

    # A "compiler" that never finishes and leaves a child holding its output open (as clang under zig).
    hang = tmp_path / "hanging_compiler.py"
    hang.write_text("import subprocess, time\nsubprocess.Popen(['sleep', '30'])\ntime.sleep(30)\n")
    monkeypatch.setenv("LSTM_JAX_NATIVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_COMPILE_TIMEOUT_S", 1.0)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="no result after 1 s, stopped .*LSTM_JAX_CXX"):
        native.build([sys.executable, str(hang)])
    assert time.monotonic() - start < 15
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.suffix != ".lock"] == []

    # A test call of a library built for another -march that never answers: not loaded.
    monkeypatch.setattr(native, "_PROBE_TIMEOUT_S", 1.0)
    monkeypatch.setattr(native, "_PROBE", "import time\ntime.sleep(30)\n")
    monkeypatch.setenv("LSTM_JAX_NATIVE_MARCH", "x86-64")
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="no answer in 1 s .*unset LSTM_JAX_NATIVE_MARCH"):
        native._check_runs_here(tmp_path / "any.so")
    assert time.monotonic() - start < 15

    # The whole path in a fresh process: impl="auto" falls back, with one warning that says why.
    code = (
        "import sys\n"
        "from lstm_jax import core, native\n"
        "native._COMPILE_TIMEOUT_S = 1.0\n"
        f"native._compilers = lambda: [[sys.executable, {str(hang)!r}]]\n"
        "print(core._resolve_impl('auto', None, False, 128))\n"
        "print(native.unavailable_reason().replace(chr(10), ' '))\n"
    )
    env = dict(os.environ, LSTM_JAX_NATIVE_CACHE=str(tmp_path / "cache2"), JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(__file__))
    for name in ("LSTM_JAX_NATIVE", "LSTM_JAX_NATIVE_MARCH"):
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    impl, reason = proc.stdout.splitlines()
    assert impl == "fused" and "no result after 1 s" in reason
    warnings = [line for line in proc.stderr.splitlines() if "kernel is unavailable" in line]
    assert len(warnings) == 1, proc.stderr
    assert "no result after 1 s" in proc.stderr and "LSTM_JAX_CXX" in proc.stderr


def test_a_build_held_up_by_another_process_gives_up(tmp_path, monkeypatch):
    # The build waited without limit for another process's lock on the same library (one build per
    # machine): a build that hung in one process hung every other process that needed the kernel.
    failing = [sys.executable, "-c", "import sys; sys.exit('no compiler here')"]
    monkeypatch.setenv("LSTM_JAX_NATIVE_CACHE", str(tmp_path))
    with pytest.MonkeyPatch.context() as patch:
        name = _cached_library_name(patch, failing)
    monkeypatch.setattr(native, "_lock_timeout_s", lambda: 1.0)
    hold = (
        "import filelock, sys, time\n"
        "lock = filelock.FileLock(sys.argv[1])\n"
        "lock.acquire()\n"
        "print('held', flush=True)\n"
        "time.sleep(20)\n"
    )
    lock = str(tmp_path / (name + ".lock"))
    holder = subprocess.Popen([sys.executable, "-c", hold, lock], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match="another process has held .*LSTM_JAX_NATIVE_CACHE"):
            native.build(failing)
    finally:
        holder.kill()
        holder.wait()


def test_an_unwritable_cache_falls_back_with_one_warning_naming_the_fix(tmp_path):
    # The kernel could not be built (here: its cache directory cannot be made): impl="auto" fell back to
    # the XLA impls without a word, and the reason named neither the cache nor LSTM_JAX_NATIVE_CACHE.
    (tmp_path / "a_file").write_text("")
    code = (
        "from lstm_jax import core, native\n"
        "print(core._resolve_impl('auto', None, False, 128))\n"
        "print(core._resolve_impl('auto', None, False, 128))\n"
        "print(native.unavailable_reason())\n"
    )
    env = dict(os.environ, LSTM_JAX_NATIVE_CACHE=str(tmp_path / "a_file" / "cache"))
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
    env.pop("LSTM_JAX_NATIVE", None)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    out = proc.stdout.splitlines()
    assert out[:2] == ["fused", "fused"]
    assert "LSTM_JAX_NATIVE_CACHE" in out[2]
    warnings = [line for line in proc.stderr.splitlines() if "kernel is unavailable" in line]
    assert len(warnings) == 1 and "LSTM_JAX_NATIVE_CACHE" in warnings[0], proc.stderr


@pytest.mark.skipif(not shutil.which("cc"), reason="needs a C compiler for the stand-in library")
def test_a_march_this_cpu_lacks_is_refused_not_run(tmp_path):
    # LSTM_JAX_NATIVE_MARCH=x86-64-v4 on an AVX2 machine built a library whose first call killed the
    # process with SIGILL. Stand-in: a library whose vector code traps (as an unknown instruction does).
    source = tmp_path / "trap.c"
    source.write_text(
        "double lstm_jax_native_fma_gflops(double s) { __builtin_trap(); return s; }\n"
    )
    library = tmp_path / "trap.so"
    subprocess.run(["cc", "-shared", "-fPIC", str(source), "-o", str(library)], check=True)
    code = (
        "import pathlib\n"
        "from lstm_jax import core, native\n"
        f"native.build = lambda: pathlib.Path({str(library)!r})\n"
        "print(native.unavailable_reason())\n"
        "print(core._resolve_impl('auto', None, False, 128))\n"
    )
    env = dict(os.environ, LSTM_JAX_NATIVE_MARCH="x86-64-v4", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(__file__))
    env.pop("LSTM_JAX_NATIVE", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reason, impl = proc.stdout.splitlines()
    assert "LSTM_JAX_NATIVE_MARCH=x86-64-v4 cannot run on this CPU" in reason
    assert impl != "native"


def test_turned_off_auto_uses_xla_and_explicit_native_says_why():
    code = (
        "import jax.numpy as jnp\n"
        "from lstm_jax import core\n"
        "print(core._resolve_impl('auto', None, False, 128))\n"
        "try:\n"
        "    core._resolve_impl('native', None, False, 128)\n"
        "except ValueError as e:\n"
        "    print(e)\n"
    )
    env = dict(os.environ, LSTM_JAX_NATIVE="off", JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout.splitlines()
    assert out[0] == "fused"
    assert "impl='native' is unavailable here: turned off by LSTM_JAX_NATIVE" in out[1]


def test_gradients_use_the_kernel_and_higher_derivatives_work(projection, weight_grads):
    """First-order gradients run the two kernel calls (no XLA scan); differentiating them again (a gradient
    penalty, a Hessian-vector product) runs their XLA twins' JVPs and equals impl="fused"."""
    p, xs, st, mask, w = _case(2, 5, 3, 4)
    rmask = jnp.array([[1.0, 0.0, 2.0, 1.0], [2.0, 2.0, 0.0, 1.0]])

    def first(impl):
        def f(q, x, rm):
            outs, _ = lstm_layer(q, x, mask=mask, recurrent_dropout_mask=rm, impl=impl)
            return jnp.sum(jnp.sin(outs) * w)

        return f

    jaxpr = str(jax.make_jaxpr(jax.grad(first("native")))(p, xs, rmask))
    assert jaxpr.count("ffi_call") == 2 and "scan" not in jaxpr

    def second(impl):
        def g(q, x, rm):
            grads = jax.grad(first(impl), argnums=(0, 1, 2))(q, x, rm)
            return sum(jnp.sum(a**2) for a in jax.tree.leaves(grads))

        return jax.grad(g, argnums=(0, 1, 2))(p, xs, rmask)

    for a, r in zip(
        jax.tree.leaves(second("native")), jax.tree.leaves(second("fused")), strict=True
    ):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reverse", [False, True])
def test_final_state_only_skips_the_outputs_gradient(reverse, projection, weight_grads):
    """A model that reads only the final state (the tutorials' classifiers) gives a symbolic-zero gradient
    for the outputs: the kernel is told so (no `[T, B, H]` zeros made or read), with the same gradients."""
    p, xs, st, mask, _ = _case(6, 9, 3, 10)

    def loss(q, x, s, impl):
        _, fin = lstm_layer(q, x, mask=mask, initial_state=s, reverse=reverse, impl=impl)
        return jnp.sum(fin.h**2) + jnp.sum(jnp.sin(fin.c))

    jaxpr = str(jax.make_jaxpr(jax.grad(loss), static_argnums=3)(p, xs, st, "native"))
    assert "('has_dout', np.int32(0))" in jaxpr
    ref = jax.grad(loss, argnums=(0, 1, 2))(p, xs, st, "scan")
    for impl in ("fused", "native"):
        got = jax.grad(loss, argnums=(0, 1, 2))(p, xs, st, impl)
        for a, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
            np.testing.assert_allclose(a, r, rtol=1e-4, atol=2e-5)
    # and differentiated again (the kernel's XLA twin with the zero outputs' gradient)
    g2 = {
        impl: jax.grad(
            lambda q, impl=impl: sum(
                jnp.sum(a**2) for a in jax.tree.leaves(jax.grad(loss)(q, xs, st, impl))
            )
        )(p)
        for impl in ("fused", "native")
    }
    for a, r in zip(jax.tree.leaves(g2["native"]), jax.tree.leaves(g2["fused"]), strict=True):
        # the twin sums [kernel; rk]'s gradient as one product, "fused" as two: float order only
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-5)


_VECTOR_CASE = """
import sys
import jax, jax.numpy as jnp, numpy as np
from lstm_jax import native
from lstm_jax.core import LSTMState, init_lstm, lstm_layer
native.build([native._zig(), "c++"])  # zig only (what a fresh machine has); raises if it fails
assert native.available(), native.unavailable_reason()
b, t, f, h = 7, 6, 3, 21  # H off every vector width, a row tail for every tile
k = jax.random.split(jax.random.key(0), 6)
p = {n: v + 0.2 * jax.random.normal(k[0], v.shape) for n, v in init_lstm(k[1], f, h).items()}
xs = jax.random.normal(k[2], (b, t, f))
st = LSTMState(jax.random.normal(k[3], (b, h)), jax.random.normal(k[4], (b, h)))
mask = jax.random.uniform(k[5], (b, t)) > 0.3

def loss(q, x, s):
    outs, fin = lstm_layer(q, x, mask=mask, initial_state=s, impl="native")
    return jnp.sum(jnp.sin(outs)) + jnp.sum(fin.h * fin.c)

from lstm_jax import core
out = {}
for name, fraction in (("in_kernel", 1e9), ("by_xla", 0.0)):  # both ways of projecting the inputs
    core.NATIVE_INPUT_PROJECTION_MAX_L2_FRACTION = fraction
    value, grads = jax.value_and_grad(loss, argnums=(0, 1, 2))(p, xs, st)
    out[name + "_value"] = value
    out.update({f"{name}_{i}": np.asarray(g) for i, g in enumerate(jax.tree.leaves(grads))})
np.savez(sys.argv[1], **out)
"""


def _cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86 vector widths")
def test_avx2_and_sse2_builds_equal_this_machines(tmp_path):
    """The kernel's vector code has 16-, 8- and 4-float paths (AVX-512, AVX2, SSE2); builds for older CPUs
    (`LSTM_JAX_NATIVE_MARCH`) run here too and must give this machine's numbers. On an AVX2 + FMA machine
    without AVX-512 the native build already runs the AVX2 path, so only the SSE2 build is added (each
    build compiles the kernel once more: 20-60 s on a fresh machine)."""
    flags = _cpu_flags()
    others = ["x86-64"]
    if "avx512f" in flags or not {"avx2", "fma"} <= flags:
        others.insert(0, "x86-64-v3")
    procs = {}
    for march in ("native", *others):
        # Built by ziglang (the case asks for it). The PATH stays as it is: with only the venv's bin/ on it,
        # zig built its libc++ a second time (135 s here, measured; why zig's cache depends on PATH: unknown).
        env = dict(os.environ, LSTM_JAX_NATIVE_MARCH=march, JAX_PLATFORMS="cpu")
        env.pop("LSTM_JAX_CXX", None)
        out = tmp_path / f"{march}.npz"
        procs[march] = (
            out,
            subprocess.Popen([sys.executable, "-c", _VECTOR_CASE, str(out)], env=env),
        )
    for march, (_, proc) in procs.items():
        assert proc.wait(timeout=600) == 0, march
    ref = np.load(procs["native"][0])
    for march in others:  # x86-64 has no FMA: rounding differs slightly
        got = np.load(procs[march][0])
        for name in ref.files:
            np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-6, err_msg=march)


def test_a_compiler_that_writes_nothing_leaves_no_library(tmp_path, monkeypatch):
    # A "compiler" that exits 0 without writing its output (a wrapper script, a dry-run flag): the empty
    # temporary file was published as the cached library, to be loaded (and fail) by every later process.
    monkeypatch.setenv("LSTM_JAX_NATIVE_CACHE", str(tmp_path))
    silent = [sys.executable, "-c", "pass"]
    with pytest.raises(RuntimeError, match="exited 0 but wrote no complete shared library"):
        native.build(silent)
    assert [p.name for p in tmp_path.iterdir() if p.suffix != ".lock"] == []
