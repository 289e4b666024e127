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

DEFAULT_SECONDS = 10.0


class OrphanWatch:
    """Calls `on_orphan()` once, from `check()`, after `seconds` without a pull.

    No thread of its own: the agent's server thread calls `check()` now and then (see
    `transport.AgentServer`'s tick)."""

    def __init__(self, on_orphan: Callable[[], object], seconds: float = DEFAULT_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._on_orphan = on_orphan
        self._clock = clock
        self._last = clock()
        self._stopped = False
        self.fired = False

    def saw_pull(self, seconds: object = None) -> None:
        """A collector pulled; `seconds` is its `orphan_after`, when it sent one."""
        self._last = self._clock()
        if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds > 0:
            self.seconds = float(seconds)

    def orphaned(self) -> bool:
        return self._clock() - self._last > self.seconds

    def start(self) -> None:
        """Count from now (the agent was just injected)."""
        self._last = self._clock()
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True

    def check(self) -> None:
        """Fire, once, if no pull came for too long."""
        if self._stopped or self.fired or not self.orphaned():
            return
        self.fired = True
        self._stopped = True
        try:
            self._on_orphan()
        except Exception:
            pass  # nothing to report to: the collector is gone; never disturb the app


def forget_modules(package: str) -> None:
    """Drop an injected package from `sys.modules` (objects in use keep their modules)."""
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]
