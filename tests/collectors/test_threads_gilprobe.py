"""The activity probe: `py-spy dump --json` parsing, buffering, and the argv it runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from apiscope.collectors.gilprobe import (
    ActivityProbe,
    DumpResult,
    ThreadSnapshot,
    activity_index,
    parse_dump_json,
)
from apiscope.collectors.threads import Activity
from apiscope.model import Frame

FIXTURES = Path(__file__).parent / "fixtures"
DUMP = (FIXTURES / "dump_sync_threadpool.json").read_text()


def test_parse_dump_json_keeps_os_thread_ids_and_leaf_frames() -> None:
    snaps = parse_dump_json(DUMP, ts=5.0)
    assert [(s.pid, s.tid, s.name, s.active, s.owns_gil) for s in snaps] == [
        (9562, 9576, "AnyIO worker thread", False, False),
        (9562, 9575, "AnyIO worker thread", False, False),
        (9562, 9562, "MainThread", False, False),
    ]
    assert all(s.ts == 5.0 for s in snaps)


def test_parse_dump_json_tolerates_garbage() -> None:
    assert parse_dump_json("not json", ts=0) == []
    assert parse_dump_json('{"a": 1}', ts=0) == []
    snaps = parse_dump_json('[1, {"thread_id": 255, "frames": []}]', ts=0, default_pid=4)
    assert snaps == [ThreadSnapshot(0, 4, 255, "", False, False, None)]


def test_activity_index_counts_per_leaf() -> None:
    leaf = Frame("f", "/a.py", 1)
    snaps = [ThreadSnapshot(0, 1, 2, "t", True, True, leaf),
             ThreadSnapshot(1, 1, 2, "t", False, False, leaf),
             ThreadSnapshot(2, 1, 2, "t", True, False, leaf),
             ThreadSnapshot(3, 1, 2, "t", True, False, None)]
    assert activity_index(snaps) == {(1, 2, leaf): Activity(3, 2, 1)}


def test_probe_runs_nonblocking_dumps_and_buffers_until_taken() -> None:
    calls: list[list[str]] = []
    now = [100.0]

    def run(argv: Sequence[str], timeout: float) -> DumpResult:
        calls.append(list(argv))
        return DumpResult(0, DUMP, 0.012)

    probe = ActivityProbe("/bin/py-spy", run=run, clock=lambda: now[0])
    probe.probe_once(9562)
    now[0] = 101.0
    probe.probe_once(9562)
    assert calls[0] == ["/bin/py-spy", "dump", "--pid", "9562", "--json", "--full-filenames",
                        "--nonblocking"]
    assert probe.dumps == 2 and probe.failures == 0
    assert round(probe.cpu_seconds, 3) == 0.024
    assert [s.ts for s in probe.take(until=101.0)] == [100.0] * 3
    assert [s.ts for s in probe.take(until=200.0)] == [101.0] * 3
    assert probe.take(until=300.0) == []


def test_a_failed_dump_is_counted() -> None:
    probe = ActivityProbe("/bin/py-spy", run=lambda argv, timeout: DumpResult(1, "", 0.0))
    assert probe.probe_once(1) == []
    assert probe.failures == 1
