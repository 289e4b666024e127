"""The report's flags for the dashboard, computed in a background thread.

A session holds flags only when its collector stored them; otherwise the dashboard runs the
same analysis `apiscope report` runs. On a million samples that takes seconds, so it never runs
inside a callback: a daemon thread computes it (once for a replay, every `interval` seconds
while live) and the views pick the result up on their next refresh.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from apiscope.flag import Flag

if TYPE_CHECKING:
    from apiscope.analysis.thresholds import Thresholds

Analyse = Callable[[Path], list[Flag]]


def report_flags(path: Path, thresholds: Thresholds | None = None) -> list[Flag]:
    """The flags `apiscope report` finds in the session (its own connection, not the views'),
    judged by `thresholds` (the command's: `analysis.thresholds.resolve_thresholds`)."""
    from apiscope.analysis.report import find_flags
    from apiscope.store import SessionReader

    with SessionReader(path) as reader:
        return find_flags(reader, thresholds=thresholds)


def flags_by(thresholds: Thresholds | None) -> Analyse:
    """`report_flags` with these thresholds, for `FlagAnalysis`."""
    return lambda path: report_flags(path, thresholds)


class FlagAnalysis:
    """Flags recomputed in the background; `flags` is None until the first run finished."""

    def __init__(self, path: str | os.PathLike[str], *, live: bool, interval: float = 15.0,
                 analyse: Analyse = report_flags) -> None:
        self.path = Path(path)
        self.live = live
        self.interval = interval
        self._analyse = analyse
        self.flags: list[Flag] | None = None
        self.error: str | None = None
        self.generation = 0  # bumped by each finished run, so views know to redraw
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="apiscope-dashboard-analysis",
                                        daemon=True)

    def start(self) -> FlagAnalysis:
        self._thread.start()
        return self

    def stop(self, wait: bool = True) -> None:
        self._stop.set()
        if wait and self._thread.is_alive():
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self.flags = self._analyse(self.path)
                self.error = None
            except Exception as exc:  # a half-written session must not end the dashboard
                self.error = f"{type(exc).__name__}: {exc}"
            self.generation += 1
            if not self.live:
                return
            # A big session takes seconds to analyse: keep the analysis to a fifth of a core.
            self._stop.wait(max(self.interval, 4 * (time.monotonic() - began)))
