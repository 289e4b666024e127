"""Building and serving the Dash app, for a replayed session or one being written."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dash import Dash
from werkzeug.serving import BaseWSGIServer, make_server

from apiscope.analysis.thresholds import Thresholds, resolve_thresholds
from apiscope.dashboard.access import require_token
from apiscope.dashboard.analysis import FlagAnalysis, flags_by
from apiscope.dashboard.callbacks import register
from apiscope.dashboard.data import DashboardSession
from apiscope.dashboard.pages import shell
from apiscope.errors import UsageError

if TYPE_CHECKING:
    from apiscope.metrics import MetricsExporter

ASSETS = Path(__file__).resolve().parent / "assets"


def create_app(source: str | os.PathLike[str] | DashboardSession, *, live: bool,
               refresh_ms: int = 1500, thresholds: Thresholds | None = None,
               analyse: bool = True) -> Dash:
    """The dashboard of one session file.

    `live=True` polls the file every `refresh_ms` for rows the collector added (the file is in
    WAL mode, so reading while it is written is safe); replay reads it once. The app's Flask
    server is `app.server`, where a caller may add routes (such as `/metrics`) before serving.
    Flags the dashboard computes itself are judged by `thresholds`, by default the project's
    (`resolve_thresholds`: its pyproject.toml's, else the defaults). With `analyse` False it
    computes none and shows the flags stored in the session: the collector writing it
    analyses it already, and a second analysis would double what that costs.
    """
    data = source if isinstance(source, DashboardSession) else DashboardSession(source)
    data.awaits_stored_flags = live and not analyse
    if analyse and data.analysis is None and (live or not data.flags()):
        # No stored flags (or a live session): run the report's analysis in the background.
        judge = thresholds if thresholds is not None else resolve_thresholds()
        data.analysis = FlagAnalysis(data.reader.path, live=live,
                                     analyse=flags_by(judge)).start()
    app = Dash(
        "apiscope.dashboard",
        title="apiscope",
        assets_folder=str(ASSETS),
        serve_locally=True,  # no CDN: the dashboard must work on an offline host
        suppress_callback_exceptions=True,  # page parts appear when their page is shown
        update_title="",
    )
    # Warm the caches a first page needs, so it renders without waiting on SQLite.
    data.cpu_shares(None)
    app.layout = shell(live=live, refresh_ms=refresh_ms, title=data.reader.path.name,
                       version=data.version)
    register(app, data)
    app.server.config["APISCOPE_SESSION_DATA"] = data
    return app


def session_data(app: Dash) -> DashboardSession:
    """The session data an app created by `create_app` reads from."""
    data: DashboardSession = app.server.config["APISCOPE_SESSION_DATA"]
    return data


def _bind(app: Dash, host: str, port: int) -> BaseWSGIServer:
    # werkzeug logs every request at INFO; the dashboard polls, so keep it to warnings.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    # werkzeug answers a busy port with sys.exit(1) and its own text; probe first for a clear
    # apiscope error, and still catch its exit for the rare race.
    problem = _cannot_bind(host, port)
    if problem is None:
        try:
            return make_server(host, port, app.server, threaded=True)
        except (OSError, SystemExit) as exc:
            problem = str(exc)
    raise UsageError(f"cannot serve the dashboard on {host}:{port} ({problem}):"
                     " pass a free --port, or --host to change the address")


def _cannot_bind(host: str, port: int) -> str | None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return str(exc)
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def serve(app: Dash, host: str = "127.0.0.1", port: int = 8050) -> None:
    """Serve until interrupted (blocking)."""
    server = _bind(app, host, port)
    try:
        server.serve_forever()
    finally:
        server.server_close()


class DashboardHandle:
    """A dashboard served from a background thread."""

    def __init__(self, app: Dash, server: BaseWSGIServer) -> None:
        self.app = app
        self._server = server
        self.host, self.port = str(server.server_address[0]), int(server.server_address[1])
        self.url = f"http://{self.host}:{self.port}/"
        self._thread = threading.Thread(target=server.serve_forever, name="apiscope-dashboard",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the session file."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        session_data(self.app).close()


def start_server_thread(app: Dash, host: str = "127.0.0.1", port: int = 8050) -> DashboardHandle:
    return DashboardHandle(app, _bind(app, host, port))


def start_dashboard_thread(session_path: str | os.PathLike[str], host: str = "127.0.0.1",
                           port: int = 8050, *, live: bool = True, refresh_ms: int = 1500,
                           metrics: MetricsExporter | None = None,
                           configure: Callable[[Any], None] | None = None,
                           token: str | None = None,
                           thresholds: Thresholds | None = None,
                           analyse: bool = True) -> DashboardHandle:
    """Serve the dashboard of `session_path` in a daemon thread; `.stop()` ends it.

    With `metrics`, its registry is served at `/metrics` on the same host and port.
    `configure(flask_server)` runs before the first request, the moment to add other routes
    (Flask refuses new routes once it has served). With `token`, every route (`/metrics`
    too) answers only requests that carry it (`dashboard.access`). `analyse` as in
    `create_app`.
    """
    app = create_app(session_path, live=live, refresh_ms=refresh_ms, thresholds=thresholds,
                     analyse=analyse)
    if token is not None:
        require_token(app.server, token)
    if metrics is not None:
        mount_metrics(app, metrics)
    if configure is not None:
        configure(app.server)
    return start_server_thread(app, host, port)


def mount_metrics(app: Dash, metrics: MetricsExporter) -> None:
    """Serve the Prometheus text exposition of `metrics` at `/metrics`."""
    from flask import Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    def exposition() -> Response:
        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    app.server.add_url_rule("/metrics", "apiscope_metrics", exposition)
