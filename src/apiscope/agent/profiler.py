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

A request's work may go on in a task of its own that the request's task only waits for:
Starlette's `BaseHTTPMiddleware` (FastAPI's `@app.middleware("http")`) runs the app behind it
so, and each such middleware adds one task more. Such a task is *followed*: while a profiled
slice runs, the loop's task factory is ours (`_Follower`, the previous one restored as the
slice ends), and a task started then whose coroutine holds the request's ASGI scope is driven
by a profiler of its own, recording into the request's profile under the frames that started
it. The request's own wait for it is then only what its followed tasks did not record (the
hand-overs between tasks, charged to the request and to no line of it), so no time is counted
twice. Other tasks (`asyncio.gather`'s, a background job's) hold no scope and stay outside, as
before: their time is the await that waits for them. Once the request ends its followed tasks
are no longer recorded.

The options live here, below both the request path (`profiling`, which decides what to
profile) and the compaction (`profiletree`, which turns the records into the shipped tree),
since each of them reads some of them. Nothing here imports pyinstrument: the driver is handed
its sampler by `RequestProfiling`.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import types
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

ENV_PREFIX = "APISCOPE_PROFILE_"
AWAIT = "[await]"
MAX_AWAIT_DEPTH = 200
MAX_FOLLOWED = 8  # tasks followed per request (nested http middlewares: one each)
SCOPE_HOPS = 3  # coroutines and wrappers looked through for the scope a new task holds

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
                 interval: float, clock: Callable[[], float] = time.perf_counter,
                 parent: SliceProfiler | None = None, prefix: Sequence[str] = (),
                 cpu_clock: Callable[[], float] = time.thread_time) -> None:
        self._sampler = sampler  # pyinstrument's per-thread StackSampler
        self._frame_info = frame_info  # pyinstrument's frame identifier, for matching stacks
        self._interval = interval
        self._clock = clock
        # What the profiler costs is the loop thread's CPU, not the clock's: a thread that
        # lets the GIL go in the bookkeeping waits for it back while the app's pool threads
        # run (5-20 ms on a server of sync routes), and that wait is nobody's cost.
        self._cpu_clock = cpu_clock
        self._cpu_started = 0.0
        # A followed task's profiler records into its request's list, under `prefix` (the
        # request's frames that started the task, below the anchor).
        self.records: list[tuple[Sequence[str], float]] = (
            parent.records if parent is not None else [])
        self.parent = parent
        self.prefix = list(prefix)
        self.sampling = True
        self._sampled = 0.0
        self.spent = 0.0  # CPU seconds: sampled slices whole, the bookkeeping of the others
        self.timed_spent = 0.0  # of which the bookkeeping of slices timed only
        # Charged with each slice as it ends (a `TimeBudget`); a slice is sampled only while
        # it has a balance, and timed only otherwise.
        self.budget: Any = parent.budget if parent is not None else None
        self._sampling_slice = False
        # The request's (root) profiler only: its scope and loop, set by `ProfileRun.around`.
        self.scope: Any = None
        self.loop: Any = None
        self.finished = False  # the request ended: its followed tasks record no more
        # When the response's last byte went out (`responded`): what runs after it (Starlette's
        # background tasks, run by the request's own call) is no part of the request's latency,
        # and is left out of its profile.
        self.responded_at: float | None = None
        self.followed = 0.0  # seconds recorded by the tasks followed from this one
        self._follower: _Follower | None = None
        self._started_here: list[SliceProfiler] = []  # tasks followed from the current slice
        self._count = 0  # (root) tasks followed

    @property
    def root(self) -> SliceProfiler:
        node = self
        while node.parent is not None:
            node = node.parent
        return node

    def _record(self, stack: Sequence[str], seconds: float) -> None:
        """Add a record of this task's; a followed task's goes under its prefix, and counts as
        followed time for every task above it."""
        parent = self.parent
        if parent is None:
            self.records.append((stack, seconds))
            return
        if self.root.finished:
            return
        self.records.append(([ANCHOR_INFO, *self.prefix, *below_anchor(stack)], seconds))
        while parent is not None:
            parent.followed += seconds
            parent = parent.parent

    def responded(self) -> None:
        """The response was sent whole (the root's, from the middleware's send)."""
        if self.responded_at is None:
            self.responded_at = self._clock()

    def _saw(self, call_stack: list[str], seconds: float, async_state: Any) -> None:
        self._record(call_stack, seconds)
        self._sampled += seconds

    def drive(self, coro: Any) -> Generator[Any, Any, Any]:
        """Run `coro` to its end as `await coro` would, profiling it (the `__await__` of
        `Profiled`); this frame is the anchor `compact_tree` cuts stacks at."""
        value: Any = None
        error: BaseException | None = None
        awaiting: list[str] = []
        while True:
            started = self._start()
            try:
                yielded = coro.send(value) if error is None else coro.throw(error)
            except StopIteration as done:
                self._stop(started, None, awaiting)
                return done.value
            except BaseException:
                self._stop(started, None, awaiting)
                raise
            awaiting = self._stop(started, coro)
            suspended = self._clock()
            followed = self.followed
            try:
                value, error = (yield yielded), None
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation, thrown in by the task: pass it on
                value, error = None, exc
            # What the tasks it waited for recorded meanwhile is theirs, not this await's; what
            # is left is the hand-over between the tasks, which no line of the request's waits
            # for (charged to the request as a whole). Only up to the response's end.
            resumed = self._clock()
            responded = self.root.responded_at
            if responded is not None and responded < resumed:
                resumed = responded
            waited = resumed - suspended - (self.followed - followed)
            if waited > 0:
                self._record([*awaiting, AWAIT] if self.followed == followed
                             else [ANCHOR_INFO, AWAIT], waited)

    def _start(self) -> float:
        self._cpu_started = self._cpu_clock()
        self._sampled = 0.0
        root = self.root
        # A followed task outliving its request, or anything run after its response (its
        # background tasks): passed through only.
        if root.finished or root.responded_at is not None:
            self._sampling_slice = False
            return self._clock()
        budget = self.budget
        self._sampling_slice = self.sampling and (budget is None or budget.allows())
        if self._sampling_slice:
            try:
                self._sampler().subscribe(self._saw, desired_interval=self._interval,
                                          use_async_context=False)
            except Exception:  # another profiler's settings clash: time the slices only
                self.sampling = False
        if root.scope is not None and root.loop is not None and root._count < MAX_FOLLOWED:
            self._follower = _Follower.install(root.loop, self)
        return self._clock()

    def _stop(self, started: float, coro: Any, resumed: Sequence[str] = ()) -> list[str]:
        """End a slice; its time the sampler did not see is charged to where it stopped, or,
        for the last slice (`coro` None: it returned), to where it resumed (`resumed`, the
        stack the slice before it stopped at, without the awaiting frame its resumption
        ended)."""
        stepped = self._clock()
        cpu_stepped = self._cpu_clock()
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.remove()
        if self._sampling_slice:
            try:
                self._sampler().unsubscribe(self._saw)
            except Exception:
                self.sampling = False
        root = self.root
        responded = root.responded_at
        if root.finished or responded is not None and responded <= started:
            return []
        # The slice the response ended in counts up to its end.
        elapsed = (stepped if responded is None else min(stepped, responded)) - started
        if coro is not None:
            stack = [ANCHOR_INFO, *self._awaiting(coro)]
        else:
            stack = list(resumed[:-1] if len(resumed) > 2 else resumed or [ANCHOR_INFO])
        if elapsed > self._sampled:
            self._record(stack, elapsed - self._sampled)
        if self._started_here:  # tasks this slice started: under what it went on to await
            for child in self._started_here:
                child.prefix = self.prefix + _common(stack[1:],
                                                     child.prefix[len(self.prefix):])
            self._started_here = []
        # A sampled slice costs its whole CPU time (the samples slow the code they sample);
        # a timed one, the bookkeeping after it.
        spent = self._cpu_clock() - (self._cpu_started if self._sampling_slice
                                     else cpu_stepped)
        root.spent += spent  # a followed task's slices are its request's cost
        if not self._sampling_slice:
            root.timed_spent += spent
        if self.budget is not None:
            self.budget.spend(spent)
        return stack

    def follow(self, coro: Any) -> Any:
        """`coro`, driven by a profiler of its own when it holds the request's scope (a task
        the running slice starts: see the module docstring); else `coro` itself."""
        root = self.root
        if root._count >= MAX_FOLLOWED or not _holds(coro, root.scope, SCOPE_HOPS):
            return coro
        root._count += 1
        child = SliceProfiler(self._sampler, self._frame_info, self._interval, self._clock,
                              parent=self, prefix=self.prefix + self._starting_frames(),
                              cpu_clock=self._cpu_clock)
        child.sampling = self.sampling
        self._started_here.append(child)
        return _followed(child, coro)

    def _starting_frames(self) -> list[str]:
        """This task's frames from the anchor down to the call that starts a task (the frames
        of the task machinery below it are cut when the slice ends, see `_stop`)."""
        frames = []
        frame: types.FrameType | None = sys._getframe(2)
        while frame is not None and frame.f_code is not _DRIVE_CODE:
            frames.append(frame)
            frame = frame.f_back
        if frame is None:
            return []
        return [self._frame_info(f) for f in reversed(frames)]

    def _awaiting(self, coro: Any) -> list[str]:
        """Frame identifiers of the chain of suspended coroutines, outermost first."""
        out: list[str] = []
        last: types.FrameType | None = None
        while coro is not None and len(out) < MAX_AWAIT_DEPTH:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            if frame is None and last is not None:
                # A step of an async generator (`anext()`, contextlib's `asynccontextmanager`
                # entering its generator) names no frame: the generator it runs goes on.
                coro = running_async_gen(last)
                frame = getattr(coro, "ag_frame", None)
            if frame is None:
                break
            out.append(self._frame_info(frame))
            last = frame
            inner = wait_for_task(frame)
            if inner is not None:
                coro = inner.get_coro()
            elif hasattr(coro, "cr_await"):
                coro = coro.cr_await
            elif hasattr(coro, "ag_await"):
                coro = coro.ag_await
            else:
                coro = getattr(coro, "gi_yieldfrom", None)
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
        profiler = self.profiler
        # The scope: tasks holding it are followed, on an asyncio loop (on trio there is
        # none: the request's own slices are profiled, no task followed).
        loop = asyncio._get_running_loop()
        if args and isinstance(args[0], dict) and loop is not None:
            profiler.scope = args[0]
            profiler.loop = loop
        try:
            await Profiled(profiler, call(*args))
        finally:
            profiler.finished = True
            self.records = profiler.records


async def _followed(profiler: SliceProfiler, coro: Any) -> Any:
    """A followed task's coroutine: `coro`, driven by `profiler`."""
    return await Profiled(profiler, coro)


class _Follower:
    """The loop's task factory while a profiled slice runs: a task the slice starts is
    created as the previous factory (or asyncio's own) would, its coroutine followed when it
    holds the request's scope."""

    __slots__ = ("loop", "previous", "profiler")

    def __init__(self, loop: Any, previous: Any, profiler: SliceProfiler) -> None:
        self.loop, self.previous, self.profiler = loop, previous, profiler

    @classmethod
    def install(cls, loop: Any, profiler: SliceProfiler) -> _Follower | None:
        try:
            follower = cls(loop, loop.get_task_factory(), profiler)
            loop.set_task_factory(follower)
        except Exception:  # a loop without factories: nothing is followed
            return None
        return follower

    def remove(self) -> None:
        """The previous factory back, unless the slice set one of its own meanwhile."""
        try:
            if self.loop.get_task_factory() is self:
                self.loop.set_task_factory(self.previous)
        except Exception:
            pass

    def __call__(self, loop: Any, coro: Any, **kwargs: Any) -> Any:
        try:
            coro = self.profiler.follow(coro)
        except Exception:  # never in the way of the task
            pass
        if self.previous is not None:
            return self.previous(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)


def frame_identifier(frame: Any) -> str:
    """A frame named as pyinstrument's `get_frame_info` names it, for profiles taken without
    pyinstrument (`profiletree.parse_frame` reads both): the code's name, file and first line,
    then its class (`\x01c`: the part of the qualified name before the function's, Python 3.11
    on) and the line executing (`\x01l`)."""
    code = frame.f_code
    name = code.co_name
    info = f"{name}\x00{code.co_filename}\x00{code.co_firstlineno}"
    owner = getattr(code, "co_qualname", name).split(".")[-2:-1]
    if owner and owner[0] != "<locals>":
        info += "\x01c" + owner[0]
    return f"{info}\x01l{frame.f_lineno}"


def wait_for_task(frame: Any) -> Any:
    """The task an `asyncio.wait_for` frame waits for (Python 3.11 and older run the awaited
    coroutine in a task of its own, and await a bare future meanwhile); else None."""
    if frame.f_code is not _WAIT_FOR_CODE:
        return None
    try:
        inner = frame.f_locals.get("fut")
    except Exception:
        return None
    return inner if isinstance(inner, asyncio.Task) else None


_WAIT_FOR_CODE = getattr(asyncio.wait_for, "__code__", None)


def own_attribute(value: Any, name: str) -> Any:
    """An instance's own attribute `name` (None without it): read from its `__dict__`, so no
    property or `__getattr__` of an unknown class is run."""
    try:
        return value.__dict__.get(name) if hasattr(value, "__dict__") else None
    except Exception:
        return None


def running_async_gen(frame: types.FrameType) -> Any:
    """The async generator a frame is awaiting a step of (`anext()`, `asend()`: those
    awaitables name no frame): one of its locals, or a local's `gen` (contextlib's
    `asynccontextmanager`, which FastAPI's dependencies with `yield` run in), that is
    running now."""
    try:
        values = list(frame.f_locals.values())
    except Exception:  # locals that cannot be read say nothing
        return None
    for value in values:
        for candidate in (value, own_attribute(value, "gen")):
            if isinstance(candidate, types.AsyncGeneratorType) and candidate.ag_running:
                return candidate
    return None


def _holds(value: Any, scope: Any, hops: int) -> bool:
    """Whether `value` is the scope, or a coroutine (or an object keeping one, as anyio's
    task handle does) with the scope among its locals, within `hops` steps."""
    if value is scope:
        return True
    if hops <= 0:
        return False
    frame = getattr(value, "cr_frame", None) if isinstance(value, types.CoroutineType) \
        else None
    if frame is not None:
        try:
            values = list(frame.f_locals.values())
        except Exception:
            return False
        return any(_holds(v, scope, hops - 1) for v in values)
    for name in ("_coro", "coro"):  # an instance's own attribute, no property run
        attribute = type(value).__dict__.get(name) if hasattr(type(value), "__dict__") \
            else None
        if isinstance(attribute, types.MemberDescriptorType):
            try:
                inner = attribute.__get__(value)
            except AttributeError:
                continue
        else:
            inner = getattr(value, "__dict__", {}).get(name) if hasattr(
                value, "__dict__") else None
        if isinstance(inner, types.CoroutineType):
            return _holds(inner, scope, hops - 1)
    return False


def _common(awaiting: Sequence[str], starting: Sequence[str]) -> list[str]:
    """The frames of `awaiting` (at the lines they await) down to where the two stacks part:
    the same function in the same file, whatever line it is at."""
    size = 0
    while size < len(awaiting) and size < len(starting) and \
            _function(awaiting[size]) == _function(starting[size]):
        size += 1
    return list(awaiting[:size])


def _function(info: str) -> str:
    """A pyinstrument frame identifier without its line: the function and its file."""
    return "\x01".join(part for part in info.split("\x01") if not part.startswith("l"))


_DRIVE_CODE = SliceProfiler.drive.__code__
ANCHOR = ("drive", _DRIVE_CODE.co_filename, _DRIVE_CODE.co_firstlineno)
ANCHOR_INFO = "\x00".join((ANCHOR[0], ANCHOR[1], str(ANCHOR[2])))


def below_anchor(stack: Sequence[str],
                 anchor: tuple[str, str, int] = ANCHOR) -> Sequence[str]:
    """The frames of a stack below its first `anchor` frame (none without one)."""
    prefix = "\x00".join((anchor[0], anchor[1], str(anchor[2])))
    for index, info in enumerate(stack):
        if info.startswith(prefix):
            return stack[index + 1:]
    return ()


__all__ = [
    "ANCHOR",
    "AWAIT",
    "ProfileRun",
    "Profiled",
    "ProfilingOptions",
    "Records",
    "SliceProfiler",
    "below_anchor",
    "frame_identifier",
    "options_from_env",
]
