"""Keeps `apiscope_flags_active` current while a session is being collected.

The analysis rules work on the whole session file, so the live flags are the report's flags
recomputed every `interval` seconds from the file the collector is writing (WAL mode lets us
read while it writes). The analysis is imported lazily: a metrics-only install still serves
every other metric.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

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
    """A daemon thread feeding `exporter.set_flags` from `source` every `interval` seconds."""

    def __init__(self, exporter: MetricsExporter, source: FlagSource,
                 interval: float = 10.0) -> None:
        self.exporter = exporter
        self.source = source
        self.interval = interval
        self.failures = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="apiscope-live-flags",
                                        daemon=True)

    def refresh(self) -> bool:
        """One update; False (and the previous flags kept) when the analysis failed."""
        try:
            flags = self.source()
        except Exception as exc:  # a half-written session must not end the metrics
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            return False
        self.exporter.set_flags(flags)
        return True

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()
