"""constraints.txt, the versions `make venv` installs on Python 3.11, agrees with pyproject.toml."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, Version]:
    pins = {}
    for n, line in enumerate((REPO / "constraints.txt").read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"constraints.txt line {n}: {line!r} is not name==version"
        key = canonicalize_name(name)
        assert key not in pins, f"constraints.txt pins {name} twice"
        pins[key] = Version(version)
    return pins


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _requirements() -> list[Requirement]:
    project = _project()
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return [Requirement(r) for r in reqs]


def test_every_dependency_is_pinned_within_its_range():
    pins = _pins()
    problems = []
    for req in _requirements():
        key = canonicalize_name(req.name)
        if key == "torch":  # the bench extra pins it itself; its +cpu build is not on PyPI
            assert key not in pins, (
                "constraints.txt must not pin torch (pyproject's bench extra does)"
            )
            continue
        if key not in pins:
            problems.append(f"{req.name} is not pinned")
        elif not req.specifier.contains(pins[key], prereleases=True):
            problems.append(f"{req.name}=={pins[key]} is outside pyproject's {req.specifier}")
    assert not problems, "constraints.txt: " + "; ".join(problems)


def test_the_makefile_installs_with_the_constraints():
    makefile = (REPO / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if "pip install" in line and "-e '." in line]
    assert installs, "the Makefile installs the project nowhere"
    assert all("$(PINS)" in line for line in installs), installs
    assert '"-c constraints.txt" if sys.version_info[:2] == (3, 11)' in makefile


def test_every_package_the_library_imports_is_a_declared_dependency():
    """A package lstm_jax imports itself (outside `try: ... except ImportError`) must be in pyproject's
    dependencies, not only arrive as another package's dependency (which a new release of it may drop)."""
    import ast
    import importlib.metadata
    import sys

    declared = {canonicalize_name(Requirement(r).name) for r in _project()["dependencies"]}
    distributions = importlib.metadata.packages_distributions()
    missing = set()

    def guarded(tree: ast.AST) -> set[int]:
        """The import nodes inside `try: ... except ImportError` (optional: the code does without)."""
        out = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Try) and any(
                "ImportError" in ast.unparse(h.type or ast.Name("BaseException"))
                for h in node.handlers
            ):
                out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
        return out

    for path in sorted((REPO / "lstm_jax").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        optional = guarded(tree)
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "lstm_jax":
                    continue
                dists = {canonicalize_name(d) for d in distributions.get(top, [top])}
                if not dists & declared:
                    missing.add(f"{top} ({path.relative_to(REPO)})")
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"
