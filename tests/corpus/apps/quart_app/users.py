"""/users: login (bcrypt, in a worker thread) and the HTML feed page."""

from __future__ import annotations

from typing import Any

import bcrypt
from quart import Blueprint, abort, current_app, render_template, request
from quart.utils import run_sync

from .auth import hash_token, new_token, remember
from .extensions import db

bp = Blueprint("users", __name__, url_prefix="/users")

FEED_SIZE = 30

FEED_SQL = """
SELECT a.id, a.slug, a.title, a.summary, a.published_at, a.comment_count,
       u.id AS author_id, u.display_name AS author_name
FROM follows f
JOIN articles a ON a.author_id = f.followee_id
JOIN users u ON u.id = a.author_id
WHERE f.follower_id = $1
ORDER BY a.published_at DESC
LIMIT $2
"""

# The same feed without the author join: the author is looked up per item.
FEED_NO_AUTHOR_SQL = """
SELECT a.id, a.slug, a.title, a.summary, a.published_at, a.comment_count, a.author_id
FROM follows f
JOIN articles a ON a.author_id = f.followee_id
WHERE f.follower_id = $1
ORDER BY a.published_at DESC
LIMIT $2
"""
AUTHOR_SQL = "SELECT id, display_name FROM users WHERE id = $1"

# A valid cost-10 hash to check against when the user is unknown, so that a missing user
# costs the same time as a wrong password.
_DUMMY_HASH = b"$2b$10$nAzr1JsCQBonYag1.CtrJOhSkYmjoh2Q5gFXwt3GHyen28d8QFMyi"


@bp.get("/<int:user_id>/feed")
async def feed(user_id: int) -> str:
    async with db().acquire() as conn:
        user = await conn.fetchrow(
            "SELECT id, username, display_name FROM users WHERE id = $1", user_id)
        if user is None:
            abort(404, description="user not found")
        if current_app.config["PLANTED"]:
            items = []
            for r in await conn.fetch(FEED_NO_AUTHOR_SQL, user_id, FEED_SIZE):
                author = await conn.fetchrow(AUTHOR_SQL, r["author_id"])  # planted: n_plus_one wait
                items.append({**r, "author_name": author["display_name"]})
        else:
            items = [dict(r) for r in await conn.fetch(FEED_SQL, user_id, FEED_SIZE)]
    return await render_template("feed.html", user=user, items=items)


@bp.post("/login")
async def login() -> dict[str, Any]:
    data = await request.get_json(silent=True)
    if not isinstance(data, dict):
        abort(400, description="JSON body required")
    username, password = data.get("username"), data.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        abort(400, description="username and password are required")
    row = await db().fetchrow("SELECT id, password_hash FROM users WHERE username = $1",
                              username)
    stored = row["password_hash"].encode() if row else _DUMMY_HASH
    # bcrypt is slow CPU work by design: keep it off the event loop.
    ok = await run_sync(bcrypt.checkpw)(password.encode(), stored)
    if row is None or not ok:
        abort(401, description="invalid credentials")
    token = new_token()
    hours = current_app.config["TOKEN_TTL_HOURS"]
    async with db().acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO api_tokens (token_hash, user_id, expires_at)"
            " VALUES ($1, $2, now() + make_interval(hours => $3))",
            hash_token(token), row["id"], hours)
        await conn.execute("UPDATE users SET last_login_at = now() WHERE id = $1", row["id"])
    await remember(hash_token(token), row["id"])
    return {"access_token": token, "token_type": "bearer", "expires_in": hours * 3600}
