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


def test_keeping_one_in_n_weighs_each_kept_request_by_n() -> None:
    recorder = Recorder(capacity=100_000)
    recorder.keep(8)
    for i in range(40_000):
        recorder.record(entry(i))
    kept = recorder.drain()
    assert {e.weight for e in kept} == {8}
    # One in 8 at random: 5,000 expected, the spread of a binomial is ~66.
    assert 4_600 < len(kept) < 5_400
    assert recorder.skipped == 40_000 - len(kept)
    assert recorder.dropped == 0  # left out on purpose is not lost
    assert [e.start for e in kept] == sorted(e.start for e in kept)


def test_errors_and_slow_requests_are_always_kept_and_stand_for_one() -> None:
    recorder = Recorder()
    recorder.keep(1024, slower_ms=100.0)
    failed = [RequestEntry(1.0, 2.0, "GET", "/x", 503, None, None, None, ()),
              RequestEntry(2.0, 2.0, "GET", "/x", 500, "KeyError", "app.py", 3, ()),
              RequestEntry(3.0, 2.0, "GET", "/x", 200, "CancelledError", None, None, ())]
    slow = RequestEntry(4.0, 150.0, "GET", "/x", 200, None, None, None, ())
    for e in (*failed, slow):
        recorder.record(e)
    assert recorder.drain() == [*failed, slow]  # weight 1 each: nothing else stands for them


def test_keeping_all_again_and_bad_settings() -> None:
    recorder = Recorder()
    recorder.keep(4)
    recorder.keep(1)
    for i in range(100):
        recorder.record(entry(i))
    assert len(recorder.drain()) == 100
    for every, slower in ((0, None), (2000, None), (2.5, None), (2, -1.0), (2, "x")):
        with pytest.raises(ValueError):
            recorder.keep(every, slower)  # type: ignore[arg-type]
    assert recorder.keep_every == 1


def test_keeping_does_not_touch_the_apps_random_numbers() -> None:
    import random

    random.seed(7)
    expected = [random.random() for _ in range(3)]
    random.seed(7)
    recorder = Recorder()
    recorder.keep(2)
    for i in range(50):
        recorder.record(entry(i))
    assert [random.random() for _ in range(3)] == expected


def test_buffered_requests_cost_the_garbage_collector_nothing() -> None:
    """The request path records plain tuples: a collection stops tracking them, while a
    NamedTuple stays tracked (and traversed by every collection) until it is pulled."""
    import gc

    recorder = Recorder()
    for i in range(3):
        recorder.record(tuple(entry(i)))
    recorder.record(entry(3))  # a RequestEntry is accepted as well
    gc.collect()
    buffered = list(recorder._buffer)
    assert not any(gc.is_tracked(item) for item in buffered[:3])
    assert gc.is_tracked(entry(0))  # what the buffer would hold otherwise
    drained = recorder.drain()
    assert all(type(e) is RequestEntry for e in drained)
    assert [(e.start, e.route, e.weight) for e in drained] == [
        (float(i), "/x", 1) for i in range(4)]


def test_a_plain_tuple_kept_one_in_n_carries_its_weight() -> None:
    recorder = Recorder()
    recorder.keep(4)
    for i in range(400):
        recorder.record(tuple(entry(i)))
    kept = recorder.drain()
    assert kept and all(e.weight == 4 for e in kept)
    assert len(kept) + recorder.skipped == 400
