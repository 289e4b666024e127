"""EXPECTED_FLAGS must point at the real offending calls: parse the sources to check."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from sample_app.bottlenecks import EXPECTED_FLAGS, ExpectedFlag
from tests.support import ROOT

MARKER = "# BOTTLENECK"
FLAG_KINDS = {"event_loop_blocked", "cpu_hotspot", "n_plus_one", "memory_growth", "error_rate",
              "threadpool_saturation", "gil_contention", "slow_await"}


def dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return ""


def function_at(tree: ast.Module, line: int) -> ast.FunctionDef | ast.AsyncFunctionDef:
    """The innermost function whose body spans `line`."""
    spans = [node for node in ast.walk(tree)
             if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
             and node.lineno <= line <= (node.end_lineno or node.lineno)]
    assert spans, f"line {line} is in no function"
    return max(spans, key=lambda node: node.lineno)


def test_every_bottleneck_kind_is_listed_once() -> None:
    kinds = [flag["kind"] for flag in EXPECTED_FLAGS]
    assert sorted(kinds) == sorted(FLAG_KINDS)
    assert len({flag["route"] for flag in EXPECTED_FLAGS}) == len(EXPECTED_FLAGS)


@pytest.mark.parametrize("flag", EXPECTED_FLAGS, ids=lambda flag: flag["kind"])
def test_listed_line_holds_the_offending_call(flag: ExpectedFlag) -> None:
    path = ROOT / flag["file"]
    source = path.read_text()
    tree = ast.parse(source)
    line = flag["line"]
    calls = [dotted(node.func) for node in ast.walk(tree)
             if isinstance(node, ast.Call) and node.lineno == line]
    assert flag["call"] in calls, f"{flag['file']}:{line} calls {calls}, not {flag['call']}"
    assert function_at(tree, line).name == flag["function"]
    assert source.splitlines()[line - 1].rstrip().endswith(MARKER)


@pytest.mark.parametrize("flag", EXPECTED_FLAGS, ids=lambda flag: flag["kind"])
def test_listed_handler_exists_and_calls_into_the_offending_function(flag: ExpectedFlag) -> None:
    module_name, function_name = flag["handler"].split(":")
    module = importlib.import_module(module_name)
    handler = getattr(module, function_name)
    assert Path(module.__file__ or "").resolve() == (ROOT / flag["file"]).resolve()
    assert handler.__code__.co_firstlineno == flag["handler_line"]
    source_tree = ast.parse((ROOT / flag["file"]).read_text())
    handler_node = next(node for node in ast.walk(source_tree)
                        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                        and node.name == handler.__name__)
    called = {dotted(node.func) for node in ast.walk(handler_node) if isinstance(node, ast.Call)}
    assert handler.__name__ == flag["function"] or flag["function"] in called


def test_every_marked_line_is_listed() -> None:
    listed = {(flag["file"], flag["line"]) for flag in EXPECTED_FLAGS}
    marked = {(str(path.relative_to(ROOT)), number)
              for path in sorted((ROOT / "sample_app").rglob("*.py"))
              for number, text in enumerate(path.read_text().splitlines(), start=1)
              if text.rstrip().endswith(MARKER)}
    assert marked == listed


def test_readme_table_shows_the_listed_lines() -> None:
    readme = (ROOT / "sample_app" / "README.md").read_text()
    rows = {line for line in readme.splitlines() if line.startswith("| `GET ")}
    for flag in EXPECTED_FLAGS:
        where = f"`{flag['file']}:{flag['line']}`"
        row = next((row for row in rows if row.startswith(f"| `{flag['route']}` ")
                    and where in row), None)
        assert row is not None, f"README has no row for {flag['route']} at {where}"
        assert f"`{flag['kind']}`" in row
