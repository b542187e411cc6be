"""The Markdown pages: every relative link points at a file of the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted(
    p.relative_to(REPO)
    for p in REPO.rglob("*.md")
    if not any(part.startswith(".") or part in ("runs", "node_modules") for part in p.parts)
)


@pytest.mark.parametrize("page", PAGES, ids=str)
def test_relative_links_resolve(page):
    # Text moved between pages word for word kept links relative to its old page (README.md's
    # `benchmarks/README.md` became benchmarks/benchmarks/README.md in benchmarks/README.md).
    text = (REPO / page).read_text(encoding="utf-8")
    broken = []
    for link in re.findall(r"\]\(([^)\s]+)\)", text):
        target = link.split("#", 1)[0]
        if not target or re.match(r"[a-z]+:", target):
            continue
        if not (REPO / page).parent.joinpath(target).exists():
            broken.append(link)
    assert not broken, f"{page}: links to missing files: {broken}"
