"""The state of anyio's default thread limiter, which Starlette's sync handlers wait on.

The limiter lives in a RunVar, one per event loop, so it can only be looked up from inside the
loop: the middleware captures it once, from its first request, and the socket server thread
reads its counters later (plain attribute reads, safe under the GIL).
"""

from __future__ import annotations

import sys
import time
from typing import Any


class ThreadPoolProbe:
    """Holds the limiter of the serving event loop once `capture()` ran inside it."""

    def __init__(self) -> None:
        self._limiter: Any = None
        self.captured = False  # tried already: the middleware checks this flag and nothing else

    def capture(self) -> None:
        """Look the limiter up; call from a coroutine running on the serving loop."""
        self.captured = True
        to_thread = sys.modules.get("anyio.to_thread")
        if to_thread is None:  # an app that never runs sync code in anyio's pool
            return
        try:
            self._limiter = to_thread.current_default_thread_limiter()
        except Exception:  # no anyio event loop here (e.g. an app on a bare asyncio server)
            self._limiter = None

    def sample(self) -> dict[str, Any] | None:
        """`{"ts", "total_tokens", "borrowed_tokens", "waiting"}`, or None before capture."""
        limiter = self._limiter
        if limiter is None:
            return None
        stats = limiter.statistics()
        return {
            "ts": time.time(),
            "total_tokens": int(stats.total_tokens),
            "borrowed_tokens": int(stats.borrowed_tokens),
            "waiting": int(stats.tasks_waiting),
        }
