"""The Markdown pages: every relative link points at a file of the repository, and every config file,
module and make target they tell users to run exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted(
    p.relative_to(REPO)
    for p in REPO.rglob("*.md")
    if not any(part.startswith(".") or part in ("runs", "node_modules") for part in p.parts)
)


def _text(page: Path) -> str:
    return (REPO / page).read_text(encoding="utf-8")


@pytest.mark.parametrize("page", PAGES, ids=str)
def test_relative_links_resolve(page):
    # Text moved between pages word for word kept links relative to its old page (README.md's
    # `benchmarks/README.md` became benchmarks/benchmarks/README.md in benchmarks/README.md).
    text = _text(page)
    broken = []
    for link in re.findall(r"\]\(([^)\s]+)\)", text):
        target = link.split("#", 1)[0]
        if not target or re.match(r"[a-z]+:", target):
            continue
        if not (REPO / page).parent.joinpath(target).exists():
            broken.append(link)
    assert not broken, f"{page}: links to missing files: {broken}"


def test_the_quick_configs_step_count_is_stated_as_it_is():
    # docs/experiments.md said "1,200 steps of the `quick` model instead of the config's 400" after
    # quick.py went to 1,500 steps (the notebook it describes said 1,500).
    import importlib

    quick = importlib.import_module("experiments.char_textgen.configs.quick").get_config()
    steps = quick.train.num_steps
    pages = [*PAGES, *sorted(p.relative_to(REPO) for p in (REPO / "notebooks").glob("*.ipynb"))]
    wrong = []
    for page in pages:
        text = (REPO / page).read_text(encoding="utf-8")
        if page.suffix == ".ipynb":
            text = "\n\n".join("".join(c["source"]) for c in json.loads(text)["cells"])
        for paragraph in re.split(r"\n\s*\n", text):
            if "quick" not in paragraph:
                continue
            for n in re.findall(r"the config's (\d[\d,]*)", re.sub(r"\s+", " ", paragraph)):
                if int(n.replace(",", "")) != steps:
                    wrong.append(f"{page}: the config's {n}")
    assert not wrong, f"quick.py trains {steps} steps; the pages say: {wrong}"


def test_the_config_files_modules_and_make_targets_the_pages_name_exist():
    """The README and docs tell users what to run: every config file, `python -m` module of this
    repository and `make` target they name is there (a renamed config or target left commands that
    fail at the first step)."""
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    missing = []
    for page in PAGES:
        text = _text(page)
        for path in sorted(set(re.findall(r"experiments/[a-z_]+/configs/[a-z_0-9]+\.py", text))):
            if not (REPO / path).is_file():
                missing.append(f"{page}: {path}")
        for module in sorted(
            set(re.findall(r"python -m ((?:benchmarks|experiments)(?:\.\w+)+)", text))
        ):
            if not (REPO / (module.replace(".", "/") + ".py")).is_file():
                missing.append(f"{page}: python -m {module}")
        for target in sorted(set(re.findall(r"`make ([a-z][a-z-]*)", text))):
            if target not in targets:
                missing.append(f"{page}: make {target}")
    assert not missing, missing


def test_the_readmes_experiment_table_names_each_experiments_configs():
    """The README's table of experiments lists each one's configs by name; each is a file of that
    experiment's configs/ folder, and each config file there is listed."""
    rows = re.findall(r"^\| `(\w+)` \| (.+?) \|", _text(Path("README.md")), re.M)
    assert {name for name, _ in rows} == {
        p.name for p in (REPO / "experiments").iterdir() if (p / "main.py").is_file()
    }
    for name, configs in rows:
        listed = set(re.findall(r"`(\w+)`", re.sub(r"\(.*?\)", "", configs)))
        present = {p.stem for p in (REPO / "experiments" / name / "configs").glob("*.py")} - {
            "__init__"
        }
        assert listed == present, (name, listed, present)
