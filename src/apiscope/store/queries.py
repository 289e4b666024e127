"""Reads behind views that cache a growing session: the dashboard's indexes and an export's
description of what a session holds.

These views read a session while it is written, so they ask for rows past the last id they
hold, or for aggregates SQLite computes far faster than Python would. Keeping that SQL here,
beside the schema, means a change of the schema is a change of the store alone: the views see
only the dataclasses below and the model's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from apiscope.model import ResourceSample, SampleState


@dataclass(frozen=True, slots=True)
class StackCount:
    """Samples of one thread, stack, state and GIL flag, summed over some windows."""

    pid: int
    tid: int
    stack_id: int
    state: str  # a `SampleState` value, as stored: views key their series by the plain text
    gil: bool | None  # None when the sampler did not probe the GIL
    count: int


@dataclass(frozen=True, slots=True)
class RequestSummary:
    """One recorded request with its database totals, as a per-endpoint view needs it."""

    id: int  # the row id: requests are read incrementally past the last id seen
    pid: int
    start: float
    duration_ms: float
    method: str
    route: str
    status: int
    exc_type: str | None
    query_count: int
    query_ms: float
    weight: int = 1  # the requests it stands for (see `SessionReader.requests`)


@dataclass(frozen=True, slots=True)
class RequestStatement:
    """How many times one request issued one SQL statement."""

    request_id: int
    sql: str
    count: int


@dataclass(frozen=True, slots=True)
class SampleSummary:
    """What the stack samples of a session cover, for a message about an empty selection."""

    processes: int
    total: int  # samples; 0 when the sampler recorded none
    first: float | None  # start of the first window with samples (epoch seconds)
    last: float | None  # end of the last one
    pids: tuple[int, ...]  # the sampled processes, lowest first, at most the number asked


class ViewQueries:
    """The incremental and aggregate reads, mixed into `SessionReader` (which runs the SQL)."""

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _weight_column(self) -> str:
        raise NotImplementedError

    # -- stack samples ------------------------------------------------------------------------

    def stack_counts_by_block(self, after_window: int, upto_window: int,
                              windows_per_block: int) -> list[tuple[int, StackCount]]:
        """(block, counts) of the windows with an id in (after_window, upto_window], summed
        per block of `windows_per_block` consecutive windows (window ids 1..n are block 0)."""
        rows = self._query(
            "SELECT (window_id - 1) / ?, pid, tid, stack_id, state, gil, sum(count) FROM samples"
            " WHERE window_id > ? AND window_id <= ? GROUP BY 1, 2, 3, 4, 5, 6",
            (windows_per_block, after_window, upto_window))
        return [(block, StackCount(pid, tid, stack_id, state, _flag(gil), count))
                for block, pid, tid, stack_id, state, gil, count in rows]

    def stack_counts_in(self, window_ids: Sequence[int]) -> list[StackCount]:
        """The samples of the given windows, summed over them."""
        if not window_ids:
            return []
        marks = ",".join("?" * len(window_ids))
        rows = self._query(
            "SELECT pid, tid, stack_id, state, gil, sum(count) FROM samples"
            f" WHERE window_id IN ({marks}) GROUP BY 1, 2, 3, 4, 5", tuple(window_ids))
        return [StackCount(pid, tid, stack_id, state, _flag(gil), count)
                for pid, tid, stack_id, state, gil, count in rows]

    def active_counts(self, after_window: int, upto_window: int) -> dict[int, int]:
        """Window id -> samples of threads not waiting for work, for the windows with an id in
        (after_window, upto_window] (windows without any are left out)."""
        return dict(self._query(
            "SELECT window_id, sum(count) FROM samples WHERE window_id > ? AND window_id <= ?"
            " AND state != ? GROUP BY window_id",
            (after_window, upto_window, SampleState.WAITING.value)))

    def sample_summary(self, max_pids: int = 10) -> SampleSummary:
        """How many samples of how many processes, over which span."""
        processes, total, first, last = self._query(
            "SELECT count(DISTINCT s.pid), coalesce(sum(s.count), 0), min(w.start), max(w.end)"
            " FROM samples s JOIN windows w ON w.id = s.window_id")[0]
        pids = tuple(pid for pid, in self._query(
            "SELECT DISTINCT pid FROM samples ORDER BY pid LIMIT ?", (max_pids,)))
        return SampleSummary(processes, total, first, last, pids)

    # -- requests and resources ---------------------------------------------------------------

    def requests_after(self, last_id: int) -> list[RequestSummary]:
        """The requests stored after row `last_id`, in the order written."""
        return [RequestSummary(*row) for row in self._query(
            "SELECT id, pid, start, duration_ms, method, route, status, exc_type, query_count,"
            f" query_ms, {self._weight_column()} FROM requests WHERE id > ? ORDER BY id",
            (last_id,))]

    def request_statements(self, request_ids: Sequence[int]) -> list[RequestStatement]:
        """The statements each of the given requests issued, least frequent first."""
        if not request_ids:
            return []
        marks = ",".join("?" * len(request_ids))
        return [RequestStatement(*row) for row in self._query(
            "SELECT q.request_id, st.sql, q.count FROM request_queries q"
            " JOIN statements st ON st.id = q.statement_id"
            f" WHERE q.request_id IN ({marks}) ORDER BY q.count", tuple(request_ids))]

    def resources_after(self, last_row: int) -> list[tuple[int, ResourceSample]]:
        """(row id, sample) of the resource samples stored after row `last_row`, in the order
        written."""
        return [(row[0], ResourceSample(*row[1:])) for row in self._query(
            "SELECT rowid, * FROM resources WHERE rowid > ? ORDER BY rowid", (last_row,))]


def _flag(stored: int | None) -> bool | None:
    return None if stored is None else bool(stored)
