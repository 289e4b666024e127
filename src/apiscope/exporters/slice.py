"""Which samples an export covers: a route, a process, a thread, a time span, idle and blocked
samples, the GIL.

`select_samples` returns the matching samples merged across sampling windows (one entry per
process, thread, stack, state and GIL flag), so a million stored samples become a few thousand
entries whose counts add up to exactly the samples that match.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from apiscope.analysis.attribution import RouteMatcher
from apiscope.errors import UsageError
from apiscope.model import Frame, RouteInfo, SampleState, StackSample
from apiscope.store.reader import SampleFilter, SessionReader

IdleMode = Literal["include", "exclude", "only"]
BlockedMode = Literal["include", "exclude", "only"]
GilMode = Literal["any", "held", "not-held"]
EndpointOf = Callable[[Sequence[Frame]], "str | None"]

_ALL_STATES = frozenset(SampleState)
_IDLE_STATES: dict[str, frozenset[SampleState]] = {
    "include": _ALL_STATES,
    "exclude": _ALL_STATES - {SampleState.WAITING},
    "only": frozenset({SampleState.WAITING}),
}
# Off-CPU at a working stack (a sleep, I/O, a lock, the GIL, or waiting for a free CPU): with
# the idle ones left out, what remains is on-CPU time; with them kept, wall-clock time.
_WAITS = frozenset({SampleState.BLOCKED, SampleState.RUNNABLE})
_BLOCKED_STATES: dict[str, frozenset[SampleState]] = {
    "include": _ALL_STATES,
    "exclude": _ALL_STATES - _WAITS,
    "only": _WAITS,
}
_GIL: dict[str, bool | None] = {"any": None, "held": True, "not-held": False}


@dataclass(frozen=True, slots=True)
class SliceSpec:
    """What to export; None and the defaults select everything.

    `since`/`until` are seconds from the session start ("12.5") or ISO 8601 times
    ("2026-11-26T03:00:10Z"; a time without a zone is UTC). They compare with the start of each
    sampling window: `since` inclusive, `until` exclusive.
    """

    route: str | None = None
    pid: int | None = None
    thread: int | None = None
    since: str | None = None
    until: str | None = None
    idle: IdleMode = "include"
    gil: GilMode = "any"
    blocked: BlockedMode = "include"

    def describe(self) -> str:
        parts = [f"{name}={value}" for name, value in (
            ("route", self.route), ("pid", self.pid), ("thread", self.thread),
            ("since", self.since), ("until", self.until)) if value is not None]
        if self.idle != "include":
            parts.append(f"idle={self.idle}")
        if self.blocked != "include":
            parts.append(f"blocked={self.blocked}")
        if self.gil != "any":
            parts.append(f"gil={self.gil}")
        return ", ".join(parts) or "the whole session"


def parse_time(text: str, session_start: float) -> float:
    """Epoch seconds of `text`: seconds from the session start, or an ISO 8601 time."""
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(seconds):
            return session_start + seconds
    try:
        moment = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise UsageError(
            f"cannot read the time {text!r}: give seconds from the session start (e.g. 30)"
            " or an ISO 8601 time (e.g. 2026-11-26T03:00:30Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def session_start(reader: SessionReader) -> float:
    span = reader.time_range()
    return span[0] if span is not None else 0.0


def sample_filter(reader: SessionReader, spec: SliceSpec) -> SampleFilter:
    """The store-level part of the slice (everything but the route)."""
    start = session_start(reader) if spec.since or spec.until else 0.0
    states = _IDLE_STATES[spec.idle] & _BLOCKED_STATES[spec.blocked]
    return SampleFilter(
        since=None if spec.since is None else parse_time(spec.since, start),
        until=None if spec.until is None else parse_time(spec.until, start),
        pid=spec.pid,
        tid=spec.thread,
        states=None if states == _ALL_STATES else states,
        gil=_GIL[spec.gil],
    )


def select_samples(reader: SessionReader, spec: SliceSpec,
                   endpoint_of: EndpointOf | None = None) -> list[StackSample]:
    """The samples of the slice, merged across windows, in a deterministic order."""
    samples: Iterable[StackSample] = reader.sample_totals(sample_filter(reader, spec))
    if spec.route is not None:
        routes, served = reader.routes(), reader.served_endpoints()
        wanted = resolve_route(spec.route, routes, served)
        samples = _on_endpoints(samples, wanted, endpoint_of or route_matcher(routes, served))
    return merge_samples(samples)


def resolve_route(route: str, routes: Sequence[RouteInfo],
                  served: Collection[str] = ()) -> frozenset[str]:
    """The endpoints ("METHOD /template") a --route value names, in the route table or among
    those that served requests.

    Accepts "GET /items/{item_id}" or just "/items/{item_id}" (every method of that template).
    """
    text = " ".join(route.split())
    known = sorted({f"{r.method} {r.template}" for r in routes} | set(served))
    if " " in text:
        method, template = text.split(" ", 1)
        wanted = frozenset({f"{method.upper()} {template}"})
    else:
        wanted = frozenset(e for e in known if e.split(" ", 1)[1] == text)
    if not wanted or not wanted <= set(known):
        listing = ", ".join(known) if known else "none (the agent recorded no route table)"
        raise UsageError(f"the session has no route {route!r}: known routes are {listing}")
    return wanted


def route_matcher(routes: Sequence[RouteInfo], served: Collection[str] = ()) -> EndpointOf:
    """The report's own attribution, so an export of a route shows what the report charged."""
    return RouteMatcher(routes, served).endpoint_of


def _on_endpoints(samples: Iterable[StackSample], wanted: frozenset[str],
                  endpoint_of: EndpointOf) -> Iterable[StackSample]:
    verdicts: dict[int, bool] = {}
    keep_alive: list[tuple[Frame, ...]] = []  # ids stay unique while they are cache keys
    for sample in samples:
        verdict = verdicts.get(id(sample.frames))
        if verdict is None:
            keep_alive.append(sample.frames)
            verdict = verdicts[id(sample.frames)] = endpoint_of(sample.frames) in wanted
        if verdict:
            yield sample


def merge_samples(samples: Iterable[StackSample]) -> list[StackSample]:
    """One sample per (pid, tid, stack, state, gil) with the summed count, sorted by thread and
    stack so every export of the same slice is byte-identical."""
    # Keys use identities (of the reader's shared stack tuples and of the enum members): hashing
    # a 30-frame tuple or an Enum costs Python calls, and this loop runs once per stored row.
    canonical: dict[tuple[Frame, ...], tuple[Frame, ...]] = {}
    by_id: dict[int, tuple[Frame, ...]] = {}
    seen: list[tuple[Frame, ...]] = []  # keeps every id valid while it is a key
    counts: dict[tuple[int, int, int, int, bool | None], int] = {}
    firsts: dict[tuple[int, int, int, int, bool | None], StackSample] = {}
    for s in samples:
        frames = by_id.get(id(s.frames))
        if frames is None:
            seen.append(s.frames)
            frames = by_id[id(s.frames)] = canonical.setdefault(s.frames, s.frames)
        key = (s.pid, s.tid, id(frames), id(s.state), s.gil)
        if key in counts:
            counts[key] += s.count
        else:
            counts[key] = s.count
            firsts[key] = s
    merged = [StackSample(f.pid, f.tid, f.thread_name, by_id[id(f.frames)], counts[key],
                          f.state, f.gil) for key, f in firsts.items()]
    # Rank each distinct stack once, then sort the (many more) samples by rank.
    rank = {id(frames): i for i, frames in enumerate(
        sorted(canonical.values(), key=lambda fs: [(f.function, f.file, f.line) for f in fs]))}
    return sorted(merged, key=lambda s: (s.pid, s.tid, rank[id(s.frames)], s.state.value,
                                         -1 if s.gil is None else int(s.gil)))


def describe_session(reader: SessionReader) -> str:
    """What the session holds, for the message of an empty slice."""
    held = reader.sample_summary(max_pids=10)
    if not held.total or held.first is None or held.last is None:
        return "the session holds no stack samples (was the sampler running?)"
    pids = ", ".join(map(str, held.pids))
    start = session_start(reader)
    return (f"the session holds {held.total} samples of {held.processes} process(es)"
            f" (pid {pids}), from {held.first - start:.1f}s to {held.last - start:.1f}s after"
            " its start")
