"""`apiscope export` end to end through the CLI entry point, on real session files."""

from __future__ import annotations

import json
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from apiscope.cli.main import main
from tests.exporters.sessions import HEALTH_STACK, write_session

SVG_NS = {"s": "http://www.w3.org/2000/svg"}


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_session(tmp_path_factory.mktemp("export") / "shop.sqlite")


def folded_total(text: str) -> int:
    return sum(int(line.rsplit(" ", 1)[1]) for line in text.splitlines())


def test_folded_to_stdout(session: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(session), "--format", "folded"]) == 0
    out = capsys.readouterr().out
    assert folded_total(out) == 171
    assert out.splitlines()[0] == "_worker (concurrent/futures/thread.py:83) 5"


def test_each_format_to_a_file(session: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    for fmt in ("svg", "speedscope", "folded", "html"):
        out = tmp_path / f"out.{fmt}"
        assert main(["export", str(session), "--format", fmt, "-o", str(out)]) == 0
        assert out.stat().st_size > 0
        assert f"wrote 171 samples (the whole session) to {out}" in capsys.readouterr().err
    ET.parse(tmp_path / "out.svg")
    assert json.loads((tmp_path / "out.speedscope").read_text())["$schema"].startswith("https://")
    page = (tmp_path / "out.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and 'class="frame"' in page


def test_slice_options(session: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = {
        ("--route", "GET /items/{item_id}"): 67,
        ("--route", "/health", "--pid", "200"): 2,
        ("--pid", "100", "--thread", "2"): 5,
        ("--since", "5", "--until", "15"): 20,
        ("--idle", "only"): 95,
        ("--idle", "exclude", "--gil", "held"): 63,
        ("--gil", "not-held"): 105,
    }
    for options, expected in cases.items():
        assert main(["export", str(session), "--format", "folded", *options]) == 0, options
        assert folded_total(capsys.readouterr().out) == expected, options


def test_route_slice_holds_only_that_handler(session: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(session), "--format", "folded", "--route", "/health"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [";".join(f.label() for f in HEALTH_STACK) + " 9"]


def test_threads_adds_roots(session: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(session), "--format", "folded", "--threads", "--pid", "200"]) == 0
    assert all(line.startswith("process 200;thread (0x3): MainThread;")
               for line in capsys.readouterr().out.splitlines())


def test_empty_slice_exits_2_and_says_what_the_session_holds(
        session: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(session), "--format", "svg", "--pid", "999"]) == 2
    err = capsys.readouterr().err
    assert "no samples match pid=999" in err
    assert "171 samples of 2 process(es) (pid 100, 200)" in err
    assert "Traceback" not in err


def test_unknown_route_exits_2(session: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(session), "--format", "svg", "--route", "/nope"]) == 2
    assert "known routes are GET /health, GET /items/{item_id}" in capsys.readouterr().err


def test_bad_time_exits_2(session: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(session), "--format", "svg", "--since", "soon"]) == 2
    assert "ISO 8601" in capsys.readouterr().err


def test_missing_and_foreign_session_files_exit_2(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tmp_path / "none.sqlite"), "--format", "svg"]) == 2
    assert "no session file" in capsys.readouterr().err
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    assert main(["export", str(foreign), "--format", "svg"]) == 2
    assert "not an apiscope session" in capsys.readouterr().err
    text = tmp_path / "notes.txt"
    text.write_text("hello " * 100)
    assert main(["export", str(text), "--format", "svg"]) == 2
    assert "not an apiscope session" in capsys.readouterr().err


def test_session_without_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = write_session(tmp_path / "empty.sqlite", rows=[])
    assert main(["export", str(empty), "--format", "folded"]) == 2
    assert "the session holds no stack samples" in capsys.readouterr().err


def test_unwritable_output_exits_2(session: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "no" / "such" / "dir" / "x.svg"
    assert main(["export", str(session), "--format", "svg", "-o", str(out)]) == 2
    assert f"cannot write {out}" in capsys.readouterr().err


def test_help_documents_every_format(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    out = capsys.readouterr().out
    for fmt in ("svg", "html", "speedscope", "folded", "pprof"):
        assert f"\n  {fmt} " in out, fmt
