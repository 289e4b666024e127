"""An overhead budget, enforced: the sampling rate adapts window by window to stay within it.

apiscope's cost to the target is measured as it runs, each window:

- py-spy's own CPU time (user + system, from the kernel). In py-spy's default blocking mode
  the target is stopped while py-spy reads it, so this is also (an upper bound of) the time the
  target lost; in non-blocking mode it is CPU taken from a machine the target shares.
- the agent's CPU inside the target (its watchdogs' own threads; the per-request recording is
  measured separately in the benchmarks and is not rate-dependent).

The budget is `max_overhead` (a fraction, 0.02 for `--max-overhead 2`) of the target's
capacity: one core per sampled process (a CPython process runs Python on at most one core at a
time). The cost of one sample tick is learnt from the windows (an exponentially weighted mean
of py-spy's CPU per tick), and the next window's rate is what the budget left after the
agent's share pays for, between `min_rate` and the rate asked for. A busy target gets fewer
samples, never a slower service; the effective rate of each window is stored with it, and every
figure that turns counts into time uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MIN_RATE = 5  # Hz: below this the stacks say too little to be worth their cost
SMOOTHING = 0.3  # weight of the newest window in the mean cost per tick


@dataclass(slots=True)
class WindowCost:
    """What one window cost, as measured."""

    seconds: float  # the window's length
    rate_hz: int  # the rate it was sampled at
    pyspy_cpu: float  # py-spy's CPU seconds over the window
    agent_cpu: float = 0.0  # the agent's own CPU seconds over the window, all processes
    processes: int = 1  # processes sampled


@dataclass(slots=True)
class OverheadBudget:
    """Chooses each window's sampling rate so that the measured cost stays within budget."""

    max_overhead: float  # fraction of the target's capacity, e.g. 0.02
    requested_rate: int  # the most: `--rate`
    min_rate: int = MIN_RATE
    tick_cost: float | None = None  # learnt: py-spy CPU seconds per tick per process
    history: list[tuple[float, int]] = field(default_factory=list)  # (cost fraction, rate)

    def observe(self, cost: WindowCost) -> int:
        """Account one window and return the rate for the next one."""
        ticks = cost.seconds * cost.rate_hz * max(1, cost.processes)
        if cost.seconds > 0 and ticks > 0:
            per_tick = cost.pyspy_cpu / ticks
            self.tick_cost = per_tick if self.tick_cost is None else (
                SMOOTHING * per_tick + (1 - SMOOTHING) * self.tick_cost)
            capacity = cost.seconds * max(1, cost.processes)
            spent = (cost.pyspy_cpu + cost.agent_cpu) / capacity
            self.history.append((spent, cost.rate_hz))
        return self.rate_for(cost.agent_cpu / cost.seconds if cost.seconds > 0 else 0.0,
                             cost.processes)

    def rate_for(self, agent_cores: float, processes: int) -> int:
        """The rate the budget affords, with the agent using `agent_cores` (CPU s/s)."""
        if self.tick_cost is None or self.tick_cost <= 0:
            return self.requested_rate
        processes = max(1, processes)
        left = self.max_overhead * processes - agent_cores  # core-seconds per second
        affordable = left / (self.tick_cost * processes)
        return int(max(self.min_rate, min(self.requested_rate, affordable)))

    @property
    def over_budget(self) -> bool:
        """True when even the lowest rate costs more than the budget (the last window)."""
        return bool(self.history) and self.history[-1][0] > self.max_overhead \
            and self.history[-1][1] <= self.min_rate

    def mean_cost(self) -> float:
        """The mean cost fraction over the windows so far (0 before any)."""
        return sum(c for c, _ in self.history) / len(self.history) if self.history else 0.0
