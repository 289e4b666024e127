"""The figures a collection computes from its collectors' deliveries."""

from __future__ import annotations

from apiscope.collect.figures import loop_blocked_seconds, overhead_percent, window_counts
from apiscope.collectors.budget import OverheadBudget
from apiscope.model import Frame, SampleState, StackSample, StackWindow, ThreadRole

FRAMES = (Frame("f", "app.py", 1),)


def test_window_counts_expect_rate_times_seconds_times_threads() -> None:
    window = StackWindow(start=0.0, end=2.0, rate_hz=10, errors=2,
                         samples=(StackSample(1, 1, "a", FRAMES, 15),
                                  StackSample(1, 2, "b", FRAMES, 20)))
    counts = window_counts(window)
    assert (counts.expected, counts.stored, counts.errors, counts.dropped) == (40.0, 35, 2, 3)


def test_more_samples_than_expected_drop_nothing() -> None:
    window = StackWindow(start=0.0, end=1.0, rate_hz=10,
                         samples=(StackSample(1, 1, "a", FRAMES, 12),))
    assert window_counts(window).dropped == 0


def test_only_the_loop_thread_busy_counts_as_blocked() -> None:
    window = StackWindow(
        start=0.0, end=1.0, rate_hz=100,
        samples=(StackSample(1, 1, "loop", FRAMES, 30, SampleState.RUNNING),
                 StackSample(1, 1, "loop", FRAMES, 70, SampleState.WAITING),
                 StackSample(1, 2, "pool", FRAMES, 50, SampleState.RUNNING),
                 StackSample(2, 1, "loop", FRAMES, 5, SampleState.RUNNING)),
        threads={(1, 1): ThreadRole.LOOP, (1, 2): ThreadRole.WORKER, (2, 1): ThreadRole.LOOP})
    assert loop_blocked_seconds(window) == {1: 0.3, 2: 0.05}


def test_no_overhead_without_a_budget_or_before_its_first_window() -> None:
    assert overhead_percent(None) is None
    assert overhead_percent(OverheadBudget(0.02, 100)) is None
