"""The loop watchdog: one event loop's lag and stalls, probed from a daemon thread.

`LoopWatchdog` is the per-loop half of the agent's watchdogs (see `watchdog` for the whole set,
its options and what it costs): it posts a probe onto the loop, times it, and samples the loop
thread's stack while a probe is late. The helpers here read frames the way py-spy names them,
so that a stall's stack matches the sampler's stacks. Standard library only, relative imports
only, and Python 3.9 compatible (the agent runs inside targets of any supported Python).
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from contextvars import ContextVar
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any

from .background import Background
from .gcpauses import GcPauses
from .gilwatch import GilMeter, WakeClock, has_gil
from .looppass import PassClock
from .profiling import Allowance
from .schedstat import SchedStat, SyscallState, ThreadCpu, percentile

if TYPE_CHECKING:  # the set imports this module; the options are only read here
    from .watchdog import WatchdogOptions

MAX_STALLS = 500  # kept between pulls; a collector that stops pulling loses the oldest
MAX_LAGS = 20_000
MAX_DEPTH = 256  # frames per stack: deeper stacks keep their root part
MAX_DISTINCT_STACKS = 64  # per stall: a stall moving through many stacks keeps the first ones
SPARSER_EVERY = 5  # stack samples of one stall before its sampling interval doubles
ALERT_SECONDS = 10.0  # after a stall, check at the stall threshold for this long
# While alerted, the checks come at this share of the stall threshold, so that a computation
# holding the GIL, which the watchdog waits for up to a switch interval to get, is still
# sampled while it lasts.
CATCH_SHARE = 0.8
# A pass this share of the hold threshold old at a check is followed: its stack sampled, and
# looked at again after `SECOND_LOOK` to tell one task holding the loop from many callbacks.
FOLLOW_SHARE = 0.4
SECOND_LOOK = 0.002
STUCK_CPU_NS = 200_000  # CPU the loop thread used between two looks below which it did not run
# What the looks at a followed pass saw (the stall's "held"):
ONE_TASK = "one"  # one task at the last two looks or more: that task held the loop
MANY = "many"  # different tasks or callbacks: the loop was busy with many things at once
GLIMPSE = "glimpse"  # one look only (or no task at any look): who held it is not proven
GC = "gc"  # the garbage collector ran for half of the pass or more (see `gcpauses`)
# The looks kept at one probed stall (a loop blocked for good is looked at for as long).
MAX_PROBE_LOOKS = 64
# The functions requests' tasks run that are counted (`LoopWatchdog._note_task`), and routes
# per function.
MAX_TASK_ENTRIES = 256
MAX_TASK_ROUTES = 32
# A pass that began with this many callbacks to run or fewer was held by the one seen (the
# watchdog's own lag probe may be the other).
FEW_CALLBACKS = 2
# A look whose wake-up took the GIL within this share of the switch interval found it free.
GIL_FREE_SHARE = 0.2
# A long pass during which the loop thread waited this share of it or more for a CPU (the
# host busy, the thread preempted mid-pass) is neither followed nor alerts the watchdog: the
# host, not the code, made it long.
QUEUED_SHARE = 0.5
# The CPU that following passes (and sampling late probes) may spend, as a share of one core
# on average, and saved up at most: a hold after a quiet while is followed whole, and a host
# so busy that every pass looks long (the loop thread preempted mid-pass) costs no more than
# this. Passes not followed for want of it are still recorded at their exact lengths.
FOLLOW_CPU_SHARE = 0.005
FOLLOW_CPU_BURST = 0.05
MAX_FOLLOW_SHARE = 0.05  # the most a collector may give (`Watchdogs.set_follow_share`)

Frame = tuple[str, str, int]  # (function as py-spy names it, absolute file, line)
Stack = tuple[Frame, ...]
Scope = dict[str, Any]
# One look at the loop thread: the task stepping, its stack, the scope of the request it serves.
# The task itself, not its id: the looks hold it alive while its pass is judged, for a finished
# task's memory goes to the next one created (a crowd of requests' tasks, one after another,
# reuse the same few addresses), and two tasks of one id would be taken for one task held.
Look = tuple["asyncio.Task[Any] | None", "Stack | None", "Scope | None"]  # no `X | None` < 3.10


def frame_stack(frame: FrameType | None) -> Stack:
    """The stack ending at `frame`, root first, named as py-spy names frames (qualname)."""
    leaf_first: list[Frame] = []
    seen = _FRAMES
    while frame is not None and len(leaf_first) < MAX_DEPTH * 4:
        code = frame.f_code
        if _BY_OFFSET:
            key = (code, frame.f_lasti)
            named = seen.get(key)
            if named is None:
                named = _remember(key, code, frame.f_lineno)
        else:
            named = _frame(code, frame.f_lineno)
        leaf_first.append(named)
        frame = frame.f_back
    leaf_first.reverse()
    return tuple(leaf_first[:MAX_DEPTH])


# A frame's line is worked out from its code's line table at each ask (Python 3.11 on): the
# look at a server's loop, some forty frames deep in the same few dozen functions, spent most
# of its time there. So each (code, instruction offset) seen is named once; older Pythons keep
# the line number in the frame.
_BY_OFFSET = sys.version_info >= (3, 11)
_FRAMES: dict[tuple[CodeType, int], Frame] = {}
MAX_FRAMES = 8192  # then forgotten all at once (code made at run time must not pile up)


def _frame(code: CodeType, line: int | None) -> Frame:
    filename = code.co_filename
    if not filename.startswith("<") and not os.path.isabs(filename):
        filename = os.path.abspath(filename)
    return (getattr(code, "co_qualname", code.co_name), filename, line or 0)


def _remember(key: tuple[CodeType, int], code: CodeType, line: int | None) -> Frame:
    named = _frame(code, line)
    if len(_FRAMES) >= MAX_FRAMES:
        _FRAMES.clear()
    _FRAMES[key] = named
    return named


# Code objects that have a local named `scope` (an ASGI app's call, a middleware's): only their
# frames' locals are read for the request a look found running (`serving_scope`).
_HAS_SCOPE: dict[CodeType, bool] = {}


# The HTTP request a task serves, set by the agent's middleware for the request's task (its
# `_Request`): a task the request starts (`asyncio.gather`, `create_task`, a task group) copies
# it. Its `scope` is the request's ASGI scope while it is served (`served_scope`), None once it
# has ended: contexts copied during the request outlive it. uvicorn's keep-alive timer, set as
# the response ends and cancelled by the connection's next request, stays in the loop's heap
# with its context for seconds. A scope held there kept each request's objects (FastAPI's exit
# stacks, the framework's dicts and lists) alive long after it ended, and the garbage collector,
# which a bare server under load never ran, ran 40 times a second to walk them: 6.7 us of a
# request's 250 us of CPU.
SERVING: ContextVar[Any] = ContextVar("apiscope_serving", default=None)


def served_scope(served: Any) -> dict[str, Any] | None:
    """The scope of the request a `SERVING` value stands for, while it is served."""
    scope = getattr(served, "scope", None)
    return scope if isinstance(scope, dict) else None


def serving_scope(frame: FrameType | None, task: Any = None) -> dict[str, Any] | None:
    """The ASGI scope of the HTTP request whose code runs at `frame`: the innermost frame up
    the stack holding one (a framework's app or middleware between the server and the
    handler); else the scope in the context of `task`, the task stepping, when it is a task a
    request started (its stack shows only its own coroutine: `gather`'s children, a fetch run
    in a task of its own); or None (a callback of the server's own, a task of no request's).
    The task's context is readable on Python 3.12 and newer (`Task.get_context`)."""
    found = _frame_scope(frame)
    if found is None and task is not None:
        get_context = getattr(task, "get_context", None)
        if get_context is not None:
            try:
                return served_scope(get_context().get(SERVING))
            except Exception:
                return None
    return found


def _frame_scope(frame: FrameType | None) -> dict[str, Any] | None:
    depth = 0
    while frame is not None and depth < MAX_DEPTH:
        code = frame.f_code
        has = _HAS_SCOPE.get(code)
        if has is None:
            if len(_HAS_SCOPE) >= MAX_FRAMES:
                _HAS_SCOPE.clear()
            has = _HAS_SCOPE[code] = "scope" in code.co_varnames
        if has:
            scope = frame.f_locals.get("scope")
            if isinstance(scope, dict) and scope.get("type") == "http":
                return scope
        frame = frame.f_back
        depth += 1
    return None


def _loop_frame(ident: int) -> FrameType | None:
    """The frame the loop thread runs now. Where that is the agent's own collector callback
    (`GcPauses`), the frame that allocated: a look takes the GIL where the loop thread next
    runs Python, so a hold in C code that allocates (a validator building objects) is seen in
    that callback far more often than it runs."""
    frame = sys._current_frames().get(ident)
    if frame is not None and frame.f_code is _GC_CALLBACK:
        return frame.f_back
    return frame


_GC_CALLBACK = GcPauses._callback.__code__


def _loop_is_parked(frame: FrameType | None) -> bool:
    """True when the loop thread waits for events: asyncio's `_run_once` inside the selector's
    `select`, or a C loop (uvloop) below `asyncio.run`'s Python frame, with nothing above it."""
    if frame is None:
        return False
    code = frame.f_code
    filename = code.co_filename.replace("\\", "/")
    if code.co_name == "select" and filename.endswith("/selectors.py"):
        parent = frame.f_back
        return parent is not None and parent.f_code.co_name == "_run_once"
    return filename.endswith("/asyncio/runners.py") and code.co_name == "run"


class LoopWatchdog(Background):
    """Probes one event loop from a daemon thread (build it on the loop thread); `drain()`
    hands over what it measured."""

    thread_name = "apiscope-loop-watchdog"

    def __init__(self, loop: asyncio.AbstractEventLoop, ident: int, native_id: int,
                 options: WatchdogOptions, meter: GilMeter | None = None) -> None:
        super().__init__()
        self.loop = loop
        self.ident = ident  # threading ident of the loop thread (sys._current_frames' key)
        self.native_id = native_id
        self.options = options
        self.errors = 0
        self.cpu = ThreadCpu()
        self._loop_stat = SchedStat.open(native_id)
        # What the loop thread waits on during a stall (a sleep, I/O, a lock), by the kernel.
        self._loop_syscall = SyscallState(native_id)
        self._activity: Counter[str] = Counter()
        # The loop thread's schedstat at the last look (or last time seen running): a "cpu"
        # look after more run-queue time than CPU time was a thread ready to run that the host
        # had no CPU for ("queue"), not code running.
        self._look_mark: tuple[int, int] | None = None
        self._last_look: str | None = None  # what the kernel said at the last look
        # The last look found the loop thread waiting for the GIL with next to no CPU used
        # since the look before: it had not run in between, and the task it steps is the one
        # the look before saw, whoever held the loop (see `_evidence`).
        self._stuck_on_gil = False
        self._clock = WakeClock(meter if meter is not None else GilMeter())
        self._has_gil = has_gil()  # a free-threaded build's threads all run without it
        self._lock = threading.Lock()
        self._lags: deque[float] = deque(maxlen=MAX_LAGS)  # seconds
        self._stalls: deque[dict[str, Any]] = deque(maxlen=MAX_STALLS)
        self._epoch_offset = time.time() - time.perf_counter()
        self.gc_pauses: GcPauses | None = None  # the collector's passes (`Watchdogs` sets it)
        self._ran: tuple[float, int] | None = None  # the probe's (perf_counter, thread CPU ns)
        # Built on the loop thread (see `Watchdogs.see_loop`): the loop is running, now.
        self._seen_at = time.perf_counter()  # when the loop was last seen running
        self._seen_cpu_ns: int | None = time.thread_time_ns()  # the loop thread's CPU then
        self._alert_until = 0.0  # perf_counter time until which probes are watched closely
        # A selector loop's passes are timed in the loop (see `looppass`); other loops probed.
        self.passes: PassClock | None = None
        self._cpu_clock = _thread_cpu_clock(ident)  # the loop thread's CPU clock, if readable
        self._next_lag = 0.0  # perf_counter time of the next lag measurement (passes mode)
        self._next_follow = 0.0  # perf_counter time from which a pass may be followed again
        # This thread's CPU for following passes (see FOLLOW_CPU_SHARE), in seconds: the
        # following itself, and the close checks while alerted (`_charge`).
        self._follow_cpu = Allowance(FOLLOW_CPU_SHARE, FOLLOW_CPU_BURST, time.perf_counter)
        self._charged_to = 0.0  # this thread's CPU time up to which the allowance paid
        self.unfollowed = 0  # checks that left a long pass unfollowed: the budget was spent
        self._queued_at_check: int | None = None  # the loop thread's run-queue ns, last check
        # Per function a task a request started runs ((file, name as py-spy names it)), the
        # routes of the requests that started them, counted (see `_note_task`).
        self._tasks: dict[tuple[str, str], dict[str, int]] = {}
        # The GIL's futex once the GIL watchdog has learnt it (looks on it say "gil").
        self.gil_futex: Callable[[], tuple[int, int] | None] = lambda: None
        # "METHOD TEMPLATE" of a request being served, from its scope, once routed (the
        # middleware's `served_route`): a stall held in a framework's own work for a request
        # (validating, serialising) is that route's, though no line of the app is running.
        self.name_route: Callable[[Scope], str | None] | None = None

    def start(self) -> None:
        if self.options.time_passes:
            self.passes = PassClock.install(self.loop, self.options.hold_threshold)
        self._set_task_factory()
        super().start()

    def stop(self) -> None:
        super().stop()
        self._unset_task_factory()
        if self.passes is not None:
            self.passes.uninstall()
        if self._loop_stat is not None:
            self._loop_stat.close()
            self._loop_stat = None
        self._loop_syscall.close()

    def forget_files(self) -> None:
        """Close the files of threads that are not in this (forked) process, and give the
        loop its selector back, and its way of making tasks."""
        self._unset_task_factory()
        if self.passes is not None:
            self.passes.uninstall()
        for stat in (self._loop_stat, self.cpu.stat):
            if stat is not None:
                stat.close()
        self._loop_stat = None
        self._loop_syscall.close()

    def drain(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """The lag summary since the last drain (None without probes) and the stalls."""
        with self._lock:
            lags = sorted(self._lags)
            self._lags.clear()
            stalls = list(self._stalls)
            self._stalls.clear()
        lag = None
        if lags:
            lag = {"tid": self.native_id, "probes": len(lags),
                   "p50_ms": round(percentile(lags, 0.50) * 1000.0, 3),
                   "p99_ms": round(percentile(lags, 0.99) * 1000.0, 3),
                   "max_ms": round(lags[-1] * 1000.0, 3)}
        return lag, stalls

    # -- the loop side: as little as possible ----------------------------------------------

    def _probe(self) -> None:
        self._ran = (time.perf_counter(), time.thread_time_ns())

    def _lag_probe(self, posted: float) -> None:
        lag = time.perf_counter() - posted
        with self._lock:
            self._lags.append(lag)

    # -- the watchdog thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            self.cpu.bind()
            self._clock.bind()
        except Exception:
            self.errors += 1
        self._charged_to = time.thread_time()
        while not self._stop.is_set():
            # Checking closely (see `_check_period`): the allowance pays for this cycle.
            close = time.perf_counter() < self._alert_until and self._follow_cpu.balance > 0
            try:
                if not self._cycle():
                    break
            except Exception:  # never into the app; keep watching after a pause
                self.errors += 1
                if self._stop.wait(self.options.loop_interval):
                    break
            if close:
                self._charge()
            else:  # the checks at the loop interval: the watchdog's base cost, not charged
                self._charged_to = time.thread_time()
            self.cpu.report()
        self._clock.close()
        self.cpu.close()

    def _charge(self) -> None:
        """Pay from the following's allowance this thread's CPU since it was last paid for.

        Following a pass, and checking at every pass while alerted (a wake-up as each becomes
        old enough to follow), are one cost: on a busy host whose loop waited for the GIL
        behind a pool of threads, each pass long enough to alert the next, the checks alone
        took 16 ms of CPU a second (1,100 wake-ups) while the following kept to its 5 ms.
        Charged together, the whole stays within the share the collector's budget sets."""
        now = time.thread_time()
        self._follow_cpu.spend(now - self._charged_to)
        self._charged_to = now

    def _sleep(self, seconds: float) -> bool:
        """Sleep, measuring the GIL wait on waking; False once stopped."""
        return not self._clock.wait(self._stop, seconds)

    def _cycle(self) -> bool:
        """One check of the loop; False once the loop is closed or the watchdog stopped."""
        if self.passes is not None:
            return self._cycle_passes(self.passes)
        return self._cycle_probes()

    # -- a selector loop: its passes are timed in the loop ---------------------------------

    def _cycle_passes(self, clock: PassClock) -> bool:
        """Follow the pass the loop is in if it may become a hold; otherwise measure the lag
        when due and sleep. Long passes nobody followed are recorded without a stack."""
        if self.loop.is_closed():
            return False
        queued = self._queued_since_check()
        self._unfollowed(clock, queued)
        options = self.options
        now = time.perf_counter()
        follow_at = options.hold_threshold * FOLLOW_SHARE
        alerted = now < self._alert_until
        period = self._check_period(now)
        if clock.parked:
            if now >= self._next_lag:  # a parked loop would run a probe at once: no lag
                self._next_lag = now + options.loop_interval
                self._seen_idle()
            return self._sleep(period)
        start = clock.exit_at
        # Before the loop's first call of the wrapped select (it may be parked in the select
        # it called before the wrapping), the pass it is in is not known: the lag probe below
        # wakes it into the wrapper.
        if now - start >= follow_at and clock.passes and now >= self._next_follow and \
                queued < (now - start) * QUEUED_SHARE:
            balance = self._follow_cpu.refilled()
            if balance > 0:
                if not self._follow(clock, start):
                    return False
                self._charge()
                # At most one pass followed per check: a saturated loop's every pass is long
                # (many requests' callbacks in each), and following them back to back took
                # the server 3-4% of its CPU. The passes not followed are still recorded at
                # their lengths, and shared out like those that ended between two checks.
                followed = time.perf_counter()
                self._next_follow = followed + self._check_period(followed)
                return True
            self.unfollowed += 1  # the budget is spent: this pass is timed only
            # Nothing is followed before the allowance is back above zero: waking for each
            # long pass meanwhile (every 20 ms while alerted) only to let it go cost a
            # wake-up each (40-150 us of CPU on a virtual machine) for nothing.
            rate = self._follow_cpu.rate
            self._next_follow = now + period + (-balance / rate if rate > 0 else math.inf)
        if now >= self._next_lag:
            self._next_lag = now + options.loop_interval
            self.loop.call_soon_threadsafe(self._lag_probe, now)
        if now < self._next_follow:
            return self._sleep(min(self._next_follow, self._next_lag) - now)
        # While alerted (and able to follow), wake as this pass becomes old enough to follow.
        return self._sleep(start + follow_at - now if alerted and self._follow_cpu.balance > 0
                           else period)

    def set_follow_share(self, share: float) -> None:
        """The share of a core that following may spend from now on (its burst scaled alike),
        as the collector's budget allows (see `Watchdogs.set_follow_share`)."""
        allowance = self._follow_cpu
        allowance.refilled()  # what accrued so far, at the old rate
        allowance.rate = share
        allowance.capacity = FOLLOW_CPU_BURST * share / FOLLOW_CPU_SHARE
        allowance.balance = min(allowance.balance, allowance.capacity)
        self._next_follow = 0.0  # due again as the new allowance says (none: never)

    def _check_period(self, now: float) -> float:
        """Seconds between two checks: the loop interval, or while alerted a share of the
        stall threshold."""
        options = self.options
        # Alerted with the following's allowance spent, nothing could be followed: the
        # checks come at the loop interval until it refills.
        if now < self._alert_until and self._follow_cpu.balance > 0:
            return min(options.loop_interval, options.stall_threshold * CATCH_SHARE)
        return options.loop_interval

    def _follow(self, clock: PassClock, start: float) -> bool:
        """Look at the loop (its stack, its task, the kernel's word) until the pass that began
        at `start` ends; record it if it lasted the hold threshold. False once stopped.

        One task seen at two looks or more in a row is one step of that task running all the
        while (a task steps at most once in a pass), so it, not the many short callbacks of a
        busy loop, held the loop; a pass that began with one or two callbacks to run was held
        by the task the looks saw most (see `_held`). Its stack is the one recorded."""
        self._activity.clear()
        looks: list[Look] = []
        followed_at, cpu_then = time.perf_counter(), self._loop_cpu_ns()
        self._queued_since_check()  # the mark from which the wait for a CPU below is counted
        wait = min(SECOND_LOOK, self.options.sample_interval)
        while clock.exit_at == start and not clock.parked:
            look = self._sample()
            # Kept only if the pass still runs after it: the loop may have ended it meanwhile
            # (the pass is over once the loop is back in the wrapped select). A look at a
            # thread that mostly waited for a CPU since the last one is no evidence of who
            # held the loop: on a busy host a quick step preempted for a few milliseconds
            # would be seen twice and taken for a hold.
            if clock.exit_at == start and not clock.parked and not _between_passes(look[1]) \
                    and self._evidence():
                looks.append(look)
            backoff = 2 ** min(len(looks) // SPARSER_EVERY, 3)
            if not self._sleep(wait * backoff):
                return False
            wait = self.options.sample_interval
        while clock.long:
            pass_start, seconds, cpu_end, callbacks = clock.long.popleft()
            if pass_start != start:  # an earlier long pass, ended before it was seen
                self._add_stall(pass_start, seconds, None, {}, Counter(), None)
                continue
            cpu_ms = None
            observed = pass_start + seconds - followed_at
            if cpu_then is not None and observed > 0.002:
                # The CPU from the first sample to the end, scaled to the whole pass.
                cpu_ms = min(seconds, (cpu_end - cpu_then) / 1e9 * seconds / observed) * 1000
            held, stacks, scope = _held(looks, callbacks)
            self._add_stall(pass_start, seconds, cpu_ms, dict(self._activity), stacks, held,
                            scope)
            # A long pass of many callbacks is a crowded loop, not a hold to catch in the
            # act: on a saturated server every pass may be one; nor is one the host's lack
            # of CPU stretched.
            if held == ONE_TASK or (seconds >= self.options.stall_threshold and held != MANY
                                    and self._queued_since_check() < observed * QUEUED_SHARE):
                self._alert_until = time.perf_counter() + ALERT_SECONDS
            break
        self._activity.clear()
        return True

    def _unfollowed(self, clock: PassClock, queued: float) -> None:
        """Record the long passes that ended between two checks (no stack was sampled); one
        as long as a stall that began with few callbacks to run (not a crowded loop) has the
        next passes followed closely, unless the loop thread waited for a CPU (`queued`
        seconds since the last check) for much of it."""
        while clock.long:
            pass_start, seconds, _, callbacks = clock.long.popleft()
            self._add_stall(pass_start, seconds, None, {}, Counter(), None)
            if seconds >= self.options.stall_threshold and callbacks <= FEW_CALLBACKS and \
                    queued < seconds * QUEUED_SHARE:
                self._alert_until = time.perf_counter() + ALERT_SECONDS

    def _queued_since_check(self) -> float:
        """Seconds the loop thread was ready to run with no CPU for it since the last check."""
        stat = self._loop_stat
        read = stat.read() if stat is not None else None
        if read is None:
            return 0.0
        last, self._queued_at_check = self._queued_at_check, read[1]
        return (read[1] - last) / 1e9 if last is not None else 0.0

    def _add_stall(self, start: float, seconds: float, cpu_ms: float | None,
                   activity: dict[str, int], stacks: Counter[Stack],
                   held: str | None, scope: Scope | None = None) -> None:
        frames = [list(f) for f in stacks.most_common(1)[0][0]] if stacks else []
        pauses = self.gc_pauses
        if pauses is not None:
            if pauses.covered(start, start + seconds) >= seconds / 2:
                held = GC  # the loop waited for the collector, wherever the looks found it
            elif held != MANY and not self._stop.is_set():
                pauses.install()  # from the first hold on: a loop that never stalls pays none
        stall = {"tid": self.native_id, "start": start + self._epoch_offset,
                 "duration_ms": round(seconds * 1000.0, 3), "frames": frames,
                 "cpu_ms": round(cpu_ms, 3) if cpu_ms is not None else None,
                 "activity": activity, "held": held}
        route = self._route(scope)
        if route is not None:
            stall["route"] = route
        with self._lock:
            self._stalls.append(stall)

    def _make_task(self, loop: asyncio.AbstractEventLoop, coro: Any,
                   **kwargs: Any) -> asyncio.Task[Any]:
        """The loop's task factory while watched (`start`): the task the loop would make, and
        the request that made it noted (`_note_task`)."""
        task = asyncio.Task(coro, loop=loop, **kwargs)
        served = SERVING.get()
        if served is not None:
            try:
                self._note_task(coro, served)
            except Exception:
                self.errors += 1
        return task

    def _note_task(self, coro: Any, served: Any) -> None:
        """Count a task started by a request (`create_task`, `gather`) under the function it
        runs, with the request's route.

        py-spy's stack of such a task holds no frame of the request's handler: its root is
        that function. The analysis charges the CPU of those stacks to the routes whose
        requests started them, by these counts (a LiteLLM proxy runs each completion in a task
        of its own: a third of its CPU, no route's before). The server's own task for each
        request is made outside of any request, and is not counted."""
        scope = served_scope(served)
        code = getattr(coro, "cr_code", None)
        if scope is None or code is None:
            return
        route = self._route(scope)
        if route is None:
            return
        name, filename, _ = _frame(code, 0)
        key = (filename, name)
        with self._lock:
            routes = self._tasks.get(key)
            if routes is None:
                if len(self._tasks) >= MAX_TASK_ENTRIES:
                    return
                routes = self._tasks[key] = {}
            if route in routes or len(routes) < MAX_TASK_ROUTES:
                routes[route] = routes.get(route, 0) + 1

    def _set_task_factory(self) -> None:
        """Make the loop's tasks with `_make_task`, unless the app gave it a factory of its
        own (then its tasks are not counted)."""
        try:
            if self.loop.get_task_factory() is None:
                self.loop.set_task_factory(self._make_task)
        except Exception:
            self.errors += 1

    def _unset_task_factory(self) -> None:
        """Give the loop its own way of making tasks back (unless a factory replaced ours)."""
        try:
            if self.loop.get_task_factory() == self._make_task:
                self.loop.set_task_factory(None)
        except Exception:
            self.errors += 1

    def drain_tasks(self) -> list[list[Any]]:
        """`[file, function, route, tasks]` for each function requests' tasks ran and route,
        since the last drain (`_note_task`)."""
        with self._lock:
            tasks, self._tasks = self._tasks, {}
        return [[file, name, route, n] for (file, name), routes in tasks.items()
                for route, n in routes.items()]

    def _route(self, scope: Scope | None) -> str | None:
        name = self.name_route
        if scope is None or name is None:
            return None
        try:
            return name(scope)
        except Exception:
            self.errors += 1
            return None

    def _loop_cpu_ns(self) -> int | None:
        """The loop thread's CPU time now: its CPU clock, else its schedstat."""
        if self._cpu_clock is not None:
            try:
                return time.clock_gettime_ns(self._cpu_clock)
            except OSError:
                self._cpu_clock = None
        read = self._loop_stat.read() if self._loop_stat is not None else None
        return read[0] if read is not None else None

    # -- any other loop: probed -------------------------------------------------------------

    def _cycle_probes(self) -> bool:
        loop = self.loop
        if loop.is_closed():
            return False
        # One wake-up per check. For a while after a late probe the checks come as often as
        # the stall threshold, so that a short stall is seen (and its stack sampled) while it
        # lasts and its start is known closely; otherwise every `loop_interval`. The close
        # checks are paid from the following's allowance (`_run`), as a timed loop's are:
        # with it spent they wait for it at the loop interval. A server whose loop was held
        # now and then (an HTTP client built per call, on uvloop) was alerted all along, and
        # its watchdog checked 40 times a second whatever the budget: 11-15 ms of CPU a second.
        period = self.options.loop_interval
        if time.perf_counter() < self._alert_until and self._follow_cpu.balance > 0:
            period = min(period, self.options.stall_threshold)
        frame = _loop_frame(self.ident)
        if not loop.is_running() or _loop_is_parked(frame):
            self._seen_idle()
            return self._sleep(period)
        self._ran = None
        posted = time.perf_counter()
        loop.call_soon_threadsafe(self._probe)
        # What the loop runs now: if the probe turns out late, this is the first look at the
        # stall (a stall shorter than the wait below gets no other).
        task = _current_task(loop)
        looks: list[Look] = [(task, frame_stack(frame) if frame is not None else None,
                              serving_scope(frame, task))]
        del frame
        self._look()
        if not self._evidence():
            looks.clear()  # a thread waiting for a CPU: no evidence of who holds the loop
        ran = self._await_probe(posted, period, looks)
        if ran is None:
            return False
        self._record(posted, ran, looks)
        remaining = period - (time.perf_counter() - posted)
        return remaining <= 0 or self._sleep(remaining)

    def _seen_idle(self) -> None:
        now = time.perf_counter()
        stat = self._loop_stat
        read = stat.read() if stat is not None else None
        with self._lock:
            self._lags.append(0.0)
        self._seen_at, self._seen_cpu_ns = now, (read[0] if read is not None else None)
        self._look_mark = read

    def _await_probe(self, posted: float, wait: float,
                     looks: list[Look]) -> tuple[float, int] | None:
        """Wait for the probe to run, looking at the loop (its task, its stack) once it is a
        stall; the looks are added to `looks`."""
        options = self.options
        sampled = 0
        # A second look soon after the first, if the probe still waits: the same task at both
        # is one step running on, different ones a loop stepping through many (see `_record`).
        second, wait = True, min(SECOND_LOOK, wait)
        while True:
            if not self._sleep(wait):
                return None
            ran = self._ran
            if ran is not None:
                return ran
            outstanding = time.perf_counter() - posted
            if second:
                second = False
                look = self._sample()
                if self._evidence():
                    looks.append(look)
                wait = max(0.0, options.stall_threshold - outstanding)
            elif outstanding >= options.stall_threshold:
                if self._follow_cpu.refilled() > 0:  # else timed only: the budget is spent
                    look = self._sample()
                    sampled += 1
                    # As when a pass is followed: a look at a thread that mostly waited for a
                    # CPU since the last one is no evidence of who held the loop.
                    if self._evidence() and len(looks) < MAX_PROBE_LOOKS:
                        looks.append(look)
                    self._charge()
                # A long stall is sampled ever more sparsely (every SPARSER_EVERY samples the
                # interval doubles): its stack is known by then, and a loop blocked for good
                # must not have a 100 Hz sampler inside it.
                backoff = 2 ** min(sampled // SPARSER_EVERY, 3)
                wait = options.sample_interval * backoff
            else:
                wait = options.stall_threshold - outstanding

    def _look(self) -> None:
        """What the kernel says the loop thread is doing now (kept if this becomes a stall)."""
        asked = time.perf_counter()
        activity = self._loop_syscall.read(self.gil_futex())  # lets the GIL go while it reads
        took = time.perf_counter() - asked
        stat = self._loop_stat
        read = stat.read() if stat is not None else None
        mark, self._look_mark = self._look_mark, read
        self._stuck_on_gil = activity == "gil" and read is not None and mark is not None and \
            read[0] - mark[0] < STUCK_CPU_NS
        if activity == "cpu" and read is not None and mark is not None and \
                read[1] - mark[1] > read[0] - mark[0]:
            activity = "queue"
        elif activity == "cpu" and self._gil_free(took):
            activity = "nogil"
        self._last_look = activity
        if activity is not None:
            self._activity[activity] += 1

    def _evidence(self) -> bool:
        """Whether the last look tells who holds the loop: not when the loop thread mostly
        waited for a CPU since the look before (on a busy host a quick step preempted for a
        few milliseconds is seen twice), nor when it waited for the GIL without running since
        then (a look that lets the GIL go, or takes it back, before the loop thread does sees
        the same quick step again)."""
        return self._last_look != "queue" and not self._stuck_on_gil

    def _gil_free(self, read_seconds: float) -> bool:
        """Whether this thread took the GIL at once as it woke for this look, and again after
        reading the kernel's word (which lets the GIL go): the loop thread, running, did not
        hold it all along (C code that released it: hashing, compression). Python holding
        the GIL gives it up only when asked, a switch interval later; Python between two
        quick system calls takes it back while the read runs."""
        wait = self._clock.last_wait
        prompt = GIL_FREE_SHARE * sys.getswitchinterval()
        return wait is not None and self._has_gil and wait < prompt and read_seconds < prompt

    def _sample(self) -> Look:
        """One look at the loop thread: the task stepping on the loop, its stack, and the
        scope of the request it serves."""
        self._look()
        task = _current_task(self.loop)
        frame = _loop_frame(self.ident)
        if frame is None:
            return task, None, None
        return task, frame_stack(frame), serving_scope(frame, task)

    def _record(self, posted: float, ran: tuple[float, int], looks: list[Look]) -> None:
        ran_at, ran_cpu_ns = ran
        lag = max(0.0, ran_at - posted)
        stall = None
        if lag >= self.options.stall_threshold:
            start = min(self._seen_at, posted)
            cpu_ms = None
            if self._seen_cpu_ns is not None:
                cpu_ms = round(max(0, ran_cpu_ns - self._seen_cpu_ns) / 1e6, 3)
            # The probe waited behind what the loop ran: one task seen at the last two looks
            # or more held it; different tasks at two looks were a loop busy with many (a
            # saturated uvloop runs many requests' steps before the probe: who was seen at
            # one look is no holder). A loop's pass is not timed here, so how many callbacks
            # it began with is unknown; a look with no task stepping saw the loop between two
            # steps (the held one's end, the probe about to run) and is no evidence either way.
            stepping = [look for look in looks if look[0] is not None] or looks
            held, stacks, scope = _held(stepping, FEW_CALLBACKS + 1)
            frames = [list(f) for f in stacks.most_common(1)[0][0]] if stacks else []
            stall = {"tid": self.native_id, "start": start + self._epoch_offset,
                     "duration_ms": round((ran_at - start) * 1000.0, 3),
                     "frames": frames, "cpu_ms": cpu_ms,
                     "activity": dict(self._activity), "held": held}
            route = self._route(scope)
            if route is not None:
                stall["route"] = route
        self._activity.clear()
        if stall is not None:
            self._alert_until = ran_at + ALERT_SECONDS
        with self._lock:
            self._lags.append(lag)
            if stall is not None:
                self._stalls.append(stall)
        self._seen_at, self._seen_cpu_ns = ran_at, ran_cpu_ns



def _between_passes(stack: Stack | None) -> bool:
    """The loop thread is between two passes: in its (wrapped) selector, or back in
    `run_forever` from the pass that ended, on its way to the next select."""
    if not stack:
        return False
    function, filename, _ = stack[-1]
    path = filename.replace("\\", "/")
    return (function.endswith("select") and path.endswith(("/looppass.py", "/selectors.py"))) \
        or (function.endswith("run_forever") and path.endswith("/asyncio/base_events.py"))


def _current_task(loop: asyncio.AbstractEventLoop) -> asyncio.Task[Any] | None:
    """The task stepping on `loop` now (None: a plain callback, or none), read from another
    thread: asyncio keeps the current task of each loop in a dict."""
    try:
        return asyncio.current_task(loop)
    except Exception:
        return None


def _held(looks: list[Look], callbacks: int) -> tuple[str, Counter[Stack], Scope | None]:
    """Who held a followed pass that began with `callbacks` to run, the stacks that show it
    (see `_follow`), and the scope of the request it served (the one seen most at those
    looks), if any."""
    if not looks:
        return GLIMPSE, Counter(), None
    last = looks[-1][0]
    run = 0
    for task, _, _ in reversed(looks):
        if task is not last:
            break
        run += 1
    if run >= 2 and last is not None:
        held, shown = ONE_TASK, looks[-run:]
    elif callbacks <= FEW_CALLBACKS:
        # One of them held it: the task seen most (the other may have run briefly, after it;
        # a look with no task stepping may be the step's own clean-up once it ended).
        seen = Counter(task for task, _, _ in looks if task is not None)
        most = seen.most_common(1)[0][0] if seen else None  # else no task at any look
        held, shown = ONE_TASK, [look for look in looks if look[0] is most]
    elif len(looks) >= 2 and len({task for task, _, _ in looks}) > 1:
        return MANY, Counter(), None  # no one code to blame
    else:
        held, shown = GLIMPSE, looks
    stacks: Counter[Stack] = Counter()
    scopes: list[Scope] = []
    for _, stack, scope in shown:
        _count_stack(stacks, stack)
        _add_scope(scopes, scope)
    return held, stacks, _most_seen(scopes)


def _add_scope(scopes: list[Scope], scope: Scope | None) -> None:
    if scope is not None and len(scopes) < MAX_DISTINCT_STACKS:
        scopes.append(scope)


def _most_seen(scopes: list[Scope]) -> Scope | None:
    """The scope seen at the most looks (scopes are dicts: counted by identity)."""
    if not scopes:
        return None
    counts = Counter(id(scope) for scope in scopes)
    most = counts.most_common(1)[0][0]
    return next(scope for scope in scopes if id(scope) == most)


def _count_stack(stacks: Counter[Stack], stack: Stack | None) -> None:
    """Count a stack seen; a stall moving through many keeps the first `MAX_DISTINCT_STACKS`."""
    if stack is not None and (stack in stacks or len(stacks) < MAX_DISTINCT_STACKS):
        stacks[stack] += 1


def _thread_cpu_clock(ident: int) -> int | None:
    """The CPU-time clock of the thread `ident` of this process, where the platform has one."""
    get = getattr(time, "pthread_getcpuclockid", None)
    if get is None:
        return None
    try:
        clock = int(get(ident))
        time.clock_gettime_ns(clock)
    except (OSError, OverflowError, ValueError):
        return None
    return clock


__all__ = ["LoopWatchdog", "frame_stack"]
