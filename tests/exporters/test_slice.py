from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from apiscope.errors import UsageError
from apiscope.exporters.slice import SliceSpec, parse_time, resolve_route, select_samples
from apiscope.model import SampleState
from apiscope.store import SessionReader
from tests.exporters.sessions import (
    HEALTH_STACK,
    IDLE_STACK,
    ITEMS_LOAD_STACK,
    ITEMS_STACK,
    ROUTES,
    ROWS,
    T0,
    WORKER_STACK,
    total,
    write_session,
)


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionReader]:
    path = write_session(tmp_path_factory.mktemp("slice") / "s.sqlite")
    with SessionReader(path) as session:
        yield session


def count(reader: SessionReader, **spec: Any) -> int:
    return sum(s.count for s in select_samples(reader, SliceSpec(**spec)))


def test_whole_session_merges_windows_and_keeps_every_sample(reader: SessionReader) -> None:
    samples = select_samples(reader, SliceSpec())
    assert sum(s.count for s in samples) == total() == 171
    keys = [(s.pid, s.tid, s.frames, s.state, s.gil) for s in samples]
    assert len(keys) == len(set(keys)) < len(ROWS)  # merged across windows
    assert samples == select_samples(reader, SliceSpec())  # deterministic order


def test_slice_by_process_and_thread(reader: SessionReader) -> None:
    assert count(reader, pid=100) == total(pid=100) == 116
    assert count(reader, pid=200) == total(pid=200) == 55
    assert count(reader, thread=2) == total(tid=2) == 5
    assert count(reader, pid=100, thread=3) == 0


def test_slice_by_route_template_or_endpoint(reader: SessionReader) -> None:
    items = total(stack=ITEMS_STACK) + total(stack=ITEMS_LOAD_STACK)
    assert items == 67
    assert count(reader, route="GET /items/{item_id}") == items
    assert count(reader, route="/items/{item_id}") == items
    assert count(reader, route="get  /items/{item_id}") == items
    assert count(reader, route="/health") == total(stack=HEALTH_STACK) == 9
    assert count(reader, route="/health", pid=200) == 2


def test_unknown_route_names_the_known_ones(reader: SessionReader) -> None:
    with pytest.raises(UsageError, match=r"GET /health, GET /items/\{item_id\}"):
        select_samples(reader, SliceSpec(route="/nope"))
    with pytest.raises(UsageError):
        select_samples(reader, SliceSpec(route="POST /health"))


def test_slice_by_time_in_seconds_from_start(reader: SessionReader) -> None:
    assert count(reader, since="5") == total(offset=10) + total(offset=20) == 76
    assert count(reader, until="10") == total(offset=0) == 95  # until is exclusive
    assert count(reader, since="10", until="10.5") == total(offset=10) == 20
    assert count(reader, since="0") == 171


def test_slice_by_iso_time(reader: SessionReader) -> None:
    iso = datetime.fromtimestamp(T0 + 10, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    naive = datetime.fromtimestamp(T0 + 20, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    assert count(reader, since=iso) == 76
    assert count(reader, since=iso, until=naive) == total(offset=10)


def test_slice_by_idle_state(reader: SessionReader) -> None:
    waiting = total(state=SampleState.WAITING)
    assert waiting == 95
    assert count(reader, idle="only") == waiting
    assert count(reader, idle="exclude") == 171 - waiting
    assert count(reader, idle="include") == 171
    only = select_samples(reader, SliceSpec(idle="only"))
    assert {s.frames for s in only} == {IDLE_STACK, WORKER_STACK}
    assert {s.state for s in only} == {SampleState.WAITING}


def test_slice_by_gil(reader: SessionReader) -> None:
    assert count(reader, gil="held") == total(gil=True) == 63
    assert count(reader, gil="not-held") == total(gil=False) == 105
    assert count(reader, gil="any") == 171  # includes the 3 samples of unknown GIL state


def test_filters_combine(reader: SessionReader) -> None:
    assert count(reader, route="/items/{item_id}", gil="held", idle="exclude") == 54
    assert count(reader, route="/items/{item_id}", since="10") == 17


def test_parse_time_rejects_nonsense() -> None:
    assert parse_time("2.5", 100.0) == 102.5
    assert parse_time("-1", 100.0) == 99.0
    for bad in ("yesterday", "nan", "inf", ""):
        with pytest.raises(UsageError, match="ISO 8601"):
            parse_time(bad, 0.0)


def test_resolve_route_without_route_table() -> None:
    with pytest.raises(UsageError, match="no route table"):
        resolve_route("/x", [])
    assert resolve_route("/health", ROUTES) == {"GET /health"}


def test_route_slice_uses_given_matcher(reader: SessionReader) -> None:
    samples = select_samples(reader, SliceSpec(route="/health"), endpoint_of=lambda f: None)
    assert samples == []


def test_slice_by_blocked_state(reader: SessionReader) -> None:
    blocked = total(state=SampleState.BLOCKED)
    running = total(state=SampleState.RUNNING)
    assert (blocked, running) == (3, 73)
    assert count(reader, blocked="only") == blocked
    assert count(reader, blocked="exclude") == 171 - blocked
    assert count(reader, blocked="include") == 171
    # on-CPU only: neither off-CPU at a working stack nor idle
    on_cpu = select_samples(reader, SliceSpec(idle="exclude", blocked="exclude"))
    assert sum(s.count for s in on_cpu) == running
    assert {s.state for s in on_cpu} == {SampleState.RUNNING}
    # wall clock at working stacks: on CPU and waiting inside the request, idle left out
    assert count(reader, idle="exclude") == running + blocked
    assert count(reader, idle="only", blocked="only") == 0
    assert SliceSpec(idle="exclude", blocked="exclude").describe() == (
        "idle=exclude, blocked=exclude")
