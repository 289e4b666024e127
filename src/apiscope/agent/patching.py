"""Putting a wrapper of ours in place of a library's function, and the original back.

The database hooks (`queries`) and the pool timing (`offload`) wrap functions of classes and
modules the app imported. A wrapper carries its original under `MARK`: a second install (the
agent injected again, or hooks installed once more for libraries imported since) sees it and
wraps nothing twice.

Standard library only, relative imports only, Python 3.9 compatible (see `watchdog`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

MARK = "__apiscope_original__"


def replace(owner: Any, name: str, make: Callable[[Any], Any],
            undo: list[Callable[[], None]]) -> bool:
    """Replace `owner`'s own `name` (a class's or a module's attribute) by `make(original)`,
    and append to `undo` the call that puts the original back. False, doing nothing, when the
    owner has no such attribute of its own or it is already a wrapper of ours."""
    original = vars(owner).get(name)
    if original is None or getattr(original, MARK, None) is not None:
        return False
    ours = make(original)
    setattr(ours, MARK, original)
    setattr(owner, name, ours)
    undo.append(functools.partial(restore, owner, name, ours, original))
    return True


def restore(owner: Any, name: str, ours: Any, original: Any) -> None:
    """Put `original` back, unless something else has replaced ours since (then ours, which
    calls the original, stays: removing it would remove theirs too)."""
    if vars(owner).get(name) is ours:
        setattr(owner, name, original)
