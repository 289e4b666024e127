"""Calls made with ptrace in real processes: each returns the function's result and leaves the
thread exactly as it was, whether it was computing, sleeping in a system call, or stuck."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from apiscope.inject import ptrace
from apiscope.inject.ptrace import CallFailed, Thread
from tests.support import require_ptrace

pytestmark = pytest.mark.skipif(not ptrace.supported(), reason="calls by ptrace: x86-64 Linux")

# The child prints its C library's getpid and sleep addresses, then works: a floating-point
# computation whose result must not change from one round to the next (a call that left a
# vector register changed would change it), and a sleep in between (a system call to restart).
CHILD = r"""
import ctypes, math, sys, time
libc = ctypes.CDLL(None)
addr = lambda f: ctypes.cast(f, ctypes.c_void_p).value
print(addr(libc.getpid), addr(libc.sleep), flush=True)
def work():
    return sum(math.sin(i * 0.001) * math.sqrt(i) / (1.0 + i % 7) for i in range(20000))
expected, rounds, wrong = work(), 0, 0
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    wrong += work() != expected
    rounds += 1
    time.sleep(float(sys.argv[2]))
print(rounds, wrong, flush=True)
"""


@pytest.fixture
def child(request: pytest.FixtureRequest) -> Iterator[tuple[subprocess.Popen[str], int, int]]:
    require_ptrace()
    seconds, pause = request.param
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(seconds), str(pause)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    getpid, sleep = (int(word) for word in proc.stdout.readline().split())
    try:
        yield proc, getpid, sleep
    finally:
        proc.kill()
        proc.wait()


def _call_once(pid: int, function: int, args: tuple[int, ...] = ()) -> int:
    thread = Thread(pid)
    thread.seize([False])
    try:
        thread.save()
        try:
            return thread.call(function, args, [False])
        finally:
            thread.restore()
    finally:
        thread.detach()


def _result(proc: subprocess.Popen[str]) -> tuple[int, int]:
    out, _ = proc.communicate(timeout=30)
    rounds, wrong = (int(word) for word in out.split())
    return rounds, wrong


@pytest.mark.parametrize("child", [(3.0, 0.0)], indirect=True)
def test_calls_into_a_computing_thread_return_and_change_nothing(
        child: tuple[subprocess.Popen[str], int, int]) -> None:
    proc, getpid, _ = child
    calls = 0
    while proc.poll() is None and calls < 200:
        try:
            assert _call_once(proc.pid, getpid) == proc.pid
        except ptrace.PtraceError:
            break  # the child ended between two calls
        calls += 1
        time.sleep(0.005)
    rounds, wrong = _result(proc)
    assert calls >= 50 and rounds > 0
    assert wrong == 0, f"{wrong} of {rounds} rounds computed differently after calls"


@pytest.mark.parametrize("child", [(2.0, 0.05)], indirect=True)
def test_a_thread_stopped_in_a_system_call_goes_back_into_it(
        child: tuple[subprocess.Popen[str], int, int]) -> None:
    proc, getpid, _ = child
    for _ in range(20):
        assert _call_once(proc.pid, getpid) == proc.pid
        time.sleep(0.02)
    rounds, wrong = _result(proc)
    assert proc.returncode == 0 and wrong == 0
    assert 10 <= rounds <= 45  # sleeps of 0.05 s, neither skipped nor lengthened much


@pytest.mark.parametrize("child", [(3.0, 0.01)], indirect=True)
def test_a_call_that_does_not_return_is_abandoned_and_the_thread_restored(
        child: tuple[subprocess.Popen[str], int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    proc, getpid, sleep = child
    monkeypatch.setattr(ptrace, "CALL_SECONDS", 0.3)
    with pytest.raises(CallFailed, match="did not return in time"):
        _call_once(proc.pid, sleep, (100,))
    assert _call_once(proc.pid, getpid) == proc.pid
    rounds, wrong = _result(proc)
    assert proc.returncode == 0 and wrong == 0 and rounds > 10


def test_a_missing_process_is_said_plainly() -> None:
    require_ptrace()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    with pytest.raises(ptrace.PtraceError) as caught:
        Thread(proc.pid).seize([False])
    assert caught.value.errno == 3  # ESRCH
