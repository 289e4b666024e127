"""Re-running an analysis of a live session in the background, every so often.

The rules read the whole session file, which takes seconds on a big one, so whoever shows live
flags (the /metrics exporter, the dashboard) runs them in a daemon thread of their own and
publishes each result when it is ready. `PeriodicAnalysis` is that thread. An analysis that
fails (a session read while the collector writes it can be half-written) is counted and its
message kept for the caller; it never ends the thread, and the previous result stays published.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PeriodicAnalysis(Generic[T]):
    """Runs `analyse` in a daemon thread and hands each result to `on_result`.

    `interval` is the pause in seconds after a run. With `immediately` the first run starts at
    once, else after a first pause; with `repeat` False there is only that one run. With
    `max_share` the pause grows with a slow run so that analysing takes at most that share of
    one core (0.2: a run of 5 s is followed by a pause of 20 s at least).
    """

    def __init__(self, analyse: Callable[[], T], on_result: Callable[[T], None], *,
                 interval: float, name: str, immediately: bool = False, repeat: bool = True,
                 max_share: float | Callable[[], float] | None = None,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.analyse = analyse
        self.on_result = on_result
        self.on_error = on_error
        self.interval = interval
        self.immediately = immediately
        self.repeat = repeat
        self.max_share = max_share
        self.failures = 0
        self.last_error: str | None = None  # the latest failure's, kept after a success
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def run_once(self) -> bool:
        """One run; False (nothing published, `on_error` told) when the analysis failed."""
        try:
            result = self.analyse()
        except Exception as exc:  # a half-written session must not end the thread
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            if self.on_error is not None:
                self.on_error(self.last_error)
            return False
        self.on_result(result)
        return True

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Ask the thread to end and wait up to `timeout` seconds for it (None: don't wait).
        A run under way is not interrupted: it finishes, then the thread ends."""
        self._stop.set()
        if timeout is not None and self._thread.is_alive():
            self._thread.join(timeout)

    def pause(self, seconds: float, cpu: float | None = None) -> float:
        """The pause after a run that took `seconds` and used `cpu` seconds of CPU (None: as
        many as it took)."""
        share = self.max_share() if callable(self.max_share) else self.max_share
        if share is None:
            return self.interval
        used = seconds if cpu is None else cpu
        return max(self.interval, used / share - seconds)

    def _loop(self) -> None:
        if not self.immediately and self._stop.wait(self.interval):
            return
        while not self._stop.is_set():
            began, cpu = time.monotonic(), time.thread_time()
            self.run_once()
            if not self.repeat:
                return
            self._stop.wait(self.pause(time.monotonic() - began, time.thread_time() - cpu))
