"""The fan-out: each record reaches the session and the metrics through one method."""

from __future__ import annotations

from apiscope.collect.fanout import RecordSink
from apiscope.collectors.agent_client import WatchdogReport
from apiscope.model import (
    Frame,
    GilSample,
    OffloadLooks,
    ProcessInfo,
    ResourceSample,
    SampleState,
    StackSample,
    StackWindow,
    StoredProfile,
    ThreadPoolSample,
    ThreadRole,
)
from tests.collect.fakes import FakeMetrics, FakeWriter, request, stats

FRAMES = (Frame("handler", "app.py", 3),)


def sink() -> tuple[RecordSink, FakeWriter, FakeMetrics]:
    writer, metrics = FakeWriter(), FakeMetrics()
    return RecordSink(writer, metrics), writer, metrics


def window() -> StackWindow:
    """One second at 10 Hz of two threads of pid 7: the loop busy 4 samples, idle 3; a
    pool thread 2 samples: 9 stored of 20 expected, 1 error."""
    samples = (
        StackSample(7, 1, "MainThread", FRAMES, 4, SampleState.RUNNING),
        StackSample(7, 1, "MainThread", FRAMES, 3, SampleState.WAITING),
        StackSample(7, 2, "pool", FRAMES, 2, SampleState.RUNNING),
    )
    return StackWindow(start=0.0, end=1.0, rate_hz=10, samples=samples, errors=1,
                       threads={(7, 1): ThreadRole.LOOP, (7, 2): ThreadRole.WORKER})


def test_a_window_is_stored_and_counted_with_its_losses_and_loop_time() -> None:
    s, writer, metrics = sink()
    counts = s.window(window())
    assert len(writer.named("put_window")) == 1
    assert (counts.stored, counts.errors, counts.dropped) == (9, 1, 10)
    assert metrics.named("observe_samples") == [(9, 1, 10)]
    assert metrics.named("observe_loop_blocked") == [(7, 0.4)]


def test_requests_go_to_both_and_an_empty_batch_to_neither() -> None:
    s, writer, metrics = sink()
    s.requests([])
    assert writer.calls == [] and metrics.calls == []
    s.requests([request(7), request(7)])
    assert len(writer.named("put_requests")[0][0]) == 2
    assert len(metrics.named("observe_requests")[0][0]) == 2


def test_resources_threadpool_and_agent_stats_go_to_both() -> None:
    s, writer, metrics = sink()
    sample = ResourceSample(ts=1.0, pid=7, cpu_percent=5.0, rss_bytes=1, threads=2, fds=3)
    pool = ThreadPoolSample(ts=1.0, pid=7, total_tokens=40, borrowed_tokens=3, waiting=0)
    s.resources([sample])
    s.threadpool(pool)
    s.agent_stats(stats(7, recorded=5))
    assert [m for m, _, _ in writer.calls] == ["put_resources", "put_threadpool",
                                               "put_agent_stats"]
    assert [m for m, _ in metrics.calls] == ["observe_resources", "observe_threadpool",
                                             "observe_agent"]


def test_an_exited_process_is_stored_and_its_gauges_dropped() -> None:
    s, writer, metrics = sink()
    s.exited(7, 12.5)
    assert writer.named("mark_exited") == [(7, 12.5)]
    assert metrics.named("forget_process") == [(7,)]


def test_session_only_records_touch_no_metric() -> None:
    s, writer, metrics = sink()
    s.meta(end=3.0)
    s.process(ProcessInfo(pid=7, ppid=None, role="single", command="x", first_seen=0.0))
    s.routes(7, [])
    s.profile(StoredProfile(7, 1.0, "GET", "/a", 2.0, None))
    s.watchdogs(WatchdogReport(stalls=[], lag=[], gil=GilSample(1.0, 7, 0.5, 0.0, 10, 0.0),
                               cpu_seconds=0.1, errors=0))
    s.offloaded([])  # nothing seen: nothing written
    s.offloaded([OffloadLooks(1.0, 7, "POST /login", 3)])
    assert metrics.calls == []
    assert writer.meta == {"end": 3.0}
    assert [m for m, _, _ in writer.calls] == ["set_meta", "put_process", "put_routes",
                                               "put_profile", "put_loop_stalls",
                                               "put_loop_lag", "put_gil", "put_offloaded"]

