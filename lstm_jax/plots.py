"""Figures a run leaves behind: training curves and confusion-matrix heatmaps (matplotlib, Agg backend)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lstm_jax.logging_utils import atomic_write

__all__ = ["plot_training_curves", "plot_confusion_matrix", "save_figure", "new_figure"]


def save_figure(fig: Any, path: str) -> None:
    """Saves `fig` to `path` whole or not at all (`atomic_write`; an existing plot is never left half
    written), in the format its extension names (PNG without one), creating the directory if needed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fmt = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format=fmt, dpi=110)


def new_figure(nrows: int = 1, ncols: int = 1, **kwargs: Any) -> tuple[Any, Any]:
    """A figure and its axes drawn without pyplot (so no global backend is switched).

    Files are written through the Agg canvas; notebooks keep their inline backend. Returns `(fig, axes)` as
    `plt.subplots` does.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=kwargs.pop("figsize", None))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, **kwargs)
    return fig, axes


def plot_training_curves(
    history: Sequence[Mapping[str, Any]],
    path: str,
    *,
    metrics: Sequence[str] = ("loss", "accuracy"),
    title: str = "",
) -> str | None:
    """Train vs validation curves per epoch, one panel per metric, final values annotated.

    Args:
      history: evaluation records as the engine keeps them:
        ``{"epoch": float, "train": {metric: value}, "validation": {metric: value}, ...}``.
      path: PNG path to write.
      metrics: the metrics to draw (a panel is skipped when no record has it).
      title: figure title.

    Returns:
      `path`, or None when there is nothing to plot.
    """
    panels = [
        m
        for m in metrics
        if any(m in rec.get(s, {}) for rec in history for s in ("train", "validation"))
    ]
    if not history or not panels:
        return None
    fig, axes = new_figure(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, metric in zip(axes[0], panels, strict=True):
        for split, style in (("train", "-o"), ("validation", "-s")):
            # A null value (a history read back from JSON, where a non-finite number is null) is NaN.
            pts = [
                (r["epoch"], math.nan if r[split][metric] is None else r[split][metric])
                for r in history
                if metric in r.get(split, {})
            ]
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, style, markersize=3, label=split)
            ax.annotate(
                f"{ys[-1]:.4f}",
                xy=(xs[-1], ys[-1]),
                xytext=(4, 4),
                textcoords="offset points",
                fontsize=8,
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric}: train vs validation")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def plot_confusion_matrix(
    matrix: Any,
    labels: Sequence[str],
    path: str,
    *,
    normalize: bool = False,
    title: str = "Confusion matrix",
) -> str:
    """A heatmap of `matrix [true, predicted]` with counts (or row-normalised rates) in every cell.

    Args:
      matrix: `[classes, classes]` counts; rows are true labels, columns predictions (sklearn's layout).
      labels: class names, one per row.
      path: PNG path to write.
      normalize: show each row divided by its total (recall per class) instead of counts.
      title: figure title.
    """
    cm = np.asarray(matrix, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(labels):
        raise ValueError(f"confusion matrix must be [{len(labels)}, {len(labels)}], got {cm.shape}")
    shown = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
    size = max(4.0, 0.6 * len(labels) + 2.5)
    fig, ax = new_figure(figsize=(size, size * 0.85))
    im = ax.imshow(shown, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(labels)), labels=list(labels), rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels=list(labels))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = shown.max() / 2 if shown.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            text = f"{shown[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
            color = "white" if shown[i, j] > threshold else "black"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return path
