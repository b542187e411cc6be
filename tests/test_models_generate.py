"""The experiments' models and the compiled generation loops."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lstm_jax import generate, native
from lstm_jax.errors import UserError
from lstm_jax.generate import (
    check_sampling_flags,
    generate_stateful,
    generate_windowed,
    sample_logits,
)
from lstm_jax.models import LanguageModel, TextClassifier


def _n_params(m):
    return sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))


def test_parameter_counts_match_the_keras_tutorials():
    # Fake news: Embedding 10000x300, LSTM 199, Dense 399, Dense 43, Dense 1 (Keras summary: 3,495,044).
    fake = TextClassifier(
        10000, 300, (199,), rngs=nnx.Rngs(0), dense_layers=[(399, "relu"), (43, "relu")]
    )
    assert (
        _n_params(fake)
        == 3_000_000 + 4 * 199 * (300 + 199 + 1) + 199 * 399 + 399 + 399 * 43 + 43 + 44
    )
    # IMDB: Embedding 15000x16, LSTM 32, Dense 1.
    imdb = TextClassifier(15000, 16, (32,), rngs=nnx.Rngs(0))
    assert _n_params(imdb) == 15000 * 16 + 4 * 32 * (16 + 32 + 1) + 33
    # Macbeth: scalar input, LSTM 300 x 2, Dense V.
    char = LanguageModel(61, (300, 300), rngs=nnx.Rngs(0), input_mode="scalar", predict="last")
    assert _n_params(char) == 4 * 300 * (1 + 300 + 1) + 4 * 300 * (300 + 300 + 1) + 300 * 61 + 61


def test_keras_initialisers():
    m = TextClassifier(50, 8, (4,), rngs=nnx.Rngs(0), dense_layers=[(6, "relu")])
    emb = np.asarray(m.embed.embedding[...])
    assert emb.min() >= -0.05 and emb.max() < 0.05
    np.testing.assert_array_equal(m.dense.layers[0].bias[...], 0.0)


def test_language_model_shapes_and_state_carry():
    m = LanguageModel(20, (8, 6), rngs=nnx.Rngs(0), embed_dim=5, predict="all")
    ids = jax.random.randint(jax.random.key(0), (3, 10), 0, 20)
    logits, states = m(ids)
    assert logits.shape == (3, 10, 20) and len(states) == 2
    # Running in two halves with the state carried equals running at once (truncated BPTT relies on it).
    l1, s1 = m(ids[:, :4])
    l2, _ = m(ids[:, 4:], initial_state=s1)
    np.testing.assert_allclose(jnp.concatenate([l1, l2], 1), logits, atol=1e-5)


def test_classifier_pooling_respects_the_mask():
    m = TextClassifier(30, 4, (5,), rngs=nnx.Rngs(0), pool="mean_max", bidirectional=True)
    ids = jnp.array([[0, 0, 3, 4, 5], [3, 4, 5, 0, 0]])
    pre, post = m(ids[:1], mask=ids[:1] > 0), m(ids[1:], mask=ids[1:] > 0)
    alone = m(jnp.array([[3, 4, 5]]))
    np.testing.assert_allclose(pre, alone, atol=1e-5)
    np.testing.assert_allclose(post, alone, atol=1e-5)


def test_bidirectional_last_pooling_is_both_directions_final_states():
    """`pool="last"` of a bidirectional classifier is the forward layer's final `h` (after the last real
    token) next to the backward layer's (after the first real token)."""
    m = TextClassifier(30, 4, (5,), rngs=nnx.Rngs(0), pool="last", bidirectional=True)
    ids = jnp.array([[0, 0, 3, 4, 5], [3, 4, 5, 6, 7]])
    mask = ids > 0
    out, _ = m.lstm(m.embed(ids), mask=mask)
    feats = m.features(ids, mask=mask)
    assert feats.shape == (2, 10)
    np.testing.assert_allclose(feats[:, :5], out[:, -1, :5], atol=1e-5)
    np.testing.assert_allclose(feats[:, 5:], out[[0, 1], [2, 0], 5:], atol=1e-5)


@pytest.mark.parametrize("merge", ["concat", "sum"])
def test_a_bidirectional_window_model_predicts_from_both_directions_final_states(merge):
    """`LanguageModel(predict="last", bidirectional=True)` (a Keras window -> next token model with a
    `Bidirectional(LSTM)`) reads both directions' final `h`, as TextClassifier's pool="last" does; it
    took `.h` of the pair of states (AttributeError)."""
    m = LanguageModel(9, (6, 5), rngs=nnx.Rngs(0), predict="last", bidirectional=True, merge=merge)
    ids = jnp.array([[0, 0, 3, 4, 5], [3, 4, 5, 6, 7]])
    feats, states = m.features(ids, mask=ids > 0)
    assert feats.shape == (2, 10)
    np.testing.assert_array_equal(feats, jnp.concatenate([states[-1][0].h, states[-1][1].h], -1))
    assert m(ids, mask=ids > 0)[0].shape == (2, 9)


@pytest.mark.parametrize("pool", ["last", "mean", "max", "mean_max"])
def test_empty_sequences_pool_to_zeros_as_all_padding_rows_do(pool):
    """A batch of length-0 sequences (`time == 0`, which the LSTM layers run) pools to zeros, as a row of
    padding only does; "mean", "max" and "mean_max" raised NumPy's "zero-size array to reduction
    operation max"."""
    m = TextClassifier(30, 4, (5,), rngs=nnx.Rngs(0), pool=pool)
    empty = m.features(jnp.zeros((2, 0), jnp.int32), mask=jnp.zeros((2, 0), bool))
    padding = m.features(jnp.array([[3, 4]]), mask=jnp.zeros((1, 2), bool))
    assert empty.shape == (2, padding.shape[1])
    if pool != "last":
        np.testing.assert_array_equal(empty, 0.0)
    np.testing.assert_allclose(empty, jnp.broadcast_to(padding, empty.shape), atol=1e-6)
    assert m(jnp.zeros((2, 0), jnp.int32)).shape == (2,)


@pytest.mark.parametrize("merge", ["sum", "ave", "mul"])
def test_bidirectional_last_pooling_sizes_the_head_for_both_states_whatever_the_merge(merge):
    """`pool="last"` concatenates both directions' final `h` (2H) also when the layers' outputs are
    merged to width H (the head used to be built for H: a dot_general shape error on the first call)."""
    m = TextClassifier(30, 4, (6, 5), rngs=nnx.Rngs(0), bidirectional=True, merge=merge)
    ids = jnp.array([[0, 0, 3, 4, 5], [3, 4, 5, 6, 7]])
    assert m.features(ids, mask=ids > 0).shape == (2, 10)
    assert m(ids, mask=ids > 0).shape == (2,)


@pytest.mark.parametrize(
    "make",
    [
        lambda: LanguageModel(9, (5,), rngs=nnx.Rngs(0), dropout=0.3),
        lambda: TextClassifier(9, 3, (4,), rngs=nnx.Rngs(0), embed_dropout=0.3),
        lambda: TextClassifier(9, 3, (4,), rngs=nnx.Rngs(0), token_dropout=0.3),
        lambda: TextClassifier(9, 3, (4,), rngs=nnx.Rngs(0), dropout=0.3),
    ],
)
def test_training_mode_with_dropout_and_no_key_names_the_key(make):
    """The models take dropout randomness as `key=`; without one in training mode the error says so
    (it used to be nnx.Dropout's request for an `rngs` argument the models do not have)."""
    m = make()
    ids = jnp.array([[1, 2, 3]])
    with pytest.raises(
        ValueError, match=r"dropout in training mode \(deterministic=False\) needs key="
    ):
        m(ids, deterministic=False)
    m(ids, deterministic=False, key=jax.random.key(0))  # with a key it trains
    m(ids)  # evaluation needs none


def test_token_dropout_zeroes_whole_word_vectors():
    m = TextClassifier(40, 6, (5,), rngs=nnx.Rngs(0), token_dropout=0.5)
    ids = jax.random.randint(jax.random.key(1), (8, 50), 1, 40)
    emb = m.embed(ids)
    dropped = m.token_dropout(emb, deterministic=False, rngs=jax.random.key(2))
    zero = np.all(np.asarray(dropped) == 0.0, axis=-1)  # [batch, time]: whole vectors only
    kept = ~zero
    assert 0.35 < zero.mean() < 0.65
    np.testing.assert_allclose(np.asarray(dropped)[kept], 2.0 * np.asarray(emb)[kept], rtol=1e-6)
    # Off in evaluation, and a model without it keeps the random streams it had before it existed.
    np.testing.assert_array_equal(m(ids), m(ids, deterministic=True))
    base = TextClassifier(40, 6, (5,), rngs=nnx.Rngs(0), embed_dropout=0.3)
    off = TextClassifier(40, 6, (5,), rngs=nnx.Rngs(0), embed_dropout=0.3, token_dropout=0.0)
    k = jax.random.key(3)
    np.testing.assert_array_equal(
        base(ids, deterministic=False, key=k), off(ids, deterministic=False, key=k)
    )
    on = m(ids, deterministic=False, key=k)
    assert not np.allclose(on, m(ids))


def test_sample_logits_greedy_and_top_k():
    logits = jnp.log(jnp.array([[0.1, 0.5, 0.15, 0.25]] * 2000))
    np.testing.assert_array_equal(sample_logits(jax.random.key(0), logits), 1)
    s = np.asarray(sample_logits(jax.random.key(1), logits, temperature=1.0, top_k=2))
    assert set(np.unique(s)) == {1, 3}  # only the two most likely tokens
    assert abs((s == 1).mean() - 0.5 / 0.75) < 0.05  # renormalised probabilities
    s_all = np.asarray(sample_logits(jax.random.key(1), logits, temperature=1.0))
    assert set(np.unique(s_all)) == {0, 1, 2, 3}


@pytest.mark.parametrize("temperature,top_k", [(0.0, 0), (1.0, 0), (0.5, 2)])
def test_logits_without_a_distribution_are_an_error_not_token_0(temperature, top_k):
    """A row holding NaN or only -inf has no token: eagerly a ValueError naming it, under jit the
    documented INVALID_TOKEN (-1) for that row alone (argmax used to return token 0 silently)."""
    logits = jnp.log(jnp.array([[0.1, 0.5, 0.15, 0.25]] * 4))
    logits = logits.at[1].set(-jnp.inf).at[2, 3].set(jnp.nan)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"rows \[1, 2\].*NaN or are all -inf"):
        sample_logits(key, logits, temperature, top_k)
    jitted = jax.jit(sample_logits, static_argnums=(2, 3))(key, logits, temperature, top_k)
    assert jitted[1] == jitted[2] == generate.INVALID_TOKEN == -1
    assert 0 <= jitted[0] < 4 and 0 <= jitted[3] < 4
    # One +inf logit is a certain token, not an invalid row.
    np.testing.assert_array_equal(
        sample_logits(key, logits[:1].at[0, 2].set(jnp.inf), temperature, top_k), [2]
    )


def test_a_top_k_above_the_vocabulary_samples_from_every_token():
    """`top_k` larger than the vocabulary (`--top_k=100` with 67 characters) restricts nothing."""
    logits = jnp.log(jnp.array([[0.1, 0.5, 0.15, 0.25]] * 2000))
    s = np.asarray(sample_logits(jax.random.key(1), logits, temperature=1.0, top_k=10))
    np.testing.assert_array_equal(s, sample_logits(jax.random.key(1), logits, temperature=1.0))


def test_sample_logits_divides_the_logits_by_the_temperature():
    """Sampling draws from `softmax(logits / temperature)`: a low temperature is close to greedy, a
    high one close to uniform."""
    logits = jnp.log(jnp.array([[0.1, 0.5, 0.15, 0.25]] * 2000))
    cold = np.asarray(sample_logits(jax.random.key(1), logits, temperature=0.1))
    assert (cold == 1).mean() > 0.99
    hot = np.asarray(sample_logits(jax.random.key(1), logits, temperature=20.0))
    assert np.all(np.abs(np.bincount(hot, minlength=4) / 2000 - 0.25) < 0.05)


# Valid temperatures (finite, > 0) so small that `logits / temperature` overflows float32 to inf (inf - inf
# = NaN in the softmax): 1.2e-38 is just above float32's smallest normal number, 1e-45 a subnormal one (which
# a CPU flushing subnormals reads as 0), 5e-324 a float64 that float32 rounds to 0.
TINY_TEMPERATURES = (1e-30, 1.2e-38, 1e-45, 5e-324)


@pytest.mark.parametrize("temperature", TINY_TEMPERATURES)
@pytest.mark.parametrize("top_k", [0, 3])
def test_a_tiny_temperature_samples_the_greedy_token(temperature, top_k):
    """Sampling at a temperature near 0 is greedy: the largest logit is subtracted before dividing, so
    the others go to -inf at worst and the best one stays 0, instead of overflowing to NaN."""
    logits = 40.0 * jax.random.normal(jax.random.key(5), (500, 30)) + 10.0
    greedy = np.asarray(jnp.argmax(logits, axis=-1))
    for key in range(3):
        got = sample_logits(jax.random.key(key), logits, temperature=temperature, top_k=top_k)
        np.testing.assert_array_equal(got, greedy)


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
@pytest.mark.parametrize("top_k", [0, 5])
def test_moderate_temperatures_sample_the_tokens_of_logits_over_temperature(temperature, top_k):
    """Subtracting the largest logit does not change what a moderate temperature samples: for a fixed key,
    the tokens of `jax.random.categorical(key, logits / temperature)` (top-k masked), the formula sampling
    used before the shift."""
    logits = 3.0 * jax.random.normal(jax.random.key(5), (4000, 50)) + 20.0
    key = jax.random.key(1)
    scaled = logits / temperature
    if top_k:
        kth = jax.lax.top_k(scaled, top_k)[0][..., -1:]
        scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
    want = np.asarray(jax.random.categorical(key, scaled, axis=-1))
    got = np.asarray(sample_logits(key, logits, temperature=temperature, top_k=top_k))
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(got)) > (top_k or 10) - 1  # it does sample, not only the argmax


@pytest.mark.parametrize("temperature", [1e20, 1e38, 3e38])
def test_top_k_keeps_k_tokens_at_a_huge_temperature(temperature):
    """`top_k` picks the k largest logits, not the k largest `(logits - max) / temperature`: at a huge (but
    finite) temperature those are subnormal numbers that XLA's CPU flushes to 0, tied with the best one, so
    `--top_k=1 --temperature=1e38` once sampled every token uniformly."""
    logits = jnp.tile(jnp.asarray([[-0.5, 0.0, -1.0, -2.0, -3.0]]), (2000, 1))
    top1 = np.asarray(sample_logits(jax.random.key(0), logits, temperature, top_k=1))
    np.testing.assert_array_equal(top1, 1)
    top2 = np.asarray(sample_logits(jax.random.key(0), logits, temperature, top_k=2))
    assert set(np.unique(top2)) == {0, 1}
    assert abs((top2 == 1).mean() - 0.5) < 0.05  # near uniform among the two


@pytest.mark.parametrize("temperature", TINY_TEMPERATURES)
def test_generation_loops_at_a_tiny_temperature_are_greedy(temperature):
    m = LanguageModel(12, (16,), rngs=nnx.Rngs(3), embed_dim=4, predict="all")
    m.head.kernel[...] = 50.0 * m.head.kernel[...]  # logits far from 0
    prime = jnp.array([[1, 5, 2, 7], [3, 3, 0, 9]])
    kw = dict(key=jax.random.key(0), temperature=temperature)
    greedy = np.asarray(generate_stateful(m, prime, 15, impl="xla"))
    np.testing.assert_array_equal(generate_stateful(m, prime, 15, impl="xla", **kw), greedy)
    w = LanguageModel(9, (8,), rngs=nnx.Rngs(1), input_mode="scalar", predict="last")
    w.head.kernel[...] = 50.0 * w.head.kernel[...]
    window = jnp.array([[1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1]])
    greedy = np.asarray(generate_windowed(w, window, 12))
    np.testing.assert_array_equal(generate_windowed(w, window, 12, **kw), greedy)
    np.testing.assert_array_equal(generate_windowed(w, window, 12, top_k=3, **kw), greedy)


def _naive_stateful(m, prime, n):
    seq = list(np.asarray(prime[0]))
    for _ in range(n):
        logits, _ = m(jnp.asarray([seq]))
        seq.append(int(jnp.argmax(logits[0, -1])))
    return seq[len(prime[0]) :]


def test_generate_stateful_equals_rerunning_the_whole_sequence():
    m = LanguageModel(12, (16,), rngs=nnx.Rngs(3), embed_dim=4, predict="all")
    prime = jnp.array([[1, 5, 2, 7]])
    out = generate_stateful(m, prime, 15)
    assert out.shape == (1, 15)
    assert list(np.asarray(out[0])) == _naive_stateful(m, prime, 15)
    # The lax.scan loop on its own (the only one off CPU), two streams: [streams, steps] in order.
    two = jnp.array([[1, 5, 2, 7], [3, 3, 0, 9]])
    xla = np.asarray(generate_stateful(m, two, 15, impl="xla"))
    assert xla.shape == (2, 15)
    for row, p in zip(xla, two, strict=True):
        assert list(row) == _naive_stateful(m, p[None], 15)
    np.testing.assert_array_equal(generate_stateful(m, prime, 15), out)  # greedy is deterministic
    sampled = generate_stateful(
        m, jnp.repeat(prime, 64, 0), 10, key=jax.random.key(0), temperature=1.5
    )
    assert sampled.shape == (64, 10) and len({tuple(r) for r in np.asarray(sampled)}) > 1


@pytest.mark.parametrize("impl", ["xla", "auto"])
def test_generation_is_inference_whatever_mode_train_left_the_model_in(impl):
    """After NNX's `model.train()` (dropout 0.5 between layers) generation called the model in training
    mode: 'needs key=' for the greedy loop. Generation is inference: the same tokens as after
    `model.eval()`, for the stateful and the windowed loop."""
    m = LanguageModel(12, (16, 16), rngs=nnx.Rngs(3), embed_dim=4, predict="all", dropout=0.5)
    prime = jnp.array([[1, 5, 2, 7]])
    want = np.asarray(generate_stateful(m, prime, 10, impl=impl))
    m.train()
    np.testing.assert_array_equal(generate_stateful(m, prime, 10, impl=impl), want)
    w = LanguageModel(9, (8,), rngs=nnx.Rngs(1), input_mode="scalar", predict="last", dropout=0.5)
    window = jnp.array([[1, 2, 3, 4, 5, 6]])
    want = np.asarray(generate_windowed(w, window, 7))
    w.train()
    np.testing.assert_array_equal(generate_windowed(w, window, 7), want)
    w.eval()
    np.testing.assert_array_equal(generate_windowed(w, window, 7), want)


@pytest.mark.parametrize("impl", ["xla", "native"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_generation_from_nan_logits_is_an_error_not_token_0(impl, temperature):
    """A model whose logits are NaN (diverged weights) generated token 0 over and over; the loops now
    raise a ValueError naming the stream and step."""
    if impl == "native" and not native.available():
        pytest.skip("the native CPU kernel")
    m = LanguageModel(12, (16,), rngs=nnx.Rngs(3), embed_dim=4, predict="all")
    prime = jnp.array([[1, 5, 2, 7], [3, 3, 0, 9]])
    kw = dict(key=jax.random.key(0), temperature=temperature, impl=impl)
    assert generate_stateful(m, prime, 6, **kw).shape == (2, 6)
    m.head.bias[...] = m.head.bias[...].at[4].set(jnp.nan)
    with pytest.raises(ValueError, match=r"generate_stateful: .*stream 0 at generated step 0.*NaN"):
        generate_stateful(m, prime, 6, **kw)
    w = LanguageModel(9, (8,), rngs=nnx.Rngs(1), input_mode="scalar", predict="last")
    w.head.bias[...] = jnp.full_like(w.head.bias[...], -jnp.inf)
    with pytest.raises(ValueError, match=r"generate_windowed: .*stream 0 at generated step 0"):
        generate_windowed(w, jnp.array([[1, 2, 3, 4, 5, 6]]), 5, temperature=temperature)


@pytest.mark.parametrize("impl", ["xla", "native"])
def test_logits_going_nan_mid_sequence_name_the_step(impl):
    """The native kernel's token for NaN logits is INVALID_TOKEN as the scan loop's (without reading
    the table at -1), so both loops' errors name the step where it happened."""
    if impl == "native" and not native.available():
        pytest.skip("the native CPU kernel")
    m = LanguageModel(12, (16,), rngs=nnx.Rngs(3), embed_dim=4, predict="all")
    prime = jnp.array([[1, 5, 2, 7]])
    greedy = [int(t) for t in generate_stateful(m, prime, 8, impl=impl)[0]]
    # The first generated token not seen before: its embedding NaN, the logits after feeding it too.
    step = next(n for n, t in enumerate(greedy) if t not in [1, 5, 2, 7, *greedy[:n]])
    m.embed.embedding[...] = m.embed.embedding[...].at[greedy[step]].set(jnp.nan)
    with pytest.raises(ValueError, match=rf"stream 0 at generated step {step + 1}\b"):
        generate_stateful(m, prime, 8, impl=impl)


@pytest.mark.parametrize("impl", ["xla", "native"])
def test_prime_ids_of_a_wider_or_float_dtype_are_not_wrapped_into_the_vocabulary(impl):
    """An int64 prime id 2**32 + 3 was cast to int32, i.e. id 3, and generated from without a word;
    float ids were truncated. Now an id outside the vocabulary is a ValueError, a float a TypeError;
    int64 ids inside it give the int32 ids' tokens."""
    if impl == "native" and not native.available():
        pytest.skip("the native CPU kernel")
    m = LanguageModel(12, (16,), rngs=nnx.Rngs(3), embed_dim=4, predict="all")
    want = generate_stateful(m, jnp.array([[1, 3]], jnp.int32), 4, impl=impl)
    np.testing.assert_array_equal(generate_stateful(m, np.array([[1, 3]]), 4, impl=impl), want)
    for bad in (2**32 + 3, 12, -1):
        with pytest.raises(ValueError, match=r"prime holds token ids outside \[0, 12\)"):
            generate_stateful(m, np.array([[1, bad]], np.int64), 4, impl=impl)
    with pytest.raises(TypeError, match="prime must be integer token ids, got dtype float"):
        generate_stateful(m, np.array([[1.0, 3.7]]), 4, impl=impl)
    w = LanguageModel(9, (8,), rngs=nnx.Rngs(1), input_mode="scalar", predict="last")
    with pytest.raises(ValueError, match=r"window holds token ids outside \[0, 9\)"):
        generate_windowed(w, np.array([[1, 2**32 + 3]]), 3)


def test_generate_windowed_equals_the_tutorial_loop():
    m = LanguageModel(9, (8,), rngs=nnx.Rngs(1), input_mode="scalar", predict="last")
    window = jnp.array([[1, 2, 3, 4, 5, 6]])
    out = np.asarray(generate_windowed(m, window, 12)[0])
    w = list(np.asarray(window[0]))
    ref = []
    for _ in range(12):  # one predict per character, as the Keras tutorial
        logits, _ = m(jnp.asarray([w[-6:]]))
        w.append(int(jnp.argmax(logits[0])))
        ref.append(w[-1])
    assert list(out) == ref
    with pytest.raises(ValueError, match=r"predict='all'.*use generate_windowed"):
        generate_stateful(m, window, 3, impl="xla")


class _PositionWeightedSum(nnx.Module):
    """A window model whose prediction depends on every token and its position: the next token is
    `sum_j (j + 1) * ids[:, j] mod vocab` (logits one-hot)."""

    def __init__(self, vocab: int):
        self.vocab = vocab

    def __call__(self, ids: jax.Array, *, mask: jax.Array | None = None) -> tuple[jax.Array, None]:
        nxt = (ids * jnp.arange(1, ids.shape[1] + 1)).sum(-1) % self.vocab
        return jax.nn.one_hot(nxt, self.vocab), None


class _Uniform(nnx.Module):
    """Logits 0 for every token whatever the input: what is sampled shows only the keys used."""

    def __init__(self, vocab: int, windowed: bool):
        self.vocab, self.windowed = vocab, windowed

    def __call__(self, ids, *, initial_state=None, mask=None):
        if self.windowed:
            return jnp.zeros((ids.shape[0], self.vocab)), None
        return jnp.zeros((*ids.shape, self.vocab)), jnp.zeros((ids.shape[0], 1))


def test_sampling_draws_a_new_key_each_step_and_defaults_to_key_0():
    """Each generated token has its own key (a reused key repeats the token at every step when the
    logits do not change), and no `key` is `jax.random.key(0)`, as documented."""
    prime = jnp.zeros((8, 3), jnp.int32)
    for gen, model in (
        (generate_stateful, _Uniform(50, windowed=False)),
        (generate_windowed, _Uniform(50, windowed=True)),
    ):
        out = np.asarray(gen(model, prime, 6, temperature=1.0))
        assert all(len(set(row[1:])) > 1 for row in out), gen.__name__  # steps after the first
        assert np.any(out[:, 0] != out[:, 1]), gen.__name__  # the first step's key is its own
        keyed = gen(model, prime, 6, temperature=1.0, key=jax.random.key(0))
        np.testing.assert_array_equal(out, keyed)


def test_generate_windowed_slides_the_window_over_the_generated_tokens():
    """Each step drops the window's oldest token and appends the one just generated (the tutorial's
    `window[1:] + [next]`), for every stream, with a model whose prediction reads the whole window in
    order."""
    m = _PositionWeightedSum(11)
    window = np.array([[1, 2, 3, 4], [5, 0, 7, 1]])
    out = np.asarray(generate_windowed(m, jnp.asarray(window), 10))
    for row, prime in zip(out, window, strict=True):
        w = list(prime)
        for _ in range(10):
            w.append(sum((j + 1) * t for j, t in enumerate(w[-4:])) % 11)
        assert list(row) == w[4:]


def test_generate_windowed_masks_the_padding_when_asked():
    """With `mask_padding=True` each step's window is run with `mask = ids != 0`, as the tutorial loop
    over a model trained with masked padding: the pre-padded prime is read as if it were shorter."""
    m = LanguageModel(9, (8,), rngs=nnx.Rngs(1), embed_dim=4, predict="last")
    window = jnp.array([[0, 0, 0, 3, 5, 2]])
    out = np.asarray(generate_windowed(m, window, 8, mask_padding=True)[0])
    w = list(np.asarray(window[0]))
    ref = []
    for _ in range(8):
        ids = jnp.asarray([w[-6:]])
        logits, _ = m(ids, mask=ids != 0)
        w.append(int(jnp.argmax(logits[0])))
        ref.append(w[-1])
    assert list(out) == ref
    unmasked = np.asarray(generate_windowed(m, window, 8)[0])
    assert list(unmasked) != ref  # the padding does change the tokens when it is read


def test_generation_rejects_bad_arguments():
    m = LanguageModel(9, (8,), rngs=nnx.Rngs(1), predict="all")
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            generate_stateful(m, jnp.array([[1]]), 3, temperature=bad)
    with pytest.raises(ValueError, match="prime"):
        generate_stateful(m, jnp.array([1, 2]), 3)
    with pytest.raises(ValueError, match="top_k must be >= 0"):
        generate_stateful(m, jnp.array([[1]]), 3, temperature=1.0, top_k=-1)
    with pytest.raises(ValueError, match="num_steps must be >= 0"):
        generate_stateful(m, jnp.array([[1]]), -1)
    # Each loop names the other for the wrong kind of model (windowed used to fail with a TypeError
    # concatenating the [B, T] tokens sampled from [B, T, V] logits onto the window).
    with pytest.raises(ValueError, match="predict='last'.*use generate_stateful"):
        generate_windowed(m, jnp.array([[1, 2]]), 3)
    last = LanguageModel(9, (8,), rngs=nnx.Rngs(1), predict="last")
    with pytest.raises(ValueError, match="predict='all'.*use generate_windowed"):
        generate_stateful(last, jnp.array([[1, 2]]), 3)


@pytest.mark.parametrize(
    ("temperature", "top_k", "message"),
    [
        (-0.5, 0, r"--temperature=-0\.5 must be a number >= 0 \(0 = greedy\)"),
        (float("nan"), 0, r"--temperature=nan must be a number >= 0"),
        (float("inf"), 0, r"--temperature=inf must be a number >= 0"),
        (1.0, -1, r"--top_k=-1 must be >= 0 \(0 = all words\)"),
    ],
)
def test_check_sampling_flags_names_the_flag(temperature, top_k, message):
    with pytest.raises(UserError, match=message):
        check_sampling_flags(temperature, top_k, unit="words")


def test_check_sampling_flags_accepts_greedy_and_top_k():
    check_sampling_flags(0.0, 0)
    check_sampling_flags(0.7, 5, flag="--config.generate.")


def test_model_arguments_are_checked_when_built():
    """An unknown pool, predict, input mode or activation, or no outputs, is a ValueError naming it when
    the model is built (not a KeyError at the first call, or a model that quietly does something else)."""
    from lstm_jax.models import DenseStack

    with pytest.raises(ValueError, match="TextClassifier: unknown pool 'avg'"):
        TextClassifier(9, 3, (4,), rngs=nnx.Rngs(0), pool="avg")
    with pytest.raises(ValueError, match="TextClassifier: num_outputs must be >= 1, got 0"):
        TextClassifier(9, 3, (4,), rngs=nnx.Rngs(0), num_outputs=0)
    with pytest.raises(ValueError, match="LanguageModel: predict must be 'last' or 'all'"):
        LanguageModel(9, (4,), rngs=nnx.Rngs(0), predict="first")
    with pytest.raises(ValueError, match="LanguageModel: unknown input_mode 'bytes'"):
        LanguageModel(9, (4,), rngs=nnx.Rngs(0), input_mode="bytes")
    with pytest.raises(ValueError, match="DenseStack: unknown activation 'sigmoid'"):
        DenseStack(4, [(3, "relu"), (2, "sigmoid")], rngs=nnx.Rngs(0))


@pytest.mark.parametrize("pool", ["mean", "max", "mean_max"])
def test_pooling_reduces_the_lstm_outputs_at_real_tokens(pool):
    """`pool="mean"` / `"max"` are the mean / maximum of the last layer's outputs over the real tokens;
    `"mean_max"` is the two side by side, mean first."""
    m = TextClassifier(30, 4, (5,), rngs=nnx.Rngs(0), pool=pool)
    ids = jnp.array([[0, 0, 3, 4, 5], [3, 4, 5, 6, 7]])
    mask = ids > 0
    out = np.asarray(m.lstm(m.embed(ids), mask=mask)[0])
    mean = np.stack([out[0, 2:].mean(0), out[1].mean(0)])
    mx = np.stack([out[0, 2:].max(0), out[1].max(0)])
    want = {"mean": mean, "max": mx, "mean_max": np.concatenate([mean, mx], -1)}[pool]
    np.testing.assert_allclose(m.features(ids, mask=mask), want, atol=1e-5)


def test_a_window_model_predicts_from_the_last_real_token():
    """`predict="last"` reads the final state, i.e. the state after the last real token: a post-padded
    window predicts what the window without its padding does (the outputs at padded steps are zeros)."""
    m = LanguageModel(9, (6, 5), rngs=nnx.Rngs(0), embed_dim=4, predict="last")
    ids = jnp.array([[3, 4, 5, 0, 0]])
    np.testing.assert_allclose(m(ids, mask=ids > 0)[0], m(jnp.array([[3, 4, 5]]))[0], atol=1e-5)


@pytest.mark.parametrize("kw", [{"dropout": 0.5}, {"embed_dropout": 0.5}, {"token_dropout": 0.5}])
def test_each_classifier_dropout_acts_in_training_mode(kw):
    """Each of a one-layer classifier's dropouts (on the pooled features, on the embeddings, on whole
    words) changes the training-mode logits on its own, and none acts in evaluation."""
    m = TextClassifier(30, 4, (5,), rngs=nnx.Rngs(0), **kw)
    ids = jax.random.randint(jax.random.key(1), (4, 7), 1, 30)
    trained = m(ids, deterministic=False, key=jax.random.key(2))
    assert not np.allclose(trained, m(ids), atol=1e-4)


def test_training_mode_classifier_reads_only_the_real_tokens():
    """With embedding dropout in training mode (the embeddings go through dropout before the LSTM) the
    mask still reaches the LSTM: for one key, what the padding ids are changes nothing."""
    m = TextClassifier(30, 4, (5,), rngs=nnx.Rngs(0), embed_dropout=0.3, pool="mean")
    ids = jnp.array([[0, 0, 3, 4, 5], [3, 4, 5, 6, 7]])
    other = ids.at[0, :2].set(jnp.array([9, 8]))
    mask = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], bool)
    kw = {"mask": mask, "deterministic": False, "key": jax.random.key(3)}
    np.testing.assert_allclose(m.features(ids, **kw), m.features(other, **kw), atol=1e-6)


def test_sample_logits_refuses_a_negative_temperature_or_top_k():
    """A negative temperature sampled from softmax(-logits / |t|), the least likely tokens, with no error
    (the generation loops refused it, `sample_logits` itself did not)."""
    logits = jnp.array([[0.0, 0.0, 30.0]])
    with pytest.raises(ValueError, match="sample_logits: temperature must be a finite number >= 0"):
        sample_logits(jax.random.key(0), logits, -1.0)
    with pytest.raises(ValueError, match="sample_logits: top_k must be >= 0"):
        sample_logits(jax.random.key(0), logits, 1.0, top_k=-2)
    assert int(sample_logits(jax.random.key(0), logits, 1.0)[0]) == 2


def test_generation_takes_list_primes_and_names_bad_argument_types():
    """A nested-list prime was "'list' object has no attribute 'ndim'", a float num_steps JAX's "Shapes
    must be 1D sequences of concrete values of integer type", an int key "invalid PRNG key data"."""
    m = LanguageModel(9, (4,), rngs=nnx.Rngs(1), embed_dim=3, predict="all")
    w = LanguageModel(9, (4,), rngs=nnx.Rngs(1), embed_dim=3, predict="last")
    np.testing.assert_array_equal(
        generate_stateful(m, [[1, 2]], 3, impl="xla"),
        generate_stateful(m, jnp.array([[1, 2]]), 3, impl="xla"),
    )
    assert generate_windowed(w, [[1, 2]], 2).shape == (1, 2)
    with pytest.raises(TypeError, match="num_steps must be an int, got float 3.0"):
        generate_stateful(m, [[1]], 3.0)
    with pytest.raises(TypeError, match="top_k must be an int"):
        generate_windowed(w, [[1]], 3, temperature=1.0, top_k=2.5)
    with pytest.raises(TypeError, match="temperature must be a number"):
        generate_stateful(m, [[1]], 3, temperature="hot")
    with pytest.raises(TypeError, match=r"key must be a PRNG key, e.g. jax.random.key\(0\)"):
        generate_stateful(m, [[1]], 3, temperature=1.0, key=0)
    with pytest.raises(TypeError, match="generate_windowed: key must be a PRNG key"):
        generate_windowed(w, [[1]], 3, key=np.int64(7))


def test_model_sizes_are_checked_when_built():
    """`hidden_sizes=4` (Keras' `LSTM(4)`) was "'int' object is not iterable"; `vocab_size=0` a
    ZeroDivisionError in an initializer."""
    with pytest.raises(TypeError, match=r"LanguageModel: hidden_sizes must be a sequence.*\(4,\)"):
        LanguageModel(9, 4, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match=r"TextClassifier: hidden_sizes must be a sequence"):
        TextClassifier(9, 3, 4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="LanguageModel: vocab_size must be an int >= 1"):
        LanguageModel(0, (4,), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="TextClassifier: vocab_size must be an int >= 1"):
        TextClassifier(0, 3, (4,), rngs=nnx.Rngs(0))


def test_sampling_without_a_key_names_it():
    """`sample_logits(None, ...)` with a temperature was JAX's "unexpected PRNG key type NoneType"."""
    with pytest.raises(TypeError, match="sample_logits: key is None; sampling"):
        sample_logits(None, jnp.ones((2, 5)), 1.0)
    assert sample_logits(None, jnp.array([[0.0, 3.0]])).tolist() == [1]


def test_stateful_generation_refuses_a_bidirectional_model():
    """A bidirectional LanguageModel generated tokens from a backward state carried forward one token at
    a time (not what the model computes on the sequence), with no error."""
    m = LanguageModel(9, (4,), rngs=nnx.Rngs(0), embed_dim=3, bidirectional=True)
    with pytest.raises(ValueError, match="generate_stateful: the model is bidirectional"):
        generate_stateful(m, jnp.ones((1, 3), jnp.int32), 2)
