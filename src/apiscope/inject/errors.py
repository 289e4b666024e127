"""What can go wrong once the target is known to be traceable."""

from __future__ import annotations

from apiscope.errors import ApiscopeError


class InjectionFailed(ApiscopeError):
    """The debugger ran, but the code could not be scheduled, or failed inside the target."""

    exit_code = 1


class InjectionTimeout(InjectionFailed):
    """The target never ran the scheduled code within the deadline."""
