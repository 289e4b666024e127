"""Per-thread CPU time from the kernel: fixture files and the real /proc."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from apiscope.collectors.threadcpu import CpuReading, ThreadCpuReader, host_ticks, usage


def write_task(root: Path, pid: int, tid: int, schedstat: str | None, stat: str) -> None:
    task = root / str(pid) / "task" / str(tid)
    task.mkdir(parents=True)
    if schedstat is not None:
        (task / "schedstat").write_text(schedstat)
    (task / "stat").write_text(stat)


def stat_line(utime: int, stime: int, comm: str = "python3", cutime: int = 0,
              cstime: int = 0) -> str:
    # fields: pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    #         utime stime cutime cstime ...
    return (f"42 ({comm}) S 1 42 42 0 -1 0 0 0 0 0 {utime} {stime} {cutime} {cstime}"
            " 20 0 3 0\n")


def test_reads_schedstat_nanoseconds_and_falls_back_to_stat_ticks(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "stat").write_text(stat_line(300, 100, comm="uvicorn (main) x"))
    write_task(tmp_path, 42, 42, "1500000000 2000 10\n", stat_line(1, 1))
    write_task(tmp_path, 42, 43, None, stat_line(50, 25))
    reading = ThreadCpuReader(str(tmp_path)).read([42, 99])
    assert reading.threads[(42, 42)] == 1.5
    assert reading.runqueue == {(42, 42): 2e-06}  # only schedstat knows the run queue
    assert abs(reading.threads[(42, 43)] - 0.75) < 1e-9  # 75 ticks of 10 ms
    assert abs(reading.processes[42] - 4.0) < 1e-9


def test_usage_counts_new_threads_from_zero_and_skips_unknown_processes() -> None:
    before = CpuReading({(1, 1): 2.0}, {1: 2.0}, {(1, 1): 1.0})
    after = CpuReading({(1, 1): 2.5, (1, 2): 0.25, (7, 7): 9.0}, {1: 2.75, 7: 9.0},
                       {(1, 1): 1.5, (7, 7): 3.0})
    used = usage(before, after)
    assert used.threads == {(1, 1): 0.5, (1, 2): 0.25}
    assert used.processes == {1: 0.75}
    assert used.runqueue == {(1, 1): 0.5}
    assert used.born == {(1, 2)}  # started in the window; process 7 was not read before


def test_the_hosts_busy_share_over_a_window(tmp_path: Path) -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice
    (tmp_path / "stat").write_text("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4 5\n")
    assert ThreadCpuReader(str(tmp_path)).read([]).host == (150, 1000)
    before, after = CpuReading(host=(150, 1000)), CpuReading(host=(450, 1400))
    assert usage(before, after).host_busy == 0.75  # 300 of 400 ticks neither idle nor iowait
    assert usage(CpuReading(), after).host_busy is None  # not read at one edge: unknown
    assert host_ticks("intr 1 2 3\n") is None and host_ticks("cpu  x y z w v\n") is None
    assert ThreadCpuReader(str(tmp_path / "none")).read([]).host is None


def test_a_parent_is_read_for_the_cpu_of_the_children_it_reaped(tmp_path: Path) -> None:
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "stat").write_text(stat_line(3, 1, comm="gunicorn: master", cutime=250,
                                                   cstime=50))
    reading = ThreadCpuReader(str(tmp_path)).read([], parents=[7, 99])  # 99: no such process
    assert reading.reaped == {7: 3.0} and reading.processes == {}


def test_a_worker_gone_within_the_window_is_measured_by_what_its_parent_reaped() -> None:
    # Worker 2 had used 4 s when the window began and was reaped by master 1 within it, at
    # 5.5 s: its parent's reaped time grew by that, so it used 1.5 s in the window.
    before = CpuReading({(2, 2): 4.0, (3, 3): 1.0}, {2: 4.0, 3: 1.0}, reaped={1: 10.0})
    after = CpuReading({(3, 3): 1.25}, {3: 1.25}, reaped={1: 15.5})
    used = usage(before, after)
    assert used.processes == {2: 1.5, 3: 0.25}
    assert used.threads == {(3, 3): 0.25}  # its threads are not known one by one
    # Two gone at once share the one sum evenly; not reaped yet (a zombie is still read) or
    # no parent read: nothing is made up for them.
    two = usage(CpuReading({}, {2: 1.0, 4: 1.0}, reaped={1: 0.0}),
                CpuReading({}, {}, reaped={1: 3.0}))
    assert two.processes == {2: 0.5, 4: 0.5}
    assert usage(CpuReading({}, {2: 1.0}, reaped={1: 0.0}),
                 CpuReading({}, {}, reaped={1: 0.0})).processes == {}
    assert usage(CpuReading({}, {2: 1.0}), CpuReading({}, {})).processes == {}


def test_real_threads_spinning_and_sleeping() -> None:
    stop = threading.Event()
    ids: dict[str, int] = {}

    def spin() -> None:
        ids["spin"] = threading.get_native_id()
        while not stop.is_set():
            sum(range(1000))

    def sleep() -> None:
        ids["sleep"] = threading.get_native_id()
        stop.wait()

    threads = [threading.Thread(target=spin), threading.Thread(target=sleep)]
    for t in threads:
        t.start()
    try:
        reader = ThreadCpuReader()
        while len(ids) < 2:
            time.sleep(0.01)
        before = reader.read([os.getpid()])
        time.sleep(0.5)
        used = usage(before, reader.read([os.getpid()]))
    finally:
        stop.set()
        for t in threads:
            t.join()
    pid = os.getpid()
    assert used.threads[(pid, ids["sleep"])] < 0.02
    # The spinning thread competes for the GIL with this one only while it sleeps: on a CPU
    # most of the half second, even on a loaded machine.
    assert used.threads[(pid, ids["spin"])] > 0.15
    # The process's figure counts clock ticks (10 ms), the threads' nanoseconds; and the
    # kernel scales a process's ticks to its runtime without ever letting them go back, so at
    # a read they can lag the threads' figure by several ticks more (53 ms once in four CI
    # runs, 108 ms once on a loaded two-core VM where the half second took 0.63 s).
    assert used.processes[pid] >= used.threads[(pid, ids["spin"])] - 0.15
