"""One route table row: the handler function a route runs, its file and first line."""

from __future__ import annotations

import functools
import inspect
from typing import Any

RouteRow = dict[str, Any]  # method, template, handler, file, line, is_async


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


def handler_row(method: str, template: str, handler: Any) -> RouteRow:
    func = unwrap(handler)
    code = getattr(func, "__code__", None)
    module = getattr(func, "__module__", None) or "?"
    qualname = getattr(func, "__qualname__", None) or type(func).__qualname__
    return {
        "method": method,
        "template": template,
        "handler": f"{module}:{qualname}",
        "file": code.co_filename if code is not None else _safe_sourcefile(func),
        "line": code.co_firstlineno if code is not None else 0,
        "is_async": inspect.iscoroutinefunction(func),
    }


def _safe_sourcefile(func: Any) -> str:
    try:
        return inspect.getsourcefile(func) or ""
    except TypeError:
        return ""
