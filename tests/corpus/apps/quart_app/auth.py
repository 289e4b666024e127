"""Bearer-token sessions: Redis in front of the api_tokens table."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

from quart import abort, current_app, g, request

from .extensions import cache, cache_key, db

PUBLIC_ENDPOINTS = {"healthz", "static"}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


async def remember(token_hash: str, user_id: int) -> None:
    await cache().set(cache_key("session", token_hash), user_id,
                      ex=current_app.config["SESSION_CACHE_TTL"])


async def load_user() -> None:
    """before_request: resolve `Authorization: Bearer <token>` to g.user_id (None if absent)."""
    g.started = time.perf_counter()
    g.user_id = None
    if request.endpoint in PUBLIC_ENDPOINTS:
        return
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if not token or scheme.lower() != "bearer":
        return
    token_hash = hash_token(token.strip())
    cached = await cache().get(cache_key("session", token_hash))
    if cached is not None:
        g.user_id = int(cached)
        return
    user_id = await db().fetchval(
        "SELECT user_id FROM api_tokens WHERE token_hash = $1 AND expires_at > now()",
        token_hash)
    if user_id is None:
        abort(401, description="invalid or expired token")
    await remember(token_hash, user_id)
    g.user_id = user_id


View = Callable[..., Awaitable[Any]]


def login_required(view: View) -> View:
    @wraps(view)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if g.get("user_id") is None:
            abort(401, description="authentication required")
        return await view(*args, **kwargs)

    return wrapper
