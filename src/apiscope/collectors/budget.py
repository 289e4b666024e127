"""An overhead budget, enforced: the sampling rate and window length adapt to stay within it.

apiscope's whole cost is measured as it runs, each window:

- py-spy's own CPU time (user + system, from the kernel), in two parts: what starting a py-spy
  costs (reading the target's symbols, once per window) and what each sample tick costs. In
  py-spy's default blocking mode the target is stopped while py-spy reads it, so this is also
  (an upper bound of) the time the target lost; in non-blocking mode it is CPU taken from a
  machine the target shares. The CPU py-spy spends writing a window out at its exit is counted
  with the window after it (it is only known then).
- the agent's CPU inside the target (its watchdogs' and pull thread's own threads), and the
  time its per-request profiles sampled on the request threads, whole (`profile_share`);
- the collector's own CPU (parsing windows, storing requests, serving the dashboard): on a
  saturated host it competes with the target like anything else.

The budget is `max_overhead` (a fraction, 0.02 for `--max-overhead 2`) of the target's
capacity: one core per process that serves requests (a CPython process runs Python on at most
one core at a time), and no more cores than the machine has. A master, a reloader or
multiprocessing's resource tracker is sampled and paid for, but serves nothing: counting them
as capacity, apiscope spent 5 % of the two cores of a uvicorn with two workers (four
processes, at 38 Hz) while it read its cost as 3.5 %.
The costs are learnt from the windows (exponentially weighted means), and the next
window is given what the budget leaves once the agent and the collector are paid for: a
longer window when a py-spy start-up per second would eat too much of it (up to eight
times the length asked for), then the highest rate that fits, between `min_rate` and the rate asked
for. Once two windows sampled at `min_rate` have cost more than the budget, the rate may go
lower, to `LAST_RESORT_RATE`; once two windows there have cost more, with py-spy's ticks a
good part of it, to py-spy's least, `LEAST_RATE`. One is not enough: the first windows carry
one-off costs (py-spy's first look at every thread, the agent's start in the target), and a
15 s session of a two-worker server held at 2 Hz by them kept too few samples to find a
hotspot. Servers of a dozen threads or more (Django's and Flask's under an ASGI adapter,
MLflow's, Wagtail's) cost py-spy 3.5-7 ms a tick, each thread read at every tick: 2 Hz on two
workers read 2.3-2.6 % against 2 % (Wagtail), 1 Hz 1.6-2.2 %.
On a Django server starting a thread per request py-spy's ticks cost 1.2-1.6 ms each (its
thread ids are looked up anew for every new thread), and with the agent and the collector
paid for, 5 Hz read 2.5-3.5 % against 2 %. A busy target gets fewer samples, never a slower
service; the effective rate of each window is stored with it, and every
figure that turns counts into time uses it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from apiscope.agent.loopwatch import FOLLOW_CPU_SHARE
from apiscope.agent.recorder import MAX_KEEP_EVERY
from apiscope.collectors.gillooks import INTERVAL as LOOK_INTERVAL

FIRST_RATE = 25  # Hz: the first window's, at most
MIN_RATE = 5  # Hz: below this the stacks say little; only a budget it breaks goes lower
LAST_RESORT_RATE = 2  # Hz: where even `MIN_RATE` costs more than the budget
# Hz: py-spy's least, where even `LAST_RESORT_RATE` costs more than the budget, window after
# window (a server of many threads, each read at every tick: see docs/sampling.md)
LEAST_RATE = 1
FLOOR_BREAKS = 2  # windows at a floor over the budget before the rate may go below it
# A window over the budget at `LAST_RESORT_RATE` counts towards `LEAST_RATE` only when py-spy's
# ticks took this share of the budget or more.
TICKS_SHARE_TO_GO_LOWER = 0.25
SMOOTHING = 0.3  # weight of the newest window in the learnt costs
WINDOW_FACTORS = (1, 2, 4, 8)  # window lengths the budget chooses from, times the one asked for
# What the cost is made of: py-spy's start-ups (one per window), py-spy's sample ticks, the
# agents in the targets (their own threads, their profiles' sampled slices), and the collector
# (this process).
COST_PARTS = ("pyspy_startup", "pyspy_samples", "agent", "collector")


@dataclass(slots=True)
class WindowCost:
    """What one window cost, as measured."""

    seconds: float  # the window's length
    rate_hz: int  # the rate it was sampled at
    pyspy_cpu: float  # py-spy's CPU seconds over the window, its start-up included
    agent_cpu: float = 0.0  # the agent's own CPU seconds over the window, all processes
    processes: int = 1  # processes sampled
    startup_cpu: float = 0.0  # of pyspy_cpu, what starting the window's py-spy cost
    collector_cpu: float = 0.0  # apiscope's own CPU seconds over the window
    capacity: float | None = None  # cores the target can use (None: one per process sampled)

    @property
    def cores(self) -> float:
        return self.capacity if self.capacity is not None else float(max(1, self.processes))


@dataclass(frozen=True, slots=True)
class Plan:
    """The next window: its sampling rate and its length in seconds."""

    rate_hz: int
    seconds: float = 1.0


def _mean(old: float | None, new: float) -> float:
    return new if old is None else SMOOTHING * new + (1 - SMOOTHING) * old


@dataclass(slots=True)
class OverheadBudget:
    """Chooses each window's sampling rate and length so that the measured cost stays within
    budget."""

    max_overhead: float  # fraction of the target's capacity, e.g. 0.02
    requested_rate: int  # the most: `--rate`
    min_rate: int = MIN_RATE
    last_resort_rate: int = LAST_RESORT_RATE
    base_window: float = 1.0  # seconds: the length asked for, when the budget allows it
    tick_cost: float | None = None  # learnt: py-spy CPU seconds per tick per process
    startup_cost: float | None = None  # learnt: py-spy CPU seconds per start-up
    fixed_cores: float | None = None  # learnt: agent + collector CPU seconds per second
    history: list[tuple[float, int]] = field(default_factory=list)  # (cost fraction, rate)
    seconds: list[float] = field(default_factory=list)  # each history entry's window length
    last_cores: float = 1.0  # the capacity of the last window accounted
    over_at_floor: int = 0  # windows at `min_rate` or below that cost more than the budget
    # of those, once the floor broke: at `last_resort_rate` or below, py-spy's ticks a good part
    over_at_last_resort: int = 0
    # Each part's cost over the windows so far, in seconds of the target's capacity
    # (CPU seconds / cores): divided by the windows' seconds, the parts sum to `mean_cost`.
    parts: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COST_PARTS, 0.0))
    last_parts: dict[str, float] = field(default_factory=dict)  # the last window's, fractions

    def first_rate(self) -> int:
        """The rate of the first window, before any cost is known: the rate asked for, at most
        `FIRST_RATE`. At 100 Hz a first second on a Django server cost py-spy 160-190 ms, half
        a percent of a 30 s session's budget by itself."""
        return max(self.min_rate, min(self.requested_rate, FIRST_RATE))

    def observe(self, cost: WindowCost) -> int:
        """Account one window and return the rate for the next one."""
        return self.plan_after(cost).rate_hz

    def plan_after(self, cost: WindowCost) -> Plan:
        """Account one window and plan the next one."""
        ticks = cost.seconds * cost.rate_hz * max(1, cost.processes)
        if cost.seconds > 0 and ticks > 0:
            startup = min(cost.startup_cpu, cost.pyspy_cpu)
            self.tick_cost = _mean(self.tick_cost, (cost.pyspy_cpu - startup) / ticks)
            if cost.startup_cpu > 0:
                self.startup_cost = _mean(self.startup_cost, startup)
            self.fixed_cores = _mean(self.fixed_cores,
                                     (cost.agent_cpu + cost.collector_cpu) / cost.seconds)
            spent = (cost.pyspy_cpu + cost.agent_cpu + cost.collector_cpu) / (
                cost.seconds * cost.cores)
            for name, cpu in zip(COST_PARTS, (startup, cost.pyspy_cpu - startup,
                                              cost.agent_cpu, cost.collector_cpu), strict=True):
                self.parts[name] += cpu / cost.cores
                self.last_parts[name] = cpu / (cost.seconds * cost.cores)
            self.history.append((spent, cost.rate_hz))
            self.seconds.append(cost.seconds)
            if spent > self.max_overhead and cost.rate_hz <= self.min_rate:
                self.over_at_floor += 1
                # Lower still only where py-spy's ticks are what breaks it: a collector or
                # an agent over the budget by itself is not paid for with fewer samples.
                if self.floor_broken and cost.rate_hz <= self.last_resort_rate and \
                        self.last_parts["pyspy_samples"] >= \
                        self.max_overhead * TICKS_SHARE_TO_GO_LOWER:
                    self.over_at_last_resort += 1
            self.last_cores = cost.cores
        return self.plan(cost.processes, cost.cores)

    def rate_for(self, other_cores: float, processes: int, cores: float,
                 window: float = 0.0) -> int:
        """The rate the budget affords with `other_cores` (CPU s/s: the agents' and the
        collector's) spent elsewhere, sampling `processes` processes of a target that can use
        `cores`, for windows of `window` seconds (0: start-ups not counted)."""
        if self.tick_cost is None:
            return self.requested_rate
        processes = max(1, processes)
        startups = (self.startup_cost or 0.0) / window if window > 0 else 0.0
        left = self.max_overhead * cores - other_cores - startups  # core-s per second
        if left <= 0:
            return self.floor
        if self.tick_cost <= 0:
            return self.requested_rate
        affordable = left / (self.tick_cost * processes)
        return int(max(self.floor, min(self.requested_rate, affordable)))

    @property
    def floor_broken(self) -> bool:
        """`FLOOR_BREAKS` windows at `min_rate` or below cost more than the budget."""
        return self.over_at_floor >= FLOOR_BREAKS

    @property
    def last_resort_broken(self) -> bool:
        """And as many more at `last_resort_rate` or below, with py-spy's ticks a good part."""
        return self.over_at_last_resort >= FLOOR_BREAKS

    @property
    def floor(self) -> int:
        """The lowest rate allowed now: `min_rate`; `last_resort_rate` once `min_rate` broke
        the budget; py-spy's least once that broke it too."""
        if self.last_resort_broken:
            return min(self.min_rate, LEAST_RATE)
        return min(self.min_rate, self.last_resort_rate) if self.floor_broken else self.min_rate

    def plan(self, processes: int, cores: float) -> Plan:
        """The shortest window (the freshest live view) at which the budget affords the rate
        asked for; failing that, the longest, at the rate it affords."""
        fixed = self.fixed_cores or 0.0
        windows = [self.base_window * factor for factor in WINDOW_FACTORS]
        for window in windows:
            rate = self.rate_for(fixed, processes, cores, window)
            if rate >= self.requested_rate:
                return Plan(rate, window)
        return Plan(self.rate_for(fixed, processes, cores, windows[-1]), windows[-1])

    @property
    def over_budget(self) -> bool:
        """True when even the lowest rate costs more than the budget (the last window)."""
        return bool(self.history) and self.history[-1][0] > self.max_overhead \
            and self.history[-1][1] <= self.min_rate

    def room(self) -> float | None:
        """Cores the last window left unspent within the budget (negative: over it); None
        before the first window."""
        if not self.history:
            return None
        return (self.max_overhead - self.history[-1][0]) * self.last_cores

    def mean_cost(self) -> float:
        """The cost fraction over the windows so far, weighted by their length (0 before any):
        a first short window at the rate asked for weighs no more than its seconds."""
        total = sum(self.seconds)
        if not total:
            return 0.0
        return sum(c * s for (c, _), s in zip(self.history, self.seconds, strict=True)) / total

    def breakdown(self) -> dict[str, float]:
        """`mean_cost` by part (`COST_PARTS`), fractions of the target's capacity that sum to
        it; empty before any window."""
        total = sum(self.seconds)
        if not total:
            return {}
        return {name: cpu / total for name, cpu in self.parts.items()}


KEEP_SHARE = 0.5  # of the budget, the most that taking in the agents' requests may cost
# Of the budget, the most the agents' per-request profiles may sample (pyinstrument's slices,
# charged whole: see `profile_share`).
PROFILE_SHARE = 0.25


def profile_share(max_overhead: float, scale: float = 1.0) -> float:
    """The share of the clock each agent's per-request profiles may sample: `PROFILE_SHARE`
    of the budget (`max_overhead`, a fraction), cut with the watchdogs' share while the budget
    is over at its lowest rate (`scale`, `WatchShare.scale`). A sampled slice slows the code it
    samples, and is charged to the budget whole (the agent's `spent_seconds`, with the
    bookkeeping of the slices it only times): an upper bound of what the profiles cost, since
    the code would have run anyway. Left to the agents' own default (2 % of the clock), the
    profiles cost outside the budget as much as the budget itself."""
    return round(PROFILE_SHARE * max_overhead * scale, 6)
MIN_KEPT_RPS = 100  # kept requests a second per process below which all are kept (cheap)


@dataclass(slots=True)
class RequestKeeping:
    """How many of the requests the agents keep: one in `every`, at random (errors and
    requests slower than the SLO always), chosen second by second so that taking them in
    costs at most `KEEP_SHARE` of the budget.

    What taking in a request costs is measured, not assumed: the collector's CPU time in
    pulling, decoding, exporting and storing the agents' requests (`observe`'s `cpu`). A
    saturated server answering thousands of requests a second would otherwise cost the
    collector more than the whole budget, and grow the session by more than a gigabyte an
    hour; each kept request carries the number it stands for, so counts, rates and
    percentiles stay estimates of all of them.
    """

    max_overhead: float  # fraction of the target's capacity, e.g. 0.02
    every: int = 1
    history: list[int] = field(default_factory=list)  # `every` after each observation
    _room: float | None = None  # the budget's room last seen, and what keeping more took of it
    _room_taken: float = 0.0

    def observe(self, seconds: float, cpu: float, kept: int, represented: int | None = None,
                processes: int = 1, over_budget: bool = False,
                room: float | None = None) -> int:
        """Account `seconds` in which taking in `kept` records of `represented` requests (the
        sum of their weights; None: as many) cost `cpu` CPU seconds; return how many to keep
        (one in n) from now on. `over_budget`: the whole cost is over the budget with sampling
        at its lowest rate already, so requests give up more. `room`: the cores the whole
        budget had left in its last window (None: not known yet); requests are kept more
        again only when keeping twice as many fits in it, else a target at the budget's
        floor swings between giving requests up and taking them back, over budget half the
        time."""
        if seconds <= 0:
            return self.every
        processes = max(1, processes)
        share = KEEP_SHARE * self.max_overhead * processes  # cores
        cores = cpu / seconds
        kept_rps, floor = kept / seconds, MIN_KEPT_RPS * processes
        # The most that still keeps `floor` a second: fewer would leave estimates too coarse.
        # From the requests the records stand for, not from `every`: records drained just
        # after a change were kept under the one before.
        total_rps = (kept if represented is None else represented) / seconds
        ceiling = min(MAX_KEEP_EVERY, max(1, int(total_rps / floor)))
        if kept_rps > floor and cores > share:
            # Kept requests fall in proportion: aim at the share in one step.
            self.every = min(ceiling, max(self.every + 1, math.ceil(self.every * cores / share)))
        elif kept_rps > floor and over_budget and cores > share / 8:
            self.every = min(ceiling, self.every * 2)
        elif self.every > 1 and (kept_rps < floor / 2 or cores < share / 4 and not over_budget
                                 and self._fits(room, cores)):
            self.every = max(1, self.every // 2)  # the load fell: keep more, gently
        self.history.append(self.every)
        return self.every

    def _fits(self, room: float | None, cores: float) -> bool:
        """Whether keeping twice as many (`cores` more) fits in the budget's `room`, less what
        keeping more took of that room already: the room is a window's (several seconds),
        asked of every second, and changes only when the next window is accounted."""
        if room is None:
            return True
        if room != self._room:
            self._room, self._room_taken = room, 0.0
        if room - self._room_taken < cores:
            return False
        self._room_taken += cores
        return True


MIN_WATCH_SHARE = FOLLOW_CPU_SHARE / 16  # the least given to following a loop's long passes
MAX_LOOK_SPACING = 4  # the looks for GIL waits, at most this many times their default interval


@dataclass(slots=True)
class WatchShare:
    """The share of a core each agent's loop watchdog may spend following its loop's long
    passes (their stacks and the kernel's looks), chosen window by window within the budget.

    While a loop is held now and then, following (and checking closely for the next hold)
    is most of what the watchdogs cost: 12 ms of CPU a second at the agents' default share of
    0.5 % on an API that created an HTTP client per request, which read 3.6 % against a 2 %
    budget with sampling at its floor (3.6 ms a second with this, and 3.0-3.1 %). A window over
    budget at the lowest sampling rate halves the share (down to a sixteenth); a window that
    left room for twice the share in every process doubles it back, up to the default. Every
    long pass is still timed whatever the share: only how many are seen in the act changes.

    The live analysis of the flags (`cli.collecting.ANALYSIS_SHARE`) is cut in the same
    proportion (`scale`). The collector's looks at the busy threads for GIL waits
    (`gillooks`) follow the same signal (`look_interval`): 25 a second cost 3.5 ms of its CPU
    a second on a saturated worker with five busy threads, at a budget of 20 ms. They are
    spaced out as the share is cut, to at most `MAX_LOOK_SPACING` times their default
    interval: each look is a share's sample, so fewer make a noisier share, never a biased
    one.
    """

    share: float = FOLLOW_CPU_SHARE
    history: list[float] = field(default_factory=list)  # the share after each window
    _windows: int = 0  # the budget's windows accounted so far

    def observe(self, budget: OverheadBudget, processes: int = 1) -> float:
        """The share from now on, given the budget's windows so far (acts once per window)."""
        if len(budget.history) == self._windows:
            return self.share
        self._windows = len(budget.history)
        room = budget.room()
        if budget.over_budget:
            self.share = max(MIN_WATCH_SHARE, self.share / 2)
        elif room is not None and room >= self.share * max(1, processes) \
                and self.share < FOLLOW_CPU_SHARE:
            self.share = min(FOLLOW_CPU_SHARE, self.share * 2)
        self.history.append(self.share)
        return self.share

    @property
    def scale(self) -> float:
        """The share as a part of its default: 1, down to a sixteenth while the budget is over
        at the lowest rate. The live analysis's share of the budget follows it too."""
        return self.share / FOLLOW_CPU_SHARE

    @property
    def look_interval(self) -> float:
        """Seconds between the collector's looks for GIL waits at this share."""
        return LOOK_INTERVAL * min(MAX_LOOK_SPACING, FOLLOW_CPU_SHARE / self.share)
