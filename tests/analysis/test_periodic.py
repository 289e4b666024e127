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


def test_the_pause_follows_the_cpu_a_run_used_not_the_time_it_took() -> None:
    paced = PeriodicAnalysis(lambda: 1, lambda _: None, interval=10, name="test",
                             max_share=0.005)
    # 0.25 s of CPU over 0.5 s (the rest waiting for the GIL): 50 s a run, at 0.5 %.
    assert paced.pause(0.5, cpu=0.25) == pytest.approx(49.5)
    assert paced.pause(5.0, cpu=0.01) == 10  # long, but cheap: the interval


def test_each_run_is_paced_by_its_own_threads_cpu() -> None:
    starts: list[float] = []

    def burn() -> int:
        starts.append(time.monotonic())
        end = time.thread_time() + 0.05
        while time.thread_time() < end:
            pass
        return 1

    runs: list[float] = []
    paced = PeriodicAnalysis(burn, lambda _: runs.append(time.monotonic()), interval=0.01,
                             name="test", immediately=True, max_share=0.25)
    paced.start()
    deadline = time.monotonic() + 10
    while len(runs) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    paced.stop()
    assert len(runs) >= 3
    # 50 ms of CPU at a quarter of a core: a run begun every 200 ms at the most, however long
    # a busy host made each run last (the end-to-end spacing is not bound: a run the host
    # stretched to 150 ms pauses 50 ms, and the next may take its 50 ms at once).
    assert all(b - a >= 0.19 for a, b in zip(starts, starts[1:], strict=False))


def test_a_share_given_as_a_function_is_asked_after_each_run() -> None:
    shares = iter([0.01, 0.0025])
    paced = PeriodicAnalysis(lambda: 1, lambda _: None, interval=1, name="test",
                             max_share=lambda: next(shares))
    assert paced.pause(0.1, cpu=0.1) == pytest.approx(9.9)
    assert paced.pause(0.1, cpu=0.1) == pytest.approx(39.9)  # the budget cut it to a quarter
