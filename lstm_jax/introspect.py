"""Looking inside a trained LSTM: per-step gates and cell states, and the cells that track readable features.

In the spirit of Karpathy, Johnson and Fei-Fei (2015), "Visualizing and Understanding Recurrent Networks":
run a trained char model over a passage with `return_gates=True`, then correlate every cell's state with
simple, human-readable properties of the text (position in the line, inside parentheses or quotes, a
speaker's name at the start of a speech) to find cells that track them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax.core import Gates
from lstm_jax.models import LanguageModel, _encode_inputs
from lstm_jax.nn import LSTM
from lstm_jax.plots import new_figure, save_figure

__all__ = [
    "language_model_gates",
    "text_features",
    "cell_feature_correlations",
    "top_cells",
    "plot_gate_heatmaps",
]

# A speech in Macbeth starts on an indented line with an abbreviated name and a full stop: "   Banq. Good".
_SPEAKER = re.compile(r"^[ \t]*([A-Z][A-Za-z]*|\d)\.", re.MULTILINE)


def language_model_gates(model: LanguageModel, ids: jax.Array) -> list[Gates]:
    """Per-layer gate activations and cell states of `model` on `ids [batch, time]`.

    Returns one `Gates(i, f, g, o, c)` per LSTM layer, each field `[batch, time, H]` (evaluation mode: no
    dropout). Only unidirectional stacks (`lstm_jax.nn.LSTM` layers) are supported.
    """
    ids = jnp.asarray(ids)
    if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
        # Float ids were nnx.Embed's "Input type must be an integer", one sequence [time] the LSTM's
        # "xs must be [batch, time, features]" about the embedded inputs.
        raise ValueError(
            f"language_model_gates: ids must be integer token ids [batch, time], got {ids.dtype}"
            f" {ids.shape}" + ("; one sequence is ids[None]" if ids.ndim == 1 else "")
        )
    x = _encode_inputs(model.input_mode, model.embed, ids, model.vocab_size)
    out = []
    for layer in model.lstm.layers:
        if not isinstance(layer, LSTM):
            raise ValueError("language_model_gates: only unidirectional LSTM stacks are supported")
        x, _, gates = layer(x, return_gates=True)
        out.append(gates)
    return out


def text_features(text: str) -> dict[str, np.ndarray]:
    """Readable per-character properties of `text`, each a float array `[len(text)]`.

    - `position_in_line`: characters since the last newline (0 at a line start).
    - `inside_parentheses`: 1 between "(" and the matching ")" (nesting counted), else 0.
    - `inside_quotes`: 1 between an opening and a closing double quote.
    - `speaker_name`: 1 on the characters of a speaker's name that opens a speech ("Banq." in "   Banq. Good").
    - `line_start`: 1 on the first character of a line.
    - `whitespace`: 1 on spaces, tabs and newlines.
    """
    n = len(text)
    pos = np.zeros(n)
    paren = np.zeros(n)
    quote = np.zeros(n)
    depth, in_quote, col = 0, False, 0
    for k, ch in enumerate(text):
        pos[k] = col
        col = 0 if ch == "\n" else col + 1
        if ch == "(":
            depth += 1
        paren[k] = 1.0 if depth > 0 else 0.0
        if ch == ")" and depth > 0:
            depth -= 1
        if ch == '"':
            in_quote = not in_quote
            quote[k] = 1.0
        elif in_quote:
            quote[k] = 1.0
    speaker = np.zeros(n)
    for m in _SPEAKER.finditer(text):
        speaker[m.start(1) : m.end(0)] = 1.0
    line_start = np.array([1.0 if k == 0 or text[k - 1] == "\n" else 0.0 for k in range(n)])
    space = np.array([1.0 if ch.isspace() else 0.0 for ch in text])
    return {
        "position_in_line": pos,
        "inside_parentheses": paren,
        "inside_quotes": quote,
        "speaker_name": speaker,
        "line_start": line_start,
        "whitespace": space,
    }


def cell_feature_correlations(
    states: np.ndarray, features: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Pearson correlation of every cell with every feature.

    Args:
      states: `[time, H]` activations of one sequence (e.g. `gates.c[0]` or `tanh(c)`).
      features: name -> `[time]` values (see `text_features`).

    Returns:
      name -> `[H]` correlations (0 for constant cells or constant features).
    """
    s = np.asarray(states, np.float64)
    s = s - s.mean(axis=0)
    s_norm = np.sqrt((s * s).sum(axis=0))
    out = {}
    for name, f in features.items():
        f = np.asarray(f, np.float64)
        if f.shape[0] != s.shape[0]:
            raise ValueError(f"feature {name!r} has {f.shape[0]} steps, states have {s.shape[0]}")
        f = f - f.mean()
        f_norm = np.sqrt((f * f).sum())
        denom = s_norm * f_norm
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(denom > 0, (s * f[:, None]).sum(axis=0) / denom, 0.0)
        out[name] = r
    return out


def top_cells(
    correlations: Mapping[str, np.ndarray], k: int = 3
) -> dict[str, list[tuple[int, float]]]:
    """The `k` cells with the largest |correlation| per feature: name -> [(cell, r), ...]."""
    return {
        name: [(int(j), float(r[j])) for j in np.argsort(-np.abs(r))[:k]]
        for name, r in correlations.items()
    }


def plot_gate_heatmaps(
    text: str,
    gates: Gates,
    cells: Sequence[int],
    path: str | None = None,
    *,
    max_chars: int = 120,
) -> Any:
    """Heatmaps of the input, forget and output gates and the cell state of `cells` over `text`.

    Args:
      text: the passage (one character per timestep).
      gates: `Gates` of one layer for a batch of one, fields `[1, time, H]`.
      cells: which hidden units to show (rows).
      path: save the figure as PNG there (and close it) when given; else return the figure.
      max_chars: show at most this many characters (columns).

    Returns:
      The matplotlib figure (None when saved to `path`).
    """
    if path is None:
        import matplotlib.pyplot as plt  # a figure the notebook displays

        subplots = plt.subplots
    else:
        subplots = new_figure
    t = min(len(text), max_chars, gates.c.shape[1])
    cells = list(cells)
    panels = [
        ("input gate i", gates.i, "viridis", (0, 1)),
        ("forget gate f", gates.f, "viridis", (0, 1)),
        ("output gate o", gates.o, "viridis", (0, 1)),
        ("cell state tanh(c)", np.tanh(np.asarray(gates.c)), "RdBu_r", (-1, 1)),
    ]
    fig, axes = subplots(
        len(panels), 1, figsize=(max(8, t * 0.12), 1.2 + 0.9 * len(panels) * max(1, len(cells) / 4))
    )
    labels = [("⏎" if ch == "\n" else ch) for ch in text[:t]]
    for ax, (title, arr, cmap, (lo, hi)) in zip(axes, panels, strict=True):
        data = np.asarray(arr)[0, :t][:, cells].T
        im = ax.imshow(data, aspect="auto", cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_yticks(range(len(cells)), [f"cell {c}" for c in cells], fontsize=7)
        ax.set_xticks(range(t), labels, fontsize=6, family="monospace")
        fig.colorbar(im, ax=ax, fraction=0.015, pad=0.01)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
        return None
    return fig
