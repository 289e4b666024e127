"""Throwaway PostgreSQL and Redis servers on loopback, for the demo and for tests.

`postgres_server()` and `redis_server()` are context managers: each starts its server from the
system's binaries in a new temporary directory on a free 127.0.0.1 port, waits until it
answers, and on the way out (normal end, an exception, Ctrl-C) stops it and deletes every file.

Three choices keep them from outliving us:
- the server is our direct child (started through `setpriv`, which execs it, never through a
  shell or `pg_ctl`, which daemonise), so we stop and reap it ourselves;
- it gets a parent-death signal (`setpriv --pdeathsig`), so even when we are killed outright
  (SIGKILL, where no `finally` runs) it shuts down; the signal fires when the *thread* that
  started it ends, so start servers from a thread that lives as long as you need them;
- PostgreSQL refuses to run as root: as root both servers run as the `postgres` system user
  (Debian's postgresql package creates it) or else as `nobody`.
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

from apiscope.errors import ApiscopeError, ToolMissingError

PG_SUPERUSER = "postgres"
APP_USER = "app"
APP_PASSWORD = "app-password"
APP_DATABASE = "app"
SERVICE_USERS = ("postgres", "nobody")  # who runs the servers when we are root, in order
START_TIMEOUT = 60.0


class ServiceUnavailable(ToolMissingError):
    """A server this machine cannot run; the message names the Debian package that adds it."""


class ServiceFailed(ApiscopeError):
    """A server that was there but did not start or answer; the message quotes its log."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for(ready: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise ServiceFailed(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


@dataclass(frozen=True)
class ServiceUser:
    """Who runs a server: `prefix` runs a command as that user (empty: as ourselves)."""

    prefix: tuple[str, ...]
    uid: int | None = None
    gid: int | None = None

    def command(self, argv: Sequence[str], death_signal: str | None = None) -> list[str]:
        if not self.prefix:
            return list(argv)
        pdeath = ["--pdeathsig", death_signal] if death_signal else []
        return [*self.prefix, *pdeath, "--", *argv]

    def own(self, path: Path) -> None:
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)


def service_user() -> ServiceUser:
    """As root: the first of `SERVICE_USERS` that exists; otherwise ourselves (through setpriv
    when it is installed, for its parent-death signal)."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0:
        return ServiceUser((setpriv,) if setpriv else ())
    if setpriv is None:
        raise ServiceUnavailable("running as root, the servers must run as another user, which"
                                 " takes setpriv: install Debian's util-linux package")
    for name in SERVICE_USERS:
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            continue
        prefix = (setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups")
        return ServiceUser(prefix, user.pw_uid, user.pw_gid)
    raise ServiceUnavailable(f"running as root, the servers must run as another user, and"
                             f" none of {', '.join(SERVICE_USERS)} exists: create one")


def run_checked(argv: Sequence[str], what: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise ServiceFailed(f"{what} failed (exit {done.returncode}): {done.stderr.strip()}")
    return done


def stop_process(proc: subprocess.Popen[bytes], sig: int, timeout: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def private_directory(prefix: str, user: ServiceUser) -> Path:
    root = Path(tempfile.mkdtemp(prefix=prefix))
    user.own(root)
    return root


# --- PostgreSQL -------------------------------------------------------------------------------

def postgres_bindir() -> Path:
    """Where initdb and postgres live: Debian keeps them off PATH, one directory per version."""
    found = shutil.which("pg_ctl")
    if found and (Path(found).resolve().parent / "initdb").exists():
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                      key=lambda p: int(Path(p).parent.parent.name))
    if not versions:
        raise ServiceUnavailable("PostgreSQL's server programs (initdb, postgres) are missing:"
                                 " install Debian's postgresql package"
                                 " (apt-get install postgresql)")
    return Path(versions[-1]).parent


@dataclass(frozen=True)
class PostgresServer:
    """A running cluster: `dsn()` connects the password user over TCP, `admin()` runs SQL."""

    bindir: Path
    port: int
    socket_dir: Path
    user: ServiceUser

    @property
    def version(self) -> str:
        return self.bindir.parent.name

    def dsn(self, database: str = APP_DATABASE, driver: str = "postgresql") -> str:
        return f"{driver}://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over the Unix socket; returns psql's unaligned output."""
        argv = [str(self.bindir / "psql"), "-h", str(self.socket_dir), "-p", str(self.port),
                "-U", PG_SUPERUSER, "-d", database, "-v", "ON_ERROR_STOP=1", "-qAtc", sql]
        return run_checked(self.user.command(argv), "psql").stdout

    def create_database(self, name: str) -> str:
        """A new, empty database owned by the password user; returns its DSN."""
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.admin(f'CREATE DATABASE "{name}" OWNER {APP_USER}')
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _postgres_ready(server: PostgresServer, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        log = (server.socket_dir / "server.log").read_text(errors="replace")
        raise ServiceFailed(f"postgres exited with code {proc.returncode}: {log[-2000:]}")
    argv = [str(server.bindir / "pg_isready"), "-q", "-h", str(server.socket_dir),
            "-p", str(server.port)]
    return subprocess.run(server.user.command(argv), check=False, timeout=10).returncode == 0


def _start_postgres(bindir: Path, root: Path, port: int, user: ServiceUser,
                    max_connections: int) -> subprocess.Popen[bytes]:
    data = root / "data"
    run_checked(user.command([str(bindir / "initdb"), "-D", str(data), "-U", PG_SUPERUSER,
                              "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                              "--no-sync"]), "initdb")
    # fsync off: a throwaway database need not survive a power cut, and it starts faster.
    # SIGINT on our death is PostgreSQL's fast shutdown: clients cut off, no waiting for them.
    argv = [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(root),
            "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off", "-c", f"max_connections={max_connections}"]
    with open(root / "server.log", "wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(user.command(argv, death_signal="INT"), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


@contextmanager
def postgres_server(max_connections: int = 200) -> Iterator[PostgresServer]:
    """initdb a fresh cluster, start it on a free loopback port, create the app's user and
    database (`APP_USER`, `APP_DATABASE`); stop it and delete every file at the end."""
    bindir, user = postgres_bindir(), service_user()
    root = private_directory("apiscope-postgres-", user)
    try:
        port = free_port()
        proc = _start_postgres(bindir, root, port, user, max_connections)
        try:
            server = PostgresServer(bindir, port, root, user)
            wait_for(lambda: _postgres_ready(server, proc), "PostgreSQL to accept connections")
            server.admin(f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}'")
            server.admin(f"CREATE DATABASE {APP_DATABASE} OWNER {APP_USER}")
            yield server
        finally:
            stop_process(proc, signal.SIGINT)  # fast shutdown; the postmaster is our child
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- Redis ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RedisServer:
    port: int
    directory: Path  # its working directory, deleted when it stops

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def redis_answers(port: int) -> bool:
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
        raise ServiceUnavailable("redis-server is missing: install Debian's redis-server package"
                                 " (apt-get install redis-server)")
    user = service_user()
    workdir = private_directory("apiscope-redis-", user)
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
            "no", "--dir", str(workdir), "--daemonize", "no"]
    proc = subprocess.Popen(user.command(argv, death_signal="TERM"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise ServiceFailed(f"redis-server exited with code {proc.returncode} at start")
            return redis_answers(port)

        wait_for(ready, "redis-server to answer PING", timeout=20)
        yield RedisServer(port, workdir)
    finally:
        stop_process(proc, signal.SIGTERM, timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
