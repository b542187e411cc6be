"""Every notebook runs top to bottom (small size), is stored without outputs, and says when data is missing.

Notebooks read `LSTM_JAX_NOTEBOOK_SMALL=1` (set here) to shrink training to well under two minutes and put
their runs under `LSTM_JAX_NOTEBOOK_WORKDIR` (a tmp dir here). A notebook whose data is missing stops in
its first code cell with a `UserError` naming `LSTM_JAX_DATA`; the run test then skips it instead of
failing (an error in any later cell still fails). Outputs are stripped with `make strip-notebooks`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

from lstm_jax import data  # noqa: E402
from lstm_jax.errors import UserError  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
EXPECTED = {"lstm_anatomy", "char_generation", "fashion_generation", "imdb_sentiment", "fake_news"}


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def _kernel_env() -> dict[str, str]:
    """The kernel's environment: this checkout first on its path. The kernel starts in a tmp dir, where
    `import lstm_jax` would otherwise find whatever copy is installed in the venv (an editable install of
    another checkout), not the code under test."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def _notebook_dir_files() -> set[str]:
    """Everything under notebooks/ (runs must go to LSTM_JAX_NOTEBOOK_WORKDIR, not next to them)."""
    root = REPO / "notebooks"
    return {str(Path(d, f).relative_to(root)) for d, _, files in os.walk(root) for f in files}


def test_the_notebooks_exist():
    assert EXPECTED <= {p.stem for p in NOTEBOOKS}, (
        f"missing: {EXPECTED - {p.stem for p in NOTEBOOKS}}"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for n, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.outputs, f"{path.name} cell {n} has outputs; run `make strip-notebooks`"
            assert cell.execution_count is None, f"{path.name} cell {n} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_structure(path):
    """Data and size are explained before the first code cell, which reads the switches."""
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown", f"{path.name}: start with a markdown cell"
    intro = nb.cells[0].source
    assert "LSTM_JAX_DATA" in intro and "LSTM_JAX_NOTEBOOK_SMALL" in intro, (
        f"{path.name}: the first markdown cell must say what data is needed (LSTM_JAX_DATA) and"
        " how to run small (LSTM_JAX_NOTEBOOK_SMALL)"
    )
    first = _code_cells(nb)[0].source
    for name in ("LSTM_JAX_NOTEBOOK_SMALL", "LSTM_JAX_NOTEBOOK_WORKDIR", "lstm_jax"):
        assert name in first, f"{path.name}: the first code cell must use {name}"
    for cell in _code_cells(nb):
        assert "sys.path" not in cell.source, f"{path.name}: import lstm_jax, do not patch sys.path"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_cell_names_missing_data(path, tmp_path, monkeypatch):
    """Without data, the first code cell raises the library's UserError naming LSTM_JAX_DATA, at once."""
    empty = tmp_path / "no_data"
    empty.mkdir()
    monkeypatch.setenv("LSTM_JAX_DATA", str(empty))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no_tfds"))
    monkeypatch.setenv("LSTM_JAX_NOTEBOOK_WORKDIR", str(tmp_path / "runs"))
    monkeypatch.setenv("LSTM_JAX_NOTEBOOK_SMALL", "1")
    monkeypatch.setattr(data, "_network_reachable", lambda *a, **k: False)  # never download
    source = _code_cells(nbformat.read(path, as_version=4))[0].source
    with pytest.raises(UserError, match="LSTM_JAX_DATA"):
        exec(compile(source, f"{path.name}[first code cell]", "exec"), {"__name__": "__main__"})


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("LSTM_JAX_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("LSTM_JAX_NOTEBOOK_WORKDIR", str(tmp_path))
    before = _notebook_dir_files()
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    try:
        client.execute(env=_kernel_env())
    except nbclient.exceptions.CellExecutionError as e:
        failed = [
            c
            for c in _code_cells(nb)
            if any(o.get("output_type") == "error" for o in c.get("outputs", []))
        ]
        first = failed and failed[0] is _code_cells(nb)[0]
        if first and e.ename == "UserError" and "LSTM_JAX_DATA" in str(e.evalue):
            pytest.skip(f"{path.name}: data not available ({e.evalue})")
        raise
    outputs = [o for c in _code_cells(nb) for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any(o.output_type == "stream" for o in outputs), f"{path.name} printed nothing"
    assert _notebook_dir_files() == before, f"{path.name} wrote files into notebooks/"


def test_ruff_covers_the_notebooks():
    """`ruff check .` and `ruff format` lint the notebooks too (docs/experiments.md says so)."""
    import tomllib

    ruff = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["ruff"]
    excluded = ruff.get("exclude", []) + ruff.get("extend-exclude", [])
    assert not [p for p in excluded if "notebook" in p or "ipynb" in p], (
        f"pyproject.toml keeps the notebooks out of ruff: {excluded}"
    )


def test_notebook_kernels_import_this_checkout(tmp_path):
    """A kernel started as test_notebook_runs starts one imports lstm_jax and experiments from REPO."""
    cell = "import experiments, lstm_jax; print(lstm_jax.__file__); print(experiments.__file__)"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute(env=_kernel_env())
    lstm_file, experiments_file = nb.cells[0].outputs[0].text.split()
    assert Path(lstm_file).is_relative_to(REPO / "lstm_jax"), lstm_file
    assert Path(experiments_file).is_relative_to(REPO / "experiments"), experiments_file


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_given_workdir_is_checked_for_its_experiment(path):
    """A cell that loads a workdir named by LSTM_JAX_<X>_WORKDIR first checks it holds a run of the
    notebook's experiment (`cli.check_config_family(..., experiment=...)`), so a wrong one is one line."""
    for cell in _code_cells(nbformat.read(path, as_version=4)):
        if re.search(r"LSTM_JAX_(?!NOTEBOOK_)\w+_WORKDIR", cell.source):
            assert "check_config_family(" in cell.source and "experiment=" in cell.source, (
                f"{path.name}: check the given workdir with cli.check_config_family"
            )


# Names for what the analysis runs on. Bound in two cells (a toy and the trained model, the data's
# vocabulary and the run's), re-running the earlier cell silently swaps what the later cells use.
SINGLE_BINDING = ("vocab", "model", "gates", "final", "workdir", "results", "params", "splits")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_model_and_its_vocabulary_are_bound_in_one_cell(path):
    import ast

    cells: dict[str, list[int]] = {}
    for n, cell in enumerate(_code_cells(nbformat.read(path, as_version=4))):
        source = "\n".join(line for line in cell.source.splitlines() if not line.startswith("%"))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                cells.setdefault(node.id, []).append(n)
    twice = {k: sorted(set(v)) for k, v in cells.items() if k in SINGLE_BINDING and len(set(v)) > 1}
    assert not twice, f"{path.name}: bound in more than one code cell (by index): {twice}"
