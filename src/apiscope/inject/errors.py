"""What can go wrong once the target is known to be traceable."""

from __future__ import annotations

from apiscope.errors import ApiscopeError


class InjectionFailed(ApiscopeError):
    """The debugger ran, but the code could not be scheduled, or failed inside the target."""

    exit_code = 1
    # (start, end) of the debugger's run in the target (time.time()), when it ran: the
    # process may have been held for that long, failed or not.
    debugger_span: tuple[float, float] | None = None


class InjectionTimeout(InjectionFailed):
    """The target never ran the scheduled code within the deadline."""
