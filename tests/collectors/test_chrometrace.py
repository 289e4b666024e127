"""py-spy's chrometrace output replayed into per-thread stacks over time: real output saved from
a real server, and hand-made events."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from apiscope.collectors.chrometrace import parse_chrometrace
from apiscope.model import Frame

FIXTURE = Path(__file__).parent / "fixtures" / "uvicorn_chrometrace.json"


def test_real_output_gives_each_thread_a_continuous_timeline() -> None:
    trace = parse_chrometrace(FIXTURE.read_text(), default_pid=1)
    assert trace.bad_events == 0
    by_thread: dict[tuple[int, str], list[tuple[float, float]]] = defaultdict(list)
    for s in trace.segments:
        by_thread[(s.tid, s.thread_name)].append((s.start, s.end))
    assert set(by_thread) == {(24797, "MainThread"), (24938, "AnyIO worker thread")}
    for spans in by_thread.values():
        spans.sort()
        # back to back from the first sample to the last: no gap, no overlap
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
        # py-spy reads the threads one after the other: each starts within a millisecond
        assert spans[0][0] - trace.first < 0.001 and spans[-1][1] == trace.last
    leaves: dict[Frame, float] = defaultdict(float)
    for s in trace.segments:
        if s.frames:
            leaves[s.frames[-1]] += s.end - s.start
    # the app's sleep (render, line 9) and its sync handler's loop (lines 42-43) are there
    assert leaves[Frame("render", "/srv/api/app.py", 9)] > 0.1
    assert leaves[Frame("sync_handler", "/srv/api/app.py", 43)] > 0.05
    assert not any(f.function.startswith("thread (") for s in trace.segments for f in s.frames)


def event(ph: str, name: str, ts: int, filename: str = "", line: int = 0,
          pid: int = 5, tid: int = 77) -> dict[str, object]:
    return {"ph": ph, "name": name, "ts": ts, "pid": pid, "tid": tid,
            "args": {"filename": filename, "line": line}}


def test_subprocess_frames_name_the_process_and_are_not_stack_frames() -> None:
    events = [event("B", 'process 41:"gunicorn app:app"', 0),
              event("B", "thread (43): MainThread", 0),
              event("B", "handler", 0, "/srv/app.py", 7),
              event("E", "handler", 20_000, "/srv/app.py", 7),
              event("B", "other", 20_000, "/srv/app.py", 9),
              event("E", "other", 30_000, "/srv/app.py", 9),
              event("E", "thread (43): MainThread", 30_000),
              event("E", 'process 41:"gunicorn app:app"', 30_000)]
    trace = parse_chrometrace(json.dumps(events))
    assert [(s.pid, s.tid, s.thread_name, s.frames, s.start, s.end) for s in trace.segments] == [
        (41, 43, "MainThread", (Frame("handler", "/srv/app.py", 7),), 0.0, 0.02),
        (41, 43, "MainThread", (Frame("other", "/srv/app.py", 9),), 0.02, 0.03)]


def test_broken_input_is_counted_not_raised() -> None:
    assert parse_chrometrace("{not json").bad_events == 1
    assert parse_chrometrace("").segments == ()
    trace = parse_chrometrace(json.dumps([{"ph": "E", "name": "x", "ts": 1}, 7, {"ph": "B"}]))
    assert trace.segments == () and trace.bad_events == 3
