"""Which samples ran: each stack's time matched against the kernel's account of its thread.

py-spy's chrometrace output says which stack each thread showed over which span of time
(`chrometrace.py`); the CPU timeline says, for any span, how many of the thread's seconds it
ran on a CPU and how many it waited in the run queue for one (`cputimeline.py`, read every
25 ms). So for every stack of every thread:

- RUNNING: the seconds it was on a CPU (measured);
- RUNNABLE: the seconds it waited for a CPU the host did not have free (measured): work the
  code wanted to do, delayed by a busy machine;
- BLOCKED, or WAITING at a stack that proves the thread idle (the event loop in its selector,
  a pool worker waiting for a job): the rest, off-CPU for a reason of its own (a sleep, I/O,
  a lock, the GIL).

A `time.sleep` line is never RUNNING, a pure-Python loop is RUNNING (or RUNNABLE on a starved
host), argon2 hashing in C code is RUNNING although it released the GIL: the stack alone says
none of that. Counts are whole samples (seconds x rate, rounded so that each thread's total
is kept). Where the timeline has no readings for a thread (it started and ended between two
readings, or schedstat is unreadable), its share of CPU over the whole window (`fallback`, from
the window-level reading) stands for each of its stacks.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from apiscope.collectors.chrometrace import Segment
from apiscope.model import Frame, SampleState, StackSample

ThreadKey = tuple[int, int]
StackKey = tuple[int, int, tuple[Frame, ...]]
# For one thread and its spans (wall time): (seconds on a CPU, seconds in the run queue) each,
# None where unknown.
UsageFn = Callable[[ThreadKey, list[tuple[float, float]]], list[tuple[float, float] | None]]


@dataclass(slots=True)
class _Time:
    """Seconds one stack of one thread was shown, split by what the thread was doing."""

    name: str
    total: float = 0.0
    ran: float = 0.0
    runnable: float = 0.0


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


def stack_times(segments: Sequence[Segment], offset: float, usage: UsageFn,
                fallback: Mapping[ThreadKey, float]) -> dict[StackKey, _Time]:
    """Per (pid, tid, stack): how long it was shown, ran and waited for a CPU.

    `offset` turns py-spy's seconds into wall time; `fallback` is each thread's CPU share of
    the window, used for spans the timeline cannot judge.
    """
    by_thread: dict[ThreadKey, list[Segment]] = defaultdict(list)
    for seg in segments:
        by_thread[(seg.pid, seg.tid)].append(seg)
    times: dict[StackKey, _Time] = {}
    for key, segs in by_thread.items():
        measured = usage(key, [(s.start + offset, s.end + offset) for s in segs])
        for seg, used in zip(segs, measured, strict=True):
            span = seg.end - seg.start
            slot = times.setdefault((seg.pid, seg.tid, seg.frames), _Time(seg.thread_name))
            slot.total += span
            if used is None:
                slot.ran += span * min(1.0, fallback.get(key, 0.0))
            else:
                slot.ran += min(span, used[0])
                slot.runnable += min(span - min(span, used[0]), used[1])
    return times


def samples_from_times(times: Mapping[StackKey, _Time], rate: int,
                       idle: Callable[[int, int, tuple[Frame, ...]], bool]
                       ) -> tuple[StackSample, ...]:
    """Whole-sample rows: per stack, RUNNING, RUNNABLE and BLOCKED (or WAITING) counts."""
    by_thread: dict[ThreadKey, list[StackKey]] = defaultdict(list)
    for key in times:
        by_thread[(key[0], key[1])].append(key)
    out: list[StackSample] = []
    for keys in by_thread.values():
        counts = whole([times[k].total * rate for k in keys], [10**9] * len(keys))
        for key, count in zip(keys, counts, strict=True):
            if count:
                out.extend(_rows(key, times[key], count, rate, idle(*key)))
    return tuple(out)


def _rows(key: StackKey, time: _Time, count: int, rate: int, idle: bool) -> list[StackSample]:
    pid, tid, frames = key
    scale = count / (time.total * rate) if time.total > 0 else 0.0
    ran, runnable = whole([time.ran * rate * scale, time.runnable * rate * scale],
                          [count, count])
    runnable = min(runnable, count - ran)
    rest = count - ran - runnable
    base = StackSample(pid, tid, time.name, frames, count)
    parts = ((ran, SampleState.RUNNING), (runnable, SampleState.RUNNABLE),
             (rest, SampleState.WAITING if idle else SampleState.BLOCKED))
    return [dataclasses.replace(base, count=n, state=state) for n, state in parts if n]
