"""describe_target against real processes: uvicorn, gunicorn, plain Python, wrappers, non-Python."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.request import urlopen

import psutil
import pytest

from apiscope.collectors.target import Target, describe_target
from apiscope.errors import TargetError
from tests.support import (
    free_port,
    require_ptrace,
    run_server,
    stop_process_group,
    uvicorn_argv,
    wait_until,
)

pytestmark = pytest.mark.integration

TINY_APP = '''
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
'''
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.fixture
def traceable() -> None:
    """describe_target checks that py-spy will be allowed to trace the target."""
    require_ptrace()


@pytest.fixture
def app_dir(tmp_path: Path, traceable: None) -> Path:
    (tmp_path / "tinyapp.py").write_text(TINY_APP)
    return tmp_path


def gunicorn_argv(port: int, workers: int = 2) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-k", "uvicorn.workers.UvicornWorker", "-w",
            str(workers), "-b", f"127.0.0.1:{port}", "--log-level", "warning", "tinyapp:app"]


@contextmanager
def spawned(argv: Sequence[str], cwd: Path | None = None, env: dict[str, str] | None = None,
            ) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, cwd=cwd,
                            env={**os.environ, **env} if env else None)
    try:
        yield proc
    finally:
        stop_process_group(proc)


def children_of(pid: int, count: int) -> list[psutil.Process]:
    """Wait for `pid` to have `count` children running Python (a forked shell child is not
    one until it has exec'd), and return them."""
    def pythons() -> list[psutil.Process]:
        kids = psutil.Process(pid).children()
        try:
            ready = len(kids) == count and all("python" in k.exe() for k in kids)
        except psutil.Error:
            return []
        return kids if ready else []

    return wait_until(pythons, timeout=20, what=f"{count} Python children of {pid}")


def settled(pid: int, workers: int) -> Target:
    """describe_target once the server has started all its workers."""
    return wait_until(lambda: (t := describe_target(pid)) and len(t.pids) == workers and t,
                      timeout=30, what=f"{workers} workers under {pid}")


def test_a_single_uvicorn_is_sampled_itself(app_dir: Path) -> None:
    port = free_port()
    with run_server(uvicorn_argv("tinyapp:app", port), port, cwd=app_dir) as server:
        target = describe_target(server.pid)
    assert (target.pid, target.pids, target.master_pid) == (server.pid, [server.pid], None)
    assert target.sample_pid == server.pid
    assert target.server == "uvicorn"
    assert "-m uvicorn tinyapp:app" in target.command
    assert target.python_version == platform.python_version()
    assert [(p.pid, p.role) for p in target.processes] == [(server.pid, "single")]
    assert target.notes == []


def test_uvicorn_workers_are_its_spawned_children_not_the_resource_tracker(
        app_dir: Path) -> None:
    port = free_port()
    argv = uvicorn_argv("tinyapp:app", port, "--workers", "2")
    with run_server(argv, port, cwd=app_dir) as server:
        target = settled(server.pid, 2)
        children = {p.pid for p in psutil.Process(server.pid).children()}
        one_worker = describe_target(target.pids[0])
    assert target.server == "uvicorn" and target.master_pid == server.pid
    assert len(children) == 3  # two workers and multiprocessing's resource tracker
    assert set(target.pids) < children
    assert target.sample_pid == server.pid
    roles = {p.pid: p.role for p in target.processes}
    assert roles == {server.pid: "master", **{pid: "worker" for pid in target.pids}}
    assert (one_worker.server, one_worker.pids) == ("uvicorn", [target.pids[0]])
    assert f"uvicorn master {server.pid}" in one_worker.notes[0]


def test_a_gunicorn_master_is_described_with_its_workers(app_dir: Path) -> None:
    port = free_port()
    with run_server(gunicorn_argv(port), port, cwd=app_dir) as server:
        target = settled(server.pid, 2)
        workers = {p.pid for p in psutil.Process(server.pid).children()}
        one_worker = describe_target(min(workers))
    assert target.server == "gunicorn"
    assert (target.pid, target.master_pid) == (server.pid, server.pid)
    assert set(target.pids) == workers
    assert {p.ppid for p in target.processes if p.role == "worker"} == {server.pid}

    # Naming one worker profiles that worker alone, and says how to get all of them.
    assert one_worker.server == "gunicorn"
    assert (one_worker.pids, one_worker.master_pid) == ([min(workers)], None)
    assert [p.role for p in one_worker.processes] == ["worker"]
    assert str(server.pid) in one_worker.notes[0]


def test_a_plain_python_process_is_a_single_unknown_server(traceable: None) -> None:
    with spawned(SLEEPER) as proc:
        target = describe_target(proc.pid)
    assert (target.server, target.pids, target.master_pid) == ("python", [proc.pid], None)
    assert target.python_version == platform.python_version()


def test_a_shell_wrapper_is_followed_to_its_one_python_child(traceable: None) -> None:
    # The trailing `; true` keeps the shell from exec'ing Python in its own place.
    with spawned(["sh", "-c", subprocess.list2cmdline(SLEEPER) + "; true"]) as shell:
        (child,) = children_of(shell.pid, 1)
        target = describe_target(shell.pid)
    assert (target.pid, target.pids, target.server) == (child.pid, [child.pid], "python")
    assert len(target.notes) == 1
    assert f"PID {shell.pid}" in target.notes[0] and str(child.pid) in target.notes[0]


def test_a_wrapper_with_several_python_children_lists_them() -> None:
    line = subprocess.list2cmdline(SLEEPER)
    with spawned(["sh", "-c", f"{line} & {line} & wait"]) as shell:
        kids = children_of(shell.pid, 2)
        with pytest.raises(TargetError) as err:
            describe_target(shell.pid)
    assert err.value.exit_code == 2
    assert all(str(k.pid) in err.value.message for k in kids)


def test_a_non_python_process_is_refused_with_exit_code_2() -> None:
    with spawned(["sleep", "60"]) as proc:
        with pytest.raises(TargetError) as err:
            describe_target(proc.pid)
    assert err.value.exit_code == 2
    assert "not a Python process" in err.value.message and "pgrep" in err.value.message


def test_a_missing_pid_is_refused_with_exit_code_2() -> None:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    with pytest.raises(TargetError) as err:
        describe_target(pid_max + 1)  # above the kernel's limit: can never exist
    assert err.value.exit_code == 2
    assert f"no process with PID {pid_max + 1}" in err.value.message


def test_a_python_runner_like_poetry_run_is_followed_to_the_server(
        tmp_path: Path, traceable: None) -> None:
    # `poetry run` is itself Python: a stand-in with the same name and the same behaviour.
    runner = tmp_path / "poetry"
    runner.write_text("import subprocess, sys\nsubprocess.run(sys.argv[2:])\n")
    with spawned([sys.executable, str(runner), "run", *SLEEPER]) as proc:
        (child,) = children_of(proc.pid, 1)
        target = describe_target(proc.pid)
    assert (target.pid, target.pids) == (child.pid, [child.pid])
    assert "wrapper" in target.notes[0]


LAUNCHER = "import subprocess, sys\nsubprocess.run(sys.argv[1:])\n"


def test_a_python_program_that_started_the_server_is_followed_to_it(app_dir: Path) -> None:
    """`mlflow server` runs `python -m uvicorn --workers N` and waits for it: injected into
    the launcher, the agent would never load (its main thread waits in C code)."""
    (app_dir / "launch.py").write_text(LAUNCHER)
    argv = [sys.executable, "launch.py", *uvicorn_argv("tinyapp:app", free_port(), "--workers",
                                                        "2")]
    with spawned(argv, cwd=app_dir) as launcher:
        (server,) = children_of(launcher.pid, 1)
        target = wait_until(lambda: (t := describe_target(launcher.pid)) and len(t.pids) == 2
                            and t, timeout=30, what="the launched uvicorn's two workers")
        workers = {p.pid for p in server.children()}
    assert (target.pid, target.master_pid, target.server) == (server.pid, server.pid, "uvicorn")
    assert set(target.pids) < workers
    assert len(target.notes) == 1
    assert f"PID {launcher.pid}" in target.notes[0] and f"process {server.pid}" in target.notes[0]


FORKING_LAUNCHER = """
import multiprocessing, sys
import uvicorn

def serve():
    uvicorn.Server(uvicorn.Config("tinyapp:app", host="127.0.0.1", port=int(sys.argv[1]),
                                  log_level="warning")).run()

if __name__ == "__main__":
    context = multiprocessing.get_context("fork")
    child = context.Process(target=serve)
    child.start()
    context.Event().wait()
"""


def test_a_launcher_whose_forked_child_serves_is_followed_to_the_listener(
        app_dir: Path) -> None:
    """LNbits runs `uvicorn.Server(...).run` in a `multiprocessing` child and waits on an
    event: the child shows the launcher's command line, which names no server, and the
    launcher serves nothing. The one that listens on the port is the server."""
    (app_dir / "forking.py").write_text(FORKING_LAUNCHER)
    port = free_port()
    with spawned([sys.executable, "forking.py", str(port)], cwd=app_dir) as launcher:
        (child,) = children_of(launcher.pid, 1)
        wait_until(lambda: psutil.Process(child.pid).net_connections(kind="inet"), timeout=20,
                   what="the forked child to listen")
        target = describe_target(launcher.pid)
    assert (target.pid, target.pids, target.server) == (child.pid, [child.pid], "python")
    assert f"PID {launcher.pid}" in target.notes[0] and f"child {child.pid}" in target.notes[0]


def test_a_launcher_whose_child_listens_on_nothing_is_kept(app_dir: Path) -> None:
    (app_dir / "quiet.py").write_text(
        "import multiprocessing, time\n"
        "if __name__ == '__main__':\n"
        "    child = multiprocessing.get_context('fork').Process(target=time.sleep, args=(60,))\n"
        "    child.start()\n    child.join()\n")
    with spawned([sys.executable, "quiet.py"], cwd=app_dir) as launcher:
        children_of(launcher.pid, 1)
        target = describe_target(launcher.pid)
    assert (target.pid, target.pids, target.notes) == (launcher.pid, [launcher.pid], [])


def test_a_python_program_that_started_several_servers_is_kept_with_a_note(
        app_dir: Path) -> None:
    (app_dir / "launch2.py").write_text(
        "import os, subprocess, sys\n"
        "servers = [subprocess.Popen([*sys.argv[1:], '--port', port])"
        " for port in os.environ['PORTS'].split()]\n"
        "for server in servers:\n    server.wait()\n")
    ports = f"{free_port()} {free_port()}"
    argv = [sys.executable, "launch2.py", sys.executable, "-m", "uvicorn", "tinyapp:app",
            "--host", "127.0.0.1"]
    with spawned(argv, cwd=app_dir, env={"PORTS": ports}) as launcher:
        servers = children_of(launcher.pid, 2)
        # Forked but not yet exec'd, a child still shows the launcher's command line.
        wait_until(lambda: all("uvicorn" in s.cmdline() for s in servers), timeout=20,
                   what="both children to run uvicorn")
        target = describe_target(launcher.pid)
    assert (target.pid, target.pids, target.server) == (launcher.pid, [launcher.pid], "python")
    assert all(str(s.pid) in target.notes[0] for s in servers)


SELF_SERVING = """
import sys
import uvicorn

if __name__ == "__main__":
    uvicorn.run("tinyapp:app", host="127.0.0.1", port=int(sys.argv[1]), workers=2,
                log_level="warning")
"""


def test_a_program_running_uvicorn_workers_itself_is_their_master(app_dir: Path) -> None:
    """`uvicorn.run(app, workers=N)` called by the program itself (Airflow's `airflow
    api-server`, a `main.py`): its command line names no server, it binds the port and
    serves nothing, and its spawned children, which listen on the port, serve. Read as a
    single process, its workers got no agent and no request was recorded."""
    (app_dir / "main.py").write_text(SELF_SERVING)
    port = free_port()
    with spawned([sys.executable, "main.py", str(port)], cwd=app_dir) as program:
        target = settled(program.pid, 2)
        spawned_children = [p for p in psutil.Process(program.pid).children()
                            if "resource_tracker" not in " ".join(p.cmdline())]
    assert (target.pid, target.master_pid, target.sample_pid) == (program.pid,) * 3
    assert set(target.pids) == {p.pid for p in spawned_children}
    assert {p.role for p in target.processes} == {"master", "worker"}
    assert "started 2 worker processes that listen on its port" in target.notes[0]


def test_a_program_with_a_spawned_process_pool_is_still_profiled_itself(
        app_dir: Path) -> None:
    """A serving program whose pool of spawned processes does the app's work: the pool's
    processes listen on nothing, so they are no workers and the program is the target."""
    (app_dir / "pool.py").write_text(
        "import concurrent.futures, multiprocessing, time\n"
        "if __name__ == '__main__':\n"
        "    context = multiprocessing.get_context('spawn')\n"
        "    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:\n"
        "        pool.submit(time.sleep, 60)\n        time.sleep(60)\n")
    with spawned([sys.executable, "pool.py"], cwd=app_dir) as program:
        wait_until(lambda: len(psutil.Process(program.pid).children()) >= 2, timeout=20,
                   what="the pool's processes")
        target = describe_target(program.pid)
    assert (target.pid, target.pids, target.master_pid) == (program.pid, [program.pid], None)


EMBEDDED_GUNICORN = """
import sys
from gunicorn.app.base import BaseApplication

import tinyapp


class Serve(BaseApplication):
    def load_config(self):
        for key, value in {"bind": f"127.0.0.1:{sys.argv[1]}", "workers": 2,
                           "worker_class": "uvicorn.workers.UvicornWorker",
                           "loglevel": "warning"}.items():
            self.cfg.set(key, value)

    def load(self):
        return tinyapp.app


if __name__ == "__main__":
    Serve().run()
"""


def test_a_program_running_gunicorns_arbiter_itself_is_its_workers_master(
        app_dir: Path) -> None:
    """`gunicorn.app.base.BaseApplication` run by the program itself (`feast serve`): its
    command line names no server, and its workers, forked, show the program's own. Read as a
    single process, the agent went into the arbiter, which serves nothing, and no request was
    recorded."""
    (app_dir / "serve.py").write_text(EMBEDDED_GUNICORN)
    port = free_port()
    with spawned([sys.executable, "serve.py", str(port)], cwd=app_dir) as program:
        target = settled(program.pid, 2)
        workers = {p.pid for p in psutil.Process(program.pid).children()}
        one_worker = describe_target(min(workers))
    assert (target.server, target.master_pid) == ("gunicorn", program.pid)
    assert set(target.pids) == workers
    assert "runs gunicorn's arbiter itself" in target.notes[0]
    assert (one_worker.pids, one_worker.master_pid) == ([min(workers)], None)
    assert str(program.pid) in one_worker.notes[0]


SOCKET_ARBITER = """
import multiprocessing, os, socket, subprocess, sys, time

if __name__ == "__main__":
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(sys.argv[1])))
    listener.listen(64)
    fd = listener.fileno()
    os.set_inheritable(fd, True)
    # A forked child with this program's own command line holds the socket too (a pool
    # forked after the bind), but serves nothing.
    pool = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
    pool.start()
    workers = [subprocess.Popen([sys.executable, "worker.py", str(fd)], pass_fds=[fd])
               for _ in range(2)]
    while True:
        for i, worker in enumerate(workers):
            if worker.poll() is not None:  # restarted, as a process manager does
                workers[i] = subprocess.Popen([sys.executable, "worker.py", str(fd)],
                                              pass_fds=[fd])
        time.sleep(0.2)
"""

SOCKET_WORKER = """
import socket, sys
import uvicorn

sock = socket.socket(fileno=int(sys.argv[1]))
uvicorn.Server(uvicorn.Config("tinyapp:app", log_level="warning")).run(sockets=[sock])
"""


def test_a_process_manager_handing_its_socket_to_workers_is_their_master(
        app_dir: Path) -> None:
    """`bentoml serve` runs circus, which binds the port and starts each worker as a program
    of its own (`python -m _bentoml_impl.worker.service --fd 3`) on the inherited socket. No
    command line names a server: read as a single process, the manager got the agent,
    served nothing, and no request was recorded. Its workers are found again as they are
    replaced; a forked child holding the socket with the manager's command line is none."""
    (app_dir / "arbiter.py").write_text(SOCKET_ARBITER)
    (app_dir / "worker.py").write_text(SOCKET_WORKER)
    port = free_port()
    with spawned([sys.executable, "arbiter.py", str(port)], cwd=app_dir) as program:
        target = settled(program.pid, 2)
        children = psutil.Process(program.pid).children()
        pool = [p for p in children if "worker.py" not in p.cmdline()]
        workers = [p for p in children if "worker.py" in p.cmdline()]
        workers[0].kill()
        replaced = wait_until(
            lambda: (t := describe_target(program.pid)) and len(t.pids) == 2
            and workers[0].pid not in t.pids and t, timeout=30, what="a replaced worker")
        wait_until(lambda: urlopen(f"http://127.0.0.1:{port}/", timeout=5).read() == b"ok",
                   timeout=20, what="the workers to serve")
    assert (target.server, target.master_pid, target.sample_pid) == ("python",) + (
        program.pid,) * 2
    assert set(target.pids) == {p.pid for p in workers} and len(pool) == 1
    assert pool[0].pid not in target.pids and pool[0].pid not in replaced.pids
    assert workers[1].pid in replaced.pids
    assert "started 2 worker processes that listen on its port" in target.notes[0]
