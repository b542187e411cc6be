"""Metric sums and losses: padded and partial batches average exactly; losses match NumPy references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax import losses, metrics
from lstm_jax.train import padded_batches


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_softmax_cross_entropy_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 5)).astype(np.float32) * 3
    labels = rng.integers(0, 5, size=(3, 4))
    expected = -np.take_along_axis(_np_log_softmax(logits), labels[..., None], -1)[..., 0]
    got = losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_sigmoid_bce_is_exact_and_stable_for_large_logits():
    x = np.array([-3.0, -0.5, 0.0, 0.7, 4.0])
    z = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    p = 1 / (1 + np.exp(-x))
    expected = -(z * np.log(p) + (1 - z) * np.log(1 - p))
    got = losses.sigmoid_binary_cross_entropy(jnp.asarray(x), jnp.asarray(z))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    big = losses.sigmoid_binary_cross_entropy(jnp.array([1000.0, -1000.0]), jnp.array([0.0, 1.0]))
    np.testing.assert_allclose(big, [1000.0, 1000.0], rtol=1e-6)  # naive log(sigmoid) gives inf
    assert np.isfinite(
        losses.sigmoid_binary_cross_entropy(jnp.array([1000.0]), jnp.array([1.0]))
    ).all()


def test_binary_sums_threshold_at_zero_logit_and_accept_a_trailing_unit_axis():
    logits = jnp.array([[2.0], [-1.0], [0.5], [-3.0]])
    labels = jnp.array([1, 1, 0, 0])
    sums = losses.binary_metric_sums(logits, labels, jnp.array([1.0, 1.0, 1.0, 0.0]))
    assert float(sums["accuracy"]) == 1.0 and float(sums["count"]) == 3.0


def test_a_zero_logit_predicts_the_negative_class():
    """Logit 0 is p = 0.5, which Keras' binary accuracy (`p > 0.5`) counts as the negative class."""
    sums = losses.binary_metric_sums(jnp.array([0.0, 0.0, 1e-3]), jnp.array([0, 0, 1]))
    assert float(sums["accuracy"]) == 3.0 and float(sums["count"]) == 3.0


def test_losses_of_bfloat16_logits_are_computed_in_float32():
    """bf16 logits (mixed precision) give float32 losses as accurate as float32 logits' (bf16 keeps
    ~3 significant digits, so a bf16 log-softmax or log1p would miss rtol=1e-5)."""
    x = np.array([[0.5, -1.25, 3.0], [2.0, 0.75, -0.5]], np.float32)  # exact in bfloat16
    labels = np.array([2, 1])
    ce = losses.softmax_cross_entropy(jnp.asarray(x, jnp.bfloat16), jnp.asarray(labels))
    assert ce.dtype == jnp.float32
    expected = -_np_log_softmax(x.astype(np.float64))[[0, 1], labels]
    np.testing.assert_allclose(ce, expected, rtol=1e-5)
    z = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    bce = losses.sigmoid_binary_cross_entropy(jnp.asarray(x, jnp.bfloat16), jnp.asarray(z))
    assert bce.dtype == jnp.float32
    p = 1 / (1 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(bce, -(z * np.log(p) + (1 - z) * np.log(1 - p)), rtol=1e-5)


def test_binary_sums_weight_the_loss_and_the_accuracy():
    """A weight-0 example adds nothing to any sum: not its (large) loss, not its (right) answer."""
    logits = jnp.array([1.0, -2.0, 8.0])
    labels = jnp.array([1, 1, 1])
    sums = losses.binary_metric_sums(logits, labels, jnp.array([1.0, 0.5, 0.0]))
    x = np.array([1.0, -2.0])
    expected_loss = 1.0 * np.log1p(np.exp(-x[0])) + 0.5 * np.log1p(np.exp(-x[1]))
    assert float(sums["loss"]) == pytest.approx(expected_loss, rel=1e-6)
    assert float(sums["accuracy"]) == 1.0 and float(sums["count"]) == 1.5


def test_masked_token_metrics_ignore_padding():
    logits = jnp.array([[[5.0, 0.0], [0.0, 5.0], [5.0, 0.0]]])  # predicts 0, 1, 0
    labels = jnp.array([[0, 0, 1]])
    mask = jnp.array([[1.0, 1.0, 0.0]])  # last token is padding
    sums = losses.softmax_metric_sums(logits, labels, mask)
    assert float(sums["count"]) == 2.0 and float(sums["accuracy"]) == 1.0
    m = metrics.compute(sums)
    assert m["accuracy"] == 0.5 and m["count"] == 2.0
    ce = -_np_log_softmax(np.array([[5.0, 0.0], [0.0, 5.0]]))[[0, 1], [0, 0]]
    assert m["loss"] == pytest.approx(ce.mean(), rel=1e-5)


def test_padded_and_partial_batches_average_like_the_whole_set():
    rng = np.random.default_rng(1)
    n, classes = 13, 4
    data = {
        "logits": rng.normal(size=(n, classes)).astype(np.float32),
        "label": rng.integers(0, classes, n).astype(np.int32),
    }
    whole = losses.softmax_metric_sums(jnp.asarray(data["logits"]), jnp.asarray(data["label"]))
    total = None
    for batch in padded_batches(data, 5):  # 5 + 5 + 3 real rows, the last padded to 5
        sums = losses.softmax_metric_sums(
            jnp.asarray(batch["logits"]), jnp.asarray(batch["label"]), jnp.asarray(batch["weight"])
        )
        total = metrics.merge(total, sums)
    a, b = metrics.compute(whole), metrics.compute(total)
    assert b["count"] == 13
    for key in ("loss", "accuracy"):
        assert b[key] == pytest.approx(a[key], rel=1e-6)
    # A naive mean of per-batch means would weight the short batch wrongly.
    per_batch = []
    for batch in padded_batches(data, 5):
        s = metrics.compute(
            losses.softmax_metric_sums(
                jnp.asarray(batch["logits"]),
                jnp.asarray(batch["label"]),
                jnp.asarray(batch["weight"]),
            )
        )
        per_batch.append(s["loss"])
    assert np.mean(per_batch) != pytest.approx(a["loss"], rel=1e-6)


def test_per_row_weights_weight_every_position_of_their_row_as_keras_sample_weight():
    """`[batch]` weights with `[batch, time]` labels weight rows (Keras' sample_weight), also when
    batch == time, where NumPy's trailing-axis broadcasting silently weighted positions; `[time]`
    weights with batch != time still weight positions."""
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(3, 3, 5)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 5, (3, 3)))
    row_w = jnp.array([1.0, 0.0, 2.0])
    got = losses.softmax_metric_sums(logits, labels, row_w)
    want = losses.softmax_metric_sums(logits, labels, jnp.broadcast_to(row_w[:, None], (3, 3)))
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6)
    assert float(got["count"]) == 9.0
    values = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    assert float(losses.weighted_mean(values, row_w)) == (1 + 2 + 3 + 2 * (7 + 8 + 9)) / 9
    long_labels = jnp.zeros((2, 3), jnp.int32)
    pos_w = jnp.array([1.0, 0.0, 0.0])  # [time] with batch 2 != time 3: per position
    got = losses.softmax_metric_sums(jnp.zeros((2, 3, 4)), long_labels, pos_w)
    assert float(got["count"]) == 2.0
    got = losses.binary_metric_sums(jnp.zeros((2, 3)), long_labels, jnp.array([1.0, 0.0]))
    assert float(got["count"]) == 3.0


def test_weighted_mean_and_empty_counts():
    assert float(losses.weighted_mean(jnp.array([1.0, 3.0]), jnp.array([1.0, 0.0]))) == 1.0
    assert float(losses.weighted_mean(jnp.array([1.0, 3.0]), jnp.array([0.0, 0.0]))) == 0.0
    # weights summing to less than 1 still divide by their sum (the 1e-9 floor only guards 0)
    assert float(losses.weighted_mean(jnp.array([1.0, 3.0]), jnp.array([0.25, 0.25]))) == 2.0
    assert float(losses.weighted_mean(jnp.array([[1.0, 2.0], [3.0, 6.0]]))) == 3.0  # plain mean
    m = metrics.compute({"loss": 0.0, "count": 0.0})
    assert np.isnan(m["loss"]) and m["count"] == 0.0
    with pytest.raises(ValueError, match="count"):
        metrics.compute({"loss": 1.0})
    with pytest.raises(ValueError, match="different keys"):
        metrics.merge({"loss": 1.0, "count": 1.0}, {"count": 1.0})


def test_zeros_like_is_a_float32_zero_per_key():
    z = metrics.zeros_like({"loss": jnp.array(2.5), "count": jnp.array(4)})
    assert set(z) == {"loss", "count"}
    assert all(v.dtype == jnp.float32 and float(v) == 0.0 for v in z.values())


def test_language_model_metrics_bits_and_capped_perplexity():
    values = {"loss": 3 * np.log(2), "accuracy": 0.25, "count": 10.0}
    out = metrics.language_model_metrics(values, bits_name="bits_per_char")
    assert out["bits_per_char"] == pytest.approx(3.0) and out["perplexity"] == pytest.approx(8.0)
    assert out["accuracy"] == 0.25 and "perplexity" not in values  # the input is not modified
    assert set(metrics.language_model_metrics(values)) == {
        "loss",
        "accuracy",
        "count",
        "perplexity",
    }
    huge = metrics.language_model_metrics({"loss": 1000.0})  # exp(1000) would overflow
    assert huge["perplexity"] == pytest.approx(np.exp(50.0))
    assert metrics.language_model_metrics({"count": 0.0}) == {"count": 0.0}


@pytest.mark.parametrize("chunk_size", [1, 7, 24, 1000])
@pytest.mark.parametrize("with_bias", [True, False])
def test_chunked_softmax_sums_equal_the_full_logits_sums_and_gradients(chunk_size, with_bias):
    rng = np.random.default_rng(2)
    feats = jnp.asarray(rng.normal(size=(3, 8, 5)), jnp.float32)  # [batch, time, features]
    kernel = jnp.asarray(rng.normal(size=(5, 11)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=(11,)), jnp.float32) if with_bias else None
    labels = jnp.asarray(rng.integers(0, 11, (3, 8)))
    weights = jnp.asarray(rng.integers(0, 2, (3, 8)), jnp.float32)  # some positions dropped

    def full(f, k, b):
        logits = f @ k + (0.0 if b is None else b)
        return losses.softmax_metric_sums(logits, labels, weights)

    def chunked(f, k, b):
        head = lambda x: x @ k + (0.0 if b is None else b)  # noqa: E731
        return losses.chunked_softmax_metric_sums(f, head, labels, weights, chunk_size=chunk_size)

    a, c = full(feats, kernel, bias), chunked(feats, kernel, bias)
    assert set(a) == set(c)
    for key in a:
        np.testing.assert_allclose(float(c[key]), float(a[key]), rtol=1e-5, err_msg=key)
    assert float(c["count"]) == float(weights.sum())  # padding of the last chunk counts nothing
    grad = lambda fn: jax.grad(lambda *p: fn(*p)["loss"], argnums=(0, 1))(feats, kernel, bias)  # noqa: E731
    for g_full, g_chunk in zip(grad(full), grad(chunked), strict=True):
        np.testing.assert_allclose(g_chunk, g_full, rtol=1e-5, atol=1e-6)


def test_chunked_softmax_sums_of_no_positions_are_zero():
    """An empty batch sums to zeros, as `softmax_metric_sums` of its (empty) logits does; the chunk size
    used to become 0 and the padding arithmetic divide by it (ZeroDivisionError)."""
    head = lambda x: x @ jnp.ones((3, 4))  # noqa: E731
    sums = losses.chunked_softmax_metric_sums(
        jnp.zeros((0, 5, 3)), head, jnp.zeros((0, 5), jnp.int32)
    )
    assert {k: float(v) for k, v in sums.items()} == {"loss": 0.0, "accuracy": 0.0, "count": 0.0}


def test_chunked_softmax_sums_reject_a_bad_chunk_size():
    with pytest.raises(ValueError, match="chunk_size"):
        losses.chunked_softmax_metric_sums(
            jnp.ones((2, 3)),
            lambda x: x @ jnp.ones((3, 4)),
            jnp.zeros((2,), jnp.int32),
            chunk_size=0,
        )
