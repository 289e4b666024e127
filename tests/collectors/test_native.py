"""The CPU of threads Python does not run (a C extension's own), measured per window and placed
on the request threads waiting for it in the C call."""

from __future__ import annotations

import pytest

from apiscope.collectors.native import native_cpu, waits_on_native
from apiscope.model import Frame, SampleState, StackSample, ThreadRole

SITE = "/srv/venv/lib/python3.11/site-packages"
APP = "/srv/app/main.py"
HANDLER = Frame("login", APP, 30)
ARGON2 = (HANDLER, Frame("verify_secret", f"{SITE}/argon2/low_level.py", 160))
PSYCOPG = (Frame("orders", APP, 50), Frame("wait_c", f"{SITE}/psycopg/waiting.py", 280))
SLEEP = (Frame("nap", APP, 12),)  # time.sleep is C: the app's line is the last one
# A thread blocked at a line of the standard library: for the GIL, not for a library's threads.
STDLIB = (Frame("orders", APP, 50),
          Frame("__getitem__", "/usr/lib/python3.11/weakref.py", 415))
IDLE = (Frame("get", "/usr/lib/python3.11/queue.py", 171),)
ROLES = {(1, t): ThreadRole.WORKER for t in range(2, 9)}


def s(tid: int, frames: tuple[Frame, ...], count: int,
      state: SampleState = SampleState.BLOCKED) -> StackSample:
    return StackSample(1, tid, f"t{tid}", frames, count, state)


@pytest.mark.parametrize(("frames", "role", "waits"), [
    (ARGON2, ThreadRole.WORKER, True),
    (ARGON2, ThreadRole.OTHER, False),  # not a request thread
    (PSYCOPG, ThreadRole.WORKER, False),  # a database's wait
    (SLEEP, ThreadRole.WORKER, False),  # the app's own line calling C
    (STDLIB, ThreadRole.LOOP, False),  # the standard library runs no threads of its own
])
def test_only_a_request_thread_blocked_in_a_libraries_c_call_waits_on_native_threads(
        frames: tuple[Frame, ...], role: ThreadRole, waits: bool) -> None:
    assert waits_on_native(s(2, frames, 1), role) is waits
    assert not waits_on_native(s(2, frames, 1, SampleState.RUNNING), role)


def test_native_cpu_is_placed_on_the_waits_by_their_seconds() -> None:
    samples = [s(2, ARGON2, 30), s(3, ARGON2, 10), s(4, PSYCOPG, 60), s(5, SLEEP, 40)]
    threads = {(1, t): 0.01 for t in (2, 3, 4, 5)} | {(1, 9): 0.1}  # 9: a BLAS thread
    got = native_cpu(samples, 100, threads, {1: 0.54}, ROLES)
    # 0.1 of the thread never shown and 0.4 beyond every thread read.
    assert got == pytest.approx({(1, 2, ARGON2): 0.375, (1, 3, ARGON2): 0.125})


def test_native_cpu_with_no_wait_is_the_processes_and_none_is_none() -> None:
    threads = {(1, 4): 0.01}
    assert native_cpu([s(4, PSYCOPG, 60)], 100, threads, {1: 0.31}, ROLES) == \
        pytest.approx({(1, 0, ()): 0.3})
    assert native_cpu([s(4, PSYCOPG, 60)], 100, threads, {1: 0.01}, ROLES) == {}


def test_the_rest_is_no_ones_where_a_python_thread_that_ended_unread_worked() -> None:
    """A thread per request ended within the window (never read): the process's CPU beyond
    the threads read is its as much as anyone's. A pool thread that only idled out is no
    such doubt."""
    read = {(1, 2): 0.01}
    worked = [s(2, ARGON2, 30), s(7, (HANDLER,), 5, SampleState.RUNNING)]
    assert native_cpu(worked, 100, read, {1: 0.5}, ROLES) == {}
    idled = [s(2, ARGON2, 30), s(7, IDLE, 50, SampleState.WAITING)]
    assert native_cpu(idled, 100, read, {1: 0.5}, ROLES) == \
        pytest.approx({(1, 2, ARGON2): 0.49})


def test_a_worker_that_exited_within_the_window_has_no_native_cpu() -> None:
    """Measured by what its master reaped, no thread of it read: its CPU is its Python's as
    much as anyone's, even where py-spy only saw it idle as it shut down."""
    assert native_cpu([s(2, IDLE, 40, SampleState.WAITING)], 100, {}, {1: 0.3}, ROLES) == {}
