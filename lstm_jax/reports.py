"""Classification reports: confusion matrix, per-class precision/recall/F1/support, averages, heatmap.

Pure NumPy; the numbers follow scikit-learn's `classification_report` / `confusion_matrix` conventions
(rows of the confusion matrix are true labels, columns predictions; a metric whose denominator is 0 is 0,
sklearn's ``zero_division=0``), so the report can be checked against sklearn and read the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lstm_jax.logging_utils import atomic_write
from lstm_jax.plots import plot_confusion_matrix

__all__ = [
    "confusion_matrix",
    "classification_report",
    "format_report",
    "write_report",
]


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """Counts `[num_classes, num_classes]` int64: entry `[i, j]` = examples of class i predicted as j.

    Args:
      y_true: `[n]` integer labels in `[0, num_classes)`.
      y_pred: `[n]` integer predictions in `[0, num_classes)`.
      num_classes: number of classes (rows/columns, also for classes absent from both arrays).
    """
    t = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels but y_pred has {p.size}")
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{name} has values outside [0, {num_classes})")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """`num / den` elementwise, 0 where `den` is 0 (sklearn's zero_division=0)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def classification_report(y_true: Any, y_pred: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support, accuracy, macro and weighted averages.

    Args:
      y_true: `[n]` integer labels (class i is named `class_names[i]`).
      y_pred: `[n]` integer predictions.
      class_names: one name per class.

    Returns:
      A JSON-ready dict::

        {"classes": {name: {"precision", "recall", "f1", "support"}},
         "accuracy": float, "macro avg": {...}, "weighted avg": {...},
         "confusion_matrix": [[int]], "labels": [names], "examples": n}

      Macro averages weigh every class equally, weighted averages by support (sklearn's definitions).
    """
    k = len(class_names)
    cm = confusion_matrix(y_true, y_pred, k)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    n = float(cm.sum())
    classes = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }
    weights = support / n if n else np.zeros(k)

    def avg(w: np.ndarray) -> dict[str, float]:
        return {
            "precision": float(np.sum(precision * w)),
            "recall": float(np.sum(recall * w)),
            "f1": float(np.sum(f1 * w)),
            "support": int(n),
        }

    return {
        "classes": classes,
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "macro avg": avg(np.full(k, 1.0 / k)),
        "weighted avg": avg(weights),
        "confusion_matrix": cm.tolist(),
        "labels": list(class_names),
        "examples": int(n),
    }


def format_report(report: Mapping[str, Any], digits: int = 4) -> str:
    """The report as a text table in sklearn's `classification_report` layout."""
    names = list(report["classes"])
    width = max(len("weighted avg"), *(len(n) for n in names))
    head = f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}"
    lines = [head, ""]
    for name in names:
        c = report["classes"][name]
        lines.append(
            f"{name:>{width}} {c['precision']:>9.{digits}f} {c['recall']:>9.{digits}f}"
            f" {c['f1']:>9.{digits}f} {c['support']:>9d}"
        )
    lines.append("")
    total = report["examples"]
    lines.append(
        f"{'accuracy':>{width}} {'':>9} {'':>9} {report['accuracy']:>9.{digits}f} {total:>9d}"
    )
    for key in ("macro avg", "weighted avg"):
        a = report[key]
        lines.append(
            f"{key:>{width}} {a['precision']:>9.{digits}f} {a['recall']:>9.{digits}f}"
            f" {a['f1']:>9.{digits}f} {a['support']:>9d}"
        )
    return "\n".join(lines) + "\n"


def write_report(
    report: Mapping[str, Any], workdir: str, split: str, *, title: str = ""
) -> dict[str, str]:
    """Writes ``classification_report_<split>.txt`` and ``confusion_matrix_<split>.png`` in `workdir`.

    Returns:
      ``{"text": path, "heatmap": path}`` (file names relative to `workdir`).
    """
    os.makedirs(workdir, exist_ok=True)
    text_name = f"classification_report_{split}.txt"
    png_name = f"confusion_matrix_{split}.png"
    with atomic_write(os.path.join(workdir, text_name)) as f:
        f.write(format_report(report))
    plot_confusion_matrix(
        report["confusion_matrix"],
        report["labels"],
        os.path.join(workdir, png_name),
        title=title or f"Confusion matrix ({split}, accuracy {report['accuracy']:.4f})",
    )
    return {"text": text_name, "heatmap": png_name}
