"""Taking one request's async profile: the profiling options and the slice-by-slice driver.

Stack sampling sees what a thread runs, not what a coroutine waits for. A profiled request here
is driven slice by slice (`SliceProfiler.drive`, the way `await` drives a coroutine): while the
request runs, pyinstrument's stack sampler samples it; while it is suspended, the sampler is
off and the agent times the suspension itself, charging it to an `[await]` leaf under the
innermost frame that awaited (read from the coroutines' `cr_await` chain). pyinstrument's own
async mode does the same attribution, but keeps its profile hook on the whole thread for the
request's whole life: measured here, every other request's Python code on the loop ran about 4
times slower meanwhile, which on a busy server doubled latencies. Driven by slices, only the
profiled request pays.

The options live here, below both the request path (`profiling`, which decides what to
profile) and the compaction (`profiletree`, which turns the records into the shipped tree),
since each of them reads some of them. Nothing here imports pyinstrument: the driver is handed
its sampler by `RequestProfiling`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

ENV_PREFIX = "APISCOPE_PROFILE_"
AWAIT = "[await]"
MAX_AWAIT_DEPTH = 200

Records = Sequence[tuple[Sequence[str], float]]  # pyinstrument's (root-first stack, seconds)


@dataclass(frozen=True)
class ProfilingOptions:
    every: int = 20  # 1 in N requests per route; 0 turns profiling off
    slow_ms: float = 200.0  # a request this slow arms its route (the default SLO); 0: never
    max_per_second: float = 5.0  # global cap (token bucket, burst of one second's worth)
    max_concurrent: int = 4  # profiles running at once in this process
    # The share of the clock that sampled slices of profiled requests may take (charged whole,
    # the agent's bookkeeping with them; other slices are only timed): what a profile costs
    # grows with the code it samples, so this, not the count of profiles, bounds the cost.
    # 0 lifts the bound.
    max_share: float = 0.02
    interval_ms: float = 1.0  # pyinstrument's sampling interval
    min_node_ms: float = 1.0  # nodes below this and below `min_node_share` are folded
    min_node_share: float = 0.01  # of the request's duration
    max_nodes: int = 200  # per shipped tree

    @property
    def enabled(self) -> bool:
        return self.every > 0 and self.max_per_second > 0 and self.max_concurrent > 0


def options_from_env(environ: Mapping[str, str] | None = None,
                     base: ProfilingOptions | None = None) -> ProfilingOptions:
    """Options overridden by `APISCOPE_PROFILE_EVERY`, `..._SLOW_MS`, `..._MAX_PER_SECOND`,
    `..._MAX_CONCURRENT`, `..._INTERVAL_MS`, `..._MAX_NODES`; unparsable values are ignored
    (the agent must start whatever the environment says)."""
    environ = os.environ if environ is None else environ
    base = base or ProfilingOptions()
    changes: dict[str, Any] = {}
    for field in fields(ProfilingOptions):
        raw = environ.get(ENV_PREFIX + field.name.upper())
        if raw is None:
            continue
        kind = int if isinstance(getattr(base, field.name), int) else float
        try:
            value = kind(raw)
        except ValueError:
            continue
        if value >= 0:
            changes[field.name] = value
    return replace(base, **changes)


class SliceProfiler:
    """One request's profile: its running slices sampled by pyinstrument's stack sampler, its
    suspensions timed here. `records` are pyinstrument-style (stack, seconds) pairs."""

    def __init__(self, sampler: Callable[[], Any], frame_info: Callable[[Any], str],
                 interval: float, clock: Callable[[], float] = time.perf_counter) -> None:
        self._sampler = sampler  # pyinstrument's per-thread StackSampler
        self._frame_info = frame_info  # pyinstrument's frame identifier, for matching stacks
        self._interval = interval
        self._clock = clock
        self.records: list[tuple[Sequence[str], float]] = []
        self.sampling = True
        self._sampled = 0.0
        self.spent = 0.0  # seconds the slices ran, the profiler's work in and around them
        # Charged with each slice as it ends (a `TimeBudget`); a slice is sampled only while
        # it has a balance, and timed only otherwise.
        self.budget: Any = None
        self._sampling_slice = False

    def _saw(self, call_stack: list[str], seconds: float, async_state: Any) -> None:
        self.records.append((call_stack, seconds))
        self._sampled += seconds

    def drive(self, coro: Any) -> Generator[Any, Any, Any]:
        """Run `coro` to its end as `await coro` would, profiling it (the `__await__` of
        `Profiled`); this frame is the anchor `compact_tree` cuts stacks at."""
        value: Any = None
        error: BaseException | None = None
        while True:
            started = self._start()
            try:
                yielded = coro.send(value) if error is None else coro.throw(error)
            except StopIteration as done:
                self._stop(started, None)
                return done.value
            except BaseException:
                self._stop(started, None)
                raise
            awaiting = self._stop(started, coro)
            suspended = self._clock()
            try:
                value, error = (yield yielded), None
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation, thrown in by the task: pass it on
                value, error = None, exc
            self.records.append(([*awaiting, AWAIT], self._clock() - suspended))

    def _start(self) -> float:
        self._sampled = 0.0
        budget = self.budget
        self._sampling_slice = self.sampling and (budget is None or budget.allows())
        if self._sampling_slice:
            try:
                self._sampler().subscribe(self._saw, desired_interval=self._interval,
                                          use_async_context=False)
            except Exception:  # another profiler's settings clash: time the slices only
                self.sampling = False
        return self._clock()

    def _stop(self, started: float, coro: Any) -> list[str]:
        """End a slice; its time the sampler did not see is charged to where it stopped."""
        stepped = self._clock()
        elapsed = stepped - started
        if self._sampling_slice:
            try:
                self._sampler().unsubscribe(self._saw)
            except Exception:
                self.sampling = False
        stack = [ANCHOR_INFO, *self._awaiting(coro)]
        if elapsed > self._sampled:
            self.records.append((stack, elapsed - self._sampled))
        # A sampled slice costs its whole time (the samples slow the code they sample); a
        # timed one, the bookkeeping after it.
        spent = self._clock() - (started if self._sampling_slice else stepped)
        self.spent += spent
        if self.budget is not None:
            self.budget.spend(spent)
        return stack

    def _awaiting(self, coro: Any) -> list[str]:
        """Frame identifiers of the chain of suspended coroutines, outermost first."""
        out: list[str] = []
        while coro is not None and len(out) < MAX_AWAIT_DEPTH:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            if frame is None:
                break
            out.append(self._frame_info(frame))
            coro = getattr(coro, "cr_await", None) if hasattr(coro, "cr_await") else getattr(
                coro, "gi_yieldfrom", None)
        return out


class Profiled:
    """`await Profiled(profiler, coro)`: `coro`, driven by `profiler`."""

    __slots__ = ("coro", "profiler")

    def __init__(self, profiler: SliceProfiler, coro: Any) -> None:
        self.profiler = profiler
        self.coro = coro

    def __await__(self) -> Generator[Any, Any, Any]:
        return self.profiler.drive(self.coro)


class ProfileRun:
    """One request being profiled: `around` runs the app under a `SliceProfiler`."""

    __slots__ = ("key", "profiler", "records")

    def __init__(self, key: tuple[str, str], profiler: SliceProfiler) -> None:
        self.key = key
        self.profiler = profiler
        self.records: Records | None = None

    async def around(self, call: Callable[..., Awaitable[None]], *args: Any) -> None:
        try:
            await Profiled(self.profiler, call(*args))
        finally:
            self.records = self.profiler.records


ANCHOR = ("drive", SliceProfiler.drive.__code__.co_filename,
          SliceProfiler.drive.__code__.co_firstlineno)
ANCHOR_INFO = "\x00".join((ANCHOR[0], ANCHOR[1], str(ANCHOR[2])))


__all__ = [
    "ANCHOR",
    "AWAIT",
    "ProfileRun",
    "Profiled",
    "ProfilingOptions",
    "Records",
    "SliceProfiler",
    "options_from_env",
]
