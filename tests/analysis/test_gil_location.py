"""Where gil_contention points: a line that runs, never one that sleeps. Threads contending
for the GIL each run about half the time they show with two of them at it; a loop line the
watchdog's looks found asleep cannot hold the GIL."""

from __future__ import annotations

from pathlib import Path

from apiscope.analysis.report import find_flags
from apiscope.flag import Flag
from apiscope.model import GilSample, LoopStall, SampleState
from tests.analysis.builder import (
    LOOP_TID,
    PID,
    T0,
    W1,
    W2,
    Spec,
    app,
    healthy,
    idle_loop,
    on_loop,
    on_worker,
    sample,
    write_and_open,
)


def contended(spec: Spec) -> Spec:
    spec.measured = True
    # The watchdog: 0.5 s of waits over 120 wake-ups a second, 4.2 ms each.
    spec.gil = [GilSample(T0 + i + 1, PID, 1.0, 0.5, 120, 6.0) for i in range(30)]
    return spec


def gil_flags(spec: Spec, path: Path) -> list[Flag]:
    with write_and_open(spec, path / "s.sqlite") as reader:
        return [f for f in find_flags(reader) if f.kind == "gil_contention"]


def test_two_threads_taking_turns_on_the_gil_are_located_at_their_line(tmp_path: Path) -> None:
    spec = healthy()
    spec.per_window = [s for s in spec.per_window if s.tid != LOOP_TID] + [idle_loop(100)]
    for tid in (W1, W2):  # each runs a third of the time it shows, waits for the GIL the rest
        spec.per_window.append(sample(tid, on_worker(app("forecast", 56)), 17))
        spec.per_window.append(sample(tid, on_worker(app("forecast", 56)), 33,
                                      SampleState.BLOCKED))
    [flag] = gil_flags(contended(spec), tmp_path)
    assert flag.location is not None and flag.location.line == 56


def test_a_loop_that_waits_at_its_header_is_located_at_its_body(tmp_path: Path) -> None:
    # CPython hands the GIL over at a loop's back-edge: the threads wait at the `for` line
    # (55) and run at the body (56), which alone runs ten times as long as it waits.
    spec = healthy()
    spec.per_window = [s for s in spec.per_window if s.tid != LOOP_TID] + [idle_loop(100)]
    for tid in (W1, W2):
        spec.per_window.append(sample(tid, on_worker(app("forecast", 56)), 30))
        spec.per_window.append(sample(tid, on_worker(app("forecast", 56)), 3,
                                      SampleState.BLOCKED))
        spec.per_window.append(sample(tid, on_worker(app("forecast", 55)), 4))
        spec.per_window.append(sample(tid, on_worker(app("forecast", 55)), 30,
                                      SampleState.BLOCKED))
    [flag] = gil_flags(contended(spec), tmp_path)
    assert flag.location is not None and flag.location.line == 56


def test_a_sleep_on_the_loop_is_not_where_the_gil_is_held(tmp_path: Path) -> None:
    spec = healthy()
    # The loop shows a sync sleep and is charged CPU there; the watchdog's looks at the kernel
    # found it asleep at every stall. The pool threads run framework code only.
    spec.per_window = [s for s in spec.per_window if s.tid != LOOP_TID]
    spec.per_window.append(sample(LOOP_TID, on_loop(app("audit", 23)), 60))
    for tid in (W1, W2):
        spec.per_window.append(sample(tid, on_worker(), 40))
    spec.loop_stalls = [LoopStall(PID, LOOP_TID, T0 + 5 + i, 40.0,
                                  on_loop(app("audit", 23)), 1.0, {"sleep": 4})
                        for i in range(20)]
    for flag in gil_flags(contended(spec), tmp_path):
        assert flag.location is None or flag.location.line != 23, flag
