"""Which samples ran: each thread's measured CPU time shared out over its stacks.

Two measurements meet here:

- **how much** of each thread's window ran: the kernel's CPU and run-queue time of the thread
  over the window (`threadcpu.py`), exact;
- **which stacks** ran: py-spy's own view. py-spy checks, at every sample, whether each thread
  is active (the kernel's state of the thread: running or ready to), and with `--idle` it
  records idle threads too, without saying which were which. So the sampler records the 1st
  and every `activity_every`-th window *without* `--idle`: only active threads' stacks.
  Comparing how much of the time each leaf line shows in those windows with how much it shows
  in the others gives each line's share of running (`ActivityShares`): a `time.sleep` line all but
  vanishes without `--idle` (its thread sleeps), a pure-Python loop or argon2 hashing in C code
  (the GIL released, the thread on a CPU) shows just as much. No timing alignment is needed,
  and many windows average the noise out.

Each thread's samples of a window then become RUNNING rows (its measured CPU time, shared out
over its stacks by those shares, no stack above its own time), RUNNABLE rows (its measured run-
queue time: work it wanted to do while the host had no free CPU, shared out the same way) and
BLOCKED rows (the rest: a sleep, I/O, a lock, the GIL), or WAITING at stacks that prove the
thread idle (the event loop in its selector, a pool worker waiting for a job). Lines the agent's
loop watchdog measured asleep (`asleep_leaves`: its looks at the kernel during loop stalls) are
never running, whatever their learnt share; lines the agent's looks found busy (on a CPU or
waiting for the GIL, `SleepLooks.busy`) run at least `BUSY_SHARE` of the time they show. Counts
are whole samples: seconds x rate, rounded so that each thread's total is kept.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from apiscope.collectors.trace import Segment
from apiscope.model import Frame, LoopStall, SampleState, StackSample

ThreadKey = tuple[int, int]
StackKey = tuple[int, int, tuple[Frame, ...]]
LineKey = tuple[Frame | None, bool]  # (leaf frame, whether the stack proves the thread idle)
IdleFn = Callable[[int, int, tuple[Frame, ...]], bool]

PRIOR_ACTIVE = 0.5  # a line never measured: as likely running as not
PRIOR_IDLE = 0.02  # a stack that proves its thread idle
PRIOR_SECONDS = 0.1  # how much shown time the starting odds count for
POOL_BELOW = 0.5  # seconds shown: below, a line shares its kind's pooled share
_MAX_SHIFT = 40.0  # of a line's log-odds of running, either way
_MAX_STEPS = 100
_TOLERANCE = 1e-9  # samples
_EDGE = 1e-6  # shares are kept this far from 0 and 1, so every line has finite odds


def _start(idle: bool) -> float:
    return PRIOR_IDLE if idle else PRIOR_ACTIVE


def asleep_leaves(stalls: Iterable[LoopStall]) -> set[tuple[str, int]]:
    """The leaf lines (file, line) of the loop stalls whose looks at the kernel found the loop
    thread asleep or in I/O more often than on a CPU or ready for one: a `time.sleep` or a
    sync socket read on the loop, whatever py-spy's view of it in transition says."""
    return {(stall.frames[-1].file, stall.frames[-1].line) for stall in stalls
            if stall.frames and stall.looks_asleep > stall.looks_running}


@dataclass(frozen=True, slots=True)
class LineLooks:
    """The agent's looks at threads whose leaf was one line (see agent/threadlooks.py)."""

    file: str
    line: int
    asleep: int  # in a sleep or an I/O call, by the kernel's word, both reads
    running: int  # on a CPU both reads
    gil: int = 0  # waiting for the GIL both reads: wanting to run Python there


MIN_ASLEEP_LOOKS = 5  # looks in a sleep or I/O before a line is believed to sleep
MAX_RUNNING_SHARE = 0.05  # of a line's looks found on a CPU, at most, for it to sleep
MIN_BUSY_LOOKS = 5  # looks on a CPU or waiting for the GIL before a line is believed busy
MAX_ASLEEP_SHARE = 0.05  # of a busy line's looks found in a sleep or I/O, at most
BUSY_SHARE = 0.9  # the least share of running a busy line is given


class SleepLooks:
    """The agent's looks at its threads, added up per line over the session: `add` returns the
    lines found to sleep, those looked at `MIN_ASLEEP_LOOKS` times in a sleep or I/O and on a
    CPU at most `MAX_RUNNING_SHARE` of the time. A `time.sleep` or a socket read in a sync
    handler qualifies; a line computing between its waits (a query's result parsed in C) does
    not. `busy()` gives the lines found busy: `MIN_BUSY_LOOKS` looks on a CPU or waiting for the
    GIL, and in a sleep or I/O at most `MAX_ASLEEP_SHARE` of the time (a loop of Python, C code
    that released the GIL). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._looks: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0, 0])

    def asleep(self) -> set[tuple[str, int]]:
        """The lines found to sleep, by all the looks so far."""
        with self._lock:
            return {key for key, (asleep, running, _) in self._looks.items()
                    if _sleeps(asleep, running)}

    def busy(self) -> set[tuple[str, int]]:
        with self._lock:
            return {key for key, (asleep, running, gil) in self._looks.items()
                    if _busy(asleep, running + gil)}

    def add(self, looks: Iterable[LineLooks]) -> set[tuple[str, int]]:
        with self._lock:
            touched = set()
            for look in looks:
                key = (look.file, look.line)
                counts = self._looks[key]
                counts[0] += look.asleep
                counts[1] += look.running
                counts[2] += look.gil
                touched.add(key)
            return {key for key in touched if _sleeps(*self._looks[key][:2])}


def _sleeps(asleep: int, running: int) -> bool:
    return asleep >= MIN_ASLEEP_LOOKS and running <= MAX_RUNNING_SHARE * (asleep + running)


def _busy(asleep: int, wanting: int) -> bool:
    return wanting >= MIN_BUSY_LOOKS and asleep <= MAX_ASLEEP_SHARE * (asleep + wanting)


def line_times(segments: Sequence[Segment], idle: IdleFn) -> dict[LineKey, float]:
    """Seconds each leaf line was shown, over all threads."""
    out: dict[LineKey, float] = defaultdict(float)
    for seg in segments:
        leaf = seg.frames[-1] if seg.frames else None
        out[(leaf, idle(seg.pid, seg.tid, seg.frames))] += seg.seconds
    return out


class ActivityShares:
    """How much of the time each leaf line is shown its thread is active, from windows
    recorded with and without `--idle` (see the module docstring).

    share(line) = (its time in windows without `--idle` / their length) / (its time in windows
    with `--idle` / their length), smoothed towards the starting odds by `PRIOR_SECONDS` of
    shown time and kept in [0, 1]. Lines shown less than `POOL_BELOW` seconds share one share
    per kind (working or idle stacks).
    """

    def __init__(self) -> None:
        self._asleep: frozenset[tuple[str, int]] = frozenset()  # measured off-CPU (file, line)
        self._busy: frozenset[tuple[str, int]] = frozenset()  # measured wanting a CPU
        self._shown: dict[LineKey, float] = defaultdict(float)
        self._active: dict[LineKey, float] = defaultdict(float)
        self._shown_seconds = 0.0
        self._active_seconds = 0.0
        self._pooled: dict[bool, tuple[float, float]] | None = None  # (shown, active) per kind

    def observe(self, times: Mapping[LineKey, float], seconds: float, *, active: bool) -> None:
        """One window's seconds per line: recorded without `--idle` when `active`."""
        target = self._active if active else self._shown
        for key, value in times.items():
            target[key] += value
        if active:
            self._active_seconds += seconds
        else:
            self._shown_seconds += seconds
        self._pooled = None

    def asleep(self, sites: Iterable[tuple[str, int]]) -> None:
        """Leaf lines (file, line) the agent's loop watchdog saw its thread asleep or in I/O at:
        measured, they are never counted running, in any thread. Safe to call from another
        thread than the one sharing out (the set is replaced, never changed)."""
        self._asleep = self._asleep | frozenset(sites)

    def busy(self, sites: Iterable[tuple[str, int]]) -> None:
        """Leaf lines (file, line) the agent's looks found busy (`SleepLooks.busy`): on a CPU or
        waiting for the GIL. py-spy's active view misses a thread waiting for the GIL, so under
        contention a loop of Python seems to run seldom and the thread's measured CPU would go
        to its idle stacks: such a line's share is at least `BUSY_SHARE`. Thread-safe as
        `asleep`."""
        self._busy = self._busy | frozenset(sites)

    def is_asleep(self, leaf: Frame | None) -> bool:
        return leaf is not None and (leaf.file, leaf.line) in self._asleep

    def share(self, leaf: Frame | None, idle: bool) -> float:
        if self.is_asleep(leaf):
            return 0.0
        if idle:
            # The stack proves the thread idle (py-spy's view of it in transition is not to be
            # trusted there): it takes only what the thread's measured CPU leaves once the
            # working stacks are full, such as uvloop's own C work under its run() frame.
            return PRIOR_IDLE
        key = (leaf, idle)
        if self._shown.get(key, 0.0) < POOL_BELOW:
            shown, active = self._pool()[idle]
        else:
            shown, active = self._shown[key], self._active.get(key, 0.0)
        learnt = self._ratio(shown, active, _start(idle))
        if leaf is not None and (leaf.file, leaf.line) in self._busy:
            return max(learnt, BUSY_SHARE)
        return learnt

    def _pool(self) -> dict[bool, tuple[float, float]]:
        if self._pooled is None:
            sums = {False: [0.0, 0.0], True: [0.0, 0.0]}
            for key in set(self._shown) | set(self._active):
                if self._shown.get(key, 0.0) < POOL_BELOW:
                    sums[key[1]][0] += self._shown.get(key, 0.0)
                    sums[key[1]][1] += self._active.get(key, 0.0)
            self._pooled = {kind: (v[0], v[1]) for kind, v in sums.items()}
        return self._pooled

    def _ratio(self, shown: float, active: float, start: float) -> float:
        if self._active_seconds <= 0 or self._shown_seconds <= 0:
            return start
        shown_rate = shown / self._shown_seconds
        active_rate = active / self._active_seconds
        prior = PRIOR_SECONDS / self._shown_seconds
        return min(1.0, max(0.0, (active_rate + prior * start) / (shown_rate + prior)))


def share_by_odds(budget: float, weights: Sequence[float], counts: Sequence[float], *,
                  above: bool = True) -> list[float]:
    """Split `budget` over rows of `counts` samples whose learnt shares of running are
    `weights`, moving every row's odds of running by the same factor until the rows hold the
    budget: row i gets counts[i] x p_i, logit(p_i) = logit(weights[i]) + shift.

    The measured CPU says how much ran, the shares which lines are likelier to have: a
    proportional split would hand a line that runs 5% of the time it shows (a sleep, seen as
    its thread wakes) half of a thread's CPU whenever it shows 20 times as long as a line that
    always runs. Shifting odds keeps a line that always runs the first to be filled, and one that
    rarely runs the last. Without `above`, no row goes above its learnt share (the shift is
    never positive). The result sums to the budget, or to what the rows can hold."""
    odds = [_odds(w) for w in weights]

    def running(scale: float) -> list[float]:
        return [o * scale / (1.0 + o * scale) for o in odds]

    low, high = -_MAX_SHIFT, (_MAX_SHIFT if above else 0.0)
    most = running(math.exp(high))
    target = min(budget, sum(c * p for c, p in zip(counts, most, strict=True)))
    if target <= 0:
        return [0.0] * len(counts)
    if target >= budget - _TOLERANCE and above and budget >= sum(counts) - _TOLERANCE:
        return [float(c) for c in counts]
    # Newton's method on the shift, kept inside a bracket that bisection narrows: `held`
    # grows with the shift, so a handful of steps suffice.
    shift = min(max(0.0, low), high)
    for _ in range(_MAX_STEPS):
        p = running(math.exp(shift))
        held = sum(c * x for c, x in zip(counts, p, strict=True))
        if abs(held - target) <= _TOLERANCE:
            break
        if held < target:
            low = shift
        else:
            high = shift
        slope = sum(c * x * (1.0 - x) for c, x in zip(counts, p, strict=True))
        step = shift - (held - target) / slope if slope > 0 else (low + high) / 2
        shift = step if low < step < high else (low + high) / 2
    return [c * x for c, x in zip(counts, running(math.exp(shift)), strict=True)]


def _working_first(budget: float, weights: Sequence[float], counts: Sequence[int],
                   idle: Sequence[bool], above: bool) -> list[float]:
    """`share_by_odds` over the working stacks, then what they cannot hold over the stacks
    that prove the thread idle. By odds alone, a thread idle most of the window handed its
    idle stack a share of its CPU whenever its working lines had a low learnt share (a loop
    of Python waiting for the GIL, which py-spy's active view misses): 17 of the 100 running
    samples of a session went to the event loop's `select` that way."""
    working = [0 if flag else c for c, flag in zip(counts, idle, strict=True)]
    resting = [c if flag else 0 for c, flag in zip(counts, idle, strict=True)]
    first = share_by_odds(budget, weights, working, above=above)
    rest = share_by_odds(max(0.0, budget - sum(first)), weights, resting, above=above)
    return [a + b for a, b in zip(first, rest, strict=True)]


def _odds(p: float) -> float:
    p = min(1.0 - _EDGE, max(_EDGE, p))
    return p / (1.0 - p)


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


@dataclass(frozen=True, slots=True)
class ThreadBudget:
    """What the kernel measured of one thread over the window, in seconds."""

    cpu: float
    runqueue: float = 0.0


_POOLED = -1  # the tid of the group of a process's threads the kernel could not be asked about


def split_samples(segments: Sequence[Segment], rate: int, idle: IdleFn, shares: ActivityShares,
                  budgets: Mapping[ThreadKey, ThreadBudget], seconds: float, *,
                  active_only: bool = False,
                  unmeasured: Mapping[int, float] | None = None) -> tuple[StackSample, ...]:
    """The window's samples: per stack of every thread, RUNNING, RUNNABLE and BLOCKED (or
    WAITING) counts.

    A window recorded with `--idle` shows each thread all along, so its measured CPU is that
    fraction of its samples. One recorded without (`active_only`) shows a thread only while
    py-spy found it active: its samples are not the window's length, and its measured CPU is
    CPU seconds x rate samples of them.

    The kernel is read at the window's edges, so a thread that ended within the window has no
    figure of its own: a server starting a thread per request (Django's `sync_to_async` under
    ASGI) has most of its request threads so. The CPU its process used beyond its measured
    threads (`unmeasured`, per pid) is theirs together: it is shared out over their stacks as
    one thread's (each shows only while it lived, so as CPU seconds x rate samples), on their
    working stacks only: threads Python does not run (a C extension's own) use it too. A
    thread of a process not measured at all keeps the learnt shares alone."""
    shown: dict[StackKey, float] = defaultdict(float)
    names: dict[ThreadKey, str] = {}
    for seg in segments:
        shown[(seg.pid, seg.tid, seg.frames)] += seg.seconds
        names[(seg.pid, seg.tid)] = seg.thread_name
    by_thread: dict[ThreadKey, list[StackKey]] = defaultdict(list)
    for key in shown:
        by_thread[(key[0], key[1])].append(key)
    count_of: dict[StackKey, int] = {}  # whole samples, rounded so each thread keeps its total
    groups: dict[ThreadKey, list[StackKey]] = defaultdict(list)
    for thread, keys in by_thread.items():
        count_of.update(zip(keys, whole([shown[k] * rate for k in keys], [10**9] * len(keys)),
                            strict=True))
        pooled = thread not in budgets and unmeasured is not None and thread[0] in unmeasured
        groups[(thread[0], _POOLED) if pooled else thread].extend(keys)
    out: list[StackSample] = []
    for group, keys in groups.items():
        counts_of = [count_of[k] for k in keys]
        flags = [idle(*k) for k in keys]
        leaves = [k[2][-1] if k[2] else None for k in keys]
        weights = [shares.share(leaf, flag) for leaf, flag in zip(leaves, flags, strict=True)]
        pooled = group[1] == _POOLED
        budget = ThreadBudget(unmeasured[group[0]]) if pooled and unmeasured else budgets.get(group)
        if budget is None or seconds <= 0:
            ran = whole([w * c for w, c in zip(weights, counts_of, strict=True)], counts_of)
            runnable = [0] * len(keys)
        else:
            # Samples' worth of running and of waiting for a CPU.
            if active_only or pooled:
                # Every sample shown is one py-spy found active (or, pooled, one of a thread
                # while it lived); each line still runs only its learnt share of them (a
                # sleep's line shows as its thread wakes): CPU the shown samples cannot hold
                # (samples py-spy lost) is left unplaced.
                cpu, queued = budget.cpu * rate, budget.runqueue * rate
            else:
                total = sum(counts_of)
                cpu = min(1.0, budget.cpu / seconds) * total
                queued = min(1.0, budget.runqueue / seconds) * total
            # A line measured asleep holds none of it, however long it shows: CPU the other
            # stacks cannot hold stays unplaced rather than land on a sleep.
            can_run = [0 if shares.is_asleep(leaf) else c
                       for leaf, c in zip(leaves, counts_of, strict=True)]
            if pooled:
                # The process's CPU beyond its threads read is not surely theirs (a C
                # extension's own threads use it too): never on a stack proving a thread idle
                # (a pool thread that idled out within the window).
                can_run = [0 if flag else c for c, flag in zip(can_run, flags, strict=True)]
            ran = whole(_working_first(cpu, weights, can_run, flags, not active_only), can_run)
            left = [c - r for c, r in zip(counts_of, ran, strict=True)]
            runnable = whole(_working_first(queued, weights, left, flags, not active_only),
                             left)
        for key, n, r, q, flag in zip(keys, counts_of, ran, runnable, flags, strict=True):
            out.extend(_rows(key, names[(key[0], key[1])], n, r, q, flag))
    return tuple(out)


def _rows(key: StackKey, name: str, count: int, ran: int, runnable: int,
          idle: bool) -> list[StackSample]:
    pid, tid, frames = key
    base = StackSample(pid, tid, name, frames, count)
    parts = ((ran, SampleState.RUNNING), (runnable, SampleState.RUNNABLE),
             (count - ran - runnable, SampleState.WAITING if idle else SampleState.BLOCKED))
    return [dataclasses.replace(base, count=n, state=state) for n, state in parts if n > 0]
