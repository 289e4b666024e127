"""Who may read a dashboard: whoever holds its token, like a Jupyter server's.

The session file is private to its owner (0600), and the dashboard shows all of it (routes,
stacks, SQL): so it answers only a request that carries the token, in the URL printed at start
(`?token=...`, remembered in a cookie for the page's own requests) or as an
`Authorization: Bearer` header (a Prometheus scrape of `/metrics`). `APISCOPE_TOKEN` chooses the
token (a script that must know it in advance); set to an empty string it turns the check off.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from typing import Any

TOKEN_ENV = "APISCOPE_TOKEN"


def new_token() -> str | None:
    """`$APISCOPE_TOKEN` when set (None when set empty: no check), else a fresh random one."""
    chosen = os.environ.get(TOKEN_ENV)
    if chosen is not None:
        return chosen or None
    return secrets.token_urlsafe(18)


def url_with_token(url: str, token: str | None) -> str:
    return f"{url}?token={token}" if token else url


def require_token(server: Any, token: str) -> None:
    """Refuse every request to the Flask `server` that lacks `token` (403)."""
    from flask import Response, request

    cookie = "apiscope_" + hashlib.sha256(token.encode()).hexdigest()[:12]

    def given() -> str:
        header = request.headers.get("Authorization", "")
        bearer = header[7:].strip() if header.lower().startswith("bearer ") else ""
        return request.args.get("token") or bearer or request.cookies.get(cookie, "")

    def check() -> Response | None:
        if hmac.compare_digest(given().encode(), token.encode()):
            return None
        return Response("apiscope: this dashboard needs its token: open the URL with"
                        " ?token=... that apiscope printed when it started\n", status=403,
                        mimetype="text/plain")

    def remember(response: Response) -> Response:
        if request.args.get("token") == token:
            response.set_cookie(cookie, token, httponly=True, samesite="Strict")
        return response

    server.before_request(check)
    server.after_request(remember)
