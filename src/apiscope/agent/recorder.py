"""The agent's ring buffer of finished requests.

The request path appends plain tuples in `RequestEntry`'s field order: the garbage collector
stops tracking an exact tuple of strings and numbers at its first collection, while a
`NamedTuple` instance stays tracked and is traversed by every collection until the collector
pulls it. `drain` hands out `RequestEntry`s, made on the socket thread.

Thread-safe without a lock on the recording side: the event loop thread appends and the socket
server pops, and `collections.deque.append`/`popleft` are atomic under the GIL. Each counter has
one writer (`recorded`/`skipped`/`errors` the loop thread; `_drained` the drainers, under a lock
that only they take), and `dropped` is derived from them rather than counted on the hot path,
where a check-then-append would race with a concurrent drain.

At thousands of requests a second, storing every one costs the collector more than its overhead
budget allows (and grows a session by more than a gigabyte an hour). The collector then asks
for one request in `keep_every` to be kept, at random: a kept entry carries that number as its
`weight` (the requests it stands for), so counts, rates and percentiles stay unbiased
estimates. Requests that failed (5xx, an exception) or took `keep_slower_ms` or longer are
always kept, with weight 1: the evidence of errors and slow requests is never thinned out.
"""

from __future__ import annotations

import math
import random
import threading
from collections import deque
from typing import Any, NamedTuple

DEFAULT_CAPACITY = 100_000
MAX_KEEP_EVERY = 1024

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
    weight: int = 1  # the requests this entry stands for: n when one in n was kept
    first_byte_ms: float | None = None  # a streamed response's time to its head; else None


_DURATION_MS, _STATUS, _EXC_TYPE, _WEIGHT = (RequestEntry._fields.index(name) for name in (
    "duration_ms", "status", "exc_type", "weight"))
_make_entry = tuple.__new__  # RequestEntry(*fields) without NamedTuple's Python-level __new__


class Recorder:
    """A bounded buffer of `RequestEntry`: when full, the oldest entries are dropped and counted."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._buffer: deque[tuple[Any, ...]] = deque(maxlen=capacity)
        self.recorded = 0  # entries appended since start
        self.errors = 0  # failures inside the agent's own code, never seen by a request
        self._drained = 0  # entries handed to the collector
        self._drain_lock = threading.Lock()
        self.keep_every = 1  # keep one request in this many (errors and slow ones: all)
        self.keep_slower_ms = math.inf
        self.skipped = 0  # requests left out by keep_every
        self._random = random.Random().random  # ours: the app's global random is untouched

    def keep(self, every: int, slower_ms: float | None = None) -> None:
        """Keep one request in `every` from now on (1: all), and every request of `slower_ms`
        or longer (None: no such floor)."""
        if not isinstance(every, int) or not 1 <= every <= MAX_KEEP_EVERY:
            raise ValueError(f"keep must be an integer from 1 to {MAX_KEEP_EVERY}, not {every!r}")
        if slower_ms is not None and (not isinstance(slower_ms, (int, float)) or slower_ms < 0):
            raise ValueError(f"keep_slower_ms must be a non-negative number, not {slower_ms!r}")
        self.keep_slower_ms = math.inf if slower_ms is None else float(slower_ms)
        self.keep_every = every

    def reset(self) -> None:
        """Start empty with zeroed counters (in a forked child, where no other thread runs)."""
        self._buffer = deque(maxlen=self.capacity)
        self.recorded = self.errors = self._drained = self.skipped = 0
        self._drain_lock = threading.Lock()
        self.keep_every, self.keep_slower_ms = 1, math.inf  # the parent's collector chose these

    def record(self, entry: tuple[Any, ...]) -> None:
        """Buffer one request: a `RequestEntry` or a plain tuple in its field order."""
        self.recorded += 1
        every = self.keep_every
        if every > 1 and entry[_STATUS] < 500 and entry[_EXC_TYPE] is None \
                and entry[_DURATION_MS] < self.keep_slower_ms:
            if self._random() * every >= 1.0:
                self.skipped += 1
                return
            entry = (*entry[:_WEIGHT], every, *entry[_WEIGHT + 1:])
        # A full deque with maxlen discards its oldest item on append: that is the drop.
        self._buffer.append(entry)

    def count_error(self) -> None:
        self.errors += 1

    @property
    def dropped(self) -> int:
        """Entries discarded unread because the buffer was full."""
        # Racy by at most the entries in flight between two reads; never negative.
        return max(0, self.recorded - self.skipped - self._drained - len(self._buffer))

    def drain(self, limit: int | None = None) -> list[RequestEntry]:
        """Remove and return up to `limit` buffered entries (default: all), oldest first."""
        out: list[RequestEntry] = []
        pop = self._buffer.popleft
        make = _make_entry
        remaining = len(self._buffer) if limit is None else limit
        with self._drain_lock:  # two collectors may pull at once; the writer never waits here
            while remaining > 0:
                try:
                    out.append(make(RequestEntry, pop()))
                except IndexError:
                    break
                remaining -= 1
            self._drained += len(out)
        return out

    def __len__(self) -> int:
        return len(self._buffer)
