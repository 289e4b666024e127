"""The few figures a collection computes from what its collectors deliver.

They feed the live metrics and the session's summary; the analysis proper happens later, on
the stored session (`apiscope.analysis`).
"""

from __future__ import annotations

from dataclasses import dataclass

from apiscope.collectors.budget import OverheadBudget
from apiscope.collectors.samplerstats import window_loss
from apiscope.model import SampleState, StackWindow, ThreadRole


@dataclass(frozen=True, slots=True)
class WindowCounts:
    """One window's samples: stored, failed reads, and those expected that never came."""

    stored: int
    errors: int
    dropped: int
    expected: float


def window_counts(window: StackWindow) -> WindowCounts:
    """Expected is rate x seconds x threads seen: what neither arrived nor failed is dropped."""
    loss = window_loss(window)
    dropped = max(0, int(loss.expected) - loss.stored - loss.errors)
    return WindowCounts(loss.stored, loss.errors, dropped, loss.expected)


def loop_blocked_seconds(window: StackWindow) -> dict[int, float]:
    """Per process, the seconds its event-loop thread was seen doing something other than
    waiting for events (each sample stands for 1/rate seconds)."""
    blocked: dict[int, int] = {}
    for s in window.samples:
        role = window.threads.get((s.pid, s.tid), ThreadRole.OTHER)
        if role is ThreadRole.LOOP and s.state is not SampleState.WAITING:
            blocked[s.pid] = blocked.get(s.pid, 0) + s.count
    return {pid: count / window.rate_hz for pid, count in blocked.items()}


def overhead_percent(budget: OverheadBudget | None) -> float | None:
    """The measured cost of the session, percent of the target's capacity (mean); None
    without a budget or before its first window."""
    if budget is None or not budget.history:
        return None
    return round(100 * budget.mean_cost(), 3)


def overhead_parts(budget: OverheadBudget | None) -> dict[str, float]:
    """`overhead_percent` by part (`budget.COST_PARTS`), percent; empty when it is None."""
    if budget is None or not budget.history:
        return {}
    return {name: round(100 * share, 3) for name, share in budget.breakdown().items()}
