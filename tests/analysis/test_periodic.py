"""The background loop behind the live flags of /metrics and of the dashboard."""

from __future__ import annotations

import threading
import time

import pytest

from apiscope.analysis.periodic import PeriodicAnalysis


def test_a_failed_run_is_counted_and_publishes_nothing() -> None:
    published: list[int] = []
    errors: list[str] = []
    results = iter([1, ValueError("half written"), 3])

    def analyse() -> int:
        value = next(results)
        if isinstance(value, Exception):
            raise value
        return value

    periodic = PeriodicAnalysis(analyse, published.append, on_error=errors.append,
                                interval=60, name="test")
    assert periodic.run_once() and not periodic.run_once() and periodic.run_once()
    assert published == [1, 3] and errors == ["ValueError: half written"]
    assert periodic.failures == 1 and periodic.last_error == "ValueError: half written"


def test_the_first_run_waits_an_interval_unless_asked_at_once() -> None:
    ran = threading.Event()
    waiting = PeriodicAnalysis(lambda: 1, lambda _: ran.set(), interval=60, name="test")
    waiting.start()
    assert not ran.wait(0.3)
    waiting.stop()
    assert not waiting._thread.is_alive() and not ran.is_set()

    at_once = PeriodicAnalysis(lambda: 1, lambda _: ran.set(), interval=60, name="test",
                               immediately=True)
    at_once.start()
    assert ran.wait(10)
    at_once.stop()
    assert not at_once._thread.is_alive()


def test_it_repeats_every_interval_or_runs_once() -> None:
    runs: list[float] = []
    done = threading.Event()

    def record(_: int) -> None:
        runs.append(time.monotonic())
        if len(runs) == 3:
            done.set()

    periodic = PeriodicAnalysis(lambda: 1, record, interval=0.05, name="test")
    periodic.start()
    assert done.wait(10)
    periodic.stop()
    assert all(b - a >= 0.05 for a, b in zip(runs, runs[1:], strict=False))

    once: list[int] = []
    single = PeriodicAnalysis(lambda: 1, once.append, interval=0.01, name="test",
                              immediately=True, repeat=False)
    single.start()
    single._thread.join(10)
    assert once == [1]


def test_a_slow_run_lengthens_the_pause_to_keep_its_share_of_a_core() -> None:
    paced = PeriodicAnalysis(lambda: 1, lambda _: None, interval=15, name="test",
                             max_share=0.2)
    assert paced.pause(1.0) == 15
    assert paced.pause(5.0) == pytest.approx(20.0)
    assert PeriodicAnalysis(lambda: 1, lambda _: None, interval=15, name="test").pause(60) == 15
