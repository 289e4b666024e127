from __future__ import annotations

from apiscope.exporters.base import Profile
from apiscope.exporters.folded import render_folded
from apiscope.model import Frame, StackSample
from tests.exporters.sessions import IDLE_STACK, ITEMS_LOAD_STACK, ITEMS_STACK

PREFIX = ("run (/opt/venv/lib/python3.11/site-packages/uvicorn/server.py:60);"
          "BaseEventLoop._run_once (asyncio/base_events.py:1922)")


def samples() -> list[StackSample]:
    return [StackSample(1, 7, "MainThread", ITEMS_STACK, 30),
            StackSample(1, 7, "MainThread", IDLE_STACK, 40),
            StackSample(2, 9, "", ITEMS_STACK, 5),
            StackSample(1, 7, "MainThread", ITEMS_LOAD_STACK, 20)]


def test_one_line_per_distinct_stack_root_first_sorted() -> None:
    assert render_folded(Profile(samples())) == (
        f"{PREFIX};EpollSelector.select (selectors.py:468) 40\n"
        f"{PREFIX};read_item (/srv/shop/main.py:12) 35\n"
        f"{PREFIX};read_item (/srv/shop/main.py:12);load <rows> & co (/srv/shop/main.py:30) 20\n"
    )


def test_threads_option_adds_process_and_thread_roots() -> None:
    lines = render_folded(Profile(samples(), threads=True)).splitlines()
    assert lines == [
        f"process 1;thread (0x7): MainThread;{PREFIX};EpollSelector.select (selectors.py:468) 40",
        f"process 1;thread (0x7): MainThread;{PREFIX};read_item (/srv/shop/main.py:12) 30",
        f"process 1;thread (0x7): MainThread;{PREFIX};read_item (/srv/shop/main.py:12);"
        "load <rows> & co (/srv/shop/main.py:30) 20",
        f"process 2;thread (0x9);{PREFIX};read_item (/srv/shop/main.py:12) 5",
    ]


def test_separators_inside_names_cannot_split_frames() -> None:
    odd = (Frame("a;b", "x\ny.py", 1),)
    assert render_folded(Profile([StackSample(1, 1, "", odd, 2)])) == "a:b (x y.py:1) 2\n"


def test_empty_profile_is_empty_text() -> None:
    assert render_folded(Profile([])) == ""


def test_a_thread_without_python_frames_is_still_a_stack() -> None:
    text = render_folded(Profile([StackSample(1, 1, "", (), 41)]))
    assert text == "[no Python frames] 41\n"
