"""A window's stacks per thread, with how long each was shown: what `oncpu` splits against
the kernel's readings.

py-spy's raw format counts samples per stack and thread; each becomes a `Segment` of
count / rate seconds (the format keeps no order, and nothing downstream needs it: only how
long each thread showed each stack). With `--threads`
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
    """A thread's stack (root first) and the seconds it showed it in the window."""

    pid: int
    tid: int
    thread_name: str
    frames: tuple[Frame, ...]
    seconds: float


@dataclass(frozen=True, slots=True)
class Trace:
    segments: tuple[Segment, ...]
    bad_events: int = 0  # lines that could not be read


def raw_as_trace(profile: RawProfile, rate_hz: int) -> Trace:
    """A raw-format window as a trace: each stack shown for its count / rate seconds."""
    return Trace(tuple(Segment(s.pid, s.tid, s.thread_name, s.frames, s.count / max(rate_hz, 1))
                       for s in profile.samples), profile.bad_lines)


def merge_traces(traces: Sequence[Trace]) -> Trace:
    """One window's traces, each written by the py-spy of one process, as one."""
    return Trace(tuple(seg for t in traces for seg in t.segments),
                 sum(t.bad_events for t in traces))
