"""The import contract: ``api -> projections -> store`` and ``api -> store``, enforced on every module.

``store`` imports nothing of the project; ``projections`` imports only ``store``; neither imports the web
stack. Nothing anywhere imports a folder under its bare name (``import store``): the folders install under
``confledger`` only, and a module loaded under two names is two modules with two sets of globals.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("store", "projections", "api", "migrations", "examples")
BARE_NAMES = frozenset(LAYERS)
WEB_STACK = ("fastapi", "starlette", "uvicorn")

# layer -> the confledger layers it may import (itself always allowed)
ALLOWED: dict[str, frozenset[str]] = {
    "store": frozenset(),
    "projections": frozenset({"store"}),
    "api": frozenset({"projections", "store"}),
    "migrations": frozenset({"store"}),
    "examples": frozenset({"api", "store", "projections"}),
}
NO_WEB_STACK = frozenset({"store", "projections"})


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """Every absolute module name a source imports (relative imports stay inside their own layer)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            if node.module == "confledger":  # "from confledger import store" names a layer
                found += [(node.lineno, f"confledger.{alias.name}") for alias in node.names]
    return found


def violations(layer: str | None, source: str) -> list[str]:
    """What a module of ``layer`` (None: outside the package, e.g. tests) does against the contract."""
    problems: list[str] = []
    for line, module in imported_modules(ast.parse(source)):
        top, _, rest = module.partition(".")
        if top in BARE_NAMES:
            problems.append(
                f"line {line}: imports {module!r} by its bare folder name; use confledger.{module}"
            )
            continue
        if layer is None:
            continue
        if top == "confledger" and rest:
            target = rest.split(".")[0]
            if target in LAYERS and target != layer and target not in ALLOWED[layer]:
                problems.append(f"line {line}: {layer} may not import confledger.{target}")
        if layer in NO_WEB_STACK and top in WEB_STACK:
            problems.append(f"line {line}: {layer} may not import {top}")
    return problems


def python_files() -> list[tuple[str | None, Path]]:
    files: list[tuple[str | None, Path]] = []
    for layer in LAYERS:
        files += [(layer, path) for path in sorted((ROOT / layer).rglob("*.py"))]
    files += [(None, path) for path in sorted((ROOT / "tests").rglob("*.py"))]
    files += [(None, path) for path in sorted((ROOT / "confledger").rglob("*.py"))]
    return files


@pytest.mark.parametrize(("layer", "path"), python_files(), ids=lambda value: str(value))
def test_module_keeps_the_import_contract(layer: str | None, path: Path) -> None:
    assert violations(layer, path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    ("layer", "source", "expected"),
    [
        # the write side reaching up into the read side or the web layer
        ("store", "from confledger.projections.history import HistoryProjection", "store may not import"),
        ("store", "import confledger.api.reloader", "store may not import"),
        ("store", "from confledger import api", "store may not import"),
        # the read side reaching up
        ("projections", "from confledger.api.schemas import OperationOut", "projections may not import"),
        # FastAPI below api/
        ("store", "from fastapi import FastAPI", "store may not import fastapi"),
        ("projections", "import starlette.requests", "projections may not import starlette"),
        # bare folder names, anywhere
        ("api", "from store.log import EventLog", "bare folder name"),
        (None, "import projections", "bare folder name"),
        (None, "from migrations import env", "bare folder name"),
    ],
)
def test_the_contract_refuses_a_forbidden_import(layer: str | None, source: str, expected: str) -> None:
    problems = violations(layer, source)
    assert problems
    assert expected in problems[0]


@pytest.mark.parametrize(
    ("layer", "source"),
    [
        ("api", "from confledger.projections.history import HistoryProjection"),  # down the stack
        ("projections", "from confledger.store.events import RecordedEvent"),
        ("store", "from confledger.store.errors import LogError"),  # within its own layer
        ("store", "from . import errors"),  # relative: stays in its layer
        (None, "from confledger.api.cli import app"),  # tests may import anything
    ],
)
def test_the_contract_allows_imports_down_the_stack(layer: str | None, source: str) -> None:
    assert violations(layer, source) == []


def test_every_module_loads_once_under_its_confledger_name() -> None:
    # examples/ is left out: embedded_app builds a whole service when imported, as an app module does.
    names = ["confledger"] + [f"confledger.{layer}" for layer in LAYERS if layer != "examples"]
    for name in names:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, f"{name}."):
            if info.name.endswith(".env"):  # Alembic's env.py runs only inside a migration context
                continue
            importlib.import_module(info.name)
    assert sorted(BARE_NAMES & set(sys.modules)) == []
    by_file: dict[str, list[str]] = {}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and any(Path(file).resolve().is_relative_to(ROOT / part) for part in (*LAYERS, "confledger")):
            by_file.setdefault(str(Path(file).resolve()), []).append(name)
    twice = {file: names for file, names in by_file.items() if len(names) > 1}
    assert twice == {}
