"""What the stack sampler measures about itself: why it ended, and what it lost.

Read after `StackSampler.stop()`, or at any time for a glance (the collection's status line and
end-of-run summary, the tests). A window's loss is what py-spy should have sampled at its rate
over the window's threads, less what it stored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from apiscope.model import StackWindow


class EndReason(StrEnum):
    STOPPED = "stopped"  # stop() was called
    TARGET_EXITED = "target_exited"  # the target process is gone: a normal end
    FAILED = "failed"  # py-spy failed and could not be restarted; see `error`


@dataclass(slots=True)
class SamplerStats:
    """What the sampler measured about itself (read after stop, or any time for a glance)."""

    windows: int = 0
    dropped_windows: int = 0  # py-spy ended without writing a file
    stored: int = 0  # samples delivered
    expected: float = 0.0  # rate x seconds x threads, summed over windows
    errors: int = 0  # failed reads py-spy reported
    error_windows: list[ErrorWindow] = field(default_factory=list)  # those with failed reads
    bad_lines: int = 0  # unparseable lines (skipped)
    # Seconds from the new py-spy printing that it samples to the old one being signalled.
    # (Each py-spy still samples a little before/after that: see docs/sampling.md.)
    handovers: list[float] = field(default_factory=list)
    startups: list[float] = field(default_factory=list)  # seconds from spawn to sampling
    launch_retries: int = 0  # mid-session py-spy starts that failed and were retried
    early_windows: int = 0  # windows ended early to sample a worker that replaced one
    pyspy_cpu_seconds: float = 0.0
    sampled_seconds: float = 0.0
    activity_windows: int = 0  # recorded without --idle, to learn which lines run
    rates: list[int] = field(default_factory=list)  # the rate of each window, with a budget
    failed_windows: int = 0  # read but not classified (an error of ours): skipped, counted
    last_failure: str | None = None
    gaps: list[tuple[float, float, str]] = field(default_factory=list)  # (start, end, why)

    @property
    def loss(self) -> float:
        """Fraction of expected samples not stored (0 when nothing was expected)."""
        return max(0.0, 1.0 - self.stored / self.expected) if self.expected else 0.0

    def failed_reads(self, pauses: Iterable[tuple[float, float]]) -> FailedReads:
        """The reads that failed, apart from those while apiscope's own debugger held a
        process (to inject or remove the agent: every read of it fails then)."""
        pauses = list(pauses)
        total = FailedReads(0, 0)
        for window in self.error_windows:
            total += window.failed_reads(pauses)
        return total


@dataclass(frozen=True, slots=True)
class FailedReads:
    sampler: int  # the sampler's own: samples lost
    paused: int  # while a debugger of apiscope's held the target

    def __add__(self, other: FailedReads) -> FailedReads:
        return FailedReads(self.sampler + other.sampler, self.paused + other.paused)


# py-spy logs a failed read from its main thread, after its sampling thread handed it over: a
# moment later on a busy host. A read logged this soon after a pause ended failed in it.
LOG_DELAY = 0.1


@dataclass(frozen=True, slots=True)
class ErrorWindow:
    """A window with failed reads: how many, and when py-spy logged them."""

    start: float
    end: float
    rate_hz: int
    errors: int  # py-spy's count
    failed_at: tuple[float, ...] = ()  # may hold fewer than `errors` (or none: not logged)

    def failed_reads(self, pauses: Sequence[tuple[float, float]]) -> FailedReads:
        """Its failed reads, outside the pauses and in them. A py-spy that fell behind makes
        up the reads it owes at once: against a process another tracer holds, dozens fail
        within milliseconds. So a run of failures less than half an interval apart counts as
        the reads due over its span (at least one), not as its length. Reads py-spy did not
        log are counted as they are, those of the pauses bounded by the reads due in them."""
        interval = 1.0 / max(1, self.rate_hz)
        counts = {True: 0, False: 0}  # in a pause or not
        run: tuple[bool, float, float] | None = None  # (paused, first, last)
        for t in sorted(self.failed_at):
            paused = any(a <= t <= b + LOG_DELAY for a, b in pauses)
            if run is not None and run[0] == paused and t - run[2] < interval / 2:
                run = (paused, run[1], t)
                continue
            if run is not None:
                counts[run[0]] += _reads_over(run[1], run[2], interval)
            run = (paused, t, t)
        if run is not None:
            counts[run[0]] += _reads_over(run[1], run[2], interval)
        untimed = max(0, self.errors - len(self.failed_at))
        overlap = sum(max(0.0, min(self.end, b) - max(self.start, a)) for a, b in pauses)
        due = math.ceil(self.rate_hz * overlap - 1e-9)  # (not one more for a rounding error)
        untimed_paused = min(untimed, max(0, due - counts[True]))
        return FailedReads(counts[False] + untimed - untimed_paused,
                           counts[True] + untimed_paused)


def _reads_over(first: float, last: float, interval: float) -> int:
    return max(1, math.ceil((last - first) / interval - 1e-9))


@dataclass(frozen=True, slots=True)
class WindowLoss:
    expected: float
    stored: int
    errors: int


def window_loss(window: StackWindow) -> WindowLoss:
    """Expected = rate x window seconds x threads seen in it; stored = sample counts. A window
    recorded without --idle shows threads only while active: nothing is known lost there.

    A thread that ended within the window (no kernel reading at its end, where the others
    have one), or started within it (first read at its end), was shown only while it lived: it
    is expected what it showed. A server with a thread per request (Django under ASGI) read
    "77 % lost" otherwise, and one with a thread per database connection (aiosqlite) 30 %."""
    stored = sum(s.count for s in window.samples)
    if window.active_only:
        return WindowLoss(float(stored), stored, window.errors)
    shown: dict[tuple[int, int], int] = {}
    for s in window.samples:
        shown[(s.pid, s.tid)] = shown.get((s.pid, s.tid), 0) + s.count
    read = {pid for pid, _ in window.thread_cpu}  # processes the kernel was asked about
    partial = [n for key, n in shown.items()
               if (key[0] in read and key not in window.thread_cpu) or key in window.thread_born]
    whole = len(shown) - len(partial)
    expected = window.rate_hz * max(0.0, window.end - window.start) * whole + sum(partial)
    return WindowLoss(expected, stored, window.errors)
