"""Classification reports against hand-computed numbers and scikit-learn, plus the written files."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from lstm_jax import reports

# 3 classes, 6 examples. Confusion matrix (rows true, columns predicted):
#   [[1, 1, 0],
#    [1, 2, 0],
#    [0, 0, 1]]
Y_TRUE = [0, 0, 1, 1, 1, 2]
Y_PRED = [0, 1, 1, 1, 0, 2]
NAMES = ["a", "b", "c"]


def test_confusion_matrix_by_hand():
    cm = reports.confusion_matrix(Y_TRUE, Y_PRED, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [1, 2, 0], [0, 0, 1]])
    # A class absent from both arrays still gets its row and column.
    np.testing.assert_array_equal(reports.confusion_matrix([0, 0], [0, 1], 3).shape, (3, 3))


def test_confusion_matrix_rejects_bad_labels():
    with pytest.raises(ValueError, match="outside"):
        reports.confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="labels"):
        reports.confusion_matrix([0, 1], [0], 2)
    with pytest.raises(ValueError, match="y_pred has values outside"):  # not counted as [0, 2]
        reports.confusion_matrix([1], [-1], 3)


def test_report_by_hand():
    r = reports.classification_report(Y_TRUE, Y_PRED, NAMES)
    # precision = tp / predicted: a 1/2, b 2/3, c 1/1; recall = tp / support: a 1/2, b 2/3, c 1/1.
    assert r["classes"]["a"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    )
    assert r["classes"]["b"]["precision"] == pytest.approx(2 / 3)
    assert r["classes"]["b"]["f1"] == pytest.approx(2 / 3)
    assert r["classes"]["c"]["recall"] == 1.0
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["macro avg"]["precision"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    # weighted by support 2, 3, 1: (2*0.5 + 3*2/3 + 1*1) / 6 = 4/6
    assert r["weighted avg"]["f1"] == pytest.approx(4 / 6)
    assert r["macro avg"]["support"] == 6
    assert r["confusion_matrix"] == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]
    assert r["labels"] == NAMES


def test_zero_division_is_zero():
    # Class 1 is never predicted: precision 0 (sklearn zero_division=0), not NaN.
    r = reports.classification_report([0, 1, 1], [0, 0, 0], ["x", "y"])
    assert r["classes"]["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert r["classes"]["x"]["precision"] == pytest.approx(1 / 3)


def test_f1_when_precision_plus_recall_below_one():
    # Class 0: tp 1, predicted 4, support 3 -> precision 1/4, recall 1/3, F1 = 2pr/(p+r) = 2/7.
    r = reports.classification_report([0, 0, 0, 1, 1, 1], [0, 1, 1, 0, 0, 0], ["x", "y"])
    assert r["classes"]["x"]["f1"] == pytest.approx(2 / 7)
    assert r["classes"]["y"]["f1"] == 0.0


@pytest.mark.parametrize("k, hit", [(2, 0.6), (6, 0.6), (6, 0.1)])
def test_matches_sklearn(k, hit):
    rng = np.random.default_rng(k)
    y = rng.integers(0, k, 500)
    p = np.where(rng.random(500) < hit, y, rng.integers(0, k, 500))
    names = [f"c{i}" for i in range(k)]
    ours = reports.classification_report(y, p, names)
    theirs = skm.classification_report(
        y, p, labels=list(range(k)), target_names=names, output_dict=True, zero_division=0
    )
    for name in names:
        for key, sk_key in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert ours["classes"][name][key] == pytest.approx(theirs[name][sk_key])
        assert ours["classes"][name]["support"] == theirs[name]["support"]
    for avg in ("macro avg", "weighted avg"):
        assert ours[avg]["f1"] == pytest.approx(theirs[avg]["f1-score"])
        assert ours[avg]["precision"] == pytest.approx(theirs[avg]["precision"])
    assert ours["accuracy"] == pytest.approx(theirs["accuracy"])
    np.testing.assert_array_equal(
        ours["confusion_matrix"], skm.confusion_matrix(y, p, labels=list(range(k)))
    )


def test_a_class_absent_from_labels_and_predictions_counts_in_the_macro_average():
    """sklearn's `classification_report(labels=range(k), zero_division=0)`: a class nobody has nor
    predicts reports zeros and pulls the macro average down (weighted: support 0, no effect)."""
    names = [*NAMES, "d"]
    ours = reports.classification_report(Y_TRUE, Y_PRED, names)
    theirs = skm.classification_report(
        Y_TRUE, Y_PRED, labels=[0, 1, 2, 3], target_names=names, output_dict=True, zero_division=0
    )
    assert ours["classes"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    for avg in ("macro avg", "weighted avg"):
        for key, sk_key in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert ours[avg][key] == pytest.approx(theirs[avg][sk_key]), (avg, key)
    assert ours["macro avg"]["f1"] == pytest.approx((0.5 + 2 / 3 + 1 + 0) / 4)


def test_report_of_no_examples_is_all_zeros():
    r = reports.classification_report([], [], ["x", "y"])
    assert r["accuracy"] == 0.0 and r["examples"] == 0
    assert r["classes"]["x"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r["weighted avg"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r["confusion_matrix"] == [[0, 0], [0, 0]]


def test_format_report_reads_as_sklearns_text_report():
    """Line by line, the same words and numbers as sklearn's text report (digits=4); only the
    spacing between the columns differs."""
    names = [*NAMES, "d"]
    y, p = [0, 0, 0, 1, 1, 2], [0, 1, 1, 1, 0, 2]  # precision != recall for a, b and weighted
    ours = reports.format_report(reports.classification_report(y, p, names))
    theirs = skm.classification_report(
        y, p, labels=[0, 1, 2, 3], target_names=names, digits=4, zero_division=0
    )
    assert [line.split() for line in ours.splitlines()] == [
        line.split() for line in theirs.splitlines()
    ]


def test_format_report_layout():
    text = reports.format_report(reports.classification_report(Y_TRUE, Y_PRED, NAMES))
    lines = text.splitlines()
    assert lines[0].split() == ["precision", "recall", "f1-score", "support"]
    row_b = next(line for line in lines if line.strip().startswith("b "))
    assert row_b.split() == ["b", "0.6667", "0.6667", "0.6667", "3"]
    acc = next(line for line in lines if "accuracy" in line)
    assert acc.split() == ["accuracy", "0.6667", "6"]
    assert any(line.strip().startswith("weighted avg") for line in lines)


def test_write_report_files(tmp_path):
    r = reports.classification_report(Y_TRUE, Y_PRED, NAMES)
    files = reports.write_report(r, str(tmp_path), "test")
    assert files == {
        "text": "classification_report_test.txt",
        "heatmap": "confusion_matrix_test.png",
    }
    assert (tmp_path / files["text"]).read_text().startswith(" " * 5)
    png = (tmp_path / files["heatmap"]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert not list(tmp_path.glob("*.tmp*"))


def test_write_report_titles_the_heatmap_with_split_and_accuracy(tmp_path, monkeypatch):
    titles = []
    monkeypatch.setattr(
        reports, "plot_confusion_matrix", lambda cm, labels, path, title: titles.append(title)
    )
    r = reports.classification_report(Y_TRUE, Y_PRED, NAMES)
    reports.write_report(r, str(tmp_path), "validation")
    reports.write_report(r, str(tmp_path), "test", title="Mine")
    assert titles == ["Confusion matrix (validation, accuracy 0.6667)", "Mine"]


def test_a_plot_that_fails_to_save_leaves_the_old_file(tmp_path, monkeypatch):
    """Figures are written whole or not at all: a failure inside matplotlib's writer keeps the plot that
    was there, and a path with another extension gets that format."""
    from lstm_jax import plots

    path = tmp_path / "curves.png"
    path.write_bytes(b"the old plot")
    fig, _ = plots.new_figure()

    def broken(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(OSError, match="No space"):
        plots.save_figure(fig, str(path))
    assert path.read_bytes() == b"the old plot" and sorted(tmp_path.iterdir()) == [path]
    monkeypatch.undo()
    plots.save_figure(fig, str(tmp_path / "sub" / "curves.svg"))
    assert (tmp_path / "sub" / "curves.svg").read_text().lstrip().startswith("<?xml")


def test_classification_reports_count_predictions_as_the_engines_accuracy(tmp_path):
    """The report of a split (results.json["reports"]) and the engine's accuracy of the same logits
    (results.json["metrics"]["final"]) agree where the float32 probabilities tie: a logit just above 0
    (p = 0.5 once rounded) is the positive class, as `binary_metric_sums` (logit > 0) counts it, and the
    multi-class prediction is the argmax of the logits, not of their rounded softmax."""
    import types

    import ml_collections

    from lstm_jax.tasks import classification

    config = ml_collections.ConfigDict({"data": {"dataset": "imdb"}})
    binary = np.array([1e-8, 5e-8, 1e-6, 0.0, -1e-8, 2.0], np.float32)
    multi = np.array([[1e-9, 2e-9, 0.0], [0.0, 3e-9, 4e-9], [1.0, 0.0, 0.5]], np.float32)
    for logits, labels, names in (
        (binary, np.array([1, 1, 1, 0, 0, 1]), ("neg", "pos")),
        (multi, np.array([1, 2, 0]), ("a", "b", "c")),
    ):
        prepared = types.SimpleNamespace(arrays={"test": {"label": labels}}, class_names=names)
        out = classification.evaluate_reports(
            None, prepared, config, str(tmp_path), splits=("test",), logits={"test": logits}
        )
        engine = classification.metrics_from_logits(logits, labels)
        assert engine["accuracy"] == 1.0
        assert out["test"]["accuracy"] == engine["accuracy"]
        assert np.trace(np.asarray(out["test"]["confusion_matrix"])) == len(labels)


def _drawn(monkeypatch) -> list:
    """The figures `lstm_jax.plots` would save, kept instead of written."""
    from lstm_jax import plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    return figures


def _cells(ax) -> dict[tuple[int, int], tuple[str, str]]:
    """A heatmap's annotations by (row, column): (text, colour)."""
    from matplotlib.colors import to_hex

    return {
        (round(t.get_position()[1]), round(t.get_position()[0])): (
            t.get_text(),
            to_hex(t.get_color()),
        )
        for t in ax.texts
    }


def test_the_confusion_matrix_heatmap_draws_rows_as_true_and_columns_as_predicted(
    tmp_path, monkeypatch
):
    """Every cell shows its count where the row is the true class and the column the prediction (an
    asymmetric matrix, so a transposed drawing shows), the ticks name the classes in order, and the
    largest counts are written in white on the dark cells."""
    from lstm_jax import plots

    figures = _drawn(monkeypatch)
    cm = np.array([[5, 1, 0], [3, 2, 0], [0, 4, 1]])
    path = str(tmp_path / "cm.png")
    assert plots.plot_confusion_matrix(cm, NAMES, path, title="Mine") == path
    ax = figures[0].axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), cm)
    white, black = "#ffffff", "#000000"
    assert _cells(ax) == {
        (i, j): (str(cm[i, j]), white if cm[i, j] > 2.5 else black)
        for i in range(3)
        for j in range(3)
    }
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("predicted", "true", "Mine")
    assert list(ax.get_xticks()) == list(ax.get_yticks()) == [0, 1, 2]
    assert [t.get_text() for t in ax.get_xticklabels()] == NAMES
    assert [t.get_text() for t in ax.get_yticklabels()] == NAMES


def test_the_normalised_heatmap_shows_each_true_class_row_over_its_total(tmp_path, monkeypatch):
    """normalize=True divides each row (a true class) by its total, its recall on the diagonal; a class
    with no example stays a row of zeros rather than NaN."""
    from lstm_jax import plots

    figures = _drawn(monkeypatch)
    cm = np.array([[6, 2, 0], [1, 3, 0], [0, 0, 0]])
    plots.plot_confusion_matrix(cm, NAMES, str(tmp_path / "cm.png"), normalize=True)
    ax = figures[0].axes[0]
    rates = [[0.75, 0.25, 0.0], [0.25, 0.75, 0.0], [0.0, 0.0, 0.0]]
    np.testing.assert_allclose(ax.images[0].get_array(), rates)
    assert {cell: text for cell, (text, _) in _cells(ax).items()} == {
        (i, j): f"{rates[i][j]:.2f}" for i in range(3) for j in range(3)
    }
    with pytest.raises(ValueError, match=r"must be \[2, 2\], got \(3, 3\)"):
        plots.plot_confusion_matrix(cm, NAMES[:2], str(tmp_path / "bad.png"))
    assert figures[1:] == []


HISTORY = [
    {"epoch": 1.0, "step": 5, "train": {"loss": 0.9, "accuracy": 0.5}, "validation": {"loss": 1.0}},
    {
        "epoch": 2.0,
        "step": 10,
        "train": {"loss": 0.6, "accuracy": 0.7},
        "validation": {"loss": 0.8, "accuracy": 0.6},
    },
    {
        "epoch": 3.0,
        "step": 15,
        "train": {"loss": 0.4, "accuracy": 0.8},
        "validation": {"loss": None, "accuracy": 0.65},
    },
]


def test_training_curves_draw_each_split_of_each_metric_against_the_epoch(tmp_path, monkeypatch):
    """One panel a metric, in the order asked, each with a train and a validation curve over the
    epochs (a split that lacks the metric at some epochs skips those, a JSON null is NaN), the last
    value written beside each curve's end; a metric no record has gets no panel."""
    from lstm_jax import plots

    figures = _drawn(monkeypatch)
    path = str(tmp_path / "curves.png")
    metrics = ("loss", "f1", "accuracy")
    assert plots.plot_training_curves(HISTORY, path, metrics=metrics, title="run") == path
    (fig,) = figures
    assert fig.get_suptitle() == "run"
    panels = [ax for ax in fig.axes if ax.lines]
    assert [(ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) for ax in panels] == [
        ("epoch", "loss", "loss: train vs validation"),
        ("epoch", "accuracy", "accuracy: train vs validation"),
    ]
    loss, accuracy = (
        {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines}
        for ax in panels
    )
    np.testing.assert_equal(
        loss,
        {
            "train": ([1.0, 2.0, 3.0], [0.9, 0.6, 0.4]),
            "validation": ([1.0, 2.0, 3.0], [1.0, 0.8, np.nan]),
        },
    )
    assert accuracy == {
        "train": ([1.0, 2.0, 3.0], [0.5, 0.7, 0.8]),
        "validation": ([2.0, 3.0], [0.6, 0.65]),
    }
    assert [t.get_text() for t in panels[0].texts] == ["0.4000", "nan"]
    assert [t.get_text() for t in panels[1].texts] == ["0.8000", "0.6500"]
    assert [[t.get_text() for t in ax.get_legend().get_texts()] for ax in panels] == [
        ["train", "validation"],
        ["train", "validation"],
    ]


def test_training_curves_of_a_metric_only_training_has_and_of_nothing_to_plot(
    tmp_path, monkeypatch
):
    from lstm_jax import plots

    figures = _drawn(monkeypatch)
    history = [{"epoch": 1.0, "train": {"perplexity": 3.0}, "validation": {}}]
    plots.plot_training_curves(history, str(tmp_path / "a.png"), metrics=("perplexity",))
    (ax,) = figures[0].axes
    assert [line.get_label() for line in ax.lines] == ["train"] and figures[0].get_suptitle() == ""
    assert plots.plot_training_curves(history, str(tmp_path / "b.png")) is None
    assert plots.plot_training_curves([], str(tmp_path / "c.png")) is None
    assert len(figures) == 1 and not list(tmp_path.iterdir())


def test_a_plot_path_without_an_extension_is_a_png(tmp_path):
    from lstm_jax import plots

    fig, _ = plots.new_figure()
    plots.save_figure(fig, str(tmp_path / "curves"))
    assert (tmp_path / "curves").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
