"""Which samples were running: each thread's measured CPU time shared out over its stacks.

In one window a thread shows `n` samples spread over a few stacks, and the kernel says it used
`c` seconds of CPU out of the window's `t`. So `n * c / t` of its samples were running and the
rest were not: that total is measured. Which of its stacks ran is decided as follows:

- a stack gets its share in proportion to how often its leaf line runs, as fitted to the
  measurements of the recent windows (`LinePriors`): a thread-window whose samples all sit on
  one line tells exactly how much that line runs (a `time.sleep` line: never; a pure-Python
  loop: always), and windows mixing lines in changing proportions tell it too;
- a line never measured starts at even odds, and a stack that proves its thread idle (the event
  loop in its selector, a pool worker waiting for a job) at low odds: CPU used below such a
  frame is the server's own C code (uvloop dispatching, the selector call), rarely much.

Counts stay whole numbers: a stack's `n` samples become a RUNNING row and a BLOCKED (or, for an
idle stack, WAITING) row, rounded so that the thread's running total matches the measurement.
Every later figure (CPU share, the on-CPU flamegraph, "running CPU work" in a flag) counts
RUNNING samples, so it rests on the kernel's figure, not on what a stack looks like.

A thread the kernel could not be asked about (it ended within the window) keeps the line
estimates alone, without a measured total.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from apiscope.model import Frame, SampleState, StackSample

ThreadKey = tuple[int, int]

PRIOR_ACTIVE = 0.5  # a line never measured: as likely running as not
PRIOR_IDLE = 0.02  # a stack that proves its thread idle
PRIOR_WEIGHT = 4.0  # how many samples' worth the starting odds count for (a ridge)
_MIN_WEIGHT = 1e-6  # so a measured budget always lands somewhere


LineKey = tuple[Frame | None, bool]  # (leaf frame, whether the stack proves the thread idle)


class LinePriors:
    """How often each leaf line runs, fitted to the kernel's measurements of recent windows.

    Each thread-window is one equation: the samples it had at each line, times each line's
    share of running, add up to the running samples its measured CPU time stands for. A thread
    that mixes lines (an event loop runs many handlers in a second) never sits on one line
    alone, but across windows its mix changes, and the shares that explain every window at once
    are found by least squares, each kept in [0, 1] and pulled towards its starting odds by a
    ridge of `PRIOR_WEIGHT` samples while little is known.

    Most lines are seen a few times only (an event loop touches hundreds of framework lines):
    lines with fewer than `POOL_BELOW` samples in memory share one share per kind (working or
    idle stacks), fitted on their pooled counts; a line seen a lot (a handler sleeping in every
    request) gets its own. The fit runs by coordinate descent over the last `memory`
    thread-windows, a few sweeps after each window, warm-started: milliseconds per window.
    """

    def __init__(self, memory: int = 240, sweeps: int = 3) -> None:
        self.memory = memory
        self.sweeps = sweeps
        self._rows: list[tuple[dict[LineKey, int], float]] = []
        self._share: dict[LineKey, float] = {}
        self._pooled: set[LineKey] = set()

    def odds(self, leaf: Frame | None, idle: bool) -> float:
        key = _POOL[idle] if (leaf, idle) in self._pooled else (leaf, idle)
        return self._share.get(key, self._share.get(_POOL[idle], _start(idle)))

    def observe(self, counts: dict[LineKey, int], ran: float) -> None:
        """One thread-window: its samples per line and how many of them ran (measured)."""
        self._rows.append((counts, ran))
        if len(self._rows) > self.memory:
            del self._rows[: len(self._rows) - self.memory]

    def fit(self) -> None:
        totals: dict[LineKey, int] = defaultdict(int)
        for counts, _ in self._rows:
            for key, n in counts.items():
                totals[key] += n
        self._pooled = {key for key, n in totals.items() if n < POOL_BELOW}
        rows = [(self._pool(counts), ran) for counts, ran in self._rows]
        by_line: dict[LineKey, list[tuple[int, int]]] = defaultdict(list)
        for i, (counts, _) in enumerate(rows):
            for key, n in counts.items():
                by_line[key].append((i, n))
        residual = [ran - sum(n * self._share.get(key, _start(key[1]))
                              for key, n in counts.items()) for counts, ran in rows]
        for _ in range(self.sweeps):
            for key, entries in by_line.items():
                self._fit_line(key, entries, residual)

    def _pool(self, counts: dict[LineKey, int]) -> dict[LineKey, int]:
        out: dict[LineKey, int] = defaultdict(int)
        for key, n in counts.items():
            out[_POOL[key[1]] if key in self._pooled else key] += n
        return out

    def _fit_line(self, key: LineKey, entries: list[tuple[int, int]],
                  residual: list[float]) -> None:
        old = self._share.get(key, _start(key[1]))
        ridge = PRIOR_WEIGHT * PRIOR_WEIGHT
        num, den = ridge * _start(key[1]), ridge
        for i, n in entries:
            num += n * (residual[i] + n * old)
            den += n * n
        new = min(1.0, max(0.0, num / den))
        self._share[key] = new
        for i, n in entries:
            residual[i] -= n * (new - old)


POOL_BELOW = 30  # samples in memory: fewer, and a line shares its kind's pooled share
_POOL: dict[bool, LineKey] = {False: (None, False), True: (None, True)}


def _start(idle: bool) -> float:
    return PRIOR_IDLE if idle else PRIOR_ACTIVE


@dataclass(frozen=True, slots=True)
class _Row:
    sample: StackSample
    idle: bool
    odds: float


def share_out(budget: float, weights: Sequence[float], caps: Sequence[float]) -> list[float]:
    """Split `budget` in proportion to `weights`, no share above its cap (water-filling).

    Shares that would pass their cap are fixed at it and the rest is split again among the
    others; the result sums to min(budget, sum(caps)).
    """
    shares = [0.0] * len(caps)
    open_rows = [i for i, cap in enumerate(caps) if cap > 0]
    left = min(budget, sum(caps))
    while open_rows and left > 1e-12:
        total = sum(max(weights[i], _MIN_WEIGHT) * caps[i] for i in open_rows)
        scale = left / total
        full = [i for i in open_rows if max(weights[i], _MIN_WEIGHT) * scale >= 1.0]
        if not full:
            for i in open_rows:
                shares[i] = max(weights[i], _MIN_WEIGHT) * scale * caps[i]
            break
        for i in full:
            shares[i] = caps[i]
            left -= caps[i]
        open_rows = [i for i in open_rows if i not in full]
    return shares


def whole(shares: Sequence[float], caps: Sequence[int]) -> list[int]:
    """Round shares to whole counts (largest remainder), keeping their rounded sum."""
    floors = [min(cap, math.floor(s)) for s, cap in zip(shares, caps, strict=True)]
    missing = round(sum(shares)) - sum(floors)
    order = sorted(range(len(shares)), key=lambda i: shares[i] - floors[i], reverse=True)
    for i in order:
        if missing <= 0:
            break
        if floors[i] < caps[i]:
            floors[i] += 1
            missing -= 1
    return floors


def apportion(samples: Iterable[StackSample], idle: Mapping[int, bool],
              cpu: Mapping[ThreadKey, float], seconds: float,
              priors: LinePriors) -> tuple[StackSample, ...]:
    """The window's samples split into running and not-running rows.

    `idle[id(sample)]` says whether a sample's stack proves its thread idle; `cpu` holds the
    CPU seconds each thread used in the window, which lasted `seconds`.
    """
    threads: dict[ThreadKey, list[_Row]] = defaultdict(list)
    for sample in samples:
        leaf = sample.frames[-1] if sample.frames else None
        is_idle = idle.get(id(sample), False)
        threads[(sample.pid, sample.tid)].append(
            _Row(sample, is_idle, priors.odds(leaf, is_idle)))
    out: list[StackSample] = []
    for key, rows in threads.items():
        caps = [r.sample.count for r in rows]
        weights = [r.odds for r in rows]
        used = cpu.get(key)
        if used is None or seconds <= 0:
            shares = [w * c for w, c in zip(weights, caps, strict=True)]
        else:
            budget = min(1.0, used / seconds) * sum(caps)
            shares = share_out(budget, weights, caps)
            priors.observe(_line_counts(rows), budget)
        for row, ran in zip(rows, whole(shares, caps), strict=True):
            out.extend(_split(row, ran))
    priors.fit()
    return tuple(out)


def _line_counts(rows: Sequence[_Row]) -> dict[LineKey, int]:
    counts: dict[LineKey, int] = defaultdict(int)
    for row in rows:
        counts[(row.sample.frames[-1] if row.sample.frames else None, row.idle)] += \
            row.sample.count
    return dict(counts)


def _split(row: _Row, ran: int) -> list[StackSample]:
    sample, rest = row.sample, row.sample.count - ran
    parts = []
    if ran:
        parts.append(dataclasses.replace(sample, count=ran, state=SampleState.RUNNING))
    if rest:
        state = SampleState.WAITING if row.idle else SampleState.BLOCKED
        parts.append(dataclasses.replace(sample, count=rest, state=state))
    return parts
