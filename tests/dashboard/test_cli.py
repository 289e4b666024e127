"""`apiscope dashboard SESSION`: replay serving, and clear errors for bad input."""

from __future__ import annotations

import sqlite3
import sys
import urllib.request
from pathlib import Path

import pytest

from apiscope.cli.main import main
from tests.support import free_port, run_server


def test_missing_session_exits_2_naming_the_path(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", str(tmp_path / "nope.sqlite")]) == 2
    err = capsys.readouterr().err
    assert "nope.sqlite" in err and "Traceback" not in err


def test_foreign_sqlite_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    assert main(["dashboard", str(other)]) == 2
    assert "not an apiscope session" in capsys.readouterr().err


def test_no_session_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard"]) == 2
    assert "apiscope dashboard SESSION" in capsys.readouterr().err


def test_fleet_view_of_an_unreachable_prometheus_exits_2(
        capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert main(["dashboard", "--prometheus", url]) == 2
    err = capsys.readouterr().err
    assert url in err and "Traceback" not in err


def test_session_and_prometheus_together_is_a_usage_error(
        session_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", str(session_file), "--prometheus", "http://127.0.0.1:9"]) == 2
    assert "not both" in capsys.readouterr().err


def test_port_in_use_exits_2(session_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["dashboard", str(session_file), "--port", str(port)]) == 2
    assert "--port" in capsys.readouterr().err


def test_replay_serves_the_dashboard_and_its_assets(session_file: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "apiscope", "dashboard", str(session_file), "--port", str(port)]
    with run_server(argv, port, timeout=60, ready_path="/?token=t0ken",
                    env={"APISCOPE_TOKEN": "t0ken"}) as server:
        with urllib.request.urlopen(server.url + "/_dash-layout?token=t0ken", timeout=10) as resp:
            assert b"range-reset" in resp.read()
        with urllib.request.urlopen(server.url + "/?token=t0ken", timeout=10) as resp:
            page = resp.read().decode()
        # every script is served by the dashboard itself: no CDN on an offline host
        assert "https://" not in page.split("<footer>")[1]
