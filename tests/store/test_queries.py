"""The store's reads for views that grow with the session: rows past an id, block sums, and
the stack encoding read in one place."""

from __future__ import annotations

from pathlib import Path

import pytest

from apiscope.model import (
    Frame,
    QueryStat,
    RequestRecord,
    ResourceSample,
    SampleState,
    StackSample,
    StackWindow,
    ThreadRole,
)
from apiscope.store import SessionReader, SessionWriter
from apiscope.store.queries import RequestStatement, SampleSummary, StackCount
from apiscope.store.schema import decode_frame_ids, encode_frame_ids

ROOT = Frame("run_forever", "/usr/lib/python3.11/asyncio/base_events.py", 607)
HANDLER = Frame("handler", "/app/main.py", 12)
QUERY = Frame("fetch", "/app/db.py", 40)


def window(start: float, frames: tuple[Frame, ...], count: int = 3,
           state: SampleState = SampleState.RUNNING, gil: bool | None = None) -> StackWindow:
    sample = StackSample(10, 11, "MainThread", frames, count, state, gil)
    return StackWindow(start, start + 1, 100, (sample,), threads={(10, 11): ThreadRole.LOOP})


@pytest.mark.parametrize("ids", [(), (7,), (1, 2, 30)])
def test_frame_ids_read_back_as_written(ids: tuple[int, ...]) -> None:
    assert decode_frame_ids(encode_frame_ids(ids)) == ids


def test_new_stacks_are_read_past_the_last_id(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    writer = SessionWriter(path)
    writer.put_window(window(0.0, (ROOT, HANDLER)))
    writer.flush()
    reader = SessionReader(path)
    first = reader.stacks_after(0)
    assert list(first.values()) == [(ROOT, HANDLER)]
    writer.put_window(window(1.0, (ROOT, HANDLER, QUERY)))  # a frame the reader has not seen
    writer.close()
    later = reader.stacks_after(max(first))
    assert list(later.values()) == [(ROOT, HANDLER, QUERY)]
    assert reader.stack(max(later)) == (ROOT, HANDLER, QUERY)


def test_stack_counts_sum_by_block_and_by_window(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with SessionWriter(path) as writer:
        writer.put_window(window(0.0, (ROOT,), 2, SampleState.WAITING))
        writer.put_window(window(1.0, (ROOT, HANDLER), 5, gil=True))
        writer.put_window(window(2.0, (ROOT, HANDLER), 7, gil=True))
    reader = SessionReader(path)
    stacks = {frames: sid for sid, frames in reader.stacks_after(0).items()}
    idle, busy = stacks[(ROOT,)], stacks[(ROOT, HANDLER)]
    blocks = reader.stack_counts_by_block(0, 3, windows_per_block=2)
    assert sorted(blocks, key=lambda b: (b[0], b[1].stack_id)) == sorted([
        (0, StackCount(10, 11, idle, "waiting", None, 2)),
        (0, StackCount(10, 11, busy, "running", True, 5)),
        (1, StackCount(10, 11, busy, "running", True, 7))], key=lambda b: (b[0], b[1].stack_id))
    assert reader.stack_counts_in([2, 3]) == [StackCount(10, 11, busy, "running", True, 12)]
    assert reader.stack_counts_in([]) == []
    assert reader.active_counts(0, 3) == {2: 5, 3: 7}
    assert reader.active_counts(2, 3) == {3: 7}


def test_sample_summary_covers_the_sampled_span(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with SessionWriter(path) as writer:
        writer.set_meta(command="x")
    assert SessionReader(path).sample_summary() == SampleSummary(0, 0, None, None, ())
    with SessionWriter(path) as writer:
        writer.put_window(window(5.0, (ROOT,), 4))
        writer.put_window(window(9.0, (ROOT,), 6))
    assert SessionReader(path).sample_summary() == SampleSummary(1, 10, 5.0, 10.0, (10,))


def test_requests_statements_and_resources_past_an_id(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    few = QueryStat("SELECT 1", 2, 1.0, "/app/a.py", 3)
    many = QueryStat("SELECT 2", 9, 4.0, "/app/a.py", 4)
    with SessionWriter(path) as writer:
        writer.put_requests([RequestRecord(10, 1.0, 5.0, "GET", "/a", 200, queries=(many, few)),
                             RequestRecord(10, 2.0, 6.0, "POST", "/b", 500, "ValueError")])
        writer.put_resources([ResourceSample(1.0, 10, 5.0, 1000, 4, 20),
                              ResourceSample(2.0, 10, 7.0, 2000, 5, 21)])
    reader = SessionReader(path)
    first, second = reader.requests_after(0)
    assert (first.method, first.route, first.query_count, first.query_ms) == ("GET", "/a", 11,
                                                                              5.0)
    assert (second.status, second.exc_type) == (500, "ValueError")
    assert reader.requests_after(first.id) == [second]
    assert reader.request_statements([first.id, second.id]) == [
        RequestStatement(first.id, "SELECT 1", 2), RequestStatement(first.id, "SELECT 2", 9)]
    assert reader.request_statements([]) == []
    rows = reader.resources_after(0)
    assert [s for _, s in rows] == reader.resources()
    assert reader.resources_after(rows[0][0]) == rows[1:]
