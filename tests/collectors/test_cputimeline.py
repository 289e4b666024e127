"""Per-thread CPU and run-queue time at a fine interval: fixture files and real threads."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from apiscope.collectors.cputimeline import CpuTimeline


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def write(root: Path, pid: int, tid: int, ran_ns: int, waited_ns: int) -> None:
    task = root / str(pid) / "task" / str(tid)
    task.mkdir(parents=True, exist_ok=True)
    (task / "schedstat").write_text(f"{ran_ns} {waited_ns} 1\n")


def test_usage_spreads_each_interval_over_the_span(tmp_path: Path) -> None:
    clock = Clock()
    write(tmp_path, 7, 8, 0, 0)
    timeline = CpuTimeline(lambda: [7], proc_root=str(tmp_path), clock=clock)
    timeline._scan()
    timeline.read_once()
    for ran, waited in ((20_000_000, 0), (20_000_000, 20_000_000), (40_000_000, 20_000_000)):
        clock.now += 0.1
        write(tmp_path, 7, 8, ran, waited)  # cumulative, re-read through the open descriptor
        timeline.read_once()
    # on a CPU 20 ms, then 0, then 20 ms; in the run queue 0, 20 ms, 0
    used = timeline.usage((7, 8), 100.0, 100.3)
    assert used is not None
    assert abs(used[0] - 0.04) < 1e-9 and abs(used[1] - 0.02) < 1e-9
    half = timeline.usage((7, 8), 100.05, 100.1)  # half of the first interval
    assert half is not None and abs(half[0] - 0.01) < 1e-9
    assert timeline.usage((7, 8), 90.0, 95.0) is None  # before any reading
    assert timeline.usage((7, 9), 100.0, 100.3) is None  # an unknown thread
    timeline.stop()


def test_real_threads_spinning_and_sleeping_in_time() -> None:
    ids: dict[str, int] = {}
    phase = threading.Event()
    stop = threading.Event()

    def worker() -> None:
        ids["w"] = threading.get_native_id()
        phase.wait()
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:  # spin for 0.3 s
            pass
        stop.wait()  # then sleep

    thread = threading.Thread(target=worker)
    thread.start()
    timeline = CpuTimeline(lambda: [os.getpid()], interval=0.01)
    timeline.start()
    try:
        time.sleep(0.1)
        t0 = time.time()
        phase.set()
        time.sleep(0.6)
        t1 = time.time()
    finally:
        stop.set()
        thread.join()
        timeline.stop()
    key = (os.getpid(), ids["w"])
    spinning = timeline.usage(key, t0, t0 + 0.3)
    sleeping = timeline.usage(key, t0 + 0.35, t1)
    assert spinning is not None and sleeping is not None
    # On a CPU, or waiting for one, while it spun; neither while it slept.
    assert spinning[0] + spinning[1] > 0.2
    assert sleeping[0] + sleeping[1] < 0.03
    assert timeline.cpu_seconds >= 0.0 and timeline.reads > 10
