"""End-to-end parity of the four tutorial models with the Keras tutorials' own models, on the same weights.

`tests/test_convert.py` checks one LSTM layer against `keras.layers.LSTM`; here each whole model is checked.
For every tutorial, the data go through the task's own pipeline (`make_task` on a small file in the real
layout; the batch is the first one `Task.train_batches` yields, the batch the engine trains on first), the
model is the task's `build_model` from the experiment's config (the layer sizes are the tutorial's; only
the data are small: vocabulary, sequence length, batch), and the Keras model is the tutorial's `Sequential`
with lstm_jax's (randomly perturbed) weights copied in (`lstm_jax.convert.to_keras` for the LSTMs, the
arrays themselves for Embedding and Dense). In inference mode (no dropout), on the same batch:

* (a) the outputs agree: lstm_jax's softmax / sigmoid of its logits (for the classifiers through
  `classification.predict_proba`, their evaluation and predict path) against Keras' probabilities;
* (b) the task's training loss (`loss_fn(..., train=False)`, `lstm_jax.losses`) equals the tutorial's Keras
  loss (sparse categorical or binary cross-entropy on the probabilities, as `compile(loss=...)`);
* (c) the gradients of that loss with respect to every parameter agree (Keras': `jax.grad` through
  `Model.stateless_call` on the JAX backend);
* (d) one update of the tutorial's optimizer from the config (`lstm_jax.optim.make_optimizer`: Keras' Adam
  for char, word and fake news; RMSprop for IMDB) gives the weights `keras.optimizers.get(name)` does
  (Keras' `compile(optimizer="adam" | "rmsprop")`): from the same gradients to 1e-6, and each from its own
  gradients to 1e-5 plus what their float32 difference moves the step by (`_first_step_slope`).

The models and their Keras equivalents:

* char (Macbeth): each character is one scalar, `char_to_int[c] / float(n_vocab)` with the tutorial's
  sorted character set (checked against the vocabulary lstm_jax builds), a window of 50 -> LSTM 300
  (return_sequences) -> Dropout 0.2 -> LSTM 300 -> Dropout 0.2 -> Dense softmax.
* word (fashion, the tutorial's `form="prefixes"`): pre-padded n-gram prefixes, Embedding 64 (no
  `mask_zero`: the padding is read, as `model.mask_padding=False`) -> LSTM 128 (return_sequences) ->
  LSTM 64 -> Dense 64 relu -> Dense vocab softmax.
* IMDB: post-padded and post-truncated TextVectorization ids; lstm_jax passes the padding mask to the
  LSTM (`data.mask=True`), whose Keras equivalent is `Embedding(mask_zero=True)` (the mask then reaches
  the LSTM, which skips padded steps). Embedding 16 -> LSTM 32 -> Dense 1 sigmoid. The batch holds a
  review cut at `maxlen`, one with out-of-vocabulary words (id 1) and one with no word left after
  standardisation (all padding).
* fake news: hashed stems, pre-padded and pre-truncated to `maxlen`, no mask (the tutorial's LSTM reads
  the padding) -> Embedding 300 -> Dropout 0.5 -> LSTM 199 -> Dropout 0.4 -> Dense 399 relu -> Dense 43
  relu -> Dense 1 sigmoid.

A fifth case, `word_lines`, is the fashion model in the form its config trains by default (whole lines, a
target at every position, the output layer applied in chunks) against the tutorial's model with
`Embedding(mask_zero=True)` on every prefix of the same lines: docs/experiments.md's "Whole lines instead
of prefixes".

Documented differences these models do not reach: a masked step's output is zeros in lstm_jax and the
last output repeated in Keras (`lstm_jax.core.lstm_layer`), but only the final states (IMDB) or every real
position (`word_lines`: Keras' second LSTM skips the masked steps) are read.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from fixtures_text import make_fake_news_csv, write_csv
from flax import nnx

from experiments.char_textgen.configs import macbeth as macbeth_config
from experiments.fake_news.configs import fake_news as fake_news_config
from experiments.imdb_sentiment.configs import imdb as imdb_config
from experiments.word_textgen.configs import fashion as fashion_config
from lstm_jax import optim, to_keras
from lstm_jax.tasks import char_lm, word_lm
from lstm_jax.tasks import classification as clf
from lstm_jax.text import Vocabulary

keras = pytest.importorskip("keras")

MODELS = ("char", "word", "imdb", "fake_news")
# The four, and the fashion model in the form its config trains by default (see `_word_case`).
CASES = (*MODELS, "word_lines")

# Tolerances (float32 on both sides, different summation orders): outputs and losses absolutely,
# gradients relative to the largest gradient of the same parameter, the updated weights absolutely.
OUTPUT_ATOL = 1e-5
LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-4
STEP_ATOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def _jax_backend():
    assert keras.backend.backend() == "jax", "tests/conftest.py must select KERAS_BACKEND=jax"


# ---------------------------------------------------------------------------------------------------------
# Small data in each tutorial's layout.
# ---------------------------------------------------------------------------------------------------------

_WORDS = (
    "women men black blue white slim fit cotton printed kurta shirt dress jeans solid casual round neck"
    " sleeves regular length pair of shoes red green a with and the top straight striped"
).split()


def _char_text(rng: np.random.Generator) -> str:
    """A 1,200-character text (mixed case: the tutorial lowercases it) over 38 characters."""
    alphabet = list("ABCDEFGHIJKLMNOPQRSTUVWXYZ") + list(" .,;:!?'-\n") + ["é", "ç"]
    weights = np.r_[np.full(26, 2.0), np.full(12, 1.0)]
    return "".join(rng.choice(alphabet, size=1200, p=weights / weights.sum()))


def _descriptions(rng: np.random.Generator, n: int, longest: int) -> list[str]:
    return [
        " ".join(rng.choice(_WORDS, size=int(rng.integers(2, longest + 1)))) for _ in range(n - 1)
    ] + [" ".join(_WORDS[:longest])]


_IMDB_REVIEWS = [
    ("A wonderful film.<br /><br />Great acting, a great cast and a wonderful story!", 1),
    ("Dull and far too long; the plot was dull and the acting awful.", 0),
    ("Loved it, great fun.", 1),
    ("<br /><br />!!!", 0),  # no word left after standardisation: all padding
    ("Terrible plot, awful acting, boring film.", 0),
    ("Zyzzyva quokka flibbertigibbet: great.", 1),  # out-of-vocabulary words (id 1)
    ("Great movie, wonderful cast, fun story and a great ending.", 1),
    ("Awful. Just awful, boring and dull.", 0),
]


def _fake_news_rows(rng: np.random.Generator) -> list[list[Any]]:
    vocab = (
        "senate budget passed tuesday markets stocks rose aliens endorse candidate miracle cure doctors"
        " shocking claims election fraud secret report vaccine study scientists city council votes"
        " president announced plan"
    ).split()
    rows = []
    for i in range(16):
        length = int(rng.integers(2, 30))  # some articles longer than maxlen (12): pre-truncated
        body = " ".join(rng.choice(vocab, size=length))
        rows.append([i, f"Title {i}", "Jane Roe" if i % 3 else "", body, int(rng.integers(0, 2))])
    return rows


# ---------------------------------------------------------------------------------------------------------
# The cases: lstm_jax's task pieces and the tutorial's Keras model, with the same weights.
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    name: str
    config: ml_collections.ConfigDict
    model: nnx.Module  # lstm_jax's, with `params` loaded
    params: dict  # the model's parameters as a pure dict (the engine's `state["params"]`)
    loss_fn: Callable  # the task's loss: (model, batch, *, key, train, carry) -> (loss, aux)
    batch: dict[str, np.ndarray]  # the task's first training batch
    probs: Callable[[nnx.Module], np.ndarray]  # lstm_jax's output probabilities, as Keras' output
    keras_model: Any
    keras_x: np.ndarray  # the tutorial's model input for the same batch
    keras_y: np.ndarray  # the tutorial's targets
    keras_loss: Any  # the tutorial's compile(loss=...)
    keras_optimizer: str  # the tutorial's compile(optimizer=...)
    # (path of a parameter in `params`, the Keras variable it was copied into), every parameter once.
    pairs: list[tuple[tuple, Any]]

    @functools.cached_property
    def grads(self) -> tuple[jax.Array, dict, jax.Array, list]:
        """`(loss, grads, keras_loss, keras_grads)`: lstm_jax's as a pure dict like `params`, Keras' in the
        order of `keras_model.trainable_variables`."""
        loss, grads = _ours_value_and_grad(self, self.params)
        trainable = [v.value for v in self.keras_model.trainable_variables]
        k_loss, k_grads = _keras_value_and_grad(self, trainable)
        return loss, grads, k_loss, k_grads


def _perturbed(model: nnx.Module, seed: int) -> dict:
    """The model's parameters plus N(0, 0.1²) noise: every bias non-zero (the initial ones are 0 or 1)."""
    rng = np.random.default_rng(seed)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return jax.tree.map(
        lambda x: jnp.asarray(x + 0.1 * rng.standard_normal(x.shape).astype(np.float32)), params
    )


def _with_params(model: nnx.Module, params: dict) -> nnx.Module:
    """`model` with `params` (a pure dict), as the engine's `merge` builds it for every step."""
    graphdef, state, rest = nnx.split(model, nnx.Param, ...)
    state = jax.tree.map(lambda x: x, state)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state, rest)


def _get(tree: dict, path: tuple) -> Any:
    for k in path:
        tree = tree[k]
    return tree


_KERAS_NAME = {"embedding": "embeddings"}  # lstm_jax's name -> Keras' where they differ


def _link(params: dict, links: list[tuple[tuple, Any]]) -> list[tuple[tuple, Any]]:
    """Copies each lstm_jax layer (`(path, Keras layer)`) into its Keras layer; returns the variable pairs.

    LSTMs go through `lstm_jax.convert.to_keras`, Embedding and Dense layers as their arrays.
    """
    pairs = []
    for path, layer in links:
        sub = _get(params, path)
        if isinstance(layer, keras.layers.LSTM):
            names = ("kernel", "recurrent_kernel", "bias")
            layer.set_weights(to_keras({n: sub[n] for n in names}))
        else:
            names = (
                ("embedding",) if isinstance(layer, keras.layers.Embedding) else ("kernel", "bias")
            )
            layer.set_weights([np.asarray(sub[n]) for n in names])
        assert len(layer.trainable_weights) == len(names)
        for n, var in zip(names, layer.trainable_weights, strict=True):
            assert var.name == _KERAS_NAME.get(n, n), (path, n, var.path)
            pairs.append((path + (n,), var))
    return pairs


def _check_every_param_linked(params: dict, pairs: list, keras_model: Any) -> None:
    ours = {
        tuple(str(k.key) for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    assert ours == {tuple(str(k) for k in p) for p, _ in pairs}
    assert {v.path for _, v in pairs} == {v.path for v in keras_model.trainable_variables}


def _lm_probs(batch: dict[str, np.ndarray]) -> Callable[[nnx.Module], np.ndarray]:
    return lambda model: np.asarray(
        jax.nn.softmax(model(jnp.asarray(batch["inputs"]), deterministic=True)[0], axis=-1)
    )


def _char_case(tmp: Path) -> Case:
    raw = _char_text(np.random.default_rng(1))
    (tmp / "macbeth.txt").write_text(raw, encoding="utf-8")
    config = macbeth_config.get_config()
    config.data.path = str(tmp / "macbeth.txt")
    config.train.batch_size = 5
    task = char_lm.make_task(config)  # fills config.model.vocab_size
    batch = next(iter(task.train_batches(0, 0)))
    seq = config.data.seq_length  # the tutorial's 50
    assert batch["inputs"].shape == (5, seq)

    # The tutorial: raw_text.lower(), chars = sorted(list(set(raw_text))), X = dataX / float(n_vocab).
    text = raw.lower()
    chars = sorted(set(text))
    char_to_int = {c: i for i, c in enumerate(chars)}
    vocab = Vocabulary.from_json(task.artefacts[char_lm.VOCAB_FILE])
    assert config.model.vocab_size == len(chars)
    ids = {c: vocab.token_to_id[c] for c in chars}
    assert ids == char_to_int  # lstm_jax's character ids are the tutorial's
    windows = ["".join(vocab.decode(row)) for row in batch["inputs"]]
    assert all(w in text for w in windows)
    data_x = np.array([[char_to_int[c] for c in w] for w in windows])
    keras_x = np.reshape(data_x, (len(windows), seq, 1)) / float(len(chars))
    keras_y = np.array([char_to_int[c] for c in vocab.decode(batch["targets"])])

    model = char_lm.build_model(config, nnx.Rngs(config.seed))
    m = config.model
    keras_model = keras.Sequential(
        [
            keras.Input((seq, 1)),
            keras.layers.LSTM(m.hidden_sizes[0], return_sequences=True),
            keras.layers.Dropout(m.dropout),
            keras.layers.LSTM(m.hidden_sizes[1]),
            keras.layers.Dropout(m.dropout),
            keras.layers.Dense(len(chars), activation="softmax"),
        ]
    )
    links = [
        (("lstm", "layers", 0), keras_model.layers[0]),
        (("lstm", "layers", 1), keras_model.layers[2]),
        (("head",), keras_model.layers[4]),
    ]
    return _finish("char", config, model, task.loss_fn, batch, keras_model, links, keras_x, keras_y)


def _word_case(tmp: Path, form: str = "prefixes") -> Case:
    """The fashion tutorial. `form="prefixes"` is the tutorial's data form and model (no mask); `"lines"`
    (the config's default: whole lines, every position predicting the next word, the output layer applied
    in chunks) against the tutorial's model with `Embedding(mask_zero=True)` on every prefix of the
    batch's lines, the equivalence docs/experiments.md states ("Whole lines instead of prefixes")."""
    texts = _descriptions(np.random.default_rng(2), 24, longest=9)
    path = write_csv(tmp / "fashion.csv", ["Description"], [[t] for t in texts])
    config = fashion_config.get_config()
    config.data.path = str(path)
    assert config.data.form == "lines" and config.train.logits_chunk > 0
    config.data.form = form
    config.train.batch_size = 5
    config.train.logits_chunk = 16  # the config's 1,024 would be one chunk of this small batch
    task = word_lm.make_task(config)  # fills config.model.vocab_size and data.max_len
    batch = next(iter(task.train_batches(0, 0)))
    t = config.data.max_len - 1
    assert not config.model.mask_padding  # the tutorial's Embedding has no mask_zero
    if form == "prefixes":
        assert batch["inputs"].shape == (5, t) and (batch["inputs"][:, 0] == 0).any()  # pre-padded
        keras_x, keras_y = batch["inputs"], batch["targets"]
        probs = None
    else:
        real = batch["tmask"] > 0
        assert real.shape == (5, t) and not real.all() and (batch["weight"] == 1).all()
        lines = [
            [*row[:k], target[k - 1]]
            for row, target, k in zip(batch["inputs"], batch["targets"], real.sum(1), strict=True)
        ]
        prefixes = word_lm.prefix_examples(lines, config.data.max_len)
        keras_x, keras_y = prefixes["inputs"], prefixes["targets"]

        def probs(model):  # each line's positions in order: the prefixes' order
            logits, _ = model(jnp.asarray(batch["inputs"]), deterministic=True)
            return np.asarray(jax.nn.softmax(logits, axis=-1))[real]

    model = word_lm.build_model(config, nnx.Rngs(config.seed))
    m = config.model
    total_words = m.vocab_size  # len(tokenizer.word_index) + 1
    (units, act), *more = m.dense_layers
    assert not more
    keras_model = keras.Sequential(
        [
            keras.Input((t,), dtype="int32"),
            keras.layers.Embedding(total_words, m.embed_dim, mask_zero=form == "lines"),
            keras.layers.LSTM(m.hidden_sizes[0], return_sequences=True),
            keras.layers.LSTM(m.hidden_sizes[1]),
            keras.layers.Dense(units, activation=act),
            keras.layers.Dense(total_words, activation="softmax"),
        ]
    )
    links = [
        (("embed",), keras_model.layers[0]),
        (("lstm", "layers", 0), keras_model.layers[1]),
        (("lstm", "layers", 1), keras_model.layers[2]),
        (("dense", "layers", 0), keras_model.layers[3]),
        (("head",), keras_model.layers[4]),
    ]
    name = "word" if form == "prefixes" else "word_lines"
    return _finish(
        name, config, model, task.loss_fn, batch, keras_model, links, keras_x, keras_y, probs=probs
    )


def _classifier_case(name: str, config: ml_collections.ConfigDict, tmp: Path) -> Case:
    prepared = clf.prepare_data(config)
    config.train.batch_size = len(prepared.arrays["train"]["label"])  # every training example
    task, _ = clf.make_task(config, str(tmp / "workdir"), prepared)
    batch = next(iter(task.train_batches(0, 0)))
    model = clf.build_model(config, nnx.Rngs(config.seed))
    d, m = config.data, config.model
    use_mask = bool(d.mask)
    layers: list[Any] = [
        keras.Input((d.maxlen,), dtype="int32"),
        keras.layers.Embedding(clf.embedding_rows(config), m.embed_dim, mask_zero=use_mask),
    ]
    if m.embed_dropout:
        layers.append(keras.layers.Dropout(m.embed_dropout))
    (hidden,) = m.hidden_sizes
    layers.append(keras.layers.LSTM(hidden))
    if m.dropout:
        layers.append(keras.layers.Dropout(m.dropout))
    layers += [keras.layers.Dense(units, activation=act) for units, act in m.dense_layers]
    layers.append(keras.layers.Dense(1, activation="sigmoid"))
    keras_model = keras.Sequential(layers)
    weighted = [layer for layer in keras_model.layers if layer.weights]
    paths = [("embed",), ("lstm", "layers", 0)]
    paths += [("dense", "layers", i) for i in range(len(m.dense_layers))] + [("head",)]
    links = list(zip(paths, weighted, strict=True))

    def probs(model):
        mask = batch["mask"] if use_mask else None
        return clf.predict_proba(model, batch["ids"], mask)[:, 1:]  # p(label 1), as Keras' [n, 1]

    return _finish(
        name, config, model, clf.make_loss_fn(config), batch, keras_model, links,
        batch["ids"], batch["label"].astype(np.float32)[:, None], probs=probs,
    )  # fmt: skip


def _imdb_case(tmp: Path) -> Case:
    root = tmp / "imdb"
    for split, reviews in (("train", _IMDB_REVIEWS), ("test", _IMDB_REVIEWS[:3])):
        rows = [[i, 9 if y else 2, "pos" if y else "neg", t] for i, (t, y) in enumerate(reviews)]
        write_csv(root / f"imdb_{split}.csv.gz", ["id", "rating", "label", "text"], rows)
    config = imdb_config.get_config()
    config.data.path = str(root)
    config.data.validation_fraction = 0.125  # 7 of the 8 reviews train
    config.data.vocab_size = 12  # 0 = padding, 1 = OOV, the 10 most frequent words
    config.data.maxlen = 9
    case = _classifier_case("imdb", config, tmp)
    mask = case.batch["mask"]
    assert (mask[:, 0] | ~mask.any(1)).all() and not mask[:, -1].all()  # post-padded
    assert mask.all(1).any() and (~mask).all(1).any()  # a review cut at maxlen, an empty one
    assert (case.batch["ids"] == 1).any()  # out-of-vocabulary words
    return case


def _fake_news_case(tmp: Path) -> Case:
    path = make_fake_news_csv(tmp / "fake_news.csv", _fake_news_rows(np.random.default_rng(3)))
    config = fake_news_config.get_config()
    config.data.path = str(path)
    config.data.num_buckets = 40
    config.data.maxlen = 12
    config.report.baseline = False
    case = _classifier_case("fake_news", config, tmp)
    ids = case.batch["ids"]
    assert (ids[:, -1] != 0).all() and (ids[:, 0] == 0).any()  # pre-padded
    assert not case.config.data.mask
    return case


def _finish(name, config, model, loss_fn, batch, keras_model, links, keras_x, keras_y, probs=None):
    params = _perturbed(model, seed=len(name))
    model = _with_params(model, params)
    pairs = _link(params, links)
    _check_every_param_linked(params, pairs, keras_model)
    binary = name in ("imdb", "fake_news")
    # compile(loss="binary_crossentropy" | "sparse_categorical_crossentropy"): the mean over the batch.
    keras_loss = (
        keras.losses.BinaryCrossentropy()
        if binary
        else keras.losses.SparseCategoricalCrossentropy()
    )
    return Case(
        name=name,
        config=config,
        model=model,
        params=params,
        loss_fn=loss_fn,
        batch={k: np.asarray(v) for k, v in batch.items()},
        probs=probs or _lm_probs(batch),
        keras_model=keras_model,
        keras_x=np.asarray(keras_x),
        keras_y=np.asarray(keras_y),
        keras_loss=keras_loss,
        keras_optimizer=config.optimizer.name,  # "adam" / "rmsprop", as the tutorials compile
        pairs=pairs,
    )


_BUILDERS = {
    "char": _char_case,
    "word": _word_case,
    "word_lines": functools.partial(_word_case, form="lines"),
    "imdb": _imdb_case,
    "fake_news": _fake_news_case,
}


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    built: dict[str, Case] = {}

    def get(name: str) -> Case:
        if name not in built:
            built[name] = _BUILDERS[name](tmp_path_factory.mktemp(name))
        return built[name]

    return get


# ---------------------------------------------------------------------------------------------------------
# Both sides' loss and gradients.
# ---------------------------------------------------------------------------------------------------------


def _ours_value_and_grad(case: Case, params: dict) -> tuple[jax.Array, dict]:
    """The task loss in inference mode and its gradients, as the engine's `loss_and_grads` computes them."""

    def objective(p):
        loss, _ = case.loss_fn(
            _with_params(case.model, p),
            {k: jnp.asarray(v) for k, v in case.batch.items()},
            key=jax.random.PRNGKey(0),
            train=False,
            carry=None,
        )
        return loss

    return jax.jit(jax.value_and_grad(objective))(params)  # compiled, as the engine's step


def _keras_value_and_grad(case: Case, trainable: list) -> tuple[jax.Array, list]:
    """The tutorial's loss of the Keras model (`training=False`) and its gradients, in the order of
    `keras_model.trainable_variables`."""
    non_trainable = [v.value for v in case.keras_model.non_trainable_variables]

    def objective(tv):
        out, _ = case.keras_model.stateless_call(tv, non_trainable, case.keras_x, training=False)
        return case.keras_loss(case.keras_y, out)

    return jax.jit(jax.value_and_grad(objective))(trainable)


def _keras_positions(case: Case) -> dict[tuple, int]:
    """Parameter path -> position of its Keras variable in `keras_model.trainable_variables`."""
    where = {v.path: i for i, v in enumerate(case.keras_model.trainable_variables)}
    return {path: where[var.path] for path, var in case.pairs}


# ---------------------------------------------------------------------------------------------------------
# The tests.
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_outputs_match_keras(cases, name):
    case = cases(name)
    ours = case.probs(case.model)
    theirs = np.asarray(case.keras_model(case.keras_x, training=False))
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=OUTPUT_ATOL)


@pytest.mark.parametrize("name", CASES)
def test_training_loss_matches_keras(cases, name):
    case = cases(name)
    ours, (sums, _) = case.loss_fn(
        case.model,
        {k: jnp.asarray(v) for k, v in case.batch.items()},
        key=jax.random.PRNGKey(0),
        train=False,
        carry=None,
    )
    theirs = case.keras_loss(case.keras_y, case.keras_model(case.keras_x, training=False))
    assert float(sums["count"]) == len(case.keras_y)  # every row of the batch is a real example
    np.testing.assert_allclose(float(ours), float(theirs), rtol=LOSS_RTOL)


@pytest.mark.parametrize("name", CASES)
def test_gradients_match_keras(cases, name):
    case = cases(name)
    loss, grads, k_loss, k_grads = case.grads
    np.testing.assert_allclose(float(loss), float(k_loss), rtol=LOSS_RTOL)
    pos = _keras_positions(case)
    for path, _ in case.pairs:
        ours, theirs = np.asarray(_get(grads, path)), np.asarray(k_grads[pos[path]])
        assert ours.shape == theirs.shape, path
        scale = float(np.abs(theirs).max())
        assert scale > 0, path  # every parameter takes part in the loss
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=GRAD_RTOL * scale, err_msg=str(path))


def _first_step_slope(opt: ml_collections.ConfigDict, g: np.ndarray, kg: np.ndarray) -> np.ndarray:
    """The largest |d step / d gradient| of the first update of `opt` between the gradients `g` and `kg`.

    Keras' first Adam step is `lr·√(1-β₂)·g / (√(1-β₂)·|g| + ε)`: `lr·sign(g)` for |g| well above
    `ε/√(1-β₂)` (3e-6), and a slope of up to `lr·√(1-β₂)/ε` (316) below that. RMSprop's is
    `lr·g / √((1-ρ)·g² + ε)`, slope up to `lr/√ε` (3.2). Both slopes fall with |g|: the largest is at the
    smaller |g| of the two, or at 0 when their signs differ. So where a gradient is tiny, the rounding of the
    two float32 gradients (about 1e-6 of a parameter's largest gradient here) moves the step by up to
    slope · |g - kg|; elsewhere the slope is small and the steps agree as the gradients do.
    """
    lr = float(opt.learning_rate)
    gmin = np.where(np.sign(g) == np.sign(kg), np.minimum(np.abs(g), np.abs(kg)), 0.0)
    if opt.name == "adam":
        c = math.sqrt(1 - opt.b2)
        return lr * c * opt.eps / (c * gmin + opt.eps) ** 2
    assert opt.name == "rmsprop" and not opt.momentum, opt.name
    return lr * opt.eps / ((1 - opt.rho) * gmin**2 + opt.eps) ** 1.5


@pytest.mark.parametrize("name", CASES)
def test_one_optimizer_step_matches_keras(cases, name):
    case = cases(name)
    _, grads, _, k_grads = case.grads
    pos = _keras_positions(case)
    trainable = [v.value for v in case.keras_model.trainable_variables]

    tx = optim.make_optimizer(case.config.optimizer, total_steps=1)  # the engine's optimizer

    @jax.jit
    def ours_step(g):
        updates, _ = tx.update(g, tx.init(case.params), case.params)
        return optax.apply_updates(case.params, updates)

    opt = keras.optimizers.get(case.keras_optimizer)  # compile(optimizer="adam"): Keras' defaults
    assert math.isclose(float(opt.learning_rate), case.config.optimizer.learning_rate, rel_tol=1e-6)
    opt.build(case.keras_model.trainable_variables)

    @jax.jit
    def keras_step(kg):
        new, _ = opt.stateless_apply([v.value for v in opt.variables], kg, trainable)
        return new

    # The update rule: lstm_jax's gradients through both optimizers.
    same = list(k_grads)
    for path, _ in case.pairs:
        same[pos[path]] = _get(grads, path)
    ours, theirs = ours_step(grads), keras_step(same)
    for path, _ in case.pairs:
        before = np.asarray(_get(case.params, path))
        new, k_new = np.asarray(_get(ours, path)), np.asarray(theirs[pos[path]])
        assert np.abs(new - before).max() > 0, path
        np.testing.assert_allclose(new, k_new, rtol=0, atol=1e-6, err_msg=str(path))

    # End to end: each side's step from its own gradients, to STEP_ATOL plus what the difference of the
    # gradients moves the step by (`_first_step_slope`).
    theirs = keras_step(k_grads)
    for path, _ in case.pairs:
        g = np.asarray(_get(grads, path), np.float64)
        kg = np.asarray(k_grads[pos[path]], np.float64)
        allowed = STEP_ATOL + _first_step_slope(case.config.optimizer, g, kg) * np.abs(g - kg)
        new, k_new = np.asarray(_get(ours, path)), np.asarray(theirs[pos[path]])
        excess = np.abs(new - k_new) - allowed
        assert excess.max() <= 0, (path, float(np.abs(new - k_new).max()))
