"""Character-level language models: data -> arrays, losses, training entry and compiled generation.

Two training layouts, chosen by ``config.data.layout``:

* ``"windows"`` (the Keras Macbeth tutorial): every window of ``seq_length`` characters (stride
  ``window_stride``) predicts the character after it; ``LanguageModel(predict="last")``; windows are shuffled
  every epoch. The tutorial has no validation split, so a small held-out tail of the text
  (``validation_fraction``) is kept for monitoring.
* ``"streams"`` (char-rnn): the training text is cut into ``batch_size`` contiguous streams
  ``[batch, length]``; batch ``k`` is columns ``[k*T, (k+1)*T)`` of every stream and every position predicts
  the next character (``predict="all"``). The streams are a whole number of batches long and lie back to
  back, so the characters left over are at the end of the text (and before the offset). The LSTM state is carried from one batch to the next (truncated
  BPTT through the engine's ``carry``), reset at every epoch start. Each epoch starts the streams at a
  different offset in ``[0, T)`` (a function of seed and epoch), so the truncation points move. Validation
  runs the same way over the whole validation text (``eval_batch_size`` streams, each from a zero state),
  every character but the first predicted exactly once.

The vocabulary is the sorted set of characters (``Vocabulary(char_level=True, order="sorted", start=0)``),
saved as ``vocab.json`` in the workdir together with a few random training windows (``primes.json``) that
generation uses as its default prime, so ``--mode=generate`` needs only ``--workdir``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any, get_args

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from lstm_jax import config_utils, data, generate, losses, metrics
from lstm_jax.checkpoint import load_artefact
from lstm_jax.core import LSTMState
from lstm_jax.errors import UserError
from lstm_jax.models import InputMode, LanguageModel
from lstm_jax.text import Vocabulary
from lstm_jax.train import (
    Task,
    check_run,
    epoch_batch_indices,
    load_trained,
    pad_batch,
    padded_batches,
    steps_per_epoch,
    train_and_evaluate,
)

__all__ = [
    "DATASETS",
    "VOCAB_FILE",
    "PRIMES_FILE",
    "load_splits",
    "build_vocabulary",
    "build_model",
    "window_starts",
    "stream_layout",
    "make_task",
    "window_loss",
    "stream_loss",
    "generate_text",
    "train",
    "generate_samples",
]

# config.data.dataset -> file under $LSTM_JAX_DATA (tiny_shakespeare also loads from TFDS when online).
DATASETS = {
    "tiny_shakespeare": "shakespeare/tinyshakespeare.txt",
    "macbeth": "shakespeare/macbeth_gutenberg_nltk.txt",
}
VOCAB_FILE = "vocab.json"
PRIMES_FILE = "primes.json"
LAYOUTS = ("windows", "streams")
DERIVED_FIELDS = ("model.vocab_size",)  # filled in from the data by make_task


# ---------------------------------------------------------------------------------------------------------
# Data.
# ---------------------------------------------------------------------------------------------------------


def load_splits(config: ml_collections.ConfigDict) -> tuple[dict[str, str], dict[str, Any]]:
    """`({"train": str, "validation": str}, info)` for `config.data`.

    tiny_shakespeare: `lstm_jax.data.load_tiny_shakespeare` (the 90/10 split of TFDS and nanoGPT).
    macbeth (or any text via `data.path`): the whole file, the last `validation_fraction` of its characters
    held out. Raises `UserError` for a missing, empty or binary file.
    """
    d = config.data
    if d.dataset not in DATASETS:
        raise UserError(
            f"config.data.dataset={d.dataset!r} is unknown; use one of {', '.join(DATASETS)}"
        )
    if d.dataset == "tiny_shakespeare" and not d.validation_fraction:
        splits, info = data.load_tiny_shakespeare(d.path or None)
    else:
        path = data.resolve_path(d.path or None, DATASETS[d.dataset], what=f"{d.dataset} text")
        text, info = data.load_text(path)
        frac = float(d.validation_fraction)
        if not 0.0 <= frac < 1.0:
            raise UserError(
                f"config.data.validation_fraction={frac} must be in [0, 1); pass e.g."
                " --config.data.validation_fraction=0.05"
            )
        cut = len(text) - int(round(len(text) * frac))
        splits = {"train": text[:cut], "validation": text[cut:]}
        info = {**info, "train_chars": cut, "validation_chars": len(text) - cut}
    if d.lower:
        splits = {k: v.lower() for k, v in splits.items()}
    return splits, info


def build_vocabulary(splits: Mapping[str, str], lower: bool) -> Vocabulary:
    """The sorted character set of all splits, ids 0..V-1 (the Macbeth tutorial's `sorted(set(text))`)."""
    return Vocabulary.from_texts(
        [splits[k] for k in sorted(splits)], char_level=True, order="sorted", start=0, lower=lower
    )


def _encode(vocab: Vocabulary, text: str) -> np.ndarray:
    table = vocab.token_to_id
    return np.fromiter((table[c] for c in text), np.int32, count=len(text))


def window_starts(num_ids: int, seq_length: int, stride: int) -> np.ndarray:
    """Start positions `[windows]` of every training window: `range(0, num_ids - seq_length, stride)` (Keras
    tutorial).

    Window `s` is `ids[s : s + seq_length]` and its target is `ids[s + seq_length]`.
    """
    return np.arange(0, max(num_ids - seq_length, 0), stride, dtype=np.int64)


def _windows(ids: np.ndarray, starts: np.ndarray, seq_length: int) -> dict[str, np.ndarray]:
    idx = starts[:, None] + np.arange(seq_length)[None, :]
    return {"inputs": ids[idx], "targets": ids[starts + seq_length]}


def stream_layout(ids: np.ndarray, streams: int, seq_length: int) -> dict[str, np.ndarray]:
    """Cuts `ids [num_ids]` into `streams` contiguous rows for evaluation, covering every target exactly once.

    Returns `inputs`, `targets` (int32) and `tmask` (float32, 0 at padding), each
    `[streams, steps * seq_length]`: inputs are `ids[:-1]`, targets `ids[1:]`, row `b` holds the
    `b`-th contiguous slice. Padding (id 0, weight 0) only ever sits at the end of rows, so the state it
    produces is never used.
    """
    n = len(ids) - 1
    length = -(-n // streams)
    length = -(-length // seq_length) * seq_length
    total = streams * length
    pad = total - n
    inputs = np.concatenate([ids[:-1], np.zeros(pad, np.int32)]).reshape(streams, length)
    targets = np.concatenate([ids[1:], np.zeros(pad, np.int32)]).reshape(streams, length)
    tmask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    return {"inputs": inputs, "targets": targets, "tmask": tmask.reshape(streams, length)}


# ---------------------------------------------------------------------------------------------------------
# Model and losses.
# ---------------------------------------------------------------------------------------------------------


def build_model(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> LanguageModel:
    """`LanguageModel` from `config.model` (`vocab_size` is filled in from the data by `make_task`)."""
    m = config.model
    if int(m.vocab_size) < 1:
        raise UserError(
            "config.model.vocab_size is not set; it is filled from the data in training, so pass the"
            " --workdir of a trained run"
        )
    rates = config_utils.dropout_rates(m, ("dropout", "recurrent_dropout"))
    input_mode = config_utils.choice(m, "input_mode", get_args(InputMode), "an input mode")
    embed_dim = config_utils.positive_int(m, "embed_dim") if input_mode == "embed" else 1
    return LanguageModel(
        int(m.vocab_size),
        config_utils.layer_sizes(m),
        rngs=rngs,
        input_mode=input_mode,
        embed_dim=embed_dim,
        predict="last" if config.data.layout == "windows" else "all",
        **rates,
        unroll=config_utils.positive_int(m, "unroll"),
        impl=config_utils.lstm_impl(m),
    )


def window_loss(
    model: LanguageModel, batch: Mapping[str, jax.Array], *, key: jax.Array, train: bool, carry: Any
) -> tuple[jax.Array, tuple[dict[str, jax.Array], None]]:
    """Cross-entropy of the next character after each window.

    `batch`: `inputs [batch, T]`, `targets [batch]`, `weight [batch]`.
    """
    logits, _ = model(batch["inputs"], deterministic=not train, key=key)
    sums = losses.softmax_metric_sums(logits, batch["targets"], batch["weight"])
    return sums["loss"] / jnp.maximum(sums["count"], 1e-9), (sums, None)


def stream_loss(
    model: LanguageModel, batch: Mapping[str, jax.Array], *, key: jax.Array, train: bool, carry: Any
) -> tuple[jax.Array, tuple[dict[str, jax.Array], Any]]:
    """Cross-entropy at every position, starting from the carried state.

    `batch`: `inputs [batch, T]`, `targets [batch, T]`, `weight [batch]`, optional `tmask [batch, T]`;
    `carry`: a tuple of `(h, c)` per layer, each `[batch, H]`. Returns the new carry.
    """
    state = [LSTMState(h, c) for h, c in carry]
    logits, new_state = model(
        batch["inputs"], initial_state=state, deterministic=not train, key=key
    )
    w = batch["weight"][:, None] * jnp.ones(batch["targets"].shape, jnp.float32)
    if "tmask" in batch:
        w = w * batch["tmask"]
    sums = losses.softmax_metric_sums(logits, batch["targets"], w)
    new_carry = tuple((s.h, s.c) for s in new_state)
    return sums["loss"] / jnp.maximum(sums["count"], 1e-9), (sums, new_carry)


def _bits(values: dict[str, float]) -> dict[str, float]:
    return metrics.language_model_metrics(values, bits_name="bits_per_char")


# ---------------------------------------------------------------------------------------------------------
# The task.
# ---------------------------------------------------------------------------------------------------------


def _check_data_config(config: ml_collections.ConfigDict) -> None:
    d = config.data
    if d.layout not in LAYOUTS:
        raise UserError(f"config.data.layout={d.layout!r} is unknown; use one of {LAYOUTS}")
    for field in ("seq_length", "window_stride"):
        if int(d[field]) < 1:
            raise UserError(f"config.data.{field}={d[field]} must be >= 1; pass a positive integer")
    # Settings one layout or input mode never reads: a warning, not silence (the configs set them at
    # the value that means nothing, 1).
    if d.layout == "streams" and int(d.window_stride) != 1:
        logging.warning(
            "config.data.window_stride=%s has no effect with config.data.layout='streams' (only"
            " 'windows' reads it); pass --config.data.layout=windows to use it, or set it to 1",
            d.window_stride,
        )
    m = config.model
    if m.get("input_mode") == "scalar" and "embed_dim" in m and int(m.embed_dim) != 1:
        logging.warning(
            "config.model.embed_dim=%s has no effect with config.model.input_mode='scalar' (each"
            " character is one number); pass --config.model.input_mode=embed to use it, or set it"
            " to 1",
            m.embed_dim,
        )
    if d.layout == "streams" and not config_utils.drop_remainder(config):
        raise UserError(
            "config.train.drop_remainder=False needs config.data.layout='windows': the 'streams' layout"
            " cuts the text into batch_size streams read in consecutive pieces, so there is no last,"
            " smaller batch; leave out --config.train.drop_remainder"
        )


def make_task(config: ml_collections.ConfigDict) -> Task:
    """Loads the data, fills `config.model.vocab_size` and returns the engine `Task`."""
    _check_data_config(config)
    splits, info = load_splits(config)
    vocab = build_vocabulary(splits, bool(config.data.lower))
    config_utils.fill_derived(config, "model.vocab_size", vocab.size)
    _check_generate_config(config, vocab)
    ids = {k: _encode(vocab, v) for k, v in splits.items()}
    seq, bs = int(config.data.seq_length), int(config.train.batch_size)
    eval_bs = int(config.train.eval_batch_size) or bs
    seed = int(config.seed)
    drop = config_utils.drop_remainder(config)
    rng = np.random.default_rng([seed, 7])
    train_ids = ids["train"]
    if len(train_ids) < seq + 2:
        raise UserError(
            f"the training text has {len(train_ids)} characters, too few for windows of"
            f" {seq}; use a longer text or a smaller --config.data.seq_length"
        )
    n_primes = min(8, len(train_ids) - seq)
    prime_starts = rng.choice(len(train_ids) - seq, size=n_primes, replace=False)
    primes = [vocab.decode(train_ids[s : s + seq]) for s in sorted(prime_starts)]
    has_val = len(ids["validation"]) >= (seq + 1 if config.data.layout == "windows" else 2)
    if float(config.data.validation_fraction) > 0 or config.data.dataset == "tiny_shakespeare":
        if not has_val:
            raise UserError(
                f"the validation text has {len(ids['validation'])} characters, too few to evaluate;"
                " raise --config.data.validation_fraction or use a longer text"
            )

    info = {**info, "vocab_size": vocab.size, "layout": config.data.layout}
    artefacts = {VOCAB_FILE: vocab.to_json(), PRIMES_FILE: {"primes": primes}}
    eval_batches: dict[str, Any] = {}

    if config.data.layout == "windows":
        starts = window_starts(len(train_ids), seq, int(config.data.window_stride))
        info["train_windows"] = len(starts)

        def train_batches(epoch: int, start: int) -> Iterator[dict[str, np.ndarray]]:
            batches = epoch_batch_indices(
                len(starts), bs, seed=seed, epoch=epoch, drop_remainder=drop
            )
            for idx in batches[start:]:
                yield pad_batch(_windows(train_ids, starts[idx], seq), bs)

        if has_val:
            val = _windows(ids["validation"], window_starts(len(ids["validation"]), seq, 1), seq)
            info["validation_windows"] = len(val["targets"])
            eval_batches["validation"] = lambda: padded_batches(val, eval_bs)
        return Task(
            build_model=build_model,
            derived_fields=DERIVED_FIELDS,
            loss_fn=window_loss,
            train_batches=train_batches,
            steps_per_epoch=steps_per_epoch(len(starts), bs, drop),
            eval_batches=eval_batches,
            periodic_eval=("validation",) if has_val else (),
            artefacts=artefacts,
            data_info=info,
            data_fingerprint=data.fingerprint(ids),
            derive_metrics=_bits,
            extra_results=lambda model, results: _sample_results(model, vocab, primes, config),
            extra_results_on_best=True,
        )

    # streams: char-rnn truncated BPTT.
    n = len(train_ids) - 1
    # Leave room for an offset in [0, seq); every stream is a whole number of batches long, so the streams
    # lie back to back and the remainder is all at the end of the text (a longer stream's last columns
    # would be read by no batch: characters between two streams skipped every epoch).
    steps = (n - (seq - 1)) // bs // seq
    length = steps * seq
    if steps < 1:
        raise UserError(
            f"the training text ({len(train_ids)} characters) is too short for {bs} streams of"
            f" {seq} characters; use a smaller --config.train.batch_size or --config.data.seq_length"
        )
    info["train_streams"] = {"streams": bs, "stream_length": length, "steps_per_epoch": steps}

    def stream_batches(epoch: int, start: int) -> Iterator[dict[str, np.ndarray]]:
        offset = int(np.random.default_rng([seed, epoch, 11]).integers(seq)) if seq > 1 else 0
        rows_in = train_ids[offset : offset + bs * length].reshape(bs, length)
        rows_out = train_ids[offset + 1 : offset + 1 + bs * length].reshape(bs, length)
        for b in range(start, steps):
            sl = slice(b * seq, (b + 1) * seq)
            yield {"inputs": rows_in[:, sl], "targets": rows_out[:, sl]}

    val = stream_layout(ids["validation"], eval_bs, seq) if has_val else {}

    def val_batches() -> Iterator[dict[str, np.ndarray]]:
        for b in range(val["inputs"].shape[1] // seq):
            sl = slice(b * seq, (b + 1) * seq)
            yield {k: v[:, sl] for k, v in val.items()}

    hidden = config_utils.layer_sizes(config.model)

    def init_carry(batch_size: int) -> tuple:
        return tuple(
            (jnp.zeros((batch_size, h), jnp.float32), jnp.zeros((batch_size, h), jnp.float32))
            for h in hidden
        )

    return Task(
        build_model=build_model,
        derived_fields=DERIVED_FIELDS,
        loss_fn=stream_loss,
        train_batches=stream_batches,
        steps_per_epoch=steps,
        eval_batches={"validation": val_batches} if has_val else {},
        periodic_eval=("validation",) if has_val else (),
        init_carry=init_carry,
        artefacts=artefacts,
        data_info=info,
        data_fingerprint=data.fingerprint(ids),
        derive_metrics=_bits,
        extra_results=lambda model, results: _sample_results(model, vocab, primes, config),
        extra_results_on_best=True,
        # The validation text is cut into eval_batch_size streams, each starting from a zero state.
        fixed_on_resume=("train.eval_batch_size",),
    )


# ---------------------------------------------------------------------------------------------------------
# Generation.
# ---------------------------------------------------------------------------------------------------------


def generate_text(
    model: LanguageModel,
    vocab: Vocabulary,
    config: ml_collections.ConfigDict,
    prime: str,
    length: int,
    *,
    temperature: float = 0.0,
    top_k: int = 0,
    num_samples: int = 1,
    seed: int = 0,
) -> list[str]:
    """`num_samples` continuations of `prime`, each `length` characters (the prime not included).

    Stream models run the prime once and then carry the state (`generate_stateful`); window models predict
    each character from the last `seq_length` characters (`generate_windowed`), a shorter prime being
    pre-padded with spaces (or id 0 when the vocabulary has no space). Greedy when `temperature == 0`.
    Unknown characters in `prime` raise `UserError` naming them.
    """
    check_sampling(length, temperature, top_k, num_samples)
    if not prime:
        raise UserError("the priming text is empty; pass --prime=<some text>")
    ids = vocab.encode(prime, strict=True)
    key = jax.random.key(seed)
    if config.data.layout == "windows":
        seq = int(config.data.seq_length)
        pad = vocab.token_to_id.get(" ", 0)
        window = ([pad] * seq + ids)[-seq:]
        prime_arr = np.tile(np.asarray(window, np.int32), (num_samples, 1))
        out = generate.generate_windowed(
            model, prime_arr, length, key=key, temperature=temperature, top_k=top_k
        )
    else:
        prime_arr = np.tile(np.asarray(ids, np.int32), (num_samples, 1))
        out = generate.generate_stateful(
            model, prime_arr, length, key=key, temperature=temperature, top_k=top_k
        )
    return [vocab.decode(row) for row in np.asarray(out)]


def check_sampling(
    length: int, temperature: float, top_k: int, num_samples: int, *, flag: str = "--"
) -> None:
    """`UserError` for a generation setting out of range, named as `{flag}length` etc. (the mode's flags,
    or `--config.generate.` for the samples a training run makes at its end)."""
    generate.check_length(length, name=f"{flag}length", unit="characters")
    generate.check_sampling_flags(temperature, top_k, flag=flag, unit="characters")
    if not 1 <= num_samples <= generate.MAX_SAMPLES:
        raise UserError(
            f"{flag}num_samples={num_samples} must be between 1 and {generate.MAX_SAMPLES:,}"
        )
    if num_samples * length > generate.MAX_TOKENS:
        raise UserError(
            f"num_samples={num_samples} x length={length} is {num_samples * length:,} characters, over"
            f" the {generate.MAX_TOKENS:,} one call generates; ask for fewer or shorter samples (and run"
            " generation again for more)"
        )


def _check_generate_config(config: ml_collections.ConfigDict, vocab: Vocabulary) -> None:
    """The `generate` section a run samples with after training, checked before it trains."""
    g = config.generate
    check_sampling(
        int(g.length),
        float(g.temperature),
        int(g.top_k),
        int(g.num_samples),
        flag="--config.generate.",
    )
    generate.warn_unused_top_k(float(g.temperature), int(g.top_k), unit="characters")
    if g.prime:
        try:
            vocab.encode(str(g.prime), strict=True)
        except UserError as e:
            raise UserError(
                f"config.generate.prime: {e}; or pass --config.generate.prime='' (a random training"
                " window)"
            ) from None


def _saved_prime(primes: list[str], seed: int) -> str:
    """The training window a sample without a prime starts from, chosen by `seed`: the same for the
    samples after training (`config.seed`) and for ``--mode=generate`` (``--sample_seed``, by default
    `config.seed`), so that both print the same text."""
    return primes[int(np.random.default_rng(seed).integers(len(primes)))]


def _sample_results(
    model: LanguageModel, vocab: Vocabulary, primes: list[str], config: ml_collections.ConfigDict
) -> dict[str, Any]:
    g = config.generate
    prime = g.prime or _saved_prime(primes, int(config.seed))
    texts = generate_text(
        model,
        vocab,
        config,
        prime,
        int(g.length),
        temperature=float(g.temperature),
        top_k=int(g.top_k),
        num_samples=int(g.num_samples),
        seed=int(config.seed),
    )
    return {
        "samples": {
            "prime": prime,
            "temperature": float(g.temperature),
            "top_k": int(g.top_k),
            "texts": texts,
        }
    }


def _print_samples(samples: Mapping[str, Any]) -> None:
    # At temperature 0 (greedy: the most likely character) top_k is not used: the header does not name it.
    how = "greedy" if samples["temperature"] == 0 else f"top_k {samples['top_k']}"
    for n, text in enumerate(samples["texts"], start=1):
        print(
            f"--- sample {n} (temperature {samples['temperature']}, {how}) ---\n"
            f"{samples['prime']}{text}",
            flush=True,
        )


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (or resumes; a finished run is left as it is) and prints the samples of `config.generate`."""
    check_run(config, workdir)
    task = make_task(config)
    results = train_and_evaluate(config, workdir, task)
    if "samples" in results:
        _print_samples(results["samples"])
    return results


def generate_samples(
    config: ml_collections.ConfigDict | None,
    workdir: str,
    *,
    prime: str | None = None,
    length: int | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    num_samples: int | None = None,
    seed: int | None = None,
    which: str = "best",
) -> dict[str, Any]:
    """Generation from a workdir alone: saved vocabulary, primes and the best checkpoint.

    The config saved in `workdir` takes precedence over `config`, but for its `generate` section (a
    warning names the other fields where `config` differs; see `load_trained`). Arguments left as None
    come from `config.generate`; without any prime, one of the random training windows saved at
    training time is used (chosen by `seed`). Prints and returns the samples.
    """
    if seed is not None:
        generate.check_seed(int(seed))
    config, model, step = load_trained(
        config, workdir, build_model, which=which, derived=DERIVED_FIELDS
    )
    vocab = Vocabulary.load(os.path.join(workdir, VOCAB_FILE))
    if int(config.model.vocab_size) != vocab.size:
        raise UserError(
            f"{workdir}: the config's model.vocab_size={config.model.vocab_size} differs from the saved"
            f" vocabulary ({vocab.size}); run generate with --workdir only (no --config)"
        )
    g = config.generate
    # The generate section's values that no flag overrides (a --config's): named as given, not as the
    # flag that was not passed (0 and 1 stand in for the overridden ones, checked as flags below).
    check_sampling(
        int(g.length if length is None else 1),
        float(g.temperature if temperature is None else 0.0),
        int(g.top_k if top_k is None else 0),
        int(g.num_samples if num_samples is None else 1),
        flag="--config.generate.",
    )
    seed = int(config.seed) if seed is None else int(seed)
    given = "--prime"
    if prime is None or prime == "":
        prime, given = g.prime, "config.generate.prime"
    if prime:  # the setting that holds a character the model never saw is named with them
        try:
            vocab.encode(str(prime), strict=True)
        except UserError as e:
            raise UserError(f"{given}: {e}") from None
    if not prime:
        saved = load_artefact(workdir, PRIMES_FILE)
        primes = saved.get("primes") if isinstance(saved, dict) else None
        if not (isinstance(primes, list) and primes and all(isinstance(p, str) for p in primes)):
            raise UserError(
                f"{os.path.join(workdir, PRIMES_FILE)} holds no list of priming texts under"
                ' "primes"; the file is damaged: pass --prime=<text>, or restore the file'
            )
        prime = _saved_prime(primes, seed)
    samples = {
        "prime": prime,
        "temperature": float(g.temperature if temperature is None else temperature),
        "top_k": int(g.top_k if top_k is None else top_k),
        "step": step,
    }
    generate.warn_unused_top_k(
        samples["temperature"],
        samples["top_k"],
        unit="characters",
        temperature_flag=temperature is not None,
        top_k_flag=top_k is not None,
        fix_flag="--temperature",
    )
    samples["texts"] = generate_text(
        model,
        vocab,
        config,
        prime,
        int(g.length if length is None else length),
        temperature=samples["temperature"],
        top_k=samples["top_k"],
        num_samples=int(g.num_samples if num_samples is None else num_samples),
        seed=seed,
    )
    _print_samples(samples)
    return samples
