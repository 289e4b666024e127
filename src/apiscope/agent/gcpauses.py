"""When the garbage collector ran, so that a loop stall it caused is not blamed on a line.

A full collection of a large heap stops every thread that wants the GIL for tens of
milliseconds; the event loop's pass that was running then lasts as long, and the watchdog's
looks find the loop thread at whatever line allocated the object that set the collection off
(or waiting for the GIL, when another thread collects). `GcPauses` times every collection
through `gc.callbacks` and keeps those of `MIN_PAUSE` or longer; the loop watchdog marks a
stall the collector covered half of or more as held by it (`held="gc"`), which the analysis
counts as no code's. A callback costs about 1.5 us a collection (the interpreter builds an
info dict for each call; an allocating server collects its youngest generation hundreds of
times a second), so the watchdog installs it at the first stall held by code, not before: a
loop that never stalls pays nothing, and the rule needs several stalls to flag one line.

Standard library only, relative imports only, Python 3.9 compatible (see `watchdog`).
"""

from __future__ import annotations

import gc
import time
from collections import deque
from typing import Any

MIN_PAUSE = 0.002  # seconds: shorter collections are kept out (the youngest generation's)
MAX_PAUSES = 256  # the latest kept; a stall is looked up within seconds of its end


class GcPauses:
    """Times the collector's passes while installed (`install`, `remove`)."""

    def __init__(self, clock: Any = time.perf_counter) -> None:
        self._clock = clock
        self._began = 0.0
        self._pauses: deque[tuple[float, float]] = deque(maxlen=MAX_PAUSES)

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def remove(self) -> None:
        while self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: Any) -> None:
        now = self._clock()
        if phase == "start":
            self._began = now
        elif now - self._began >= MIN_PAUSE:
            self._pauses.append((self._began, now))

    def covered(self, start: float, end: float) -> float:
        """Seconds of [start, end] (the clock's) the collector ran."""
        seconds = 0.0
        for began, ended in list(self._pauses):
            seconds += max(0.0, min(end, ended) - max(start, began))
        return seconds
