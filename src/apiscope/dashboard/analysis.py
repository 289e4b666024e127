"""The report's flags for the dashboard, computed in a background thread.

A session holds flags only when its collector stored them; otherwise the dashboard runs the
same analysis `apiscope report` runs. On a million samples that takes seconds, so it never runs
inside a callback: a daemon thread computes it (once for a replay, every `interval` seconds
while live) and the views pick the result up on their next refresh.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from apiscope.analysis.periodic import PeriodicAnalysis
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
        self.flags: list[Flag] | None = None
        self.error: str | None = None
        self.generation = 0  # bumped by each finished run, so views know to redraw
        # At once, then (live) again after each pause; a big session takes seconds to
        # analyse, so the pauses keep the analysis to a fifth of a core.
        self._periodic = PeriodicAnalysis(
            lambda: analyse(self.path), self._finished, on_error=self._failed,
            interval=interval, name="apiscope-dashboard-analysis", immediately=True,
            repeat=live, max_share=0.2)

    @property
    def interval(self) -> float:
        return self._periodic.interval

    def start(self) -> FlagAnalysis:
        self._periodic.start()
        return self

    def stop(self, wait: bool = True) -> None:
        self._periodic.stop(timeout=30 if wait else None)

    def _finished(self, flags: list[Flag]) -> None:
        self.flags = flags
        self.error = None
        self.generation += 1

    def _failed(self, error: str) -> None:  # the previous flags stay shown
        self.error = error
        self.generation += 1
