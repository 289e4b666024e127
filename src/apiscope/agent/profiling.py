"""Per-request async profiles on the request path: which requests to profile, and shipping them.

A profiled request runs under a `SliceProfiler` (`profiler`: how a profile is taken, and the
options) and is shipped as a compact tree (`profiletree`); this module decides which requests
those are, on the request path, and keeps the caps.

pyinstrument is imported lazily (this package stays standard-library only at import), at the
first pull (`RequestProfiling.load`, on the agent's socket thread): injected, the agent starts
on the server's main thread, which an import of pyinstrument would hold for 40-110 ms, where a
thread's import lets the GIL go every switch interval. Nothing is armed before a pull anyway.
A target that cannot import it (most production environments do not install it, and a
target on another Python than apiscope's cannot use apiscope's copy) still gets profiles: their
slices are timed only (`frame_identifier` names the frames as pyinstrument would), so each
request's awaits are charged to the lines that awaited, as exactly as with pyinstrument, and
its running time to the line where each slice stopped, without samples of the code between.
The agent's pull says so (`limited`), never a failed request.

Which requests: 1 in `every` requests per route, plus the next request of a route whose latency
reached `slow_ms` (at most once a second per route: a slow route is profiled from its second
request on, which is what the slow_await analysis needs), under a global cap of
`max_per_second` profiles and `max_concurrent` at once. What a profile costs grows with the
code it samples (a request computing for 100 ms costs a hundred pyinstrument samples, one
awaiting a query for 100 ms almost none), so a time budget (`TimeBudget`) holds the profiled
slices to `max_share` of the time: a slice is sampled only while the budget has a balance,
and is charged to it as it ends; otherwise it is timed only (its awaits are still exact, and
the bookkeeping is what `max_per_second` bounds: one long sampled slice must not starve every
awaiting route of its profiles until the budget is paid back). The route
template is only known once the app returns, so finished requests *arm* their route and the
next request whose path matches the armed template is profiled. The counting is not done on
the request path: the agent's socket thread counts the requests each pull drains
(`observe_batch`; a route met for the first time is armed at once), so a route is armed at
most once a pull (a second) and an unprofiled
request pays one truth test of `RequestProfiling.armed` when nothing is armed (one regex match
per armed route otherwise), before the app and nothing after it.
"""

from __future__ import annotations

import importlib
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from .profiler import (
    ANCHOR,
    AWAIT,
    Profiled,
    ProfileRun,
    ProfilingOptions,
    SliceProfiler,
    frame_identifier,
    options_from_env,
)
from .profiletree import compact_tree, parse_frame
from .recorder import RequestEntry

# `{name}` / `{name:converter}` (Starlette, Litestar, Falcon), `<name>` / `<converter:name>`
# (Django, Quart); a converter's arguments in parentheses (`int(min=1)`) are skipped.
ROUTE_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z_]+)(?:\([^)]*\))?)?\}"
                         r"|<(?:([A-Za-z_]+)(?:\([^)]*\))?:)?([A-Za-z_][A-Za-z0-9_]*)>")
SLOW_REARM_SECONDS = 1.0  # a route slow on every request is profiled at most once a second
# Routes armed at once at most: every request pays one regex match per armed route until
# one matches, and a route called rarely stays armed until its next request.
MAX_ARMED = 8
BURST_SECONDS = 5.0  # the profiling time budget saves up this many seconds' worth at most



def template_pattern(template: str) -> re.Pattern[str]:
    """A regex matching the request paths of a route template (`{x}` one segment, `{x:path}`
    the rest)."""
    out, pos = [], 0
    for match in ROUTE_PARAM.finditer(template):
        out.append(re.escape(template[pos:match.start()]))
        converter = match.group(2) or match.group(3)
        out.append(".*" if converter == "path" else "[^/]+")
        pos = match.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out))


class Allowance:
    """A balance that refills by `rate` a second, up to `capacity`; a spend may overdraw it."""

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.capacity = capacity
        self.balance = capacity
        self._clock = clock
        self._last = clock()

    def refilled(self) -> float:
        """The balance, with what accrued since the last look."""
        now = self._clock()
        self.balance = min(self.capacity, self.balance + (now - self._last) * self.rate)
        self._last = now
        return self.balance

    def spend(self, amount: float) -> None:
        self.balance -= amount


class TokenBucket(Allowance):
    """At most `rate` takes per second on average, `max(1, rate)` in a burst."""

    def __init__(self, rate: float, clock: Callable[[], float]) -> None:
        super().__init__(rate, max(1.0, rate), clock)

    def take(self) -> bool:
        if self.refilled() >= 1.0:
            self.spend(1.0)
            return True
        return False


class TimeBudget(Allowance):
    """A share of the wall clock to spend: `share` seconds accrue each second, up to
    `BURST_SECONDS` seconds' worth. A spend may overdraw it; nothing more is allowed until the
    balance is back above zero, so over time no more than the share is spent."""

    def __init__(self, share: float, clock: Callable[[], float]) -> None:
        super().__init__(share, share * BURST_SECONDS, clock)

    def set_share(self, share: float) -> None:
        """Accrue `share` seconds a second from now on (what was saved up is kept, within the
        new cap)."""
        self.refilled()
        self.rate, self.capacity = share, share * BURST_SECONDS
        self.balance = min(self.balance, self.capacity)

    def allows(self) -> bool:
        """Whether the balance, saved up to now, is above zero."""
        return self.refilled() > 0


class RequestProfiling:
    """Decides which requests to profile and ships their compact trees to `profiles`."""

    def __init__(self, profiles: deque[dict[str, Any]],
                 options: ProfilingOptions | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 profiler_factory: Callable[[float], Any] | None = None,
                 cpu_clock: Callable[[], float] = time.thread_time) -> None:
        self.profiles = profiles
        self.armed: list[tuple[str, re.Pattern[str], tuple[str, str]]] = []
        self.unavailable: str | None = None
        self.limited: str | None = None  # why profiles time slices only (no pyinstrument)
        self.profiled = self.capped = self.errors = 0
        # CPU seconds the profiles cost the loop thread: their sampled slices whole, the
        # bookkeeping of the timed ones, the compaction.
        self.spent = 0.0
        self._clock = clock
        self._cpu_clock = cpu_clock
        self._counts: dict[tuple[str, str], int] = {}
        self._last_slow: dict[tuple[str, str], float] = {}
        self._running = 0
        # None until `load`: pyinstrument, imported at the first pull.
        self._factory = profiler_factory
        self._asked_share: float | None = None  # the collector's, once it asks (`set_share`)
        self.configure(options or options_from_env())

    def load(self) -> None:
        """Import pyinstrument if nothing else was given to profile with (see the module
        docstring); profiling is active from then on. A no-op once done."""
        if self._factory is None:
            self._factory = self._pyinstrument_factory()
            self.configure(self.options)

    def configure(self, options: ProfilingOptions) -> None:
        """Apply new options; wrapped apps share this object, so they follow at once."""
        self.options = options
        # One attribute read on the request path rather than a property call.
        self.active = self.unavailable is None and options.enabled and self._factory is not None
        self._every = options.every
        self._slow_ms = options.slow_ms if options.slow_ms > 0 else float("inf")
        self.bucket = TokenBucket(options.max_per_second, self._clock)
        # What the budget accrues: the options' share, or less as the collector asks.
        asked = self._asked_share
        self.share = options.max_share if asked is None else min(asked, options.max_share)
        self.budget = TimeBudget(self.share, self._clock) if options.max_share > 0 else None
        self.bookkeeping = TimeBudget(self.share, self._clock) if options.max_share > 0 \
            else None
        self.armed = []
        self._counts.clear()

    def set_share(self, share: float) -> None:
        """The share of the clock the sampled slices may take, as the collector's overhead
        budget allows (`TimeBudget`): at most the options' `max_share`, which the target's
        environment may have lowered. Raises ValueError for a share below 0 or above 1."""
        if isinstance(share, bool) or not isinstance(share, (int, float)) \
                or not 0.0 <= share <= 1.0:
            raise ValueError(f"profile_share must be a number from 0 to 1, not {share!r}")
        self._asked_share = float(share)
        self.share = min(float(share), self.options.max_share)
        if self.budget is not None:
            self.budget.set_share(self.share)
        if self.bookkeeping is not None:
            self.bookkeeping.set_share(self.share)

    def reset(self) -> None:
        """Start over with zeroed counters (in a forked child, where no run is in flight)."""
        self._running = 0
        self.profiled = self.capped = self.errors = 0
        self.spent = 0.0
        self._last_slow.clear()
        self.configure(self.options)

    def stats(self) -> dict[str, Any]:
        return {"enabled": self.active, "every": self.options.every,
                "unavailable": self.unavailable, "limited": self.limited,
                "profiled": self.profiled,
                "capped": self.capped, "errors": self.errors,
                "spent_seconds": round(self.spent, 6), "share": self.share}

    # -- the request path -----------------------------------------------------------------

    def admit(self, method: str, path: str) -> ProfileRun | None:
        """A run for this request when it belongs to an armed route and the caps allow it.

        Called only when `armed` is non-empty."""
        for entry in self.armed:
            if entry[0] == method and entry[1].fullmatch(path) is not None:
                break
        else:
            return None
        # Capped or not, the route is disarmed: a capped route is armed again by `observe`
        # after its next `every` requests, so that a busy route does not pay this test on
        # every request while the cap holds.
        self.armed.remove(entry)
        # An overdrawn budget stops the sampling, not the profiles: their slices are then timed
        # only (what `max_per_second` bounds), and an awaiting route's profile stays exact.
        # Timed slices cost their bookkeeping, which grows with the depth of the awaits: on
        # Airflow's API (a dozen middlewares and dependencies deep) it was milliseconds a
        # profile, more than the budget's share at `max_per_second`. That bookkeeping has an
        # allowance of its own, the same share: overdrawn, no profile is admitted until it is
        # paid back (a long sampled slice overdraws the other one, and stops only sampling).
        bookkeeping = self.bookkeeping
        if self._running >= self.options.max_concurrent or (
                bookkeeping is not None and bookkeeping.refilled() < 0) \
                or not self.bucket.take():
            self.capped += 1
            return None
        try:
            profiler = self._factory(self.options.interval_ms / 1000.0)  # type: ignore[misc]
            profiler.budget = self.budget  # charged slice by slice: see SliceProfiler
            run = ProfileRun(entry[2], profiler)
        except Exception:
            self.errors += 1
            return None
        self._running += 1
        return run

    def observe_batch(self, entries: Iterable[RequestEntry]) -> None:
        """Count the finished requests a pull drained (on the socket thread), arming each route
        whose turn has come. An entry kept for `weight` requests counts as that many."""
        if not self.active:
            return
        counts: dict[tuple[str, str], list[float]] = {}  # key -> [requests, slowest ms]
        for entry in entries:
            key = (entry.method, entry.route)
            seen = counts.get(key)
            if seen is None:
                counts[key] = [entry.weight, entry.duration_ms]
            else:
                seen[0] += entry.weight
                if entry.duration_ms > seen[1]:
                    seen[1] = entry.duration_ms
        for key, (requests, slowest_ms) in counts.items():
            # A route met for the first time has its turn at once: a short session, or a route
            # called a few times in it, still gets a profile.
            turn = self._every if key not in self._counts else 0
            self.observe(key[0], key[1], slowest_ms, max(int(requests), turn))

    def observe(self, method: str, route: str, duration_ms: float, requests: int = 1) -> None:
        """Count finished requests of a route (the slowest took `duration_ms`); arm the route
        when its turn has come."""
        if not self.active:
            return
        key = (method, route)
        count = self._counts.get(key, 0) + requests
        if count < self._every and not (self._slow_ms <= duration_ms and self._slow_due(key)):
            self._counts[key] = count
            return
        self._counts[key] = 0
        if route != "<unmatched>" and len(self.armed) < MAX_ARMED and \
                all(entry[2] != key for entry in self.armed):
            self.armed.append((method, template_pattern(route), key))

    def finish(self, run: ProfileRun, start: float, method: str, route: str,
               duration_ms: float) -> None:
        """Ship the finished run's compact tree (the request's response is already sent)."""
        self._running -= 1
        if run.records is None:
            self._spend(run, 0.0)
            self.errors += 1
            return
        began = self._cpu_clock()
        tree = compact_tree(run.records, f"{method} {route}", duration_ms, self.options)
        self._spend(run, self._cpu_clock() - began)
        self.profiles.append({"start": start, "method": method, "route": route,
                              "duration_ms": duration_ms, "tree": tree})
        self.profiled += 1

    def abandon(self, run: ProfileRun) -> None:
        """Forget a run whose request could not be recorded."""
        self._running -= 1
        self._spend(run, 0.0)
        self.errors += 1

    def _spend(self, run: ProfileRun, compacting: float) -> None:
        """Count what the run cost; its slices were charged to the budget as they ran."""
        self.spent += run.profiler.spent + compacting
        if self.budget is not None:
            self.budget.spend(compacting)
        if self.bookkeeping is not None:
            self.bookkeeping.spend(getattr(run.profiler, "timed_spent", 0.0) + compacting)

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
            self.limited = (f"pyinstrument cannot be imported in this process ({exc}): profiles"
                            " time each request's awaits but do not sample the code it runs;"
                            " install pyinstrument in the server's environment for both")
            return _timed_only

        def factory(interval: float) -> SliceProfiler:
            return SliceProfiler(sampler, frame_info, interval)

        return factory


def _timed_only(interval: float) -> SliceProfiler:
    """A profiler whose slices are timed, never sampled (no pyinstrument)."""
    profiler = SliceProfiler(_no_sampler, frame_identifier, interval)
    profiler.sampling = False
    return profiler


def _no_sampler() -> Any:
    raise RuntimeError("no stack sampler without pyinstrument")


# Where callers have always imported them from: the driver and the compaction moved out.
__all__ = [
    "ANCHOR",
    "AWAIT",
    "ProfileRun",
    "Profiled",
    "ProfilingOptions",
    "RequestProfiling",
    "SliceProfiler",
    "TokenBucket",
    "compact_tree",
    "options_from_env",
    "parse_frame",
    "template_pattern",
]
