"""py-spy's `--format chrometrace` output: each thread's stacks with the time it showed them.

The raw format counts samples per stack and loses time; chrometrace keeps it. py-spy writes a
JSON list of trace events, one "B" (begin) or "E" (end) per frame that a thread's stack gained
or lost between two consecutive samples, stamped with the sample's time in microseconds since
py-spy started (`ts`), keyed by process (`pid`) and pthread id (`tid`). With `--threads` the
root frame of every stack is `thread (TID): NAME` (TID the OS thread id in decimal, or the
pthread id in hex when py-spy cannot map it); with `--subprocesses`, `process PID:"CMDLINE"`
frames stand above it. Frames are `{"name": function, "args": {"filename", "line"}}`.

Replaying the events gives, per thread, a sequence of `Segment`s: the stack it showed and the
span of py-spy time it showed it, from the sample that first saw the stack to the one that saw
it change (the last ones end with py-spy's final events). `parse_chrometrace` is pure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from apiscope.collectors.pyspy import RawProfile
from apiscope.model import Frame

_THREAD = re.compile(r"thread \((0[xX][0-9a-fA-F]+|\d+)\)(?:: (.*))?$")
_PROCESS = re.compile(r'process (\d+):"')


@dataclass(frozen=True, slots=True)
class Segment:
    """A thread's stack (root first) over [start, end), in py-spy's seconds."""

    pid: int
    tid: int
    thread_name: str
    frames: tuple[Frame, ...]
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Trace:
    segments: tuple[Segment, ...]
    first: float  # py-spy time of the first sample (s)
    last: float  # of the last event
    bad_events: int = 0


@dataclass(slots=True)
class _Thread:
    pid: int
    stack: list[tuple[str, str, int]]
    since: float = 0.0
    tid: int = 0
    name: str = ""


def parse_chrometrace(text: str, default_pid: int = 0) -> Trace:
    """The segments of a chrometrace file (an empty trace for empty or broken JSON)."""
    try:
        events = json.loads(text) if text.strip() else []
    except json.JSONDecodeError:
        return Trace((), 0.0, 0.0, 1)
    if not isinstance(events, list):
        return Trace((), 0.0, 0.0, 1)
    threads: dict[tuple[int, int], _Thread] = {}
    segments: list[Segment] = []
    stacks: dict[tuple[tuple[str, str, int], ...], tuple[Frame, ...]] = {}
    bad = 0
    first = last = None
    for event in events:
        parsed = _event(event)
        if parsed is None:
            bad += 1
            continue
        phase, pid, key_tid, ts, frame = parsed
        pid = pid or default_pid
        first = ts if first is None else min(first, ts)
        last = ts if last is None else max(last, ts)
        thread = threads.setdefault((pid, key_tid), _Thread(pid, [], ts))
        if ts != thread.since:
            _close(thread, ts, segments, stacks)
        if phase == "B":
            _begin(thread, frame)
        elif thread.stack:
            thread.stack.pop()
        else:
            bad += 1
    for thread in threads.values():
        if last is not None:
            _close(thread, last, segments, stacks)
    return Trace(tuple(segments), first or 0.0, last or 0.0, bad)


def _event(event: Any) -> tuple[str, int, int, float, tuple[str, str, int]] | None:
    if not isinstance(event, dict) or event.get("ph") not in ("B", "E"):
        return None
    args = event.get("args")
    if not isinstance(args, dict):
        args = {}
    try:
        return (event["ph"], int(event.get("pid") or 0), int(event.get("tid") or 0),
                float(event["ts"]) / 1e6,
                (str(event.get("name", "")), str(args.get("filename") or ""),
                 int(args.get("line") or 0)))
    except (KeyError, TypeError, ValueError):
        return None


def _begin(thread: _Thread, frame: tuple[str, str, int]) -> None:
    name, filename, _ = frame
    if not filename:
        match = _THREAD.match(name)
        if match is not None:
            raw = match.group(1)
            thread.tid = int(raw, 16) if raw.lower().startswith("0x") else int(raw)
            thread.name = match.group(2) or ""
        else:
            process = _PROCESS.match(name)
            if process is not None:
                thread.pid = int(process.group(1))  # the innermost process frame is the pid
    thread.stack.append(frame)


def _close(thread: _Thread, ts: float, out: list[Segment],
           stacks: dict[tuple[tuple[str, str, int], ...], tuple[Frame, ...]]) -> None:
    """End the thread's current stack at `ts` (when it had one) and start a new span. Equal
    stacks share one tuple (`stacks`): a window repeats a few stacks over many threads."""
    if thread.stack and ts > thread.since:
        stack = thread.stack
        start = 0  # the process and thread frames above the stack are not part of it
        while start < len(stack) and not stack[start][1] and (
                _THREAD.match(stack[start][0]) or _PROCESS.match(stack[start][0])):
            start += 1
        key = tuple(stack[start:])
        frames = stacks.get(key)
        if frames is None:
            frames = stacks[key] = tuple(Frame(name, filename, line)
                                         for name, filename, line in key)
        out.append(Segment(thread.pid, thread.tid, thread.name, frames, thread.since, ts))
    thread.since = ts


def merge_traces(traces: Sequence[Trace]) -> Trace:
    """One window's traces, each written by the py-spy of one process, as one."""
    timed = [t for t in traces if t.segments] or list(traces)
    return Trace(tuple(seg for t in traces for seg in t.segments),
                 min((t.first for t in timed), default=0.0),
                 max((t.last for t in timed), default=0.0),
                 sum(t.bad_events for t in traces))


def raw_as_trace(profile: RawProfile, rate_hz: int) -> Trace:
    """A raw-format window as a trace: each stack shown for its count / rate seconds, the
    stacks of a thread one after another (the raw format keeps no order)."""
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
