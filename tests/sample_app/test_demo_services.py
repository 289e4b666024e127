"""The servers `apiscope demo --db postgres --cache redis` starts: who runs them, how they end,
and what a machine without them is told."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from apiscope import services
from apiscope.cli.main import main
from tests.services import PostgresServer, RedisServer
from tests.support import ROOT, wait_until


def test_missing_postgresql_is_exit_2_naming_the_debian_package(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(services.shutil, "which", lambda name: None)
    monkeypatch.setattr(services.glob, "glob", lambda pattern: [])
    code = main(["demo", "--db", "postgres", "--duration", "1", "--no-browser",
                 "--no-dashboard"])
    err = capsys.readouterr().err
    assert code == 2
    assert "postgresql package" in err and "apt-get install postgresql" in err
    assert "Traceback" not in err


def test_missing_redis_is_exit_2_naming_the_debian_package(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(services.shutil, "which", lambda name: None)
    code = main(["demo", "--cache", "redis", "--duration", "1", "--no-browser",
                 "--no-dashboard"])
    assert code == 2
    assert "apt-get install redis-server" in capsys.readouterr().err


def test_servers_run_as_an_unprivileged_user(postgres: PostgresServer,
                                              redis_service: RedisServer) -> None:
    users = {child.name(): child.uids().real for child in psutil.Process().children()}
    assert {"postgres", "redis-server"} <= set(users)
    if os.geteuid() == 0:  # PostgreSQL refuses root; Redis need not have it either
        assert users["postgres"] != 0 and users["redis-server"] != 0
    assert postgres.admin("SELECT current_setting('listen_addresses')").strip() == "127.0.0.1"


SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from apiscope.services import postgres_server, redis_server
    with postgres_server() as postgres, redis_server() as redis:
        print(postgres.port, redis.port, postgres.socket_dir, redis.directory, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no finally runs after this
""")


def test_servers_stop_even_when_their_starter_is_killed(postgres: PostgresServer) -> None:
    # (The fixture only makes sure this machine has the binaries.)
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True,
                          text=True, timeout=90, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr
    pg_port, redis_port, *directories = done.stdout.split()

    def gone() -> bool:
        ports = {int(pg_port), int(redis_port)}
        return not any(conn.laddr and conn.laddr.port in ports and conn.status == "LISTEN"
                       for conn in psutil.net_connections("tcp"))

    wait_until(gone, timeout=30, what="the orphaned servers to shut down")
    for directory in directories:  # what the killed starter could not do
        shutil.rmtree(directory, ignore_errors=True)
