"""py-spy as a process the stack sampler drives: started, waited for, stopped, its CPU read.

`SpyProcess` is the small protocol `StackSampler` needs (the tests drive the sampler with fakes);
`PopenSpy` is the real thing. A py-spy is stopped with SIGINT, on which it writes its file and
exits; its whole CPU time, writing included, comes back from `wait4` for the overhead budget.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import psutil

from apiscope.collectors.pyspy import FAILED_READS_ENV, READY_MARKER, failed_read_time
from apiscope.lifetime import interruptible_and_tied


@dataclass(frozen=True, slots=True)
class SpyExit:
    returncode: int | None
    stdout: str
    stderr: str  # less the failed reads' lines
    cpu_seconds: float = 0.0  # its CPU time over its whole life (0: not known)
    failed_at: tuple[float, ...] = ()  # when its reads failed (epoch seconds), as it logged


class SpyProcess(Protocol):
    """A running `py-spy record`, as the sampler drives it."""

    def wait_ready(self, timeout: float) -> bool: ...  # True once sampling has begun
    def poll(self) -> int | None: ...
    def interrupt(self) -> None: ...  # SIGINT: stop sampling, write the file
    def cpu_seconds(self) -> float: ...  # its CPU time so far
    def finish(self, timeout: float) -> SpyExit: ...  # wait for the exit (kill at timeout)


SpawnSpy = Callable[[Sequence[str]], SpyProcess]

# The failed reads' times kept from one py-spy run (all of them, unless something fails every
# read for a long while: py-spy's own count still has them).
MAX_FAILED_TIMES = 20_000


class PopenSpy:
    """The real thing: py-spy as a subprocess, its output read by two small threads."""

    def __init__(self, argv: Sequence[str]) -> None:
        # Its own session: a Ctrl-C at the terminal must reach apiscope, which then stops
        # py-spy and keeps the last window, not py-spy directly. Killed with apiscope: a
        # kill -9 of the collector must not leave py-spy tracing the server.
        # Each failed read logged with its time, to tell apiscope's own pauses of the target
        # (the injection's debugger) from the sampler's failures.
        self._proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                      env={**os.environ, **FAILED_READS_ENV},
                                      text=True, errors="replace", start_new_session=True,
                                      preexec_fn=interruptible_and_tied)
        self._ready = threading.Event()
        self._out: list[str] = []
        self._err: list[str] = []
        self._failed_at: list[float] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self._proc.stdout, self._out, True),
                             daemon=True, name="py-spy-stdout"),
            threading.Thread(target=self._read, args=(self._proc.stderr, self._err, False),
                             daemon=True, name="py-spy-stderr"),
        ]
        for reader in self._readers:
            reader.start()
        self._psutil: psutil.Process | None = None
        self._last_cpu = 0.0
        try:
            self._psutil = psutil.Process(self._proc.pid)
        except psutil.Error:
            pass

    def _read(self, stream: object, sink: list[str], watch: bool) -> None:
        for line in stream:  # type: ignore[attr-defined]
            if not watch and (failed := failed_read_time(line)) is not None:
                if len(self._failed_at) < MAX_FAILED_TIMES:
                    self._failed_at.append(failed)
                continue
            sink.append(line)
            if watch and READY_MARKER in line:
                self._ready.set()
        self._ready.set()  # EOF: the process ended (ready or not, waiting is over)

    def wait_ready(self, timeout: float) -> bool:
        self._ready.wait(timeout)
        return any(READY_MARKER in line for line in self._out)

    def poll(self) -> int | None:
        return self._proc.poll()

    def interrupt(self) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)

    def cpu_seconds(self) -> float:
        try:
            times = self._psutil.cpu_times() if self._psutil is not None else None
        except psutil.Error:
            return 0.0
        if times is not None:
            self._last_cpu = times.user + times.system
        return self._last_cpu

    def finish(self, timeout: float) -> SpyExit:
        cpu = self._reap(timeout)
        for reader in self._readers:
            reader.join(timeout)
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream is not None:
                stream.close()
        return SpyExit(self._proc.returncode, "".join(self._out), "".join(self._err), cpu,
                       tuple(self._failed_at))

    def _reap(self, timeout: float) -> float:
        """Wait for the exit (kill at `timeout`) with wait4, which hands back the CPU time
        py-spy used, writing its output at exit included; psutil's last reading when the
        process was already reaped."""
        deadline = time.monotonic() + timeout
        pause = 0.001  # doubling to 50 ms: a quick exit is seen at once, a slow one polled seldom
        while True:
            try:
                pid, status, usage = os.wait4(self._proc.pid, os.WNOHANG)
            except ChildProcessError:  # reaped already, by poll()
                self._proc.wait()
                return self._last_cpu
            if pid:
                self._proc.returncode = os.waitstatus_to_exitcode(status)
                return usage.ru_utime + usage.ru_stime
            if time.monotonic() >= deadline:
                self._proc.kill()
                deadline = math.inf
            time.sleep(pause)
            pause = min(0.05, pause * 2)


def target_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def target_stopped(pid: int) -> bool:
    """Stopped by SIGSTOP (a debugger, a cgroup freezer): py-spy cannot attach until SIGCONT."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_STOPPED
    except psutil.Error:
        return False
