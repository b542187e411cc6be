"""Word-level language model over a CSV text column (the fashion-description tutorial).

Tokenisation is Keras' `Tokenizer` (`lstm_jax.text.Vocabulary()`, fitted on every description, as the
tutorial). Descriptions with fewer than two words give no examples and are skipped. The descriptions are split
80/20 into training and validation by `train_test_split` with a fixed seed (``config.data.split_seed``, not
``config.seed``), by description, so no prefix of a validation description is trained on.

Two equivalent training forms, chosen by ``config.data.form``:

* ``"prefixes"`` (the tutorial): every description ``w_1..w_n`` gives the examples
  ``(w_1..w_{i-1}) -> w_i`` for ``i = 2..n``, pre-padded with 0 to the longest description minus one;
  ``LanguageModel(predict="last")``. ``config.model.mask_padding=False`` is the tutorial (its Embedding has no
  ``mask_zero``, so the padding is fed through the LSTM); True masks it.
* ``"lines"``: each description once, inputs ``w_1..w_{n-1}`` and targets ``w_2..w_n`` (post-padded, padding
  weighted 0), a prediction at every position (``predict="all"``). Because the LSTM is causal, the
  prediction at position ``i`` sees exactly the prefix ``w_1..w_i``, so the mean loss over lines equals the
  mean loss over all prefixes of a prefix model that masks its padding (same weights; tested in
  ``tests/test_word_textgen.py``). It does ~n times less work per epoch. Batches are built from lines of
  similar length and padded to a few fixed bucket lengths, so only a handful of shapes compile.

Note the two forms give the same loss function but not the same optimisation: an epoch of the lines form
takes ``lines / batch`` steps, the prefix form ``prefixes / batch``.
"""

from __future__ import annotations

import functools
import itertools
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from lstm_jax import config_utils, data, generate, losses, metrics
from lstm_jax.errors import UserError
from lstm_jax.models import ACTIVATIONS, LanguageModel
from lstm_jax.text import Vocabulary
from lstm_jax.train import (
    Task,
    check_run,
    epoch_batch_indices,
    epoch_permutation,
    load_trained,
    pad_batch,
    steps_per_epoch,
    train_and_evaluate,
)

__all__ = [
    "DEFAULT_PATH",
    "VOCAB_FILE",
    "FORMS",
    "load_lines",
    "split_lines",
    "prefix_examples",
    "bucket_length",
    "line_batch",
    "build_model",
    "prefix_loss",
    "line_loss",
    "make_task",
    "generate_words",
    "train",
    "generate_samples",
]

DEFAULT_PATH = "fashion/myntra_products_catalog.csv"  # under $LSTM_JAX_DATA
VOCAB_FILE = "vocab.json"
FORMS = ("prefixes", "lines")
DERIVED_FIELDS = ("model.vocab_size", "data.max_len")  # filled in from the data by make_task


# ---------------------------------------------------------------------------------------------------------
# Data.
# ---------------------------------------------------------------------------------------------------------


def load_lines(
    config: ml_collections.ConfigDict,
) -> tuple[list[list[int]], Vocabulary, dict[str, Any]]:
    """Reads `config.data.text_column` of the CSV, fits the vocabulary on all texts and encodes them.

    Returns `(token id lists of the texts with >= 2 words, vocabulary, info)`.
    """
    path = data.resolve_path(config.data.path or None, DEFAULT_PATH, what="text CSV")
    texts, info = data.load_csv_texts(path, config.data.text_column)
    vocab = Vocabulary.from_texts(texts)
    seqs = [s for s in vocab.encode_batch(texts) if len(s) >= 2]
    if not seqs:
        raise UserError(
            f"{path}: no text in column {config.data.text_column!r} has two or more words; use a"
            " CSV whose text column holds sentences"
        )
    info = {
        **info,
        "vocab_size": vocab.size,
        "lines": len(seqs),
        "skipped_short": len(texts) - len(seqs),
    }
    return seqs, vocab, info


def split_lines(
    seqs: Sequence[list[int]], validation_fraction: float, seed: int
) -> tuple[list[list[int]], list[list[int]]]:
    """`(train, validation)` lines: sklearn's `train_test_split(test_size=fraction, random_state=seed)`."""
    if validation_fraction == 0:
        return list(seqs), []
    data.check_fraction(float(validation_fraction), "config.data.validation_fraction")
    if len(seqs) < 2:
        raise UserError(
            f"only {len(seqs)} usable line(s), too few for a validation split; use more text or"
            " --config.data.validation_fraction=0"
        )
    train_idx, val_idx = data.train_test_split(
        len(seqs), float(validation_fraction), int(seed), field="config.data.validation_fraction"
    )
    return [seqs[i] for i in train_idx], [seqs[i] for i in val_idx]


def prefix_examples(seqs: Sequence[Sequence[int]], max_len: int) -> dict[str, np.ndarray]:
    """The tutorial's n-gram prefixes: `inputs [examples, max_len - 1]` pre-padded with 0, `targets`.

    For each line `w_1..w_n` and `i = 2..n`: inputs `w_1..w_{i-1}` (right-aligned), target `w_i`.
    `max_len` is at least the longest line's length (the tutorial's `max_sequence_len`): no prefix is cut.
    """
    longest = max((len(s) for s in seqs), default=0)
    if longest > max_len:
        raise ValueError(
            f"prefix_examples: max_len={max_len} is shorter than the longest line ({longest} words);"
            f" pass max_len >= {longest}"
        )
    n = sum(len(s) - 1 for s in seqs)
    inputs = np.zeros((n, max_len - 1), np.int32)
    targets = np.zeros((n,), np.int32)
    row = 0
    for s in seqs:
        for i in range(1, len(s)):
            inputs[row, max_len - 1 - i :] = s[:i]
            targets[row] = s[i]
            row += 1
    return {"inputs": inputs, "targets": targets}


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket `>= length` (buckets ascending); the last bucket must hold every line."""
    for b in buckets:
        if b >= length:
            return int(b)
    raise ValueError(f"length {length} exceeds the largest bucket {buckets[-1]}")


def line_batch(seqs: Sequence[Sequence[int]], rows: int, length: int) -> dict[str, np.ndarray]:
    """Lines -> `inputs`, `targets`, `tmask` `[rows, length]` (post-padded) and `weight [rows]`.

    Rows beyond `len(seqs)` are padding (weight 0).
    """
    inputs = np.zeros((rows, length), np.int32)
    targets = np.zeros((rows, length), np.int32)
    tmask = np.zeros((rows, length), np.float32)
    weight = np.zeros((rows,), np.float32)
    for r, s in enumerate(seqs):
        k = len(s) - 1
        inputs[r, :k] = s[:-1]
        targets[r, :k] = s[1:]
        tmask[r, :k] = 1.0
        weight[r] = 1.0
    return {"inputs": inputs, "targets": targets, "tmask": tmask, "weight": weight}


def _buckets(max_inputs: int, configured: Sequence[int]) -> tuple[int, ...]:
    _check_buckets(configured)
    bs = sorted({int(b) for b in configured if int(b) < max_inputs})
    return (*bs, max_inputs)


def _check_buckets(configured: Any) -> None:
    if not isinstance(configured, list | tuple) or not all(
        isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in configured
    ):
        raise UserError(
            f"config.data.buckets={configured!r} must be a tuple of input lengths (integers >= 1);"
            " pass e.g. --config.data.buckets='(8, 16, 32)', or '()' for one bucket"
        )


def _line_epoch(
    seqs: Sequence[list[int]],
    bs: int,
    seed: int,
    epoch: int,
    buckets: Sequence[int],
    drop_remainder: bool = True,
) -> list[np.ndarray]:
    """The batches (index arrays) of one epoch: a function of (seed, epoch) only, so resuming is exact.

    Lines are shuffled, a random `len % bs` of them left out (kept with `drop_remainder=False`: the
    longest batch is then the short one), then sorted by length (ties stay in shuffled
    order) and cut into batches whose order is shuffled: every batch holds lines of similar length, so
    padding is minimal (a few very long descriptions would otherwise pad whole batches to hundreds of
    words), while the line -> batch assignment among equal lengths still changes every epoch.
    """
    order = epoch_permutation(seed, epoch, len(seqs))[
        : steps_per_epoch(len(seqs), bs, drop_remainder) * bs
    ]
    lengths = np.asarray([len(s) for s in seqs])
    order = order[np.argsort(lengths[order], kind="stable")]
    batches = [order[i : i + bs] for i in range(0, len(order), bs)]
    perm = np.random.default_rng([seed, epoch, 5]).permutation(len(batches))
    return [batches[i] for i in perm]


# ---------------------------------------------------------------------------------------------------------
# Model and losses.
# ---------------------------------------------------------------------------------------------------------


def build_model(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> LanguageModel:
    """Embedding -> LSTMs -> dense layers -> vocabulary logits, from `config.model`."""
    m = config.model
    if int(m.vocab_size) < 1:
        raise UserError(
            "config.model.vocab_size is not set; it is filled from the data in training, so pass the"
            " --workdir of a trained run"
        )
    return LanguageModel(
        int(m.vocab_size),
        config_utils.layer_sizes(m),
        rngs=rngs,
        input_mode="embed",
        embed_dim=config_utils.positive_int(m, "embed_dim"),
        dropout=config_utils.dropout_rates(m, ("dropout",))["dropout"],
        dense_layers=config_utils.dense_layers(m, ACTIVATIONS),
        predict="last" if config.data.form == "prefixes" else "all",
        unroll=config_utils.positive_int(m, "unroll"),
        impl=config_utils.lstm_impl(m),
    )


def prefix_loss(
    model: LanguageModel,
    batch: Mapping[str, jax.Array],
    *,
    key: jax.Array,
    train: bool,
    carry: Any,
    mask_padding: bool = False,
) -> tuple[jax.Array, tuple[dict[str, jax.Array], None]]:
    """Next-word cross-entropy of pre-padded prefixes: `inputs [batch, T]`, `targets [batch]`, `weight`."""
    mask = (batch["inputs"] != 0) if mask_padding else None
    logits, _ = model(batch["inputs"], mask=mask, deterministic=not train, key=key)
    sums = losses.softmax_metric_sums(logits, batch["targets"], batch["weight"])
    return sums["loss"] / jnp.maximum(sums["count"], 1e-9), (sums, None)


def line_loss(
    model: LanguageModel,
    batch: Mapping[str, jax.Array],
    *,
    key: jax.Array,
    train: bool,
    carry: Any,
    logits_chunk: int = 0,
) -> tuple[jax.Array, tuple[dict[str, jax.Array], None]]:
    """Masked per-position cross-entropy of whole lines: `inputs`, `targets`, `tmask [batch, T]`, `weight`.

    The mean is over real target words (sum of `weight * tmask`), i.e. the mean over all prefixes.
    `logits_chunk > 0` applies the output layer `logits_chunk` positions at a time
    (`losses.chunked_softmax_metric_sums`: same sums, no `[batch, T, vocab]` array); 0 = all at once.
    """
    w = batch["weight"][:, None] * batch["tmask"]
    if logits_chunk > 0:
        feats, _ = model.features(batch["inputs"], deterministic=not train, key=key)
        sums = losses.chunked_softmax_metric_sums(
            feats, model.head, batch["targets"], w, chunk_size=logits_chunk
        )
    else:
        logits, _ = model(batch["inputs"], deterministic=not train, key=key)
        sums = losses.softmax_metric_sums(logits, batch["targets"], w)
    return sums["loss"] / jnp.maximum(sums["count"], 1e-9), (sums, None)


# ---------------------------------------------------------------------------------------------------------
# The task.
# ---------------------------------------------------------------------------------------------------------


def make_task(config: ml_collections.ConfigDict) -> Task:
    """Loads and splits the texts, fills `config.model.vocab_size` / `data.max_len`, returns the `Task`."""
    form = config.data.form
    if form not in FORMS:
        raise UserError(f"config.data.form={form!r} is unknown; use one of {', '.join(FORMS)}")
    chunk = config.train.get("logits_chunk", 0)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0:
        raise UserError(
            f"config.train.logits_chunk={chunk!r} must be an integer >= 0 (0 = all positions at"
            " once); pass e.g. --config.train.logits_chunk=1024"
        )
    if form == "lines":
        _check_buckets(config.data.buckets)
    config_utils.check_split_seed(config.data)
    seqs, vocab, info = load_lines(config)
    seed = int(config.seed)
    drop = config_utils.drop_remainder(config)
    # The split has its own fixed seed (the tutorial's random_state), so runs of other --config.seed values
    # are scored on the same validation descriptions. A config from before the field split with `seed`.
    split_seed = int(config.data.get("split_seed", seed))
    train_lines, val_lines = split_lines(seqs, float(config.data.validation_fraction), split_seed)
    max_len = max(len(s) for s in seqs)  # the tutorial's max_sequence_len (longest description)
    config_utils.fill_derived(config, "model.vocab_size", vocab.size)
    config_utils.fill_derived(config, "data.max_len", max_len)
    _check_generate_config(config, vocab)
    bs = int(config.train.batch_size)
    eval_bs = int(config.train.eval_batch_size) or bs
    info = {
        **info,
        "form": form,
        "max_len": max_len,
        "train_lines": len(train_lines),
        "validation_lines": len(val_lines),
        "train_targets": sum(len(s) - 1 for s in train_lines),
        "validation_targets": sum(len(s) - 1 for s in val_lines),
        "split": f"{config.data.validation_fraction} validation, by description (sklearn"
        f" train_test_split, random_state={split_seed})",
    }
    artefacts = {VOCAB_FILE: vocab.to_json()}
    extra = lambda model, results: _sample_results(model, vocab, config)  # noqa: E731

    def data_fix(saved: ml_collections.ConfigDict, saved_fingerprint: str) -> str | None:
        """A run saved before `data.split_seed` existed split with its `seed`: when that split gives the
        data it trained on, the override that restores it."""
        saved_data = saved.get("data") or {}
        if "split_seed" in saved_data or saved.get("seed") is None:
            return None
        old = int(saved.get("seed"))
        if old == split_seed:
            return None
        fraction = float(config.data.validation_fraction)
        try:
            old_train, old_val = split_lines(seqs, fraction, old)
        except (UserError, ValueError):  # a seed or fraction this version refuses
            return None
        if data.fingerprint(*_flat(old_train), *_flat(old_val)) != saved_fingerprint:
            return None
        return (
            "the run was trained before config.data.split_seed existed, when the validation split"
            f" took config.seed={old} as its seed (now config.data.split_seed={split_seed}); pass"
            f" --config.data.split_seed={old} to resume it with its own split"
        )

    if form == "prefixes":
        # Examples are materialised per batch from (line, prefix length) pairs: the full [examples, max_len]
        # array of a real corpus would not fit in memory.
        pairs = np.asarray([(n, i) for n, s in enumerate(train_lines) for i in range(1, len(s))])

        def train_batches(epoch: int, start: int) -> Iterator[dict[str, np.ndarray]]:
            batches = epoch_batch_indices(
                len(pairs), bs, seed=seed, epoch=epoch, drop_remainder=drop
            )
            for idx in batches[start:]:
                yield pad_batch(_prefix_batch(train_lines, pairs[idx], max_len), bs)

        def val_batches() -> Iterator[dict[str, np.ndarray]]:
            vp = np.asarray([(n, i) for n, s in enumerate(val_lines) for i in range(1, len(s))])
            for lo in range(0, len(vp), eval_bs):
                yield pad_batch(_prefix_batch(val_lines, vp[lo : lo + eval_bs], max_len), eval_bs)

        mask_padding = bool(config.model.mask_padding)

        def loss_fn(model, batch, *, key, train, carry):
            return prefix_loss(
                model, batch, key=key, train=train, carry=carry, mask_padding=mask_padding
            )

        steps = steps_per_epoch(len(pairs), bs, drop)
        info["train_examples"] = len(pairs)
    else:
        buckets = _buckets(max_len - 1, config.data.buckets)
        info["buckets"] = list(buckets)

        def train_batches(epoch: int, start: int) -> Iterator[dict[str, np.ndarray]]:
            batches = _line_epoch(train_lines, bs, seed, epoch, buckets, drop)
            for idx in batches[start:]:
                lines = [train_lines[i] for i in idx]
                length = bucket_length(max(len(s) for s in lines) - 1, buckets)
                yield line_batch(lines, bs, length)

        def val_batches() -> Iterator[dict[str, np.ndarray]]:
            order = sorted(range(len(val_lines)), key=lambda i: len(val_lines[i]))
            for lo in range(0, len(order), eval_bs):
                lines = [val_lines[i] for i in order[lo : lo + eval_bs]]
                length = bucket_length(max(len(s) for s in lines) - 1, buckets)
                yield line_batch(lines, eval_bs, length)

        loss_fn = functools.partial(
            line_loss, logits_chunk=int(config.train.get("logits_chunk", 0))
        )
        steps = steps_per_epoch(len(train_lines), bs, drop)
        info["train_examples"] = len(train_lines)

    if steps < 1:
        raise UserError(
            f"the training split gives {info['train_examples']} examples, fewer than one batch of"
            f" {bs}; use a smaller --config.train.batch_size or more text"
        )
    return Task(
        build_model=build_model,
        derived_fields=DERIVED_FIELDS,
        loss_fn=loss_fn,
        train_batches=train_batches,
        steps_per_epoch=steps,
        eval_batches={"validation": val_batches} if val_lines else {},
        periodic_eval=("validation",) if val_lines else (),
        artefacts=artefacts,
        data_info=info,
        data_fingerprint=data.fingerprint(*_flat(train_lines), *_flat(val_lines)),
        data_fix=data_fix,
        derive_metrics=metrics.language_model_metrics,  # perplexity = exp(nats per word)
        extra_results=extra,
        extra_results_on_best=True,
    )


def _flat(lines: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """`(lengths, concatenated ids)` of token lines, for `data.fingerprint`."""
    lengths = np.fromiter((len(s) for s in lines), np.int64, count=len(lines))
    return lengths, np.fromiter(itertools.chain.from_iterable(lines), np.int64)


def _prefix_batch(
    lines: Sequence[Sequence[int]], sel: np.ndarray, max_len: int
) -> dict[str, np.ndarray]:
    inputs = np.zeros((len(sel), max_len - 1), np.int32)
    targets = np.zeros((len(sel),), np.int32)
    for r, (n, i) in enumerate(sel):
        s = lines[n]
        inputs[r, max_len - 1 - i :] = s[:i]
        targets[r] = s[i]
    return {"inputs": inputs, "targets": targets}


# ---------------------------------------------------------------------------------------------------------
# Generation.
# ---------------------------------------------------------------------------------------------------------


def generate_words(
    model: LanguageModel,
    vocab: Vocabulary,
    config: ml_collections.ConfigDict,
    seed_text: str,
    num_words: int,
    *,
    temperature: float = 0.0,
    top_k: int = 0,
    seed: int = 0,
) -> tuple[str, list[str]]:
    """`num_words` words after `seed_text`, greedy (`temperature == 0`) or sampled, in one compiled loop.

    Each word comes from the last `max_len - 1` words, as the tutorial's loop (a longer seed is cut from
    the front). Seed words outside the vocabulary are dropped, as Keras' `texts_to_sequences` does (they are returned
    so callers can report them). Generation stops early at an id that is no word (0, padding), as the
    tutorial's loop appends nothing then. Returns `(generated text, dropped seed words)`.
    """
    check_sampling(num_words, temperature, top_k)
    tokens = vocab.tokenize(seed_text)
    dropped = [t for t in tokens if t not in vocab.token_to_id]
    ids = [vocab.token_to_id[t] for t in tokens if t in vocab.token_to_id]
    if not ids:
        raise UserError(
            f"{_no_known_word(seed_text, vocab)}; use words of the training texts in --seed_text or"
            " --config.generate.seed_texts"
        )
    key = jax.random.key(seed)
    width = int(config.data.max_len) - 1
    prefixes = config.data.form == "prefixes"
    if prefixes or 0 < width < len(ids) + num_words - 1:
        # The tutorial's loop: each word from the last max_len - 1 words (pad_sequences' "pre" padding
        # and truncation). A line model carries its state while the text fits in that window; past it,
        # it reads the window with the padding masked, which is the prefix model it equals.
        window = np.asarray([([0] * width + ids)[-width:]], np.int32)
        out = generate.generate_windowed(
            model if prefixes else _LastPosition(model),
            window,
            num_words,
            key=key,
            temperature=temperature,
            top_k=top_k,
            mask_padding=bool(config.model.mask_padding) if prefixes else True,
        )
    else:
        out = generate.generate_stateful(
            model,
            np.asarray([ids], np.int32),
            num_words,
            key=key,
            temperature=temperature,
            top_k=top_k,
        )
    words = []
    for i in np.asarray(out)[0]:
        word = vocab.id_to_token(int(i))
        if word is None:
            break
        words.append(word)
    return " ".join(words), dropped


class _LastPosition(nnx.Module):
    """A `LanguageModel(predict="all")` as a window -> next word model: the last position's logits."""

    def __init__(self, model: LanguageModel):
        self.model = model

    def __call__(self, ids: jax.Array, *, mask: jax.Array | None = None):
        logits, states = self.model(ids, mask=mask)
        return logits[:, -1], states


def check_sampling(num_words: int, temperature: float, top_k: int, *, flag: str = "--") -> None:
    """`UserError` for a generation setting out of range, named as `{flag}num_words` etc. (the mode's
    flags, or `--config.generate.` for the samples a training run makes at its end)."""
    generate.check_length(num_words, name=f"{flag}num_words", unit="words")
    generate.check_sampling_flags(temperature, top_k, flag=flag, unit="words")


def _no_known_word(seed_text: str, vocab: Vocabulary) -> str:
    ids = [i for i in range(1, 6) if i != vocab.oov_id][:3]
    frequent = [w for w in (vocab.id_to_token(i) for i in ids) if w]
    return (
        f"the seed text {seed_text!r} has no word of the training vocabulary (its most frequent"
        f" words: {' '.join(frequent)!r})"
    )


def _unusable_seed_texts(
    config: ml_collections.ConfigDict, vocab: Vocabulary, texts: Sequence[str] | None = None
) -> list[str]:
    """`texts` (default `config.generate.seed_texts`) without a word of `vocab` (their samples are
    skipped)."""
    texts = config.generate.seed_texts if texts is None else texts
    return [t for t in texts if not any(w in vocab.token_to_id for w in vocab.tokenize(t))]


def _check_generate_config(config: ml_collections.ConfigDict, vocab: Vocabulary) -> None:
    """The `generate` section a run samples with after training, checked before it trains: settings
    out of range are errors; seed texts with no word of this vocabulary (another CSV than the
    tutorial's) are skipped with a warning now and a note in results.json."""
    g = config.generate
    check_sampling(int(g.num_words), float(g.temperature), int(g.top_k), flag="--config.generate.")
    generate.warn_unused_top_k(float(g.temperature), int(g.top_k), unit="words")
    for text in _unusable_seed_texts(config, vocab):
        logging.warning(
            "%s: its sample will be skipped; set --config.generate.seed_texts to texts of this data",
            _no_known_word(text, vocab),
        )


def _skipped_sample(text: str) -> dict[str, Any]:
    """The sample record of a seed text with no word of the vocabulary (results.json, `_print_samples`)."""
    return {"seed_text": text, "generated": None, "skipped": "no word of the vocabulary"}


def _sample_results(
    model: LanguageModel, vocab: Vocabulary, config: ml_collections.ConfigDict
) -> dict[str, Any]:
    g = config.generate
    out = []
    unusable = _unusable_seed_texts(config, vocab)
    for text in g.seed_texts:
        if text in unusable:
            out.append(_skipped_sample(text))
            continue
        words, _ = generate_words(
            model,
            vocab,
            config,
            text,
            int(g.num_words),
            temperature=float(g.temperature),
            top_k=int(g.top_k),
            seed=int(config.seed),
        )
        out.append({"seed_text": text, "generated": words})
    return {"samples": {"temperature": float(g.temperature), "top_k": int(g.top_k), "texts": out}}


def _print_samples(samples: Mapping[str, Any]) -> None:
    for s in samples["texts"]:
        if s.get("generated") is None:
            print(f"{s['seed_text']} -> (skipped: {s.get('skipped', 'no sample')})", flush=True)
        else:
            print(f"{s['seed_text']} -> {s['generated']}", flush=True)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (or resumes; a finished run is left as it is) and prints samples for `generate.seed_texts`."""
    check_run(config, workdir)
    results = train_and_evaluate(config, workdir, make_task(config))
    if "samples" in results:
        _print_samples(results["samples"])
    return results


def generate_samples(
    config: ml_collections.ConfigDict | None,
    workdir: str,
    *,
    seed_text: str | None = None,
    num_words: int | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
    interactive: bool | None = None,
    which: str = "best",
) -> list[dict[str, str]]:
    """Generation from a workdir alone (saved config, vocabulary and best checkpoint).

    A `config` (from --config) gives its `generate` section only; the saved config is used for the
    rest, and a warning names the other fields where `config` differs (see `load_trained`).

    Without `seed_text`: on a terminal, prompts for seed texts until an empty line (the tutorial's
    interactive use); from a pipe or a file on stdin (``cat seeds.txt | ...``), its non-empty lines;
    otherwise the config's `generate.seed_texts`. A seed text with no word of the vocabulary is
    skipped with a note, as after training (an error when every one is). Prints and returns the
    samples.
    """
    if seed is not None:
        generate.check_seed(int(seed))
    config, model, _ = load_trained(
        config, workdir, build_model, which=which, derived=DERIVED_FIELDS
    )
    vocab = Vocabulary.load(os.path.join(workdir, VOCAB_FILE))
    g = config.generate
    # The generate section's values that no flag overrides (a --config's): named as given, not as the
    # flag that was not passed (1 and 0 stand in for the overridden ones, checked as flags below).
    check_sampling(
        int(g.num_words if num_words is None else 1),
        float(g.temperature if temperature is None else 0.0),
        int(g.top_k if top_k is None else 0),
        flag="--config.generate.",
    )
    kw = {
        "temperature": float(g.temperature if temperature is None else temperature),
        "top_k": int(g.top_k if top_k is None else top_k),
        "seed": int(config.seed if seed is None else seed),
    }
    n = int(g.num_words if num_words is None else num_words)
    # Before any prompt: the prompt reports a seed text's error and goes on, which for a setting out of
    # range would be the same error after every line typed (and exit status 0).
    check_sampling(n, kw["temperature"], kw["top_k"])
    generate.warn_unused_top_k(
        kw["temperature"],
        kw["top_k"],
        unit="words",
        temperature_flag=temperature is not None,
        top_k_flag=top_k is not None,
        fix_flag="--temperature",
    )
    piped: list[str] = []
    if interactive is None and not seed_text and data.stdin_piped():
        piped = [t.strip() for _, t in data.read_stdin_lines("seed texts")]
        if not piped:
            print(
                "note: no seed text on stdin; generating from the config's generate.seed_texts",
                file=sys.stderr,
            )
    interactive = sys.stdin.isatty() if interactive is None else interactive

    def one(text: str) -> dict[str, str]:
        words, dropped = generate_words(model, vocab, config, text, n, **kw)
        if dropped:
            print(
                f"note: dropped seed words not in the vocabulary: {', '.join(dropped)}",
                file=sys.stderr,
            )
        sample = {"seed_text": text, "generated": words}
        print(f"{text} -> {words}", flush=True)
        return sample

    if seed_text:
        return [one(seed_text)]
    texts = piped or list(g.seed_texts)
    if not interactive and not texts:
        raise UserError(
            "no seed text to generate from: generate.seed_texts is empty and stdin is not a terminal"
            " (no prompt); pass --seed_text=<words of the training texts>, or seed texts one per"
            " line on stdin"
        )
    if not interactive:
        # As the samples after training: a seed text with no word of this vocabulary (the tutorial's
        # fashion words, a run on another CSV) is skipped with a note, the others generated; only when
        # every one is unusable is it an error (naming the first).
        unusable = _unusable_seed_texts(config, vocab, texts)
        if len(unusable) == len(texts):
            return [one(t) for t in texts]
        out = []
        for t in texts:
            if t in unusable:
                print(
                    f"note: {_no_known_word(t, vocab)}: skipped; pass --seed_text=<words of the"
                    " training texts>",
                    file=sys.stderr,
                )
                out.append(_skipped_sample(t))
                _print_samples({"texts": out[-1:]})
            else:
                out.append(one(t))
        return out
    out = []
    while True:
        try:
            text = input("seed text (empty line to quit): ").strip()
        except EOFError:
            break
        if not text:
            break
        try:
            out.append(one(text))
        except UserError as e:  # keep prompting after a seed with no known word
            print(f"error: {e}", file=sys.stderr)
    return out
