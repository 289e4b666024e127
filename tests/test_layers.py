"""Layers import downward only: cli -> dashboard, metrics, exporters -> analysis -> store ->
model (and `flag`, `report` and `sessionmeta`, the typed flags, report and session metadata
beside it); the collectors import no analysis, and the source reader (`source`), which both
use, imports neither. A lower layer importing
a higher one would tie, say, the analysis to how a report is drawn; and SQL stays in the store,
so a schema change is the store's alone."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import apiscope

PACKAGE = Path(apiscope.__file__).parent
ABOVE = {
    "model": ("store", "analysis", "exporters", "dashboard", "metrics", "cli"),
    "flag": ("store", "analysis", "exporters", "dashboard", "metrics", "cli"),
    "report": ("store", "analysis", "exporters", "dashboard", "metrics", "cli"),
    "sessionmeta": ("store", "analysis", "exporters", "dashboard", "metrics", "cli"),
    "store": ("analysis", "exporters", "dashboard", "metrics", "cli"),
    "analysis": ("exporters", "dashboard", "metrics", "cli"),
    # What runs beside a live target gathers and stores; how it is read is not its business.
    "collectors": ("analysis", "exporters", "dashboard", "metrics", "cli"),
    "source": ("store", "analysis", "collectors", "exporters", "dashboard", "metrics", "cli"),
}


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def modules(layer: str) -> list[Path]:
    single = PACKAGE / f"{layer}.py"
    return [single] if single.is_file() else sorted((PACKAGE / layer).rglob("*.py"))


@pytest.mark.parametrize("layer", sorted(ABOVE))
def test_a_layer_imports_nothing_above_it(layer: str) -> None:
    upward = {f"apiscope.{above}" for above in ABOVE[layer]}
    found = sorted(f"{path.relative_to(PACKAGE)} imports {name}"
                   for path in modules(layer) for name in imported(path)
                   if any(name == up or name.startswith(up + ".") for up in upward))
    assert not found


def test_only_the_store_runs_sql_on_a_session() -> None:
    outside = sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                     if path.parent.name != "store" and "sqlite3" in imported(path))
    assert outside == []
