"""`Background`: a daemon thread the agent runs beside the app (its watchdogs).

Each is started once, stopped from any thread (never waiting on itself: `stop()` may be called
from the thread's own work, when a loop closes or the collector goes away), and tells whether it
runs. Subclasses set `thread_name` and implement `_run`, which returns once `_stop` is set.
"""

from __future__ import annotations

import threading

JOIN_SECONDS = 2.0


class Background:
    thread_name = "apiscope-background"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def ended(self) -> bool:
        """Started, and finished since."""
        return self._thread is not None and not self._thread.is_alive()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(JOIN_SECONDS)

    def _run(self) -> None:
        raise NotImplementedError
