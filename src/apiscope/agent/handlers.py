"""One route table row: the handler function a route runs, its file and first line."""

from __future__ import annotations

import functools
import inspect
import sys
from typing import Any

RouteRow = dict[str, Any]  # method, template, handler, file, line, is_async (, view...)


def unwrap(func: Any) -> Any:
    """The function a handler really runs: through functools.partial and `__wrapped__`."""
    for _ in range(100):  # a bound on pathological wrapper chains
        if isinstance(func, functools.partial):
            func = func.func
        elif getattr(func, "__wrapped__", None) is not None:
            func = func.__wrapped__
        else:
            break
    return func


def handler_row(method: str, template: str, handler: Any, view: Any = None) -> RouteRow:
    """The row of `handler`; `view` is the class it was taken from, when it was (a class-based
    view's method), named in the row when the handler is a method it inherits from another
    module (a library's generic view)."""
    func = unwrap(handler)
    code = getattr(func, "__code__", None)
    module = getattr(func, "__module__", None) or "?"
    qualname = getattr(func, "__qualname__", None) or type(func).__qualname__
    row = {
        "method": method,
        "template": template,
        "handler": f"{module}:{qualname}",
        "file": code.co_filename if code is not None else _safe_sourcefile(func),
        "line": code.co_firstlineno if code is not None else 0,
        "is_async": inspect.iscoroutinefunction(func),
    }
    view_module = getattr(view, "__module__", None)
    if view is not None and view_module and view_module != module:
        row.update(view_site(view))
    return row


_VIEW_SITES: dict[Any, RouteRow] = {}


def view_site(cls: Any) -> RouteRow:
    """`view`, `view_file` and `view_line` of a class: its module, file and first line."""
    found = _VIEW_SITES.get(cls)
    if found is None:
        module = sys.modules.get(cls.__module__)
        file = getattr(module, "__file__", None) or _safe_sourcefile(cls)
        found = _VIEW_SITES[cls] = {"view": f"{cls.__module__}:{cls.__qualname__}",
                                    "view_file": file, "view_line": _class_line(cls)}
    return found


def _class_line(cls: Any) -> int:
    """The class's first line (Python 3.13 says), else its first method's: no source is read
    in the target. `inspect.findsource` parsed the class's whole module, on the loop thread as
    the first request built the route table: a Wagtail site's 250 class-based views doubled
    its requests' median for three seconds after the injection. The collector finds the
    `class` line in the source (`analysis.source.class_line`)."""
    line = getattr(cls, "__firstlineno__", None)  # Python 3.13
    if isinstance(line, int):
        return line
    lines = [f.__code__.co_firstlineno for f in vars(cls).values() if hasattr(f, "__code__")]
    return min(lines) if lines else 0


def _safe_sourcefile(func: Any) -> str:
    try:
        return inspect.getsourcefile(func) or ""
    except TypeError:
        return ""
