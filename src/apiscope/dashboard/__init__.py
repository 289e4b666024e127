"""The web dashboard (Dash): overview, endpoints, flamegraph and resources, live or replayed."""

from __future__ import annotations

from apiscope.dashboard.app import (
    DashboardHandle,
    create_app,
    serve,
    session_data,
    start_dashboard_thread,
    start_server_thread,
)
from apiscope.dashboard.data import SessionData

__all__ = ["DashboardHandle", "SessionData", "create_app", "serve", "session_data",
           "start_dashboard_thread", "start_server_thread"]
