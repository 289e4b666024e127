"""What a collection prints while it runs: the status line, --verbose lines, warnings.

The texts are pure functions of counters, so that their wording is tested without a run; the
`Terminal` decides where and how they go (redrawn in place on a terminal, once at the end
otherwise, nothing with --quiet but the warnings).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TextIO

from apiscope.collect.figures import WindowCounts


@dataclass(frozen=True, slots=True)
class Counters:
    """What the status line shows."""

    elapsed: float  # seconds since the start
    samples: int
    requests: int
    processes: int  # still alive
    rate_hz: int | None = None  # the rate sampled at now, when a budget chooses it
    max_overhead: float | None = None  # the budget, percent of the target's capacity
    keep_every: int = 1  # the agents keep one request in this many (requests: an estimate)
    # Set once the session file failed: the rows it holds, not the ones counted.
    committed: tuple[int, int] | None = None  # (samples, requests)


def status_line(c: Counters) -> str:
    """`apiscope:   3.0s  samples 1,200  requests 40  processes 2  rate 40 Hz (budget 2%)`.

    After a storage failure counting on would claim rows the file lacks: the line says what
    the file holds instead.
    """
    if c.committed is not None:
        samples, requests = c.committed
        return (f"apiscope: session file failed; it holds {samples:,} samples and"
                f" {requests:,} requests")
    rate = ""
    if c.rate_hz is not None and c.max_overhead is not None:
        rate = f"  rate {c.rate_hz} Hz (budget {c.max_overhead:g}%)"
    kept = f" (1 in {c.keep_every} kept)" if c.keep_every > 1 else ""
    return (f"apiscope: {c.elapsed:5.1f}s  samples {c.samples:,}  requests {c.requests:,}"
            f"{kept}  processes {c.processes}{rate}")


def window_text(elapsed: float, rate_hz: int, counts: WindowCounts, windows_lost: int,
                cost: Mapping[str, float] | None = None) -> str:
    """The --verbose line of one sampling window; `cost` is the last window accounted by the
    budget, by part (fractions of the target's capacity)."""
    line = (f"window {elapsed:6.1f}s  rate {rate_hz} Hz  samples {counts.stored} of"
            f" {counts.expected:.0f} expected  errors {counts.errors}  windows lost"
            f" {windows_lost}")
    if cost:
        parts = " ".join(f"{name} {100 * share:.2f}" for name, share in cost.items())
        line += f"  cost {100 * sum(cost.values()):.2f}% ({parts})"
    return line


def pull_text(pid: int, requests: int, profiles: int, dropped: int, more: bool) -> str:
    """The --verbose line of one agent pull that returned something."""
    return (f"pull pid {pid}: {requests} requests, {profiles} profiles, agent dropped"
            f" {dropped}" + (" (more waiting)" if more else ""))


class Terminal:
    """Where a collection's lines go: `out` (None: nowhere), at a verbosity of 0 (--quiet:
    warnings only), 1 (the status line) or 2 (--verbose: detail lines too)."""

    def __init__(self, out: TextIO | None, verbosity: int = 1) -> None:
        self.out = out
        self.verbosity = verbosity
        self.warnings: list[str] = []  # each once, in order
        self._lock = threading.Lock()

    def warn(self, message: str) -> bool:
        """Print a warning once; False when it was printed before."""
        with self._lock:
            if message in self.warnings:
                return False
            self.warnings.append(message)
        if self.out is not None:
            print(f"\napiscope: warning: {message}", file=self.out)
        return True

    def detail(self, message: str) -> None:
        """A --verbose line, on a line of its own."""
        if self.out is not None and self.verbosity >= 2:
            print(f"apiscope: {message}", file=self.out, flush=True)

    def status(self, line: str, final: bool = False) -> None:
        """Redraw the status line in place on a terminal; elsewhere print only the last.

        --verbose prints lines of its own: a status line redrawn in place would cut them.
        """
        if self.out is None or self.verbosity == 0:
            return
        if self.out.isatty() and self.verbosity < 2:
            print("\r" + line, end="\n" if final else "", file=self.out, flush=True)
        elif final:
            print(line, file=self.out, flush=True)
