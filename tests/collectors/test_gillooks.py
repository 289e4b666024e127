"""Each thread's GIL wait, read from outside a real process by the kernel's looks.

A child Python learns its GIL's futex as the agent does (`gil_futex`), starts two threads doing
one kind of work, prints what it learnt and their thread ids, and the looker in this process
watches them: pure-Python threads take turns on the GIL and are found waiting on it; threads in
C code that releases the GIL, asleep or in a socket are not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from apiscope.collectors.gillooks import GIL_SPAN, QUIET_SAMPLES, GilLooks, on_gil
from tests.pythons.targets import VERSIONS, interpreter
from tests.support import require_found

SRC = Path(__file__).resolve().parents[2] / "src"

CHILD = """
import hashlib, json, socket, sys, threading, time
from apiscope.agent.gilwatch import gil_futex

def python():
    n = 0
    while True:
        for i in range(1000):
            n += i

def hashing():
    while True:
        hashlib.pbkdf2_hmac("sha256", b"x" * 4096, b"salt", 20_000)

def sleeping():
    while True:
        time.sleep(0.05)

def socket_wait():
    a, b = socket.socketpair()
    a.recv(1)

futex = gil_futex()
work = {"python": python, "hashing": hashing, "sleeping": sleeping, "socket": socket_wait}
threads = [threading.Thread(target=work[sys.argv[1]], daemon=True) for _ in range(2)]
for t in threads:
    t.start()
print(json.dumps({"futex": futex, "tids": [t.native_id for t in threads]}), flush=True)
sys.stdin.read()
"""


@contextmanager
def child(work: str) -> Iterator[tuple[int, tuple[int, int], list[int]]]:
    with subprocess.Popen([sys.executable, "-c", CHILD, work], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            info = json.loads(proc.stdout.readline())
            assert info["futex"] is not None, "the child could not learn its GIL's futex"
            yield proc.pid, tuple(info["futex"]), info["tids"]  # type: ignore[misc]
        finally:
            proc.kill()


def gil_share(work: str, seconds: float = 1.5) -> float:
    looks = GilLooks(interval=0.005)
    try:
        with child(work) as (pid, futex, tids):
            looks.note(pid, futex)
            looks.watch({(pid, tid): 1.0 for tid in tids}, 0.0)
            time.sleep(0.2)
            looks.drain()
            time.sleep(seconds)
            counts = looks.drain()
    finally:
        looks.stop()
    assert set(counts) == {(pid, tid) for tid in tids}
    total = sum(n for n, _ in counts.values())
    assert total >= 100  # a look every 5 ms at each thread (fewer on a busy host)
    return sum(gil for _, gil in counts.values()) / total


GIL_BOUND = 0.15  # the least share of looks on the GIL two threads taking turns show


def test_pure_python_threads_are_found_waiting_for_the_gil() -> None:
    # Two threads taking turns: each waits about half the time; the looks say so. On a host
    # whose other core is busy too the two share one CPU, and a thread handed the GIL is found
    # ready to run rather than on the futex a little more often: 0.25 measured 0.247 there.
    # Threads that release the GIL read under 0.05 (below).
    assert gil_share("python") > GIL_BOUND


@pytest.mark.parametrize("work", ["hashing", "sleeping", "socket"])
def test_threads_that_release_the_gil_are_not_waiting_for_it(work: str) -> None:
    assert gil_share(work) < 0.05


def test_only_a_futex_on_the_gils_words_is_the_gil() -> None:
    futex = (202, 0x7F00_0000_1000)
    assert on_gil(b"202 0x7f0000001000 0x89 0x0 0x0 0x0 0x0 0x7ffd 0x7f00", futex)
    assert on_gil(f"202 {hex(futex[1] + GIL_SPAN)} 0x89".encode(), futex)
    assert not on_gil(f"202 {hex(futex[1] + GIL_SPAN + 4)} 0x89".encode(), futex)  # a lock
    assert not on_gil(b"7 0x7f0000001000 0x1 0x2", futex)  # another system call (poll)
    assert not on_gil(b"running", futex)
    assert not on_gil(b"-1 0x7ffd 0x7f00", futex)  # blocked, in no system call
    assert not on_gil(b"", futex)


def test_threads_that_end_are_dropped_and_counted() -> None:
    looks = GilLooks()
    with child("sleeping") as (pid, futex, tids):
        looks.note(pid, futex)
        looks.watch({(pid, tids[0]): 1.0, (pid, 999_999_999): 1.0}, 0.0)
        looks.look()
    looks.stop()
    counts = looks.drain()
    assert (pid, tids[0]) in counts and (pid, 999_999_999) not in counts
    assert looks.errors >= 1


def test_watch_takes_the_busy_threads_of_known_processes_only() -> None:
    looks = GilLooks()
    looks._futex[10] = (202, 1)  # known without starting the looking thread
    looks.watch({(10, 1): 0.5, (10, 2): 0.001, (11, 3): 0.9}, 0.01)
    assert looks._watched == ((10, 1),)


def test_a_process_that_may_not_be_read_is_not_looked_at_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Permission is what Yama's ptrace_scope refuses a non-root collector here; as root it
    # cannot be refused for real, so os.open is made to refuse it.
    def refuse(path: str, flags: int) -> int:
        raise PermissionError(13, "Permission denied", path)

    looks = GilLooks()
    looks._futex[10] = (202, 1)  # known without starting the looking thread
    looks.watch({(10, 1): 1.0, (10, 2): 1.0}, 0.0)
    monkeypatch.setattr("apiscope.collectors.gillooks.os.open", refuse)
    looks.look()
    assert looks.errors == 1 and looks.knows(10)  # one refusal, then left alone
    looks.look()
    assert looks.errors == 1 and looks.drain() == {} and 10 not in looks._futex


def test_a_quiet_process_is_not_read_and_its_looks_count_as_no_wait(
        monkeypatch: pytest.MonkeyPatch) -> None:
    looks = GilLooks(interval=0.04)
    looks._futex[10] = (202, 1)  # known without starting the looking thread
    looks.watch({(10, 1): 1.0}, 0.0)
    reads: list[str] = []

    def read(path: str, flags: int) -> int:
        reads.append(path)
        raise FileNotFoundError(path)

    monkeypatch.setattr("apiscope.collectors.gillooks.os.open", read)
    assert not looks.quiet(10)  # the watchdog said nothing yet: look
    assert looks.look(now=100.0) is False and len(reads) == 1
    for _ in range(QUIET_SAMPLES):  # 0.1 ms per wake-up: 2% of the switch interval
        looks.note_wait(10, wait_seconds=0.002, wakes=20)
    assert looks.quiet(10)
    assert looks.look(now=100.5) is True and len(reads) == 1  # nothing read
    # The half second since the last look stands for the looks at every interval in it.
    assert looks.drain() == {(10, 1): (round(0.5 / 0.04), 0)}
    looks.note_wait(10, wait_seconds=0.04, wakes=20)  # 2 ms per wake-up: contended
    assert not looks.quiet(10)
    looks.look(now=100.54)
    assert len(reads) == 2


def test_too_few_wake_ups_say_nothing_about_quiet() -> None:
    looks = GilLooks()
    for _ in range(QUIET_SAMPLES):
        looks.note_wait(10, wait_seconds=0.0, wakes=0)
    assert not looks.quiet(10)


def test_a_contended_process_stays_looked_at_while_its_watchdog_says_so() -> None:
    looks = GilLooks(interval=0.005)
    try:
        with child("python") as (pid, futex, tids):
            looks.note(pid, futex)
            # What the agent's watchdog reports of two pure-Python threads: ms-long waits.
            for _ in range(QUIET_SAMPLES):
                looks.note_wait(pid, wait_seconds=0.1, wakes=40)
            looks.watch({(pid, tid): 1.0 for tid in tids}, 0.0)
            time.sleep(1.0)
            counts = looks.drain()
    finally:
        looks.stop()
    looked = sum(n for n, _ in counts.values())
    assert looked >= 50 and sum(g for _, g in counts.values()) / looked > GIL_BOUND


HOLDER_CHILD = """
import json, sys, threading, time
from apiscope.agent.gilwatch import gil_futex, gil_holder_layout, thread_idents

def hog():  # pure Python: holds the GIL until asked to drop it
    n = 0
    while True:
        for i in range(1000):
            n += i

def waiter():  # asleep mostly; each time it wakes it waits for the GIL the hog holds
    while True:
        time.sleep(0.002)
        sum(range(50))

futex = gil_futex()
layout = gil_holder_layout(futex[1]) if futex else None
threads = {"hog": threading.Thread(target=hog, name="hog", daemon=True),
           "waiter": threading.Thread(target=waiter, name="waiter", daemon=True)}
for t in threads.values():
    t.start()
print(json.dumps({"futex": futex, "layout": layout, "idents": thread_idents(),
                  "tids": {name: t.native_id for name, t in threads.items()}}), flush=True)
sys.stdin.read()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("version", VERSIONS)
def test_the_thread_holding_the_gil_while_another_waits_is_read_from_outside(
        version: str) -> None:
    # A waiter found blocked on the GIL's futex: the GIL's state, read from /proc/PID/mem at
    # that look, names the hog as its holder (the waiter itself never holds it for long). On
    # every CPython apiscope attaches to: the agent learns the layout in the target.
    looks = GilLooks(interval=0.005)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    python = require_found(interpreter, version)
    with subprocess.Popen([python, "-c", HOLDER_CHILD], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True, env=env) as proc:
        try:
            assert proc.stdout is not None
            info = json.loads(proc.stdout.readline())
            assert info["futex"] is not None and info["layout"] is not None, info
            pid, tids = proc.pid, info["tids"]
            looks.note(pid, tuple(info["futex"]))
            looks.note_holder(pid, tuple(info["layout"]), dict(info["idents"]))
            looks.watch({(pid, tid): 1.0 for tid in tids.values()}, 0.0)
            time.sleep(1.5)
            held = looks.drain_holders()
            waits = looks.drain()
        finally:
            looks.stop()
            proc.kill()
    assert waits[(pid, tids["waiter"])][1] >= 10, waits  # the waiter was found waiting
    total = sum(held.values())
    assert total >= 10, held
    assert held.get((pid, tids["hog"]), 0) >= 0.8 * total, (held, tids)
    assert looks.drain_holders() == {}  # drained


def test_a_gil_state_that_cannot_be_read_is_not_read_again(tmp_path: Path) -> None:
    # No /proc/PID/mem to read (here: a process root without it): counted, and the process's
    # holder is not asked again even when its agent says where the GIL is at the next pull.
    looks = GilLooks(proc_root=str(tmp_path))
    looks._futex[4242] = (202, 0x1000)  # known without starting the looking thread
    looks.note_holder(4242, (0x2000, 176), {1: 4243})
    assert looks._read_holder(4242) is None and looks.errors == 1
    looks.note_holder(4242, (0x2000, 176), {1: 4243})
    assert looks._read_holder(4242) is None and looks.errors == 1
