"""The function a line of the application's source belongs to, read from the source itself.

The agent records some places as a file and a line only (the call site of a query, the line
that raised). When no stack sample ever ran that line, the samples cannot name its function;
the source file can, when it is readable here (the collector usually runs beside the target;
in another container the path may not exist, and the name stays unknown). Functions are named
as py-spy names them: `Class.method`, a nested function `outer.<locals>.inner`.
"""

from __future__ import annotations

import ast
import functools
import os

MAX_SOURCE_BYTES = 2_000_000  # a larger "source" is not worth parsing for a name

Span = tuple[int, int, str]  # first line, last line, qualified name


def enclosing_function(path: str, line: int) -> str | None:
    """The innermost function whose body holds `line` of the Python file `path`, or None."""
    best: Span | None = None
    for span in _functions(path):
        if span[0] <= line <= span[1] and (best is None or span[0] >= best[0]):
            best = span
    return best[2] if best is not None else None


@functools.lru_cache(maxsize=256)
def _functions(path: str) -> tuple[Span, ...]:
    if not path.endswith(".py"):
        return ()
    try:
        if os.path.getsize(path) > MAX_SOURCE_BYTES:
            return ()
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return ()
    spans: list[Span] = []
    _walk(tree, "", spans)
    return tuple(spans)


def _walk(node: ast.AST, prefix: str, spans: list[Span]) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = prefix + child.name
            spans.append((child.lineno, child.end_lineno or child.lineno, name))
            _walk(child, name + ".<locals>.", spans)
        elif isinstance(child, ast.ClassDef):
            _walk(child, prefix + child.name + ".", spans)
        else:
            _walk(child, prefix, spans)
