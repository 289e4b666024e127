"""Every message about a refused ptrace names the same fixes, written once in
`apiscope.permissions`."""

from __future__ import annotations

import pytest

from apiscope.collectors.pyspy import failure_error
from apiscope.collectors.target import PtraceEnv, ptrace_refusal
from apiscope.errors import TargetError
from apiscope.inject.gdb import check_gdb_output
from apiscope.inject.remote import check_remote_exec
from apiscope.inject.runner import RunResult
from apiscope.permissions import CAPABILITY_FIX, PTRACE_FIXES

SAME = ((1000, 1000, 1000), (1000, 1000, 1000))


def test_the_fixes_name_every_way_out() -> None:
    for fix in ("root", "sudo", "`sudo sysctl kernel.yama.ptrace_scope=0`", "CAP_SYS_PTRACE",
                "`docker run --cap-add SYS_PTRACE`", 'capabilities.add: ["SYS_PTRACE"]'):
        assert fix in PTRACE_FIXES


def refused(output: str) -> RunResult:
    return RunResult(returncode=1, output=output, timed_out=False, seconds=0.1)


def test_collectors_and_injection_give_the_same_fixes() -> None:
    messages = [
        failure_error(123, 1, "Permission Denied: Try running again\n").message,
        ptrace_refusal(PtraceEnv(1000, 1000, False, 1), 5, *SAME, "alice"),
        ptrace_refusal(PtraceEnv(1000, 1000, False, 2), 5, *SAME, "alice"),
    ]
    for check, output in ((check_gdb_output, "ptrace: Operation not permitted.\n"),
                          (check_remote_exec, "PermissionError: [Errno 1]")):
        with pytest.raises(TargetError) as caught:
            check(7, refused(output))
        messages.append(caught.value.message)
    for message in messages:
        assert message is not None and message.endswith(f". Fix one of: {PTRACE_FIXES}")


def test_each_refusal_keeps_its_own_explanation() -> None:
    scope1 = ptrace_refusal(PtraceEnv(1000, 1000, False, 1), 5, *SAME, "alice") or ""
    assert "ptrace_scope is 1 (a process may only trace its own children)" in scope1
    scope2 = ptrace_refusal(PtraceEnv(1000, 1000, False, 2), 5, *SAME, "alice") or ""
    assert "ptrace_scope is 2 (only CAP_SYS_PTRACE may trace)" in scope2
    scope3 = ptrace_refusal(PtraceEnv(0, 0, True, 3), 5, *SAME, "alice") or ""
    assert "until the next reboot" in scope3 and "/etc/sysctl.d" in scope3
    # Another user's process: Yama does not matter, the user or the capability does.
    other = ptrace_refusal(PtraceEnv(1000, 1000, False, 0), 5, (33,) * 3, (33,) * 3,
                           "www-data") or ""
    assert "run apiscope as www-data or as root (sudo)" in other and CAPABILITY_FIX in other
    assert "sysctl" not in other
