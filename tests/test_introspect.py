"""Gate inspection and the readable-feature analysis."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lstm_jax.introspect import (
    cell_feature_correlations,
    language_model_gates,
    plot_gate_heatmaps,
    text_features,
    top_cells,
)
from lstm_jax.models import LanguageModel


def test_text_features_by_hand():
    text = '  Banq. Good (a\nb) "q"x'
    f = text_features(text)
    assert list(f["position_in_line"][:4]) == [0, 1, 2, 3]
    nl = text.index("\n")
    assert f["position_in_line"][nl + 1] == 0 and f["line_start"][nl + 1] == 1
    assert f["speaker_name"][2:7].tolist() == [1, 1, 1, 1, 1] and f["speaker_name"][8] == 0
    open_, close = text.index("("), text.index(")")
    assert f["inside_parentheses"][open_ : close + 1].all()
    assert f["inside_parentheses"][close + 1] == 0 and f["inside_parentheses"][open_ - 1] == 0
    q = text.index('"')
    assert f["inside_quotes"][q : q + 3].tolist() == [1, 1, 1] and f["inside_quotes"][-1] == 0
    assert f["whitespace"][0] == 1 and f["whitespace"][2] == 0


def test_correlations_find_the_planted_cell():
    rng = np.random.default_rng(0)
    feat = rng.integers(0, 2, 500).astype(float)
    states = rng.normal(size=(500, 8))
    states[:, 5] = feat * 2 + 0.1 * rng.normal(size=500)
    states[:, 2] = 1.0  # a constant cell gets correlation 0, not NaN
    corr = cell_feature_correlations(states, {"f": feat, "constant": np.ones(500)})
    assert corr["f"][2] == 0.0
    # So does every cell for a constant feature.
    np.testing.assert_array_equal(corr["constant"], np.zeros(8))
    best = top_cells(corr, k=2)["f"]
    assert best[0][0] == 5 and best[0][1] > 0.99


def test_language_model_gates_and_heatmap(tmp_path):
    m = LanguageModel(10, (6, 4), rngs=nnx.Rngs(0), embed_dim=3, predict="all")
    ids = jnp.arange(12)[None, :] % 10
    gates = language_model_gates(m, ids)
    assert len(gates) == 2 and gates[0].i.shape == (1, 12, 6) and gates[1].c.shape == (1, 12, 4)
    # The last layer's h = o * tanh(c) is the model's LSTM output.
    outs, _ = m.lstm(m.embed(ids))
    np.testing.assert_allclose(gates[1].o * np.tanh(gates[1].c), outs, atol=1e-6)
    path = tmp_path / "gates.png"
    plot_gate_heatmaps("abcdefghij\nk", gates[0], [0, 3], str(path))
    assert path.stat().st_size > 1000


def test_text_features_nesting_lines_and_whitespace():
    """Nested parentheses stay inside until the outer one closes; a stray ")" does not open a region;
    every line's speaker (not its indentation) is marked; tabs and newlines are whitespace."""
    f = text_features("((a)b)c")
    assert f["inside_parentheses"].tolist() == [1, 1, 1, 1, 1, 1, 0]
    f = text_features(")(a)b")
    assert f["inside_parentheses"].tolist() == [0, 1, 1, 1, 0]
    text = "  Banq. Good\n\tMacb. Say"
    f = text_features(text)
    assert f["speaker_name"][:2].tolist() == [0, 0] and f["speaker_name"][2:7].all()
    m = text.index("Macb")
    assert f["speaker_name"][m - 1] == 0 and f["speaker_name"][m : m + 5].all()
    assert f["speaker_name"].sum() == 10
    assert f["line_start"][0] == 1 and f["line_start"].sum() == 2
    assert f["whitespace"][text.index("\n")] == 1 and f["whitespace"][m - 1] == 1


def test_top_cells_rank_by_absolute_correlation_and_keep_k():
    corr = {"f": np.array([0.1, -0.9, 0.5, 0.0])}
    assert top_cells(corr, k=2) == {"f": [(1, -0.9), (2, 0.5)]}
    assert len(top_cells(corr, k=1)["f"]) == 1


def test_correlations_refuse_a_feature_of_another_length():
    with pytest.raises(ValueError, match=r"feature 'f' has 3 steps, states have 4"):
        cell_feature_correlations(np.zeros((4, 2)), {"f": np.zeros(3)})


def test_language_model_gates_refuses_a_bidirectional_stack():
    m = LanguageModel(10, (4,), rngs=nnx.Rngs(0), embed_dim=3, bidirectional=True)
    with pytest.raises(ValueError, match="only unidirectional LSTM stacks"):
        language_model_gates(m, jnp.zeros((1, 5), jnp.int32))


def test_gates_of_float_or_unbatched_ids_name_the_shape():
    """Float ids were nnx.Embed's "Input type must be an integer", one sequence the LSTM's complaint
    about its embedded `[time, features]` inputs."""
    model = LanguageModel(9, (4,), rngs=nnx.Rngs(0), embed_dim=3)
    with pytest.raises(
        ValueError, match=r"ids must be integer token ids \[batch, time\], got float32"
    ):
        language_model_gates(model, jnp.ones((2, 5)))
    with pytest.raises(ValueError, match=r"one sequence is ids\[None\]"):
        language_model_gates(model, jnp.ones((5,), jnp.int32))
