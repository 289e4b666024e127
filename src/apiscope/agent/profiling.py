"""Per-request async profiles: which requests to profile, profiling them, and the compact tree.

Stack sampling sees what a thread runs, not what a coroutine waits for. A profiled request here
is driven slice by slice (`SliceProfiler.drive`, the way `await` drives a coroutine): while the
request runs, pyinstrument's stack sampler samples it; while it is suspended, the sampler is
off and the agent times the suspension itself, charging it to an `[await]` leaf under the
innermost frame that awaited (read from the coroutines' `cr_await` chain). pyinstrument's own
async mode does the same attribution, but keeps its profile hook on the whole thread for the
request's whole life: measured here, every other request's Python code on the loop ran about 4
times slower meanwhile, which on a busy server doubled latencies. Driven by slices, only the
profiled request pays.

pyinstrument is imported lazily (this package stays standard-library only at import) and only
in `RequestProfiling.__init__`: a target that cannot import it gets a status in the agent's
pull and no profiles, never a failed request.

Which requests: 1 in `every` requests per route, plus the next request of a route whose latency
reached `slow_ms` (at most once a second per route: a slow route is profiled from its second
request on, which is what the slow_await analysis needs), under a global cap of
`max_per_second` profiles and `max_concurrent` at once. The route template is only known once
the app returns, so a finished request *arms* its route and the next request whose path
matches the armed template is profiled: before the app, an unprofiled request pays one truth
test of `RequestProfiling.armed` when nothing is armed (one regex match per armed route
otherwise); after it, one counter update in `observe`.

The shipped tree (see `compact_tree`) is `{"function", "file", "line", "time_ms", "await_ms",
"children"}` per node: `line` is the line executing in that frame, `time_ms` the node's
inclusive wall time and `await_ms` the time the request was suspended with this frame as the
innermost awaiting one. The root is a synthetic node (`file` "") named after the request.
"""

from __future__ import annotations

import importlib
import os
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

ENV_PREFIX = "APISCOPE_PROFILE_"
AWAIT = "[await]"
ROUTE_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z_]+))?\}")
SLOW_REARM_SECONDS = 1.0  # a route slow on every request is profiled at most once a second
MAX_AWAIT_DEPTH = 200

Records = Sequence[tuple[Sequence[str], float]]  # pyinstrument's (root-first stack, seconds)


@dataclass(frozen=True)
class ProfilingOptions:
    every: int = 20  # 1 in N requests per route; 0 turns profiling off
    slow_ms: float = 200.0  # a request this slow arms its route (the default SLO); 0: never
    max_per_second: float = 5.0  # global cap (token bucket, burst of one second's worth)
    max_concurrent: int = 4  # profiles running at once in this process
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


def template_pattern(template: str) -> re.Pattern[str]:
    """A regex matching the request paths of a route template (`{x}` one segment, `{x:path}`
    the rest)."""
    out, pos = [], 0
    for match in ROUTE_PARAM.finditer(template):
        out.append(re.escape(template[pos:match.start()]))
        out.append(".*" if match.group(2) == "path" else "[^/]+")
        pos = match.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out))


class TokenBucket:
    """At most `rate` takes per second on average, `max(1, rate)` in a burst."""

    def __init__(self, rate: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self._clock = clock
        self._last = clock()

    def take(self) -> bool:
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
        self._last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


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
        if self.sampling:
            try:
                self._sampler().subscribe(self._saw, desired_interval=self._interval,
                                          use_async_context=False)
            except Exception:  # another profiler's settings clash: time the slices only
                self.sampling = False
        return self._clock()

    def _stop(self, started: float, coro: Any) -> list[str]:
        """End a slice; its time the sampler did not see is charged to where it stopped."""
        elapsed = self._clock() - started
        if self.sampling:
            try:
                self._sampler().unsubscribe(self._saw)
            except Exception:
                self.sampling = False
        stack = [ANCHOR_INFO, *self._awaiting(coro)]
        if elapsed > self._sampled:
            self.records.append((stack, elapsed - self._sampled))
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


class RequestProfiling:
    """Decides which requests to profile and ships their compact trees to `profiles`."""

    def __init__(self, profiles: deque[dict[str, Any]],
                 options: ProfilingOptions | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 profiler_factory: Callable[[float], Any] | None = None) -> None:
        self.profiles = profiles
        self.armed: list[tuple[str, re.Pattern[str], tuple[str, str]]] = []
        self.unavailable: str | None = None
        self.profiled = self.capped = self.errors = 0
        self._clock = clock
        self._counts: dict[tuple[str, str], int] = {}
        self._last_slow: dict[tuple[str, str], float] = {}
        self._running = 0
        self._factory = profiler_factory or self._pyinstrument_factory()
        self.configure(options or options_from_env())

    def configure(self, options: ProfilingOptions) -> None:
        """Apply new options; wrapped apps share this object, so they follow at once."""
        self.options = options
        # One attribute read on the request path rather than a property call.
        self.active = self.unavailable is None and options.enabled
        self._every = options.every
        self._slow_ms = options.slow_ms if options.slow_ms > 0 else float("inf")
        self.bucket = TokenBucket(options.max_per_second, self._clock)
        self.armed = []
        self._counts.clear()

    def reset(self) -> None:
        """Start over with zeroed counters (in a forked child, where no run is in flight)."""
        self._running = 0
        self.profiled = self.capped = self.errors = 0
        self._last_slow.clear()
        self.configure(self.options)

    def stats(self) -> dict[str, Any]:
        return {"enabled": self.active, "every": self.options.every,
                "unavailable": self.unavailable, "profiled": self.profiled,
                "capped": self.capped, "errors": self.errors}

    # -- the request path -----------------------------------------------------------------

    def admit(self, method: str, path: str) -> ProfileRun | None:
        """A run for this request when it belongs to an armed route and the caps allow it.

        Called only when `armed` is non-empty."""
        for entry in self.armed:
            if entry[0] == method and entry[1].fullmatch(path) is not None:
                break
        else:
            return None
        if self._running >= self.options.max_concurrent or not self.bucket.take():
            self.capped += 1
            return None
        self.armed.remove(entry)
        try:
            run = ProfileRun(entry[2], self._factory(self.options.interval_ms / 1000.0))
        except Exception:
            self.errors += 1
            return None
        self._running += 1
        return run

    def observe(self, method: str, route: str, duration_ms: float) -> None:
        """Count a finished request of a route; arm the route when its turn has come."""
        if not self.active:
            return
        key = (method, route)
        count = self._counts.get(key, 0) + 1
        if count < self._every and not (self._slow_ms <= duration_ms and self._slow_due(key)):
            self._counts[key] = count
            return
        self._counts[key] = 0
        if route != "<unmatched>" and all(entry[2] != key for entry in self.armed):
            self.armed.append((method, template_pattern(route), key))

    def finish(self, run: ProfileRun, start: float, method: str, route: str,
               duration_ms: float) -> None:
        """Ship the finished run's compact tree (the request's response is already sent)."""
        self._running -= 1
        if run.records is None:
            self.errors += 1
            return
        tree = compact_tree(run.records, f"{method} {route}", duration_ms, self.options)
        self.profiles.append({"start": start, "method": method, "route": route,
                              "duration_ms": duration_ms, "tree": tree})
        self.profiled += 1

    def abandon(self, run: ProfileRun) -> None:
        """Forget a run whose request could not be recorded."""
        self._running -= 1
        self.errors += 1

    def _slow_due(self, key: tuple[str, str]) -> bool:
        now = self._clock()
        if now - self._last_slow.get(key, -SLOW_REARM_SECONDS) < SLOW_REARM_SECONDS:
            return False
        self._last_slow[key] = now
        return True

    def _pyinstrument_factory(self) -> Callable[[float], Any]:
        try:
            sampling = importlib.import_module("pyinstrument.stack_sampler")
            low_level = importlib.import_module("pyinstrument.low_level.stat_profile")
            sampler, frame_info = sampling.get_stack_sampler, low_level.get_frame_info
        except Exception as exc:  # ImportError, or a broken install raising anything else
            self.unavailable = (f"pyinstrument cannot be imported in this process ({exc});"
                                " install it in the server's environment to get async profiles")
            return _no_profiler

        def factory(interval: float) -> SliceProfiler:
            return SliceProfiler(sampler, frame_info, interval)

        return factory


def _no_profiler(interval: float) -> Any:
    raise RuntimeError("pyinstrument is unavailable")


# -- the compact tree --------------------------------------------------------------------------

class _Node:
    __slots__ = ("function", "file", "line", "time", "awaited", "children")

    def __init__(self, function: str, file: str, line: int) -> None:
        self.function, self.file, self.line = function, file, line
        self.time = 0.0
        self.awaited = 0.0  # own await time
        self.children: dict[tuple[str, str, int], _Node] = {}

    def child(self, key: tuple[str, str, int]) -> _Node:
        node = self.children.get(key)
        if node is None:
            node = self.children[key] = _Node(*key)
        return node


def parse_frame(info: str) -> tuple[str, str, int]:
    """(function, file, executing line) of one pyinstrument frame-info string."""
    identifier, *attributes = info.split("\x01")
    parts = identifier.split("\x00")
    function = parts[0]
    file = parts[1] if len(parts) > 1 else ""
    line = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 0
    for attribute in attributes:
        if attribute.startswith("l") and attribute[1:].isdigit():
            line = int(attribute[1:])
        elif attribute.startswith("c") and attribute[1:] not in ("", "NoneType"):
            function = f"{attribute[1:]}.{parts[0]}"
    return function, file, line


def _below_anchor(stack: Sequence[str], anchor: tuple[str, str, int]) -> Sequence[str]:
    prefix = "\x00".join((anchor[0], anchor[1], str(anchor[2])))
    for index, info in enumerate(stack):
        if info.startswith(prefix):
            return stack[index + 1:]
    return ()


def build_tree(records: Records, name: str,
               anchor: tuple[str, str, int] = ANCHOR) -> _Node:
    """The full call tree below the anchor frame, merged by (function, file, executing line)."""
    root = _Node(name, "", 0)
    parsed: dict[str, tuple[str, str, int]] = {}
    for stack, seconds in records:
        frames = _below_anchor(stack, anchor)
        awaiting = bool(frames) and frames[-1] == AWAIT
        node = root
        node.time += seconds
        for info in frames[:-1] if awaiting else frames:
            key = parsed.get(info)
            if key is None:
                key = parsed[info] = parse_frame(info)
            node = node.child(key)
            node.time += seconds
        if awaiting:
            node.awaited += seconds
    return root


def compact_tree(records: Records, name: str, duration_ms: float,
                 options: ProfilingOptions | None = None,
                 anchor: tuple[str, str, int] = ANCHOR) -> dict[str, Any]:
    """The shipped tree: nodes below max(`min_node_ms`, `min_node_share` of the request) are
    folded into their parent (their await time stays await time), then only the `max_nodes`
    largest nodes are kept. Times are milliseconds."""
    options = options or ProfilingOptions()
    root = build_tree(records, name, anchor)
    floor = max(options.min_node_ms, options.min_node_share * max(duration_ms, root.time * 1e3))
    keep = _largest(root, floor / 1e3, options.max_nodes)
    return _export(root, keep)


def _largest(root: _Node, floor: float, limit: int) -> set[int]:
    """ids of the nodes to keep: at most `limit`, each at least `floor` seconds, ancestors of
    kept nodes kept (a child never outweighs its parent, so largest-first keeps them closed)."""
    candidates: list[tuple[float, int, _Node, _Node]] = []
    stack: list[tuple[_Node, int]] = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        for child in node.children.values():
            if child.time >= floor:
                candidates.append((child.time, depth, child, node))
                stack.append((child, depth + 1))
    candidates.sort(key=lambda c: (-c[0], c[1]))
    keep = {id(root)}
    for _, _, child, parent in candidates:
        if len(keep) > limit:
            break
        if id(parent) in keep:
            keep.add(id(child))
    return keep


def _export(node: _Node, keep: set[int]) -> dict[str, Any]:
    children, folded = [], 0.0
    for child in sorted(node.children.values(), key=lambda c: -c.time):
        if id(child) in keep:
            children.append(_export(child, keep))
        else:
            folded += _subtree_await(child)
    return {"function": node.function, "file": node.file, "line": node.line,
            "time_ms": round(node.time * 1e3, 3),
            "await_ms": round((node.awaited + folded) * 1e3, 3), "children": children}


def _subtree_await(node: _Node) -> float:
    return node.awaited + sum(_subtree_await(c) for c in node.children.values())


__all__ = [
    "ProfileRun",
    "SliceProfiler",
    "ProfilingOptions",
    "RequestProfiling",
    "compact_tree",
    "options_from_env",
    "template_pattern",
]
