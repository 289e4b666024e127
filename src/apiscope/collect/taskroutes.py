"""The routes each task function served, summed over a collection's pulls.

An agent counts each task a request starts under the function that task runs, with the
request's route (`agent/loopwatch.py`, `_note_task`); the collection adds up what every agent
sent and keeps the sums in the session's meta
(`task_routes`), where the analysis reads them (`analysis.cpu.task_cpu`).
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_ENTRIES = 4096  # (file, function, route) sums kept; later new ones are dropped


class TaskRoutes:
    def __init__(self) -> None:
        self._tasks: dict[tuple[str, str, str], int] = {}

    def add(self, rows: Iterable[tuple[str, str, str, int]]) -> bool:
        """Add one pull's rows; True when the sums changed."""
        changed = False
        for file, function, route, tasks in rows:
            key = (file, function, route)
            if key not in self._tasks and len(self._tasks) >= MAX_ENTRIES:
                continue
            self._tasks[key] = self._tasks.get(key, 0) + tasks
            changed = True
        return changed

    def rows(self) -> list[list[str | int]]:
        """`[file, function, route, tasks]` each, as stored."""
        return [[file, function, route, tasks]
                for (file, function, route), tasks in sorted(self._tasks.items())]
