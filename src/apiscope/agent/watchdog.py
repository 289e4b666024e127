"""Watchdogs: the event loop's lag and stalls, and the wait for the GIL, measured in-process.

Stack samples taken from outside can only suggest that the loop was blocked or that threads
queued for the GIL; the agent's watchdog threads measure it:

- `LoopWatchdog` (in `loopwatch`, one per event loop the agent serves) posts a probe callback
  onto the loop with `call_soon_threadsafe` every `loop_interval` and records how late it ran
  (the loop's lag). When a probe is outstanding for longer than `stall_threshold`, it samples
  the loop thread's stack every `sample_interval` until the probe runs, and records a stall:
  when the loop was last seen running, how long it ran nothing else, the stack seen most often
  meanwhile, and the loop thread's CPU time over the stall (a `time.sleep` uses none, a
  computation all of it). A loop parked in its selector is not woken for a probe: it would run
  one at once, so the check counts as a probe with no lag, and an idle server's loop stays
  asleep. Each check is one wake-up of the watchdog; for `ALERT_SECONDS` after a late probe the
  checks come every `stall_threshold` instead, so that short stalls are caught with their
  stacks.
- The GIL wait is measured on every timed wake-up of a watchdog thread (`gilwatch`): the loop
  watchdogs' own, and a `GilWatchdog` thread's, which wakes every `gil_interval` while no loop
  watchdog runs (before the first request) and once a second otherwise.
- On the `GilWatchdog`'s wake-ups, at most once a second, `threadlooks` pairs each
  thread's system call with its current frame: the lines threads sleep at (a `time.sleep` or a
  socket read in a sync handler), by the kernel's word.

Wake-ups are what these threads cost (tens of microseconds of CPU each on a virtual machine),
so the defaults are what kept both under 0.3 % of a core where they were measured (see
docs/sampling.md). Every error of their own is caught and counted; they stop (joined) with the
agent. Standard library only, relative imports only, and Python 3.9 compatible: the agent runs
inside targets of any supported Python.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from .gcpauses import GcPauses
from .gilwatch import GilMeter, GilWatchdog, has_gil, thread_idents
from .loopwatch import FOLLOW_CPU_SHARE, MAX_FOLLOW_SHARE, LoopWatchdog

ENV_PREFIX = "APISCOPE_WATCHDOG_"


class WatchdogOptions:
    """Intervals in seconds; `APISCOPE_WATCHDOG_<NAME>_MS` overrides each (0 turns that
    watchdog off), `APISCOPE_WATCHDOG=0` turns both off."""

    __slots__ = ("enabled", "gil_interval", "hold_threshold", "loop_interval",
                 "sample_interval", "stall_threshold", "time_passes")

    def __init__(self, loop_interval: float = 0.100, stall_threshold: float = 0.025,
                 sample_interval: float = 0.010, gil_interval: float = 0.050,
                 enabled: bool = True, time_passes: bool = True,
                 hold_threshold: float = 0.010) -> None:
        self.loop_interval = loop_interval
        self.stall_threshold = stall_threshold
        # A timed pass this long is recorded (a hold of the loop); probed loops see only
        # stalls of `stall_threshold`.
        self.hold_threshold = min(hold_threshold, stall_threshold)
        self.sample_interval = sample_interval
        self.gil_interval = gil_interval
        self.enabled = enabled
        self.time_passes = time_passes  # time a selector loop's passes (else probe it)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WatchdogOptions:
        """The defaults overridden by the environment; unparsable values are ignored.
        `APISCOPE_WATCHDOG_PASSES=0` probes every loop instead of timing its passes."""
        environ = os.environ if environ is None else environ
        options = cls(enabled=environ.get("APISCOPE_WATCHDOG", "1") != "0",
                      time_passes=environ.get(ENV_PREFIX + "PASSES", "1") != "0")
        for name in ("loop_interval", "stall_threshold", "sample_interval", "gil_interval",
                     "hold_threshold"):
            raw = environ.get(ENV_PREFIX + name.upper() + "_MS")
            try:
                value = float(raw) / 1000.0 if raw is not None else None
            except ValueError:
                value = None
            if value is not None and value >= 0:
                setattr(options, name, value)
        options.hold_threshold = min(options.hold_threshold, options.stall_threshold)
        return options


class Watchdogs:
    """The agent's watchdogs: a GIL watchdog, and a loop watchdog for each loop it serves."""

    def __init__(self, options: WatchdogOptions | None = None) -> None:
        self.options = options if options is not None else WatchdogOptions.from_env()
        self._lock = threading.Lock()
        self._loops: dict[int, LoopWatchdog] = {}  # by id(loop)
        self._gil: GilWatchdog | None = None
        self._meter = GilMeter()
        # The loop met last: the middleware calls `see_loop` only when its request's loop is
        # another one (one comparison per request).
        self.last_loop: asyncio.AbstractEventLoop | None = None
        self._retired_cpu = 0.0  # CPU seconds of loop watchdogs whose loop was closed
        self.follow_share = FOLLOW_CPU_SHARE  # each loop watchdog's, as the collector says
        self._running = False
        self.errors = 0
        self.gc_pauses = GcPauses()  # timed once a loop stalled, until the watchdogs stop
        # Names the route of a request from its scope (`LoopWatchdog.name_route`; the
        # middleware gives it, `name_routes_with`).
        self.name_route: Callable[[dict[str, Any]], str | None] | None = None

    def see_loop(self) -> None:
        """Called on the loop serving a request, by the middleware when that loop is not
        `last_loop`: gives the loop a watchdog once. Never raises."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio (an app served on trio): no loop to watch
            return
        if loop is self.last_loop:
            return
        try:
            self._watch(loop)
        except Exception:  # no thread to be had: the request goes on unwatched
            self.errors += 1

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        self.last_loop = loop
        with self._lock:
            if id(loop) in self._loops:
                return
            dog = LoopWatchdog(loop, threading.get_ident(), threading.get_native_id(),
                               self.options, self._meter if has_gil() else None)
            dog.gil_futex = self._gil_futex
            dog.gc_pauses = self.gc_pauses
            dog.name_route = self.name_route
            if self.follow_share != FOLLOW_CPU_SHARE:
                dog.set_follow_share(self.follow_share)
            self._loops[id(loop)] = dog
            if self._running and self.options.loop_interval > 0 and self.options.enabled:
                dog.start()

    def name_routes_with(self, name: Callable[[dict[str, Any]], str | None]) -> None:
        """How the loop watchdogs name the route of the request a stall served."""
        with self._lock:
            self.name_route = name
            for dog in self._loops.values():
                dog.name_route = name

    def set_follow_share(self, share: float) -> None:
        """The share of a core each loop watchdog may spend following long passes (their
        stacks, the kernel's looks), as the collector's overhead budget allows: following is
        most of what the watchdogs cost while a loop is held now and then (0.5-1 % of a core
        at the default share), and a budget spent elsewhere gives it less. Raises ValueError
        for a share outside 0..MAX_FOLLOW_SHARE."""
        if isinstance(share, bool) or not isinstance(share, (int, float)) \
                or not 0.0 <= share <= MAX_FOLLOW_SHARE:
            raise ValueError(f"watch_share must be a number from 0 to {MAX_FOLLOW_SHARE},"
                             f" not {share!r}")
        with self._lock:
            self.follow_share = float(share)
            dogs = list(self._loops.values())
        for dog in dogs:
            dog.set_follow_share(float(share))

    def start(self) -> None:
        """Start the watchdogs (loops met so far included); a no-op when running."""
        with self._lock:
            if self._running or not self.options.enabled:
                return
            self._running = True
            try:
                if self.options.gil_interval > 0 and has_gil():
                    self._gil = GilWatchdog(self._meter, self.options.gil_interval,
                                            self._loops_measuring)
                    self._gil.start()
                if self.options.loop_interval > 0:
                    for dog in self._loops.values():
                        if not dog.alive:
                            dog.start()
            except Exception:  # no threads left to start: measure nothing, serve on
                self.errors += 1

    def stop(self) -> None:
        """Stop every watchdog thread and wait for it: none is left behind."""
        with self._lock:
            self._running = False
            dogs, self._loops = list(self._loops.values()), {}
            gil, self._gil = self._gil, None
            self.last_loop = None
        for dog in dogs:
            dog.stop()
        if gil is not None:
            gil.stop()
        # Once no watchdog runs: one ending its last stall may install it once more.
        self.gc_pauses.remove()

    def after_fork(self) -> None:
        """In a forked child: the parent's threads and loops are not ours."""
        for dog in self._loops.values():
            dog.forget_files()
        if self._gil is not None and self._gil.cpu.stat is not None:
            self._gil.cpu.stat.close()
        self._lock = threading.Lock()
        self._loops, self._gil, self._meter = {}, None, GilMeter()
        self.last_loop, self._running = None, False

    def pull(self) -> dict[str, Any]:
        """`{"loops": [lag...], "stalls": [...], "tasks": [[file, function, route, tasks]...]
        (see `LoopWatchdog._note_task`), "gil": {...} | None, "sleeps": [[file, line,
        asleep, running]...] (see `threadlooks`), "gil_futex": [system call, address] | None,
        "gil_holder": [GIL state address, ident offset] | None, "idents": [[ident, tid]...],
        "cpu_seconds", "errors"}`"""
        with self._lock:
            dogs = list(self._loops.values())
            ended = [key for key, dog in self._loops.items() if dog.ended]
            gil = self._gil
        loops, stalls, tasks = [], [], []
        for dog in dogs:
            lag, dog_stalls = dog.drain()
            if lag is not None:
                loops.append(lag)
            stalls.extend(dog_stalls)
            tasks.extend(dog.drain_tasks())
        watchers: list[Any] = [*dogs, *([gil] if gil is not None else [])]
        cpu = self._retired_cpu + sum(w.cpu.seconds() for w in watchers)
        errors = self.errors + sum(w.errors for w in watchers) + sum(
            dog.passes.errors for dog in dogs if dog.passes is not None) + (
            gil.looks.errors if gil is not None else 0)
        with self._lock:  # a closed loop's watchdog has been drained for the last time
            for key in ended:
                ended_dog = self._loops.pop(key, None)
                if ended_dog is not None:
                    ended_dog.stop()  # joins at once; closes the loop thread's schedstat
                    self._retired_cpu += ended_dog.cpu.seconds()
                    self.errors += ended_dog.errors
        futex = gil.futex if gil is not None else None
        holder = gil.holder if gil is not None else None
        return {"loops": loops, "stalls": stalls, "tasks": tasks,
                "gil": self._meter.drain() if gil is not None else None,
                "sleeps": gil.looks.drain() if gil is not None else [],
                "gil_futex": list(futex) if futex is not None else None,
                # Which thread holds the GIL, told from outside (`gil_holder_layout`).
                "gil_holder": list(holder) if holder is not None else None,
                "idents": thread_idents() if holder is not None else [],
                "cpu_seconds": round(cpu, 6), "errors": errors}

    def loops(self) -> list[asyncio.AbstractEventLoop]:
        """The event loops requests were served on (each met by the middleware), open now."""
        with self._lock:
            dogs = list(self._loops.values())
        return [dog.loop for dog in dogs if not dog.loop.is_closed()]

    def _gil_futex(self) -> tuple[int, int] | None:
        gil = self._gil
        return gil.futex if gil is not None else None

    def _loops_measuring(self) -> bool:
        return any(dog.alive for dog in list(self._loops.values()))

    @property
    def threads(self) -> list[threading.Thread]:
        """The watchdog threads alive now (for tests and diagnostics)."""
        names = ("apiscope-loop-watchdog", "apiscope-gil-watchdog")
        return [t for t in threading.enumerate() if t.name in names]


__all__ = ["LoopWatchdog", "WatchdogOptions", "Watchdogs"]
