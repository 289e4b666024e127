"""What to tell a user the kernel would not let apiscope trace a process, and how to fix it.

py-spy reads a target's memory through ptrace, and the injector (ptrace itself, gdb, or
`sys.remote_exec`) attaches with it. The kernel allows that to a tracer with CAP_SYS_PTRACE
(root has it), or to one running as the target's user when Yama's `kernel.yama.ptrace_scope`
permits: 0 lets a process trace any of its user's processes, 1 (Ubuntu's default) only its own
descendants, which apiscope's tools are not, 2 only CAP_SYS_PTRACE holders, and 3 nobody until
the next reboot.

The collectors and the injection each meet a refusal in their own way, but the fixes are the
same; they are written here once, so every message names all of them and a correction reaches
every message. This module imports nothing of apiscope: any layer may use it.
"""

from __future__ import annotations

SYSCTL_FIX = "sudo sysctl kernel.yama.ptrace_scope=0"
CAPABILITY_FIX = (
    "give apiscope the CAP_SYS_PTRACE capability (Docker: `docker run --cap-add SYS_PTRACE`;"
    ' Kubernetes: securityContext.capabilities.add: ["SYS_PTRACE"])'
)
PTRACE_FIXES = (
    "run apiscope as root (sudo); or as the user that runs the server, with tracing allowed"
    f" (`{SYSCTL_FIX}`); or {CAPABILITY_FIX}"
)


def ptrace_denied(problem: str) -> str:
    """`problem` (what was refused, and why when known) followed by every fix."""
    return f"{problem}. Fix one of: {PTRACE_FIXES}"


def other_user_refusal(head: str, owner: str, uid: int) -> str:
    """The target runs as another user and apiscope (as `uid`) lacks CAP_SYS_PTRACE: Yama's
    setting does not matter then, so the fixes are the user and the capability."""
    return (f"{head}: it runs as user {owner} and apiscope runs as uid {uid} without"
            f" CAP_SYS_PTRACE. Fix: run apiscope as {owner} or as root (sudo), or"
            f" {CAPABILITY_FIX}")


def yama_refusal(head: str, scope: int) -> str:
    """Yama's `scope` (1, 2 or 3) forbids a tracer of the target's user without CAP_SYS_PTRACE
    (and at 3 every tracer): what the scope means and what fixes it."""
    if scope >= 3:
        return (f"{head}: kernel.yama.ptrace_scope is {scope}, which forbids all tracing until"
                " the next reboot. Fix: set kernel.yama.ptrace_scope to 0 in /etc/sysctl.d and"
                " reboot")
    if scope == 2:
        return ptrace_denied(f"{head}: kernel.yama.ptrace_scope is 2 (only CAP_SYS_PTRACE may"
                             " trace)")
    return ptrace_denied(f"{head}: kernel.yama.ptrace_scope is {scope} (a process may only"
                         " trace its own children) and apiscope lacks CAP_SYS_PTRACE")
