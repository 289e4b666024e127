"""`PassClock`: the exact length of each pass of an asyncio loop, timed in its selector.

An asyncio selector loop runs in passes: it waits for I/O in `selector.select()`, then runs the
callbacks that are ready, then waits again. While a pass runs, no other request on that loop
makes progress; a pass longer than the stall threshold is a stall. Wrapping the selector's
`select` (an instance attribute shadowing the method, removed on `uninstall`) gives the start
and end of every pass at the cost of two clock reads per pass, so that every stall is counted
with its exact length, however short, instead of only those a periodic probe happens to land
in. The loop watchdog still samples a stall's stack from its own thread while the stall lasts.
How many callbacks a pass had to run is known as it begins (those already queued, plus one per
I/O event `select` returned): a long pass of one or two callbacks was held by one of them.

Loops without a Python selector (uvloop, the proactor loop) are not timed this way:
`PassClock.install` returns None and the watchdog probes them instead.

Standard library only, relative imports only, Python 3.9 compatible (see `watchdog`).
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections import deque
from typing import Any

MAX_PASSES = 500  # long passes kept until the watchdog reads them


class PassClock:
    """Times the passes of one selector loop. Written by the loop thread only (in the wrapped
    `select`); read by the watchdog thread, which needs no lock: each field is replaced whole
    and `long` is a deque (append and popleft are atomic)."""

    __slots__ = ("_original", "_ready", "_selector", "_wrapper", "callbacks", "entered_at",
                 "errors", "exit_at", "long", "parked", "passes", "threshold")

    def __init__(self, selector: selectors.BaseSelector, threshold: float,
                 ready: Any = ()) -> None:
        self._selector = selector
        self._ready = ready  # the loop's queue of callbacks ready to run
        self._original = selector.select
        self._wrapper: Any = None
        self.threshold = threshold
        now = time.perf_counter()
        self.exit_at = now  # when the current pass began (the loop left `select`)
        self.entered_at = now  # when the loop last entered `select`
        self.parked = False  # in `select` now: waiting for I/O or a timer
        self.passes = 0  # passes since install
        self.errors = 0  # failures of the timing itself (the select call went on)
        self.callbacks = 0  # the current pass's callbacks to run, as it began
        # (start, seconds, the loop thread's CPU ns at the end, callbacks) of each pass of at
        # least `threshold`
        self.long: deque[tuple[float, float, int, int]] = deque(maxlen=MAX_PASSES)

    @classmethod
    def install(cls, loop: asyncio.AbstractEventLoop, threshold: float) -> PassClock | None:
        """Wrap `loop`'s selector; None when the loop has none to wrap."""
        selector = getattr(loop, "_selector", None)
        if not isinstance(selector, selectors.BaseSelector) or \
                "select" in getattr(selector, "__dict__", {}):
            return None  # not a selector loop, or someone else's wrapper is there
        ready = getattr(loop, "_ready", None)
        clock = cls(selector, threshold, ready if hasattr(ready, "__len__") else ())
        clock._wrap()
        return clock

    def _wrap(self) -> None:
        original = self._original
        perf_counter, thread_time_ns = time.perf_counter, time.thread_time_ns
        append = self.long.append
        ready = self._ready

        def select(timeout: float | None = None) -> Any:
            queued = 0
            try:  # the loop's own select must run whatever happens to the timing
                now = perf_counter()
                start = self.exit_at
                if now - start >= self.threshold:
                    append((start, now - start, thread_time_ns(), self.callbacks))
                self.passes += 1
                self.entered_at = now
                self.parked = True
                queued = len(ready)
            except Exception:
                self.errors += 1
            events: Any = ()
            try:
                events = original(timeout)
                return events
            finally:
                self.parked = False
                self.exit_at = perf_counter()
                self.callbacks = queued + len(events)

        self._wrapper = select
        self._selector.select = select  # type: ignore[method-assign]

    def uninstall(self) -> None:
        """Give the selector its own `select` back (a no-op when already done). If another
        wrapper was put over this one since, it stays, and this one only passes calls on."""
        wrapper, self._wrapper = self._wrapper, None
        if wrapper is None:
            return
        self.threshold = float("inf")
        if getattr(self._selector, "__dict__", {}).get("select") is wrapper:
            try:
                del self._selector.select
            except AttributeError:
                pass

    @property
    def installed(self) -> bool:
        return self._wrapper is not None


__all__ = ["PassClock"]
