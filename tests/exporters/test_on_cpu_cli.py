"""`apiscope export` draws on-CPU and wall-clock flamegraphs of a measured session."""

from __future__ import annotations

from pathlib import Path

import pytest

from apiscope.cli.main import main
from tests.dashboard.cpu_session import SECONDS, write_cpu_session


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cpu_session(tmp_path_factory.mktemp("oncpu") / "clock.sqlite")


def folded(session: Path, capsys: pytest.CaptureFixture[str], *options: str) -> dict[str, int]:
    assert main(["export", str(session), "--format", "folded", *options]) == 0
    lines = capsys.readouterr().out.splitlines()
    return {stack: int(n) for stack, n in (line.rsplit(" ", 1) for line in lines)}


def test_on_cpu_flamegraph_leaves_the_sleep_out(session: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    on_cpu = folded(session, capsys, "--route", "GET /sleep", "--idle", "exclude",
                    "--blocked", "exclude")
    assert list(on_cpu.values()) == [2 * SECONDS]  # nap() before its sleep
    assert not any("sleep (<built-in>" in stack for stack in on_cpu)
    wall = folded(session, capsys, "--route", "GET /sleep")  # the default: wall-clock time
    assert sum(wall.values()) == 82 * SECONDS
    assert [n for stack, n in wall.items() if stack.endswith("sleep (<built-in>:0)")] == [
        80 * SECONDS]
    only = folded(session, capsys, "--blocked", "only")
    assert sum(only.values()) == 80 * SECONDS
