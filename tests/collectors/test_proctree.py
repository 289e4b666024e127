"""The children of a process, from the kernel's per-thread lists."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from apiscope.collectors import proctree
from apiscope.collectors.proctree import child_pids


def test_the_children_of_a_real_process_are_its_own_and_psutils() -> None:
    if not proctree._children_lists("/proc"):
        pytest.skip("this kernel keeps no per-thread children lists (CONFIG_PROC_CHILDREN)")
    kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
            for _ in range(2)]
    try:
        mine = child_pids(os.getpid())
        assert mine is not None
        assert {k.pid for k in kids} <= set(mine)
        assert mine == sorted(p.pid for p in psutil.Process().children())
        assert proctree._children(psutil.Process()) == sorted(
            psutil.Process().children(), key=lambda p: p.pid)
    finally:
        for k in kids:
            k.kill()
            k.wait()


def _fake_proc(root: Path, pid: int, threads: dict[int, str]) -> None:
    for tid, children in threads.items():
        task = root / str(pid) / "task" / str(tid)
        task.mkdir(parents=True)
        (task / "children").write_text(children)


def test_every_threads_children_count_once(tmp_path: Path) -> None:
    me = os.getpid()
    _fake_proc(tmp_path, me, {me: ""})  # the kernel keeps the lists
    _fake_proc(tmp_path, 40, {40: "41 43 ", 42: "44 41 "})  # a thread forked children too
    assert child_pids(40, str(tmp_path)) == [41, 43, 44]
    assert child_pids(99, str(tmp_path)) == []  # gone


def test_a_kernel_without_the_lists_answers_none(tmp_path: Path) -> None:
    (tmp_path / str(os.getpid()) / "task").mkdir(parents=True)
    _fake_proc(tmp_path, 40, {40: "41"})
    assert child_pids(40, str(tmp_path)) is None
