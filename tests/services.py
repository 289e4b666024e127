"""Real PostgreSQL and Redis servers for tests, each in a temporary directory, on loopback.

Both are plain context managers (`postgres_server()`, `redis_server()`) so scripts can use
them, and `require_*` helpers turn a missing binary into a skip outside CI (a failure in CI,
where `make test` installs them). Nothing is left behind: the servers are stopped and their
directories removed on exit, also after an error.

PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` system user
(the Debian package creates it) and every server command runs through `runuser -u postgres --`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

IN_CI = os.environ.get("CI", "").lower() == "true"
PG_SUPERUSER = "postgres"
APP_USER = "app"
APP_PASSWORD = "app-password"
APP_DATABASE = "app"


class ServiceUnavailable(Exception):
    """A server this machine cannot run; the message says what is missing and how to add it."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(ready: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


# --- PostgreSQL -------------------------------------------------------------------------------

def postgres_bindir() -> Path:
    """Where initdb, pg_ctl and psql live: Debian keeps them off PATH, per major version."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent  # Debian links pg_ctl alone onto PATH
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                      key=lambda p: int(Path(p).parent.parent.name))
    if not versions:
        raise ServiceUnavailable("PostgreSQL server binaries are missing"
                                 " (install the postgresql package: make system-deps as root)")
    return Path(versions[-1]).parent


@dataclass(frozen=True)
class PostgresServer:
    """A running cluster: `dsn()` connects the password user over TCP, `admin()` runs SQL."""

    bindir: Path
    port: int
    socket_dir: Path
    run_as: tuple[str, ...]  # the command prefix that runs server tools as the cluster owner

    def dsn(self, database: str = APP_DATABASE, driver: str = "postgresql") -> str:
        return f"{driver}://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over the Unix socket; returns psql's unaligned output."""
        argv = [*self.run_as, str(self.bindir / "psql"), "-h", str(self.socket_dir),
                "-p", str(self.port), "-U", PG_SUPERUSER, "-d", database, "-v",
                "ON_ERROR_STOP=1", "-qAtc", sql]
        return _run(argv).stdout

    def create_database(self, name: str) -> str:
        """A new, empty database owned by the password user; returns its DSN."""
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.admin(f'CREATE DATABASE "{name}" OWNER {APP_USER}')
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}... exited {done.returncode}: {done.stderr}")
    return done


def _cluster_owner() -> tuple[tuple[str, ...], int | None, int | None]:
    """(command prefix, uid, gid) for the cluster's files and processes."""
    if os.geteuid() != 0:
        return (), None, None
    try:
        owner = pwd.getpwnam(PG_SUPERUSER)
    except KeyError:
        raise ServiceUnavailable("running as root, PostgreSQL needs the `postgres` system user"
                                 " (the postgresql package creates it)") from None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise ServiceUnavailable("running as root, PostgreSQL needs runuser (util-linux)")
    return (runuser, "-u", PG_SUPERUSER, "--"), owner.pw_uid, owner.pw_gid


def _postgres_ready(server: PostgresServer, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        log = (server.socket_dir / "server.log").read_text(errors="replace")
        raise RuntimeError(f"postgres exited with {proc.returncode}: {log[-2000:]}")
    argv = [*server.run_as, str(server.bindir / "pg_isready"), "-q", "-h",
            str(server.socket_dir), "-p", str(server.port)]
    return subprocess.run(argv, check=False, timeout=10).returncode == 0


def _stop_postgres(data: Path, proc: subprocess.Popen[bytes]) -> None:
    """A fast shutdown (SIGINT to the postmaster, whose pid it writes in its data directory)."""
    pidfile = data / "postmaster.pid"
    if proc.poll() is None and pidfile.exists():
        try:
            os.kill(int(pidfile.read_text().split()[0]), signal.SIGINT)
        except (ProcessLookupError, ValueError):
            pass
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()  # runuser; the postmaster then exits when its parent is gone
        proc.wait()


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """initdb a fresh cluster, start it on a free loopback port, create the app's user and
    database; stop it and delete every file at the end."""
    bindir = postgres_bindir()
    run_as, uid, gid = _cluster_owner()
    root = Path(tempfile.mkdtemp(prefix="pgtest-"))
    try:
        if uid is not None and gid is not None:
            os.chown(root, uid, gid)
        data, port = root / "data", free_port()
        _run([*run_as, str(bindir / "initdb"), "-D", str(data), "-U", PG_SUPERUSER,
              "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"])
        # Run the postmaster as our own child (not daemonised by pg_ctl) so that we reap it.
        # fsync off: a test database need not survive a power cut, and it starts faster.
        log = open(root / "server.log", "wb")  # closed with the server below
        proc = subprocess.Popen(
            [*run_as, str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k",
             str(root), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c",
             "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=200"],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            server = PostgresServer(bindir, port, root, run_as)
            _wait_for(lambda: _postgres_ready(server, proc), 60, "PostgreSQL to accept connections")
            server.admin(f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}'")
            server.admin(f"CREATE DATABASE {APP_DATABASE} OWNER {APP_USER}")
            yield server
        finally:
            _stop_postgres(data, proc)
            log.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- Redis ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RedisServer:
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A throwaway Redis on a free loopback port: no snapshots, no append-only file."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceUnavailable("redis-server is missing"
                                 " (install the redis-server package: make system-deps as root)")
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="redistest-"))
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}")
            return _redis_answers(port)

        _wait_for(ready, 20, "redis-server to answer PING")
        yield RedisServer(port)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
