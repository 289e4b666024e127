"""Keeps `apiscope_flags_active` current while a session is being collected.

The analysis rules work on the whole session file, so the live flags are the report's flags
recomputed every `interval` seconds from the file the collector is writing (WAL mode lets us
read while it writes). The analysis is imported lazily: a metrics-only install still serves
every other metric.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from apiscope.analysis.periodic import PeriodicAnalysis
from apiscope.flag import Flag
from apiscope.metrics.exporter import MetricsExporter

if TYPE_CHECKING:
    from apiscope.analysis.thresholds import Thresholds

FlagSource = Callable[[], list[Flag]]


def session_flags(session: Path, slo_ms: float | None = None,
                  thresholds: Thresholds | None = None) -> FlagSource:
    """A flag source: the report's flags over the session file as it is now, judged by
    `thresholds` (the command's `--config` or the project's, as the final report is)."""

    def flags() -> list[Flag]:
        from apiscope.analysis.report import find_flags
        from apiscope.store import SessionReader

        with SessionReader(session) as reader:
            return find_flags(reader, slo_ms=slo_ms, thresholds=thresholds)

    return flags


class LiveFlags:
    """Feeds `exporter.set_flags` from `source` every `interval` seconds, first after one
    interval, in a daemon thread (`PeriodicAnalysis`); a failed run keeps the previous flags.
    With `max_share`, the runs use at most that share of a core (the pauses grow)."""

    def __init__(self, exporter: MetricsExporter, source: FlagSource,
                 interval: float = 10.0,
                 max_share: float | Callable[[], float] | None = None) -> None:
        self.exporter = exporter
        self.source = source
        self._periodic = PeriodicAnalysis(lambda: self.source(), exporter.set_flags,
                                          interval=interval, name="apiscope-live-flags",
                                          max_share=max_share)

    @property
    def interval(self) -> float:
        return self._periodic.interval

    @property
    def failures(self) -> int:
        return self._periodic.failures

    @property
    def last_error(self) -> str | None:
        return self._periodic.last_error

    def refresh(self) -> bool:
        """One update; False (and the previous flags kept) when the analysis failed."""
        return self._periodic.run_once()

    def start(self) -> None:
        self._periodic.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._periodic.stop(timeout)
