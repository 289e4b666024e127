"""An injected agent whose collector is gone removes itself.

A collector killed with SIGKILL cannot detach the agents it injected: left alone they would
keep wrapping the app, filling their buffer and holding their socket for good. An injected
agent therefore expects pulls: when none came for `seconds` (the collector says how long with
each pull, `orphan_after`; a default until the first one), it detaches itself as `apiscope
detach` would: the apps get their own callables back, the buffer is emptied, the socket is
removed, and the agent's modules are forgotten so that the next attach loads a fresh one.

Only injected agents are watched: an agent added in code (`instrument(app)`) or loaded by
`apiscope run` belongs to the application and waits for any collector as long as it lives.
Standard library only.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from .background import Background

DEFAULT_SECONDS = 10.0
CHECK_INTERVAL = 0.5


class OrphanWatch(Background):
    """Calls `on_orphan()` once, from its own thread, after `seconds` without a pull."""

    thread_name = "apiscope-orphan-watch"

    def __init__(self, on_orphan: Callable[[], object], seconds: float = DEFAULT_SECONDS,
                 clock: Callable[[], float] = time.monotonic,
                 interval: float = CHECK_INTERVAL) -> None:
        super().__init__()
        self.seconds = seconds
        self._on_orphan = on_orphan
        self._clock = clock
        self._interval = interval
        self._last = clock()
        self.fired = False

    def saw_pull(self, seconds: object = None) -> None:
        """A collector pulled; `seconds` is its `orphan_after`, when it sent one."""
        self._last = self._clock()
        if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds > 0:
            self.seconds = float(seconds)

    def orphaned(self) -> bool:
        return self._clock() - self._last > self.seconds

    def start(self) -> None:
        self._last = self._clock()
        super().start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if self.orphaned():
                self.fired = True
                self._stop.set()
                try:
                    self._on_orphan()
                except Exception:
                    pass  # nothing to report to: the collector is gone; never disturb the app
                return


def forget_modules(package: str) -> None:
    """Drop an injected package from `sys.modules` (objects in use keep their modules)."""
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]
