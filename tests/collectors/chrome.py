"""Writing py-spy's chrometrace format from folded stacks, for tests of what reads it."""

from __future__ import annotations

import json
from typing import Any

from apiscope.collectors.pyspy import parse_line


def folded_to_chrometrace(text: str, rate: int = 100, pid: int = 10) -> str:
    """Each folded line `stack COUNT` becomes COUNT / rate seconds of that stack, one line after
    another per thread, as py-spy's chrometrace events (B/E per frame, ts in microseconds)."""
    events: list[dict[str, Any]] = []
    clocks: dict[int, float] = {}
    for line in text.splitlines():
        sample = parse_line(line, default_pid=pid)
        if sample is None:
            continue
        start = clocks.get(sample.tid, 1.0)
        end = start + sample.count / rate
        clocks[sample.tid] = end
        frames = [(f"thread ({sample.tid}): {sample.thread_name}", "", 0)] + [
            (f.function, f.file, f.line) for f in sample.frames]
        for ph, ts, order in (("B", start, frames), ("E", end, list(reversed(frames)))):
            for name, filename, line_no in order:
                events.append({"args": {"filename": filename, "line": line_no},
                               "cat": "py-spy", "name": name, "ph": ph, "pid": sample.pid,
                               "tid": 1000 + sample.tid, "ts": int(ts * 1e6)})
    events.sort(key=lambda e: e["ts"])  # stable: a stack's E before the next one's B
    return json.dumps(events)
