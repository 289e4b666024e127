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
from pathlib import Path
from typing import Protocol

import psutil

from apiscope.collectors.pyspy import (
    FAILED_READS_ENV,
    READY_MARKER,
    failed_read_time,
    parse_summary,
)
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


class SpyGroup:
    """One py-spy per worker process, sampling one window together and driven as one.

    A server's master is sampled with `--subprocesses` otherwise, and py-spy then looks for
    new children ten times a second by reading every process of the host: 18 ms of CPU a
    second with 70 processes on the host, 59 ms with 470, whatever the rate (a uvicorn with
    two workers at 1 Hz); a py-spy per worker costs its start-up and its ticks only.

    Ready when each member has begun sampling (one that could not, its worker gone, is
    dropped); running while any runs; CPU time, output and failed reads summed over all.
    """

    def __init__(self, members: Sequence[tuple[int, SpyProcess, Path]]) -> None:
        # (worker pid, its py-spy, the file it writes)
        self.members = list(members)
        self._dropped: list[SpyExit] = []

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        ready = []
        for member in self.members:
            if member[1].wait_ready(max(0.0, deadline - time.monotonic())):
                ready.append(member)
            else:
                member[1].interrupt()
                self._dropped.append(member[1].finish(5.0))
        self.members = ready
        return bool(ready)

    def poll(self) -> int | None:
        codes = [spy.poll() for _, spy, _ in self.members]
        if any(code is None for code in codes):
            return None  # one still samples
        return next((code for code in codes if code), 0)

    def ended(self) -> list[int]:
        """The workers whose py-spy has stopped (the worker exited: recycled, or crashed)."""
        return [pid for pid, spy, _ in self.members if spy.poll() is not None]

    def interrupt(self) -> None:
        for _, spy, _ in self.members:
            spy.interrupt()

    def cpu_seconds(self) -> float:
        return sum(spy.cpu_seconds() for _, spy, _ in self.members) + sum(
            done.cpu_seconds for done in self._dropped)

    def finish(self, timeout: float) -> SpyExit:
        results = [spy.finish(timeout) for _, spy, _ in self.members]
        told = results or self._dropped  # none began: the dropped ones say why
        summaries = [parse_summary(r.stdout) for r in results]
        stdout = "".join(r.stdout for r in told)
        if any(summary is not None for summary in summaries):  # one closing line for all
            stdout += (f"\nSamples: {sum(x.samples for x in summaries if x is not None)}"
                       f" Errors: {sum(x.errors for x in summaries if x is not None)}\n")
        codes = [r.returncode for r in told]
        return SpyExit(next((c for c in codes if c), codes[0] if codes else None), stdout,
                       "".join(r.stderr for r in told),
                       sum(r.cpu_seconds for r in results) + sum(
                           d.cpu_seconds for d in self._dropped),
                       tuple(sorted(t for r in told for t in r.failed_at)))

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


def target_stopped(pid: int, proc_root: str = "/proc") -> bool:
    """Stopped by SIGSTOP (a debugger, a cgroup freezer): py-spy cannot attach until SIGCONT.

    Asked four times a second through a window: the state letter of `/proc/PID/stat` is read
    directly (about 15 us), where psutil's `Process(pid).status()` reads and parses two files
    (measured: 250 us a call, 1 ms a second, a tenth of the collector's CPU at the budget's
    floor). `T` is a stop by signal; `t`, a thread held by a tracer (py-spy's own reads in
    blocking mode), is not."""
    try:
        with open(f"{proc_root}/{pid}/stat", "rb") as stat:
            text = stat.read()
    except OSError:
        return False  # gone, or not ours to read
    _, _, after = text.rpartition(b")")
    return after[1:2] == b"T"
