"""The session's metadata reads back typed: every key the collector writes, none at all (an
empty session), and stored values of the wrong type, as a file from another version may hold."""

from __future__ import annotations

import ast
import json
import sqlite3
from contextlib import closing
from dataclasses import fields
from pathlib import Path
from typing import Any

import apiscope
from apiscope.sessionmeta import SessionMeta, StoredGap
from apiscope.store import SessionReader, SessionWriter

# Every key, in the shape the collector writes it (`apiscope.collection`).
WRITTEN: dict[str, Any] = {
    "command": "gunicorn shop.main:app -k uvicorn.workers.UvicornWorker", "pids": [11, 12],
    "server": "gunicorn", "python": "3.11.7", "target_pid": 10, "master_pid": 10,
    "rate_hz": 100, "slo_ms": 250.0, "nonblocking": False, "inject": True,
    "start": 1700000000.25, "end": 1700000030.5, "samples_total": 5900, "samples_errors": 3,
    "samples_paused": 41, "samples_expected": 6000, "sample_loss": 0.0167, "windows_dropped": 1,
    "windows_failed": 2,
    "max_overhead": 2, "overhead": 0.812, "agent_dropped": 4,
    "overhead_parts": {"pyspy_startup": 0.1, "pyspy_samples": 0.5, "agent": 0.2,
                       "collector": "bad"},
    "gaps": [{"start": 1700000010.0, "end": 1700000012.5, "reason": "target stopped"},
             {"start": 1700000020.0, "end": 1700000021.0, "reason": None}],
    "pauses": [{"start": 1700000000.5, "end": 1700000001.25}],
    "detach_failed": [{"pid": 12, "reason": "timed out", "retry": "apiscope detach 12"}],
    "target_failures": [{"pid": 10, "windows_dropped": 1},
                        {"pid": 12, "detach_failed": "timed out", "agent_errors": 2}],
    "routing": {"source": "framework", "frameworks": ["fastapi"]},
    "watchdog_cpu_seconds": {"11": 0.25, "12": 0.5}, "profile_seconds": {"11": 0.125},
    "requests_kept_every": 4, "requests_kept_every_max": 8, "watch_share": 0.00125,
    "asleep_lines": [["/srv/app/views.py", 16], ["bad"], ["/srv/app/io.py", "40"]],
    "task_routes": [["/srv/app/llm.py", "complete", "POST /chat", 30], ["bad", 1],
                    ["/srv/app/llm.py", "complete", "GET /health", "2"]],
}


def written(path: Path, **values: Any) -> SessionMeta:
    with SessionWriter(path) as writer:
        if values:
            writer.set_meta(**values)
        writer.flush()
    with SessionReader(path) as reader:
        return reader.meta()


def test_every_key_written_reads_back_typed(tmp_path: Path) -> None:
    meta = written(tmp_path / "s.sqlite", **WRITTEN)
    assert meta == SessionMeta(
        command="gunicorn shop.main:app -k uvicorn.workers.UvicornWorker", pids=(11, 12),
        server="gunicorn", python="3.11.7", target_pid=10, master_pid=10, rate_hz=100,
        slo_ms=250.0, nonblocking=False, inject=True, start=1700000000.25, end=1700000030.5,
        samples_total=5900, samples_errors=3, samples_paused=41, samples_expected=6000,
        sample_loss=0.0167, windows_dropped=1, windows_failed=2, max_overhead=2, overhead=0.812,
        overhead_parts={"pyspy_startup": 0.1, "pyspy_samples": 0.5, "agent": 0.2},
        agent_dropped=4,
        gaps=(StoredGap(1700000010.0, 1700000012.5, "target stopped"),
              StoredGap(1700000020.0, 1700000021.0, None)),
        pauses=(StoredGap(1700000000.5, 1700000001.25, None),),
        detach_failed=({"pid": 12, "reason": "timed out", "retry": "apiscope detach 12"},),
        target_failures=({"pid": 10, "windows_dropped": 1},
                         {"pid": 12, "detach_failed": "timed out", "agent_errors": 2}),
        routing={"source": "framework", "frameworks": ["fastapi"]},
        watchdog_cpu_seconds={11: 0.25, 12: 0.5}, profile_seconds={11: 0.125},
        requests_kept_every=4,
        requests_kept_every_max=8, watch_share=0.00125,
        asleep_lines=(("/srv/app/views.py", 16), ("/srv/app/io.py", 40)),
        task_routes=(("/srv/app/llm.py", "complete", "POST /chat", 30),
                     ("/srv/app/llm.py", "complete", "GET /health", 2)))
    # Numbers stay as written: the report shows an int budget as an int.
    assert type(meta.max_overhead) is int and type(meta.rate_hz) is int
    assert {f.name for f in fields(SessionMeta)} == set(WRITTEN)


def test_the_collector_writes_no_key_the_reader_does_not_type() -> None:
    source = Path(apiscope.__file__).parent / "collection.py"
    keys = {keyword.arg for node in ast.walk(ast.parse(source.read_text(encoding="utf-8")))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "meta" for keyword in node.keywords}
    assert keys and keys <= set(WRITTEN)


def test_a_session_without_meta_reads_as_empty(tmp_path: Path) -> None:
    meta = written(tmp_path / "s.sqlite")
    assert meta == SessionMeta() == SessionMeta.from_stored({})
    assert meta.start is None and meta.rate_hz is None and meta.pids == () and meta.gaps == ()
    assert meta.target_failures == () and meta.routing is None
    assert dict(meta.watchdog_cpu_seconds) == {}


def test_values_of_the_wrong_type_read_as_missing(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    written(path)
    stored = {"command": ["uvicorn", "app:app"], "pids": [11, "12", None, True],
              "rate_hz": "100", "start": "1700000000.5", "end": True, "slo_ms": "fast",
              "max_overhead": None, "gaps": [{"start": 1.0}, "gap", {"start": 2.0, "end": 3.0}],
              "target_failures": {"pid": 12}, "detach_failed": [{"pid": 12}, 12],
              "routing": "framework", "watchdog_cpu_seconds": {"11": 0.5, "pid": 1.0},
              "samples_errors": float("inf"), "from_a_later_version": 1}
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.executemany("REPLACE INTO meta VALUES (?, ?)",
                         [(key, json.dumps(value)) for key, value in stored.items()])
    with SessionReader(path) as reader:
        meta = reader.meta()
    assert meta == SessionMeta(pids=(11, 12), rate_hz=100, start=1700000000.5,
                               gaps=(StoredGap(2.0, 3.0),), detach_failed=({"pid": 12},),
                               watchdog_cpu_seconds={11: 0.5})
