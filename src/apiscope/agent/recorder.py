"""The agent's ring buffer of finished requests.

Thread-safe without a lock on the recording side: the event loop thread appends and the socket
server pops, and `collections.deque.append`/`popleft` are atomic under the GIL. Each counter has
one writer (`recorded`/`errors` the loop thread; `_drained` the drainers, under a lock that only
they take), and `dropped` is derived from them rather than counted on the hot path, where a
check-then-append would race with a concurrent drain.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import NamedTuple

DEFAULT_CAPACITY = 100_000

# One normalized statement of one request: (statement, count, total_ms, file, line).
QueryEntry = tuple[str, int, float, "str | None", "int | None"]


class RequestEntry(NamedTuple):
    """One finished request; a tuple, so that recording it allocates one object."""

    start: float  # epoch seconds of the first receive (or of the call, without a receive)
    duration_ms: float
    method: str
    route: str  # route template, or "<unmatched>"
    status: int
    exc_type: str | None
    exc_file: str | None
    exc_line: int | None
    queries: tuple[QueryEntry, ...]


class Recorder:
    """A bounded buffer of `RequestEntry`: when full, the oldest entries are dropped and counted."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._buffer: deque[RequestEntry] = deque(maxlen=capacity)
        self.recorded = 0  # entries appended since start
        self.errors = 0  # failures inside the agent's own code, never seen by a request
        self._drained = 0  # entries handed to the collector
        self._drain_lock = threading.Lock()

    def reset(self) -> None:
        """Start empty with zeroed counters (in a forked child, where no other thread runs)."""
        self._buffer = deque(maxlen=self.capacity)
        self.recorded = self.errors = self._drained = 0
        self._drain_lock = threading.Lock()

    def record(self, entry: RequestEntry) -> None:
        # A full deque with maxlen discards its oldest item on append: that is the drop.
        self._buffer.append(entry)
        self.recorded += 1

    def count_error(self) -> None:
        self.errors += 1

    @property
    def dropped(self) -> int:
        """Entries discarded unread because the buffer was full."""
        # Racy by at most the entries in flight between two reads; never negative.
        return max(0, self.recorded - self._drained - len(self._buffer))

    def drain(self, limit: int | None = None) -> list[RequestEntry]:
        """Remove and return up to `limit` buffered entries (default: all), oldest first."""
        out: list[RequestEntry] = []
        pop = self._buffer.popleft
        remaining = len(self._buffer) if limit is None else limit
        with self._drain_lock:  # two collectors may pull at once; the writer never waits here
            while remaining > 0:
                try:
                    out.append(pop())
                except IndexError:
                    break
                remaining -= 1
            self._drained += len(out)
        return out

    def __len__(self) -> int:
        return len(self._buffer)
