"""A window's stacks per thread, as spans: what `oncpu` splits against the kernel's readings.

py-spy's raw format counts samples per stack and thread; each becomes a `Segment` of
count / rate seconds, the stacks of a thread one after another (the format keeps no order, and
nothing downstream needs it: only how long each thread showed each stack). With `--threads`
each stack's root is the thread (`thread (TID): NAME`); with `--subprocesses` the process
stands above it, and files of several processes merge into one window (`merge_traces`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from apiscope.collectors.pyspy import RawProfile
from apiscope.model import Frame


@dataclass(frozen=True, slots=True)
class Segment:
    """A thread's stack (root first) over [start, end), in seconds from the window's start."""

    pid: int
    tid: int
    thread_name: str
    frames: tuple[Frame, ...]
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Trace:
    segments: tuple[Segment, ...]
    first: float  # the first segment's start (s)
    last: float  # the last one's end
    bad_events: int = 0  # lines that could not be read


def raw_as_trace(profile: RawProfile, rate_hz: int) -> Trace:
    """A raw-format window as a trace: each stack shown for its count / rate seconds, the
    stacks of a thread one after another."""
    clocks: dict[tuple[int, int], float] = {}
    segments = []
    for sample in profile.samples:
        key = (sample.pid, sample.tid)
        start = clocks.get(key, 0.0)
        end = start + sample.count / max(rate_hz, 1)
        clocks[key] = end
        segments.append(Segment(sample.pid, sample.tid, sample.thread_name, sample.frames,
                                start, end))
    return Trace(tuple(segments), 0.0, max(clocks.values(), default=0.0), profile.bad_lines)


def merge_traces(traces: Sequence[Trace]) -> Trace:
    """One window's traces, each written by the py-spy of one process, as one."""
    timed = [t for t in traces if t.segments] or list(traces)
    return Trace(tuple(seg for t in traces for seg in t.segments),
                 min((t.first for t in timed), default=0.0),
                 max((t.last for t in timed), default=0.0),
                 sum(t.bad_events for t in traces))
