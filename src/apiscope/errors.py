"""Errors a user can cause, each carrying the exit code the CLI returns for it.

The message names the cause and the fix; the CLI prints it without a traceback.
"""

from __future__ import annotations


class ApiscopeError(Exception):
    """An expected failure: bad input, an unusable target, a missing tool."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(ApiscopeError):
    """Bad options or arguments."""

    exit_code = 2


class TargetError(ApiscopeError):
    """The target process cannot be profiled (no such PID, not Python, ptrace denied)."""

    exit_code = 2


class ToolMissingError(ApiscopeError):
    """A program apiscope drives (py-spy, gdb) is not installed."""

    exit_code = 2


class SessionFileError(ApiscopeError):
    """A session file that cannot be read: missing, not SQLite, or not an apiscope session."""

    exit_code = 2


class BudgetExceeded(ApiscopeError):
    """`report --fail-on` found a flag at or above the given severity."""

    exit_code = 3


class NotAvailableYet(ApiscopeError):
    """A command whose capability has not been built yet."""

    exit_code = 1
