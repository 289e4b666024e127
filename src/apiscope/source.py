"""The function a line of the application's source belongs to, read from the source itself;
and where a handler hands its result back.

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
Function = ast.FunctionDef | ast.AsyncFunctionDef


def enclosing_function(path: str, line: int) -> str | None:
    """The innermost function whose body holds `line` of the Python file `path`, or None."""
    best: Span | None = None
    for span in _functions(path):
        if span[0] <= line <= span[1] and (best is None or span[0] >= best[0]):
            best = span
    return best[2] if best is not None else None


@functools.lru_cache(maxsize=1024)  # asked once per stall of a route: the module walked once
def hands_back_at(path: str, first_line: int) -> int | None:
    """Where the handler whose code begins at `first_line` of `path` (its first decorator's
    line, as the function's code says, or its `def`) hands its result to the framework: the
    line of its one `return <value>`, else its `def` line (not a decorator's). None when the
    source is not readable here."""
    function = _function_at(path, first_line)
    if function is None:
        return None
    returns = [node.lineno for node in _own_nodes(function)
               if isinstance(node, ast.Return) and node.value is not None]
    return returns[0] if len(returns) == 1 else function.lineno


@functools.lru_cache(maxsize=1024)  # asked by each analysis of a live session, for each route
def def_line(path: str, first_line: int) -> int:
    """The `def` line of the function whose code begins at `first_line` of `path` (its first
    decorator's line, as the function's code says): where a reader looks for it. `first_line`
    itself when the source is not readable here."""
    function = _function_at(path, first_line)
    return function.lineno if function is not None else first_line


@functools.lru_cache(maxsize=1024)
def class_line(path: str, qualname: str) -> int | None:
    """The `class` line of the class `qualname` (`Outer.Inner`) in the Python file `path`;
    None when the source is not readable here or holds no such class."""
    tree = _tree(path)
    if tree is None:
        return None
    names = qualname.split(".")
    scope: list[ast.stmt] = tree.body
    found: ast.ClassDef | None = None
    for name in names:
        found = next((node for node in scope
                      if isinstance(node, ast.ClassDef) and node.name == name), None)
        if found is None:
            return None
        scope = found.body
    return found.lineno if found is not None else None


def _function_at(path: str, first_line: int) -> Function | None:
    tree = _tree(path)
    if tree is None:
        return None
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            if first_line in (start, node.lineno):
                return node
    return None


def _own_nodes(function: Function) -> list[ast.AST]:
    """The nodes of a function's body, not those of the functions and classes inside it."""
    scopes = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
    nodes: list[ast.AST] = []
    pending: list[ast.AST] = [node for node in function.body if not isinstance(node, scopes)]
    while pending:
        node = pending.pop()
        nodes.append(node)
        pending.extend(child for child in ast.iter_child_nodes(node)
                       if not isinstance(child, scopes))
    return nodes


@functools.lru_cache(maxsize=256)
def _functions(path: str) -> tuple[Span, ...]:
    tree = _tree(path)
    if tree is None:
        return ()
    spans: list[Span] = []
    _walk(tree, "", spans)
    return tuple(spans)


@functools.lru_cache(maxsize=64)
def _tree(path: str) -> ast.Module | None:
    if not path.endswith(".py"):
        return None
    try:
        if os.path.getsize(path) > MAX_SOURCE_BYTES:
            return None
        with open(path, "rb") as f:
            return ast.parse(f.read(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return None


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
