"""What the stack sampler measures about itself: why it ended, and what it lost.

Read after `StackSampler.stop()`, or at any time for a glance (the collection's status line and
end-of-run summary, the tests). A window's loss is what py-spy should have sampled at its rate
over the window's threads, less what it stored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
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
    # (start, end, rate_hz, errors) of each window with failed reads
    error_windows: list[tuple[float, float, int, int]] = field(default_factory=list)
    bad_lines: int = 0  # unparseable lines (skipped)
    # Seconds from the new py-spy printing that it samples to the old one being signalled.
    # (Each py-spy still samples a little before/after that: see docs/sampling.md.)
    handovers: list[float] = field(default_factory=list)
    startups: list[float] = field(default_factory=list)  # seconds from spawn to sampling
    launch_retries: int = 0  # mid-session py-spy starts that failed and were retried
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

    def errors_while_paused(self, pauses: Iterable[tuple[float, float]]) -> int:
        """The failed reads that apiscope's own debugger explains: while it holds a process
        (to inject or remove the agent), every read of that process fails. A window's reads
        during its overlap with the pauses (rate x seconds, each pause its own process's) are
        counted, at most its failed reads."""
        pauses = list(pauses)
        explained = 0
        for start, end, rate_hz, errors in self.error_windows:
            overlap = sum(max(0.0, min(end, p_end) - max(start, p_start))
                          for p_start, p_end in pauses)
            explained += min(errors, math.ceil(rate_hz * overlap))
        return explained


@dataclass(frozen=True, slots=True)
class WindowLoss:
    expected: float
    stored: int
    errors: int


def window_loss(window: StackWindow) -> WindowLoss:
    """Expected = rate x window seconds x threads seen in it; stored = sample counts. A window
    recorded without --idle shows threads only while active: nothing is known lost there."""
    stored = sum(s.count for s in window.samples)
    if window.active_only:
        return WindowLoss(float(stored), stored, window.errors)
    threads = len({(s.pid, s.tid) for s in window.samples})
    expected = window.rate_hz * max(0.0, window.end - window.start) * threads
    return WindowLoss(expected, stored, window.errors)
