"""Run one corpus case for real and judge its report.

A case is (app, mode, server): prepare the app's data, start it under uvicorn (one process),
uvicorn with uvloop and httptools (`uvloop`: as `uvicorn[standard]` serves it), gunicorn with
two Uvicorn workers or hypercorn, wait until it serves, start the load in a separate
process, run `apiscope attach PID --duration 15 --no-dashboard --report out.json` while the
load runs (real py-spy, real gdb injection), then stop everything and judge the report.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.corpus.catalog import ROOT, CorpusApp
from tests.corpus.judge import CaseResult, judge
from tests.corpus.overlay import uvicorn_standard
from tests.services import PostgresServer, RedisServer, free_port

ATTACH_SECONDS = 15
LOAD_CONCURRENCY = 8
LOAD_RATE = 40.0  # requests per second over the whole mix
LOAD_BOUND_SECONDS = 60  # the load stops by itself at the latest after this long
APISCOPE = ROOT / ".venv" / "bin" / "apiscope"
UVLOOP = "uvloop"  # uvicorn on uvloop and httptools (see `overlay`), from a launcher script
LAUNCHER = Path(__file__).with_name("launch.py")


@dataclass(frozen=True)
class Services:
    postgres: PostgresServer | None = None
    redis: RedisServer | None = None


def apiscope_command() -> list[str]:
    """`$APISCOPE_COMMAND` (to measure another build), else the project's own apiscope."""
    if os.environ.get("APISCOPE_COMMAND"):
        return shlex.split(os.environ["APISCOPE_COMMAND"])
    return [str(APISCOPE)] if APISCOPE.exists() else [sys.executable, "-m", "apiscope"]


def server_argv(app: CorpusApp, server: str, port: int, workdir: Path) -> list[str]:
    if server == "uvicorn":
        return [sys.executable, "-m", "uvicorn", app.asgi, "--host", "127.0.0.1", "--port",
                str(port), "--log-level", "warning"]
    if server == UVLOOP:  # uvicorn[standard], started by the app's own launcher script
        script = workdir / "serve.py"
        shutil.copyfile(LAUNCHER, script)
        return [sys.executable, str(script), app.asgi, str(port)]
    if server == "hypercorn":
        return [sys.executable, "-m", "hypercorn", app.asgi, "--bind", f"127.0.0.1:{port}",
                "--log-level", "warning"]
    if server == "daphne":  # Django Channels' server (Twisted on asyncio's loop)
        return [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "-v", "0",
                app.asgi]
    if server == "granian":  # a Rust server: one worker process, the master serves nothing
        return [sys.executable, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1",
                "--port", str(port), "--log-level", "warning", app.asgi]
    return [sys.executable, "-m", "gunicorn", "-k", "uvicorn.workers.UvicornWorker", "-w", "2",
            "-b", f"127.0.0.1:{port}", "--log-level", "warning", "--timeout", "60", app.asgi]


def app_env(app: CorpusApp, mode: str, services: Services, workdir: Path,
            case: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NOTES_DB": str(workdir / "notes.sqlite3"),
           "APP_DB": str(workdir / "app.sqlite3")}
    env.update(app.planted_env if mode == "planted" else app.healthy_env)
    if app.needs_postgres:
        if services.postgres is None:
            raise RuntimeError(f"{app.name} needs PostgreSQL")
        env["DATABASE_URL"] = services.postgres.create_database(case.replace("-", "_"))
    if app.needs_redis:
        if services.redis is None:
            raise RuntimeError(f"{app.name} needs Redis")
        env["REDIS_URL"] = services.redis.url
    return env


def _serves(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status < 500)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    """Stop a process group we started: `sig`, then SIGKILL after `timeout`."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@contextmanager
def serving(argv: list[str], env: dict[str, str], url: str, log: Path) -> Iterator[int]:
    """Start the server; yield its PID once `url` answers; stop it at the end."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _serves(url):
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:"
                                   f" {log.read_text(errors='replace')[-1500:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not answer {url} within 60 s")
            time.sleep(0.1)
        yield proc.pid
    finally:
        _stop(proc)


def load_argv(app: CorpusApp, mode: str, url: str, workdir: Path) -> list[str]:
    if app.own_load is not None:
        return [sys.executable, "-m", "sample_app.load", "--url", url, "--duration",
                str(LOAD_BOUND_SECONDS), *app.own_load]
    plan = {"url": url, "duration": LOAD_BOUND_SECONDS, "concurrency": LOAD_CONCURRENCY,
            "rate": LOAD_RATE, "login": app.login, "id_max": app.id_max,
            "requests": app.mix(mode == "planted")}
    path = workdir / "plan.json"
    path.write_text(json.dumps(plan))
    return [sys.executable, "-m", "tests.corpus.load", str(path)]


def prepare(app: CorpusApp, env: dict[str, str]) -> None:
    if app.prestart is None:
        return
    done = subprocess.run([sys.executable, "-m", app.prestart], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{app.prestart} failed: {done.stderr[-1500:]}")


def attach(pid: int, workdir: Path) -> tuple[int, str]:
    """Run apiscope attach for ATTACH_SECONDS; (exit code, stderr)."""
    argv = [*apiscope_command(), "attach", str(pid), "--duration", str(ATTACH_SECONDS),
            "--no-dashboard", "--session", str(workdir / "session.sqlite"),
            "--report", str(workdir / "out.json")]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=ATTACH_SECONDS + 60)
    except subprocess.TimeoutExpired:
        _stop(proc, signal.SIGTERM)
        _, err = proc.communicate()
    return proc.returncode, err.decode(errors="replace")


def run_case(app: CorpusApp, mode: str, server: str, services: Services,
             keep: Path | None = None) -> CaseResult:
    """Serve, load and attach for one case; the judged result (with `failure` set when the
    run produced no report). `keep`: a directory to copy the report and logs into."""
    result = CaseResult(app.name, mode, server)
    result.expected = app.expected(app) if mode == "planted" else []
    with tempfile.TemporaryDirectory(prefix="corpus-") as tmp:
        workdir = Path(tmp)
        try:
            code, stderr = _serve_and_attach(app, mode, server, services, workdir,
                                             result.case_id)
        finally:
            if services.postgres is not None and app.needs_postgres:
                services.postgres.drop_database(result.case_id.replace("-", "_"))
        report_path = workdir / "out.json"
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for name in ("out.json", "server.log", "load.json", "session.sqlite"):
                if (workdir / name).exists():
                    (keep / f"{result.case_id}.{name}").write_bytes((workdir / name).read_bytes())
            (keep / f"{result.case_id}.apiscope.log").write_text(stderr)
        if code != 0 or not report_path.exists():
            result.failure = f"apiscope attach exited {code}: {stderr.strip()[-800:]}"
            return result
        return judge(result, json.loads(report_path.read_text()), stderr, app.app_dir, ROOT)


def sampling_timeline(keep: Path) -> str:
    """Where a kept case's failed reads were: each window with some, and the debugger's runs,
    in seconds from the session's start (for a failure's message)."""
    sessions = sorted(keep.glob("*.session.sqlite"))
    if not sessions:
        return "no session kept"
    db = sqlite3.connect(f"file:{sessions[0]}?mode=ro", uri=True)
    try:
        meta = {key: json.loads(value) for key, value in db.execute("SELECT key, value FROM meta")}
        start = float(meta.get("start") or 0.0)
        windows = [f"{s - start:.2f}-{e - start:.2f}s {hz} Hz: {n}" for s, e, hz, n in db.execute(
            "SELECT start, end, rate_hz, errors FROM windows WHERE errors > 0 ORDER BY start")]
    finally:
        db.close()
    pauses = [f"{p['start'] - start:.2f}-{p['end'] - start:.2f}s" for p in meta.get("pauses", [])]
    return (f"failed reads by window: {', '.join(windows) or 'none'}; debugger runs:"
            f" {', '.join(pauses) or 'none'}; counted while injecting:"
            f" {meta.get('samples_paused')}")


def _serve_and_attach(app: CorpusApp, mode: str, server: str, services: Services,
                      workdir: Path, case: str) -> tuple[int, str]:
    env = app_env(app, mode, services, workdir, case)
    if server == UVLOOP:
        env["PYTHONPATH"] += os.pathsep + str(uvicorn_standard())
    prepare(app, env)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serving(server_argv(app, server, port, workdir), env, url + app.ready_path,
                 workdir / "server.log") as pid:
        with (workdir / "load.json").open("wb") as out:
            load = subprocess.Popen(load_argv(app, mode, url, workdir), cwd=ROOT, env=env,
                                    stdout=out, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
        try:
            return attach(pid, workdir)
        finally:
            _stop(load)
