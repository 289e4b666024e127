"""`apiscope demo`: the bundled sample item API under load, profiled end to end."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import webbrowser
from pathlib import Path

from apiscope.cli.base import add_collect_options, positive_int
from apiscope.cli.collecting import check_report_path, collect, dashboard_url, say
from apiscope.cli.run import describe_started, start_server, stop_server
from apiscope.errors import ApiscopeError, UsageError
from apiscope.services import postgres_server, redis_server

# Without --duration the demo runs until Ctrl-C; the load generator still needs a bound.
UNBOUNDED_LOAD_SECONDS = 3600.0
# The sample app lives in the source tree, next to src/ (the wheel leaves it out).
SOURCE_TREE = Path(__file__).resolve().parents[3]


def sample_app_path(source_tree: Path = SOURCE_TREE) -> Path:
    """The directory that holds `sample_app/`, or a UsageError saying where to get it."""
    if not (source_tree / "sample_app" / "main.py").is_file():
        raise UsageError("apiscope demo runs the sample app from apiscope's source tree, and"
                         " this install has none (the package does not ship it): clone the"
                         " repository and run `make demo` there")
    missing = [name for name in ("fastapi", "uvicorn", "sqlalchemy", "aiosqlite")
               if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"the sample app needs {', '.join(missing)}: install the demo extra"
                         " in the source tree (pip install '.[dashboard,demo]', or make demo)")
    return source_tree


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ApiscopeError(f"the sample app exited with code {proc.returncode} at start-up")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    raise ApiscopeError(f"the sample app did not answer {url} within {timeout:.0f}s")


def demo_environment(args: argparse.Namespace,
                     services: contextlib.ExitStack) -> dict[str, str]:
    """The sample app's environment, starting the servers `--db` and `--cache` ask for; they
    stop when `services` closes. A DATABASE_URL or REDIS_URL of the user's own shell is never
    passed on: the demo seeds its database and must not touch theirs."""
    env = {name: value for name, value in os.environ.items()
           if name not in ("DATABASE_URL", "REDIS_URL")}
    path = env.get("PYTHONPATH")  # the sample app and its load generator import from here
    env["PYTHONPATH"] = str(sample_app_path()) + (os.pathsep + path if path else "")
    if args.fixed:
        env["SAMPLE_APP_FIXED"] = "1"
    if args.db == "postgres":
        postgres = services.enter_context(postgres_server())
        env["DATABASE_URL"] = postgres.dsn(driver="postgresql+asyncpg")
        say(args, f"PostgreSQL {postgres.version} on 127.0.0.1:{postgres.port}"
                  " (a temporary cluster, deleted at the end)")
    if args.cache == "redis":
        redis = services.enter_context(redis_server())
        env["REDIS_URL"] = redis.url
        say(args, f"Redis on 127.0.0.1:{redis.port} (stopped at the end)")
    return env


def server_command(port: int, workers: int) -> list[str]:
    if workers > 1:
        return [sys.executable, "-m", "gunicorn", "sample_app.main:app", "-k",
                "uvicorn.workers.UvicornWorker", "-w", str(workers), "-b", f"127.0.0.1:{port}",
                "--log-level", "warning"]
    return [sys.executable, "-m", "uvicorn", "sample_app.main:app", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning", "--no-access-log"]


class DemoCommand:
    name = "demo"
    help = "run the bundled sample item API under load and profile it"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        add_collect_options(parser)
        parser.add_argument("--fixed", action="store_true",
                            help="run the sample app with its bottlenecks fixed")
        parser.add_argument("--no-browser", action="store_true",
                            help="do not open the dashboard in a browser")
        parser.add_argument("--workers", type=positive_int, default=1,
                            help="run the sample app under gunicorn with this many workers")
        parser.add_argument("--concurrency", type=positive_int, default=48,
                            help="concurrent clients of the load generator (default: 48)")
        parser.add_argument(
            "--db", choices=("sqlite", "postgres"), default="sqlite",
            help="the sample app's database: a temporary SQLite file (default), or a PostgreSQL"
                 " server the demo starts on a free loopback port (as the postgres or nobody"
                 " user when run as root; needs Debian's postgresql package) and deletes at the"
                 " end; the app reaches it through asyncpg")
        parser.add_argument(
            "--cache", choices=("memory", "redis"), default="memory",
            help="the sample app's cache: in-process (default), or a redis-server the demo"
                 " starts and stops (needs Debian's redis-server package). Both switches"
                 " together, with --workers 2, run the stack the app stands for: FastAPI on"
                 " gunicorn's Uvicorn workers, PostgreSQL and Redis")

    def run(self, args: argparse.Namespace) -> int:
        sample_app_path()  # before the dashboard check: without the app, nothing to show
        check_report_path(args)
        with contextlib.ExitStack() as services:
            env = demo_environment(args, services)
            return self._serve_and_collect(args, env)

    def _serve_and_collect(self, args: argparse.Namespace, env: dict[str, str]) -> int:
        port = free_port()
        # The sample app's deliberate 500s log tracebacks: keep them off the terminal.
        log_path = Path(tempfile.gettempdir()) / f"apiscope-demo-{os.getpid()}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed in the finally below
        os.chmod(log_path, 0o600)
        server = start_server(server_command(port, args.workers), env=env, log=log)
        load: subprocess.Popen[bytes] | None = None
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for_http(url + "/health", server)
            say(args, f"sample item API at {url}"
                      f" ({'fixed' if args.fixed else 'with its deliberate bottlenecks'});"
                      f" its log: {log_path}")
            target = describe_started(server)
            load_seconds = args.duration if args.duration is not None else UNBOUNDED_LOAD_SECONDS
            load = subprocess.Popen(
                [sys.executable, "-m", "sample_app.load", "--url", url, "--duration",
                 str(load_seconds), "--concurrency", str(args.concurrency), "--quiet"],
                stdout=subprocess.DEVNULL, start_new_session=True, env=env)
            if not args.no_dashboard and not args.no_browser:
                webbrowser.open(dashboard_url(args))  # with its token
            collect(target, args, inject=True)
        finally:
            if load is not None:
                stop_server(load)
            stop_server(server)
            log.close()
        return 0
