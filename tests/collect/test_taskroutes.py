from __future__ import annotations

import pytest

from apiscope.collect import taskroutes
from apiscope.collect.taskroutes import TaskRoutes


def test_the_pulls_counts_are_summed_per_function_and_route() -> None:
    sums = TaskRoutes()
    assert sums.add([("/app/llm.py", "complete", "POST /chat", 3)])
    assert sums.add([("/app/llm.py", "complete", "POST /chat", 2),
                     ("/app/llm.py", "complete", "GET /models", 1)])
    assert not sums.add([])  # nothing new: the session's meta is not written again
    assert sums.rows() == [["/app/llm.py", "complete", "GET /models", 1],
                           ["/app/llm.py", "complete", "POST /chat", 5]]


def test_new_keys_beyond_the_cap_are_dropped_known_ones_still_counted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(taskroutes, "MAX_ENTRIES", 2)
    sums = TaskRoutes()
    sums.add([("/a.py", "f", "GET /a", 1), ("/a.py", "g", "GET /a", 1)])
    assert not sums.add([("/a.py", "h", "GET /a", 1)])
    assert sums.add([("/a.py", "f", "GET /a", 4)])
    assert sums.rows() == [["/a.py", "f", "GET /a", 5], ["/a.py", "g", "GET /a", 1]]
