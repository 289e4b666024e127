"""The planted bottlenecks an app declares: `# planted: KIND CAUSE` at the end of a line.

KIND is a report flag kind; CAUSE is `cpu` (the line burns CPU in Python), `native` (in C code
that releases the GIL, such as hashing: CPU all the same), `wait` (sleep, I/O or a lock:
off-CPU) or `error` (the line raises, and the framework answers 500). A marker on a function's
`def` line stands for the handler itself (the contract's location for `slow_endpoint` and
`threadpool_saturation`): a stack sample, and so a report, gives a decorated function's first
line as its first decorator's, so both lines count.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

MARKER = re.compile(r"#\s*planted:\s*(?P<kind>[a-z_]+)\s+(?P<cause>cpu|native|wait|error)\s*$")


@dataclass(frozen=True)
class Marker:
    kind: str
    cause: str  # "cpu", "native", "wait" or "error"
    file: Path  # absolute
    line: int  # the marked line
    lines: frozenset[int]  # every line a report may rightly give for it

    def label(self, root: Path) -> str:
        return f"{self.kind} ({self.cause}) at {_relative(self.file, root)}:{self.line}"


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _handler_lines(tree: ast.AST) -> dict[int, frozenset[int]]:
    """def line -> {first decorator line, def line} for every function in the module."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([d.lineno for d in node.decorator_list] + [node.lineno])
            out[node.lineno] = frozenset({first, node.lineno})
    return out


def markers_in_file(path: Path) -> list[Marker]:
    source = path.read_text()
    handlers: dict[int, frozenset[int]] | None = None
    found = []
    for number, text in enumerate(source.splitlines(), start=1):
        match = MARKER.search(text)
        if match is None:
            continue
        if handlers is None:
            handlers = _handler_lines(ast.parse(source))
        found.append(Marker(match["kind"], match["cause"], path.resolve(), number,
                            handlers.get(number, frozenset({number}))))
    return found


def read_markers(app_dir: Path) -> list[Marker]:
    """Every marker in the app's Python files, in file and line order."""
    return [m for path in sorted(app_dir.rglob("*.py")) for m in markers_in_file(path)]
