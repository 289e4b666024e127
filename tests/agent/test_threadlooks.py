"""ThreadLooks against real threads of this process: the kernel's word on what each one does,
paired with its frame."""

from __future__ import annotations

import hashlib
import socket
import sys
import threading
import time

import pytest

from apiscope.agent.gilwatch import gil_futex
from apiscope.agent.threadlooks import ThreadLooks

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/task")


def _line_of(function: object, marker: str) -> int:
    import inspect

    lines, first = inspect.getsourcelines(function)  # type: ignore[arg-type]
    return first + next(i for i, text in enumerate(lines) if marker in text)


def sleeper(stop: threading.Event) -> None:
    # Long sleeps: a thread just woken is running (or queued for a CPU) at this line for a
    # moment, longer on a loaded host; it must be the rare look that finds it so.
    while not stop.is_set():
        time.sleep(0.2)  # SLEEP


def reader(sock: socket.socket) -> None:
    try:
        sock.recv(1)  # READ
    except OSError:
        pass


def hasher(stop: threading.Event) -> None:
    while not stop.is_set():
        hashlib.pbkdf2_hmac("sha256", b"pw", b"salt", 200_000)  # HASH


def spinner(stop: threading.Event) -> None:
    total = 0
    while not stop.is_set():
        total += sum(range(20_000))  # SPIN


def test_sleeping_and_reading_lines_are_asleep_hashing_runs_and_python_waits_for_the_gil(
        ) -> None:
    gil = gil_futex()
    assert gil is not None
    stop = threading.Event()
    left, right = socket.socketpair()
    threads = [threading.Thread(target=sleeper, args=(stop,), daemon=True),
               threading.Thread(target=reader, args=(left,), daemon=True),
               threading.Thread(target=hasher, args=(stop,), daemon=True),
               threading.Thread(target=spinner, args=(stop,), daemon=True),
               # the agent's own threads are never looked at
               threading.Thread(target=sleeper, args=(stop,), name="apiscope-test", daemon=True)]
    for thread in threads:
        thread.start()
    looks = ThreadLooks(interval=0.0)
    try:
        time.sleep(0.1)
        for _ in range(40):
            looks.maybe_look(time.monotonic(), gil)
            time.sleep(0.005)
    finally:
        stop.set()
        right.close()
        left.close()
        for thread in threads:
            thread.join(10)
    rows = {(file, line): tuple(found) for file, line, *found in looks.drain()}
    here = __file__
    sleep = rows.get((here, _line_of(sleeper, "# SLEEP")))
    read = rows.get((here, _line_of(reader, "# READ")))
    hashing = rows.get((here, _line_of(hasher, "# HASH")))
    spinning = rows.get((here, _line_of(spinner, "# SPIN")))
    # (asleep, running, waiting for the GIL); a look may catch the sleeper running, just woken,
    # still at its line, or waiting to take the GIL back
    assert sleep is not None and sleep[0] >= 20 and sleep[1] <= 2, rows
    assert read is not None and read[0] >= 20 and read[1:] == (0, 0), rows
    assert hashing is not None and hashing[1] >= 10 and hashing[0] == 0, rows
    # Python needs the GIL to run, and the look holds it: the spinner, just made to hand it
    # over, is found on its way back to waiting for it, or waiting; never asleep
    assert spinning is not None and spinning[1] + spinning[2] >= 20 and spinning[0] == 0, rows
    assert looks.errors == 0
    assert looks.drain() == []  # handed over once


def test_looks_come_no_more_often_than_the_interval_and_never_raise() -> None:
    looks = ThreadLooks(interval=10.0)
    calls = []
    looks.look = lambda gil=None: calls.append(gil)  # type: ignore[method-assign]
    looks.maybe_look(100.0)
    looks.maybe_look(105.0)
    looks.maybe_look(110.0, (202, 1))
    assert calls == [None, (202, 1)]

    def broken(gil: object = None) -> None:
        raise RuntimeError("boom")

    looks.look = broken  # type: ignore[method-assign,assignment]
    looks.maybe_look(200.0)
    assert looks.errors == 1


def test_many_threads_are_looked_at_in_turns() -> None:
    stop = threading.Event()
    threads = [threading.Thread(target=sleeper, args=(stop,), daemon=True) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.05)
        looks = ThreadLooks(interval=0.0, max_threads=4)
        chosen = [{t.native_id for t in looks._threads()} for _ in range(3)]
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert all(len(c) == 4 for c in chosen)
    assert chosen[0] != chosen[1]  # the next look starts where the last one stopped


def test_a_pool_thread_busy_with_a_requests_handed_off_call_counts_on_the_request() -> None:
    # The request as the middleware puts it in the context; the call, C code that keeps a
    # pool thread on a CPU, handed off the way `asyncio.to_thread` does it.
    import asyncio

    from apiscope.agent.middleware import _Request
    from apiscope.agent.queries import CURRENT

    request = _Request(0.0)
    looks = ThreadLooks(interval=0.0)

    async def handler() -> None:
        CURRENT.set(request)
        work = asyncio.ensure_future(asyncio.to_thread(
            hashlib.pbkdf2_hmac, "sha256", b"pw", b"salt", 3_000_000))
        for _ in range(10):
            await asyncio.sleep(0.05)
            looks.look(gil_futex())
        await work

    asyncio.run(handler())
    assert looks.errors == 0
    # Busy at nearly every look (a look that finds the thread between two states is dropped).
    assert request.offloaded >= 5, request.offloaded


def _main_thread_seen_in_a_forked_child() -> bool:
    """In a child forked from this process, whether looks taken from another thread find the
    main thread asleep at its line (the child's main thread is the one that forked)."""
    import os

    from apiscope.agent.schedstat import native_id

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer through the pipe, never return into pytest
        ok = False
        try:
            looks = ThreadLooks(interval=0.0)
            stop = threading.Event()

            def look() -> None:
                while not stop.is_set():
                    looks.look()
                    time.sleep(0.01)

            looker = threading.Thread(target=look)
            looker.start()
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                time.sleep(0.05)  # CHILD_SLEEP
            stop.set()
            looker.join()
            line = _line_of(_main_thread_seen_in_a_forked_child, "# CHILD_SLEEP")
            ok = native_id(threading.main_thread()) == os.getpid() and any(
                row[1] == line and row[2] > 0 for row in looks.drain())
        finally:
            os.write(write, b"1" if ok else b"0")
            os._exit(0)
    os.close(write)
    try:
        return os.read(read, 1) == b"1"
    finally:
        os.close(read)
        os.waitpid(pid, 0)


def test_the_main_thread_of_a_forked_worker_is_looked_at() -> None:
    # A gunicorn or `uvicorn --workers` worker is a forked child whose event loop runs on its
    # main thread, whose `Thread.native_id` is still the parent's.
    assert _main_thread_seen_in_a_forked_child()
