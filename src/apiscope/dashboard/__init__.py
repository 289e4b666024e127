"""The web dashboard (Dash): overview, endpoints, flamegraph and resources, live or replayed.

Dash and plotly come with the `[dashboard]` extra: a headless collector (a sidecar writing
sessions and serving /metrics) installs without them. So this package imports Dash only when
one of the names below is used, and `require_dash()` says what to install when it is missing;
`apiscope.dashboard.access` (the token) works without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from apiscope.errors import ToolMissingError

if TYPE_CHECKING:
    from apiscope.dashboard.app import (
        DashboardHandle,
        create_app,
        serve,
        session_data,
        start_dashboard_thread,
        start_server_thread,
    )
    from apiscope.dashboard.data import DashboardSession

__all__ = ["DashboardHandle", "DashboardSession", "create_app", "require_dash", "serve",
           "session_data", "start_dashboard_thread", "start_server_thread"]

INSTALL_HINT = ("install the dashboard extra: pip install 'apiscope[dashboard]' (from apiscope's"
                " source tree: pip install '.[dashboard]')")


class DashboardNotInstalled(ToolMissingError):
    """The dashboard was asked for, and Dash or plotly is not installed."""


def require_dash(alternative: str = "") -> None:
    """Raise `DashboardNotInstalled` (exit 2) unless Dash and plotly import."""
    try:
        import dash  # noqa: F401
        import plotly  # noqa: F401
    except ImportError as exc:
        raise DashboardNotInstalled(
            f"the dashboard needs {exc.name or 'Dash'}, which is not installed: {INSTALL_HINT}"
            + (f", or {alternative}" if alternative else "")) from None


def __getattr__(name: str) -> Any:
    if name == "DashboardSession":  # plain data over the session file: no Dash needed
        from apiscope.dashboard.data import DashboardSession

        return DashboardSession
    if name in __all__:
        require_dash()
        from apiscope.dashboard import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
