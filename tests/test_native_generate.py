"""Native stateful generation (`lstm_jax.native.generate`, `generate_stateful(impl="native")`) against the
`lax.scan` loop: the same tokens, greedy and sampled, for every input mode, uneven sizes (units and vocabulary
not multiples of the kernel's column groups), several streams, thread counts and a helper joining late."""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lstm_jax import generate, native
from lstm_jax.generate import generate_stateful, native_generation_blocker
from lstm_jax.models import LanguageModel

pytestmark = [
    pytest.mark.skipif(
        jax.default_backend() != "cpu" or not native.available(), reason="the native CPU kernel"
    ),
]


def _model(vocab=70, hidden=(19, 33, 40), input_mode="scalar", **kw) -> LanguageModel:
    """A model whose logits are far from uniform, so that sampling depends on them, not only on noise."""
    m = LanguageModel(vocab, hidden, rngs=nnx.Rngs(0), input_mode=input_mode, embed_dim=8, **kw)
    for i, layer in enumerate(m.lstm.layers):
        p = layer.params_dict()
        k = jax.random.split(jax.random.key(i), 3)
        layer.load_params(
            {
                n: 3.0 * v + 0.3 * jax.random.normal(kk, v.shape)
                for (n, v), kk in zip(p.items(), k, strict=True)
            }
        )
    m.head.kernel[...] = 6.0 * m.head.kernel[...]
    m.head.bias[...] = jax.random.normal(jax.random.key(9), m.head.bias[...].shape)
    return m


def _prime(streams, length=7, vocab=70):
    return jnp.asarray(
        np.random.default_rng(streams).integers(0, vocab, (streams, length)), jnp.int32
    )


@pytest.mark.parametrize(
    "input_mode,streams,temperature,top_k",
    [("scalar", 1, 0.0, 0), ("embed", 3, 1.0, 0), ("onehot", 8, 0.7, 5), ("embed", 1, 0.5, 3)],
)
def test_native_generation_gives_the_scan_loops_tokens(input_mode, streams, temperature, top_k):
    m = _model(input_mode=input_mode)
    assert native_generation_blocker(m) is None
    kw = dict(key=jax.random.key(3), temperature=temperature, top_k=top_k)
    want = np.asarray(generate_stateful(m, _prime(streams), 40, impl="xla", **kw))
    got = np.asarray(generate_stateful(m, _prime(streams), 40, impl="native", **kw))
    np.testing.assert_array_equal(got, want)
    assert got.shape == (streams, 40)
    assert len(np.unique(got)) > 3  # the model produces varied text, so equal tokens mean something
    auto = np.asarray(generate_stateful(m, _prime(streams), 40, **kw))
    np.testing.assert_array_equal(auto, want)


@pytest.mark.parametrize("temperature", [1e-30, 1.2e-38, 1e-45, 5e-324])  # as test_models_generate
@pytest.mark.parametrize("top_k", [0, 4])
def test_native_generation_at_a_tiny_temperature_is_greedy(temperature, top_k):
    """A temperature near 0 samples the argmax in the kernel too (`choose` subtracts the largest logit
    before dividing, as `generate.scale_logits`), not whatever NaN scores make of inf - inf."""
    m = _model(input_mode="embed")
    greedy = np.asarray(generate_stateful(m, _prime(3), 30, impl="xla"))
    assert len(np.unique(greedy)) > 3
    kw = dict(key=jax.random.key(3), temperature=temperature, top_k=top_k)
    np.testing.assert_array_equal(generate_stateful(m, _prime(3), 30, impl="native", **kw), greedy)
    np.testing.assert_array_equal(generate_stateful(m, _prime(3), 30, impl="xla", **kw), greedy)


@pytest.mark.parametrize("temperature", [1e36, 1e38])
@pytest.mark.parametrize("top_k", [1, 3])
def test_native_generation_at_a_huge_temperature_keeps_the_top_k(temperature, top_k):
    """At a huge temperature the scaled logits are subnormal: XLA flushes them to 0, the kernel did not, so
    the two kept different top-k sets (and XLA more than k tokens); both now rank the logits themselves."""
    m = _model(input_mode="embed")
    kw = dict(key=jax.random.key(3), temperature=temperature, top_k=top_k)
    want = np.asarray(generate_stateful(m, _prime(3), 30, impl="xla", **kw))
    got = np.asarray(generate_stateful(m, _prime(3), 30, impl="native", **kw))
    np.testing.assert_array_equal(got, want)
    if top_k == 1:
        np.testing.assert_array_equal(want, generate_stateful(m, _prime(3), 30, impl="xla"))


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_a_top_k_over_int32_restricts_nothing_as_in_the_scan_loop(temperature):
    """`--top_k=3000000000` (valid: >= 0, above the vocabulary) once crashed the native call with
    numpy's OverflowError for its int32 attribute, even when greedy; it restricts nothing, as in XLA."""
    m = _model(input_mode="embed")
    kw = dict(key=jax.random.key(3), temperature=temperature)
    want = np.asarray(generate_stateful(m, _prime(2), 20, impl="xla", **kw))
    for top_k in (2**31, 3 * 10**9, 2**70):
        got = generate_stateful(m, _prime(2), 20, impl="native", top_k=top_k, **kw)
        np.testing.assert_array_equal(got, want)


def test_one_layer_a_wide_vocabulary_and_lengths_zero_and_one():
    m = _model(vocab=300, hidden=(50,), input_mode="embed")
    prime = _prime(2, vocab=300)
    for n in (0, 1, 2, 25):
        want = np.asarray(generate_stateful(m, prime, n, impl="xla"))
        got = np.asarray(generate_stateful(m, prime, n, impl="native"))
        assert got.shape == (2, n)
        np.testing.assert_array_equal(got, want)


def _direct_inputs(m: LanguageModel, streams: int):
    params = [layer.params_dict() for layer in m.lstm.layers]
    table = m.encode(jnp.arange(m.vocab_size)) @ params[0]["kernel"] + params[0]["bias"]
    rng = np.random.default_rng(0)
    layers = [
        dict(
            p,
            h=jnp.asarray(rng.normal(size=(streams, p["recurrent_kernel"].shape[0])), jnp.float32),
            c=jnp.asarray(rng.normal(size=(streams, p["recurrent_kernel"].shape[0])), jnp.float32),
        )
        for p in params
    ]
    first = jnp.arange(streams, dtype=jnp.int32) % m.vocab_size
    return first, table, layers, m.head.kernel[...], m.head.bias[...]


@pytest.mark.parametrize("streams", [1, 7])
def test_thread_counts_and_a_late_helper_give_the_same_tokens(monkeypatch, streams):
    """Each token's work is split into per-phase slices, one per thread; the caller takes a helper's slice
    while that helper is away, so helpers that join late (the env var delays them past the first tokens)
    or only after the call change nothing, and the call does not wait for them."""
    m = _model()
    args = _direct_inputs(m, streams)
    n = 3000
    noise = jax.random.gumbel(jax.random.key(1), (n, streams, m.vocab_size))
    runs = {}
    for threads in (1, 2, 3):
        runs[threads] = np.asarray(native.generate(*args, n, threads=threads))
        runs[f"s{threads}"] = np.asarray(
            native.generate(*args, n, noise=noise, temperature=0.8, threads=threads)
        )
    # The helper starts 3 ms into calls that take 11-53 ms here (1 and 7 streams, 3000 tokens).
    monkeypatch.setenv("LSTM_JAX_NATIVE_TEST_HELPER_DELAY_US", "3000")
    late = np.asarray(native.generate(*args, n, threads=2))
    # A helper that starts only after the call (1 s late): the caller runs every slice.
    monkeypatch.setenv("LSTM_JAX_NATIVE_TEST_HELPER_DELAY_US", "1000000")
    t0 = time.perf_counter()
    alone = np.asarray(native.generate(*args, n, threads=2))
    assert time.perf_counter() - t0 < 0.8
    np.testing.assert_array_equal(alone, runs[1])
    for threads in (2, 3):
        np.testing.assert_array_equal(runs[threads], runs[1])
        np.testing.assert_array_equal(runs[f"s{threads}"], runs["s1"])
    np.testing.assert_array_equal(late, runs[1])
    assert not np.array_equal(runs[1], runs["s1"])


def test_first_tokens_outside_the_vocabulary_are_refused():
    """Layer 0 reads the table row of each stream's first token: an id of V or -1 read memory outside the
    table (and gave tokens from it with no error; a large one crashed the process). Now an error."""
    m = _model(input_mode="embed")
    first, *rest = _direct_inputs(m, 3)
    np.asarray(native.generate(first.at[1].set(m.vocab_size - 1), *rest, 4))
    for bad in (m.vocab_size, -1):
        # INVALID_ARGUMENT: a ValueError when XLA reports it at once, else a JaxRuntimeError
        with pytest.raises(
            (ValueError, jax.errors.JaxRuntimeError), match=r"first tokens must be ids in \[0, V\)"
        ):
            np.asarray(native.generate(first.at[1].set(bad), *rest, 4))


def test_first_tokens_of_a_wider_or_float_dtype_are_not_wrapped_into_the_table():
    """An int64 (or uint64) first id past int32's range was cast to int32, wrapping 2**32 + 3 into the
    valid id 3 with no error, and float ids were truncated: now the range error, and a TypeError."""
    m = _model(input_mode="embed")
    first, *rest = _direct_inputs(m, 2)
    want = np.asarray(native.generate(np.array([3, 5], np.int64), *rest, 4))
    np.testing.assert_array_equal(want, native.generate(jnp.array([3, 5], jnp.int32), *rest, 4))
    for dtype in (np.int64, np.uint64):
        with pytest.raises(
            (ValueError, jax.errors.JaxRuntimeError), match=r"first tokens must be ids in \[0, V\)"
        ):
            np.asarray(native.generate(np.array([3, 2**32 + 3], dtype), *rest, 4))
    with pytest.raises(TypeError, match=r"first must be integer token ids, got dtype float"):
        native.generate(np.array([3.0, 5.0]), *rest, 4)


def test_states_of_the_wrong_shape_are_refused():
    """Each layer's state is read as `[B, H]`: a transposed `[H, B]` one (as many floats) was read as
    if it were `[B, H]`, giving other tokens with no error. Now an error naming the layer."""
    m = _model(input_mode="embed")
    first, table, layers, head_kernel, head_bias = _direct_inputs(m, 3)
    for layer, key in ((0, "h"), (2, "c")):
        bad = [dict(p) for p in layers]
        bad[layer][key] = bad[layer][key].T
        with pytest.raises((ValueError, jax.errors.JaxRuntimeError), match=f"layer {layer} shapes"):
            np.asarray(native.generate(first, table, bad, head_kernel, head_bias, 4))


def _thread_cpu_masks() -> dict[str, str]:
    """Each thread of this process: its allowed CPUs (Linux /proc)."""
    masks = {}
    for status in Path("/proc/self/task").glob("*/status"):
        try:
            text = status.read_text()
        except OSError:  # the thread ended
            continue
        line = next(x for x in text.splitlines() if x.startswith("Cpus_allowed_list:"))
        masks[status.parent.name] = line.split(":", 1)[1].strip()
    return masks


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="Linux /proc")
def test_helpers_moved_off_the_callers_cpu_get_their_cpu_mask_back(monkeypatch):
    """A helper woken on a CPU the call already uses moves itself off it for the call (lstm_cpu.cc,
    CpuSpread): afterwards every thread has the CPU mask it had, and the tokens are the same as without
    the move (LSTM_JAX_NATIVE_SPREAD=0). 20 calls: on 2 cores about a third of calls moved a helper.

    A helper puts its mask back when its task ends, which can be just after the call has returned (the
    call waits for the work, not for its helpers): the masks read before are read after a call that moves
    nothing, and the masks read after are polled until they are back (10 s at most)."""
    m = _model()
    args = _direct_inputs(m, 1)
    monkeypatch.setenv("LSTM_JAX_NATIVE_SPREAD", "0")
    # XLA's pool threads exist from this call on.
    unmoved = np.asarray(native.generate(*args, 400, threads=2))
    before = _thread_cpu_masks()
    monkeypatch.setenv("LSTM_JAX_NATIVE_SPREAD", "1")
    runs = [np.asarray(native.generate(*args, 400, threads=t)) for t in (2, 3) for _ in range(10)]
    deadline = time.monotonic() + 10.0
    while True:
        after = _thread_cpu_masks()
        kept = {tid: after[tid] for tid in before if tid in after}
        if kept == {tid: before[tid] for tid in kept} or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert kept == {tid: before[tid] for tid in kept}
    for r in runs:
        np.testing.assert_array_equal(r, unmoved)


def test_models_the_kernel_does_not_cover_fall_back_or_say_why(monkeypatch):
    dense = _model(dense_layers=[(16, "relu")])
    assert "dense layers" in native_generation_blocker(dense)
    last = _model(predict="last")
    assert "predict='all'" in native_generation_blocker(last)
    prime = _prime(2)
    with pytest.raises(ValueError, match="dense layers"):
        generate_stateful(dense, prime, 5, impl="native")
    np.testing.assert_array_equal(  # "auto" falls back to the scan loop
        generate_stateful(dense, prime, 5), generate_stateful(dense, prime, 5, impl="xla")
    )
    with pytest.raises(ValueError, match="impl must be"):
        generate_stateful(dense, prime, 5, impl="fast")
    m = _model()
    monkeypatch.setattr(
        generate, "NATIVE_NOISE_MAX_BYTES", 4 * 5 * 2 * 70 - 1
    )  # 5 steps, 2 streams
    with pytest.raises(ValueError, match="MiB of Gumbel noise"):
        generate_stateful(m, prime, 5, temperature=1.0, impl="native")
    np.testing.assert_array_equal(  # "auto" samples with the scan loop instead
        generate_stateful(m, prime, 5, temperature=1.0),
        generate_stateful(m, prime, 5, temperature=1.0, impl="xla"),
    )
    generate_stateful(m, prime, 5, impl="native")  # greedy needs no noise
    with pytest.raises(ValueError, match="noise of shape"):
        native.generate(*_direct_inputs(m, 2), 5, temperature=1.0)
    # noise of another shape (here transposed, as many floats) is refused, not read as [steps, B, V]
    with pytest.raises(ValueError, match="noise of shape"):
        native.generate(*_direct_inputs(m, 2), 5, temperature=1.0, noise=jnp.zeros((2, 5, 70)))
