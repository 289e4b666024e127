"""Storage failures: a disk that fills up mid-session (a small tmpfs) ends the session with
exit 1 and a message, counters that stop at what the file holds, a session that stays readable
and agents detached; a read-only place is refused before anything starts (exit 2)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from apiscope.store import SessionReader
from tests.faults.harness import (
    assert_clean,
    drive,
    finish,
    make_place,
    start_collector,
    uvicorn_server,
    wait_for_agents,
)
from tests.support import IN_CI, require_ptrace

pytestmark = pytest.mark.integration


@contextmanager
def small_tmpfs(path: Path, size: str, *options: str) -> Iterator[Path]:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]),
                           "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        if IN_CI:
            pytest.fail(f"cannot mount a tmpfs: {done.stderr}")
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_disk_ends_the_session_honestly(tmp_path: Path) -> None:
    require_ptrace()
    place = make_place(tmp_path)
    with small_tmpfs(tmp_path / "disk", "2m") as disk, uvicorn_server(place) as (server, url):
        filler = disk / "filler"
        # 600 KB left for the session: a new one takes 300-500 KB with its write-ahead log
        # (300 KB is too little to start), and windows sampled at the rate asked for (no
        # budget) fill the rest; at a budget's rate they may not in a minute.
        filler.write_bytes(b"\0" * (2048 * 1024 - 600 * 1024))
        session = disk / "s.sqlite"
        proc = start_collector(place, "attach", str(server.pid), "--no-dashboard", "--rate",
                               "200", "--max-overhead", "0", "--duration", "60", "--session",
                               str(session))
        wait_for_agents([server.pid], place, proc)
        assert drive(url, 200) == (200, 0)
        code, err = finish(proc, timeout=90)
        assert code == 1, err
        assert "Traceback" not in err and "could not be written" in err and "full" in err
        assert "the session holds" in err
        assert drive(url, 20) == (20, 0)  # the target never noticed
        assert_clean([server.pid], place)
        with SessionReader(session) as reader:  # what was written stays readable
            assert reader.windows() and reader.meta().end, err
        filler.unlink()
        os.sync()


def test_a_read_only_place_is_refused_before_anything_starts(tmp_path: Path) -> None:
    place = make_place(tmp_path)
    with small_tmpfs(tmp_path / "ro", "1m", "ro") as ro:
        proc = start_collector(place, "attach", str(os.getpid()), "--no-dashboard",
                               "--duration", "5", "--no-inject", "--session", str(ro / "s.sqlite"))
        code, err = finish(proc, timeout=30)
        assert code == 2 and "cannot write" in err and "Traceback" not in err
