from __future__ import annotations

import threading

import pytest

from apiscope.agent.recorder import Recorder, RequestEntry


def entry(i: int) -> RequestEntry:
    return RequestEntry(float(i), 1.0, "GET", "/x", 200, None, None, None, ())


def test_full_buffer_drops_oldest_and_counts_them() -> None:
    recorder = Recorder(capacity=3)
    for i in range(5):
        recorder.record(entry(i))
    assert recorder.recorded == 5
    assert recorder.dropped == 2
    assert [e.start for e in recorder.drain()] == [2.0, 3.0, 4.0]
    assert recorder.dropped == 2  # draining is not dropping
    recorder.record(entry(5))
    assert [e.start for e in recorder.drain()] == [5.0]
    assert (recorder.recorded, recorder.dropped, len(recorder)) == (6, 2, 0)


def test_drain_of_empty_buffer() -> None:
    recorder = Recorder(capacity=1)
    assert recorder.drain() == []
    assert recorder.dropped == 0


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Recorder(capacity=0)


def test_concurrent_drain_loses_nothing_it_does_not_count() -> None:
    """A writer and a draining thread at once: every entry is drained or counted as dropped."""
    recorder = Recorder(capacity=100)
    total = 50_000
    drained: list[RequestEntry] = []
    done = threading.Event()

    def drain_until_done() -> None:
        while not done.is_set():
            drained.extend(recorder.drain())
        drained.extend(recorder.drain())

    thread = threading.Thread(target=drain_until_done)
    thread.start()
    for i in range(total):
        recorder.record(entry(i))
    done.set()
    thread.join(timeout=30)
    assert recorder.recorded == total
    assert len(drained) + recorder.dropped == total
    starts = [e.start for e in drained]
    assert starts == sorted(starts)  # oldest first, never duplicated
    assert len(set(starts)) == len(starts)
