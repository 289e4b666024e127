"""Command-line reading, the ptrace rules and error messages, without real targets."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import psutil
import pytest

from apiscope.collectors.proctree import (
    is_multiprocessing_helper,
    is_runner,
    is_spawn_worker,
    libpython_version,
    program_name,
    server_kind,
    version_from_name,
)
from apiscope.collectors.target import (
    PtraceEnv,
    check_ptrace,
    describe_target,
    ptrace_refusal,
    python_version,
)
from apiscope.errors import TargetError

VENV_PY = "/srv/app/.venv/bin/python3.11"


@pytest.mark.parametrize(("cmdline", "kind"), [
    ([VENV_PY, "-m", "uvicorn", "app:app", "--port", "8000"], "uvicorn"),
    ([VENV_PY, "/srv/app/.venv/bin/uvicorn", "app:app"], "uvicorn"),
    (["/usr/bin/python3", "-X", "dev", "-B", "-m", "gunicorn.app.wsgiapp", "app:app"], "gunicorn"),
    (["gunicorn: worker [app:app]"], "gunicorn"),
    (["/usr/local/bin/hypercorn", "app:app"], "hypercorn"),
    ([VENV_PY, "/srv/app/.venv/bin/daphne", "-b", "0.0.0.0", "proj.asgi:application"], "daphne"),
    ([VENV_PY, "-m", "granian", "--interface", "asgi", "app:app"], "granian"),
    ([VENV_PY, "serve.py", "--server", "uvicorn"], None),
    ([VENV_PY, "-c", "import uvicorn; uvicorn.run('app:app')"], None),
    (["/bin/sleep", "60"], None),
    ([], None),
])
def test_server_kind_reads_the_module_or_script_after_the_interpreter(
        cmdline: list[str], kind: str | None) -> None:
    assert server_kind(cmdline) == kind


def test_wrappers_and_multiprocessing_children_are_recognised() -> None:
    assert is_runner([VENV_PY, "/root/.local/bin/poetry", "run", "uvicorn", "app:app"])
    assert is_runner(["/usr/local/bin/uv", "run", "uvicorn", "app:app"])
    assert not is_runner([VENV_PY, "-m", "uvicorn", "app:app"])
    spawn = [VENV_PY, "-B", "-c", "from multiprocessing.spawn import spawn_main;"
             " spawn_main(tracker_fd=7, pipe_handle=9)", "--multiprocessing-fork"]
    tracker = [VENV_PY, "-B", "-c", "from multiprocessing.resource_tracker import main;main(6)"]
    assert is_spawn_worker(spawn) and not is_multiprocessing_helper(spawn)
    assert is_multiprocessing_helper(tracker) and not is_spawn_worker(tracker)
    assert program_name(spawn) is None


def test_versions_from_file_names() -> None:
    assert version_from_name("/usr/bin/python3.12") == "3.12"
    assert version_from_name("/usr/bin/python3") is None
    assert libpython_version(["/usr/lib/libc.so.6", "/usr/lib/libpython3.10.so.1.0"]) == "3.10"
    assert libpython_version(["/usr/lib/libc.so.6"]) is None


class VersionProc:
    def __init__(self, exe: str, maps: list[str] | None = None) -> None:
        self.pid = 4242
        self._exe = exe
        self._maps = maps or []

    def exe(self) -> str:
        return self._exe

    def memory_maps(self, grouped: bool = True) -> list[Any]:
        return [type("Map", (), {"path": p})() for p in self._maps]


def test_python_version_asks_only_a_python_binary_and_checks_its_answer() -> None:
    asked: list[list[str]] = []

    def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        asked.append(argv)
        return subprocess.CompletedProcess(argv, 0, stdout="Python 3.11.7\n", stderr="")

    proc: Any = VersionProc("/usr/bin/python3.11")
    assert python_version(proc, run=run) == "3.11.7"
    assert asked == [["/proc/4242/exe", "--version"]]

    # uWSGI embeds libpython: never run it, take the version from the library's name.
    asked.clear()
    proc = VersionProc("/usr/bin/uwsgi", maps=["/usr/lib/libpython3.10.so.1.0"])
    assert python_version(proc, run=run) == "3.10"
    assert asked == []

    # An answer that contradicts the file name is not believed.
    proc = VersionProc("/usr/bin/python3.12")
    assert python_version(proc, run=run) == "3.12"


ROOT_ENV = PtraceEnv(uid=0, gid=0, cap_sys_ptrace=True, yama_scope=1)
USER_ENV = PtraceEnv(uid=1000, gid=1000, cap_sys_ptrace=False, yama_scope=0)


def test_ptrace_rules() -> None:
    same = ((1000, 1000, 1000), (1000, 1000, 1000))
    assert ptrace_refusal(ROOT_ENV, 5, (33, 33, 33), (33, 33, 33), "www-data") is None
    assert ptrace_refusal(USER_ENV, 5, *same, "alice") is None

    other = ptrace_refusal(USER_ENV, 5, (33, 33, 33), (33, 33, 33), "www-data")
    assert other is not None and "www-data" in other and "CAP_SYS_PTRACE" in other
    # A setuid-style process whose saved uid differs is someone else's too.
    assert ptrace_refusal(USER_ENV, 5, (1000, 1000, 0), (1000, 1000, 1000), "alice")

    restricted = ptrace_refusal(PtraceEnv(1000, 1000, False, 1), 5, *same, "alice")
    assert restricted is not None
    for fix in ("kernel.yama.ptrace_scope=0", "CAP_SYS_PTRACE", "--cap-add SYS_PTRACE", "root"):
        assert fix in restricted
    assert "ptrace_scope is 2" in (ptrace_refusal(PtraceEnv(1000, 1000, False, 2), 5, *same,
                                                  "alice") or "")
    # Scope 3 refuses even root.
    assert "reboot" in (ptrace_refusal(PtraceEnv(0, 0, True, 3), 5, *same, "alice") or "")


def test_ptrace_env_reads_yama_and_capabilities_from_proc(tmp_path: Path) -> None:
    (tmp_path / "sys/kernel/yama").mkdir(parents=True)
    (tmp_path / "sys/kernel/yama/ptrace_scope").write_text("2\n")
    (tmp_path / "self").mkdir()
    (tmp_path / "self/status").write_text("Name:\tx\nCapEff:\t0000000000080000\n")
    env = PtraceEnv.current(tmp_path)
    assert env.yama_scope == 2 and env.cap_sys_ptrace
    (tmp_path / "self/status").write_text("Name:\tx\nCapEff:\t00000000a80425fb\n")  # Docker's
    assert not PtraceEnv.current(tmp_path).cap_sys_ptrace
    (tmp_path / "sys/kernel/yama/ptrace_scope").unlink()
    assert PtraceEnv.current(tmp_path).yama_scope is None


def test_check_ptrace_on_a_real_process_owned_by_someone_else_names_the_owner() -> None:
    me = psutil.Process()
    stranger = PtraceEnv(uid=me.uids().real + 1, gid=me.gids().real, cap_sys_ptrace=False,
                         yama_scope=None)
    with pytest.raises(TargetError) as err:
        check_ptrace(me.pid, env=stranger)
    assert err.value.exit_code == 2
    assert me.username() in err.value.message
    check_ptrace(me.pid, env=PtraceEnv(me.uids().real, me.gids().real, False, 0))


class DeniedProc:
    def __init__(self, pid: int) -> None:
        self.pid = pid

    def exe(self) -> str:
        raise psutil.AccessDenied(self.pid)

    def username(self) -> str:
        return "www-data"


def test_a_process_we_may_not_read_is_a_permission_error_naming_the_fixes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    unprivileged = PtraceEnv(uid=1000, gid=1000, cap_sys_ptrace=False, yama_scope=1)
    monkeypatch.setattr(PtraceEnv, "current", classmethod(lambda cls, *a: unprivileged))
    with pytest.raises(TargetError) as err:
        describe_target(77, proc_factory=DeniedProc)  # type: ignore[arg-type]
    assert err.value.exit_code == 2
    message = err.value.message
    assert "permission denied" in message and "www-data" in message
    for fix in ("root", "kernel.yama.ptrace_scope=0", "CAP_SYS_PTRACE", "--cap-add SYS_PTRACE"):
        assert fix in message


def test_root_is_not_told_to_run_as_root_about_a_protected_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    root = PtraceEnv(uid=0, gid=0, cap_sys_ptrace=True, yama_scope=None)
    monkeypatch.setattr(PtraceEnv, "current", classmethod(lambda cls, *a: root))
    with pytest.raises(TargetError) as err:
        describe_target(1, proc_factory=DeniedProc)  # type: ignore[arg-type]
    assert err.value.exit_code == 2
    message = err.value.message
    assert "init process" in message and "although apiscope runs as root" in message
    assert "run apiscope as root" not in message and "sudo" not in message
