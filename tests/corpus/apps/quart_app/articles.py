"""/articles: listing, detail (cached in Redis), lookup by slug, comments."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from quart import Blueprint, abort, current_app, g, request

from .auth import login_required
from .extensions import cache, cache_key, db

bp = Blueprint("articles", __name__, url_prefix="/articles")

LIST_SQL = """
SELECT a.id, a.slug, a.title, a.summary, a.published_at, a.comment_count,
       u.id AS author_id, u.display_name AS author_name
FROM articles a
JOIN users u ON u.id = a.author_id
ORDER BY a.published_at DESC, a.id DESC
LIMIT $1 OFFSET $2
"""

ARTICLE_SQL = """
SELECT a.id, a.slug, a.title, a.summary, a.body, a.published_at, a.comment_count,
       u.id AS author_id, u.display_name AS author_name,
       COALESCE(array_agg(t.name ORDER BY t.name) FILTER (WHERE t.name IS NOT NULL),
                '{{}}') AS tags
FROM articles a
JOIN users u ON u.id = a.author_id
LEFT JOIN article_tags at ON at.article_id = a.id
LEFT JOIN tags t ON t.id = at.tag_id
WHERE {where}
GROUP BY a.id, u.id
"""
BY_ID_SQL = ARTICLE_SQL.format(where="a.id = $1")
BY_SLUG_SQL = ARTICLE_SQL.format(where="a.slug = $1")

# The read receipt goes to the analytics service through its synchronous client: 30 ms.
READ_RECEIPT_SECONDS = 0.03


def list_item_out(r: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": r["id"], "slug": r["slug"], "title": r["title"], "summary": r["summary"],
            "published_at": r["published_at"].isoformat(), "comment_count": r["comment_count"],
            "author": {"id": r["author_id"], "name": r["author_name"]}}


def article_out(r: Mapping[str, Any]) -> dict[str, Any]:
    return {**list_item_out(r), "body": r["body"], "tags": list(r["tags"])}


def _int_arg(name: str, default: int, lo: int, hi: int) -> int:
    try:
        value = int(request.args.get(name, default))
    except (TypeError, ValueError):
        abort(400, description=f"{name} must be an integer")
    return max(lo, min(hi, value))


@bp.get("/")
async def list_articles() -> dict[str, Any]:
    per_page = _int_arg("per_page", 20, 1, current_app.config["PAGE_SIZE_MAX"])
    page = _int_arg("page", 1, 1, 10_000)
    rows = await db().fetch(LIST_SQL, per_page, (page - 1) * per_page)
    return {"page": page, "per_page": per_page, "items": [list_item_out(r) for r in rows]}


@bp.get("/<int:article_id>")
async def get_article(article_id: int) -> tuple[str | bytes, int, dict[str, str]]:
    if current_app.config["PLANTED"]:
        time.sleep(READ_RECEIPT_SECONDS)  # planted: event_loop_blocked wait
    key = cache_key("article", article_id)
    cached = await cache().get(key)
    if cached is not None:
        return cached, 200, {"Content-Type": "application/json", "X-Cache": "HIT"}
    row = await db().fetchrow(BY_ID_SQL, article_id)
    if row is None:
        abort(404, description="article not found")
    payload = json.dumps(article_out(row))
    await cache().set(key, payload, ex=current_app.config["ARTICLE_CACHE_TTL"])
    return payload, 200, {"Content-Type": "application/json", "X-Cache": "MISS"}


@bp.get("/by-slug/<slug>")
async def get_article_by_slug(slug: str) -> dict[str, Any]:
    row = await db().fetchrow(BY_SLUG_SQL, slug)
    if row is None:
        abort(404, description="article not found")
    return article_out(row)


@bp.post("/<int:article_id>/comments")
@login_required
async def add_comment(article_id: int) -> tuple[dict[str, Any], int, dict[str, str]]:
    data = await request.get_json(silent=True)
    text = data.get("body") if isinstance(data, dict) else None
    if not isinstance(text, str) or not text.strip():
        abort(400, description="body is required")
    if len(text) > 5000:
        abort(400, description="body is too long")
    async with db().acquire() as conn, conn.transaction():
        found = await conn.fetchval(
            "UPDATE articles SET comment_count = comment_count + 1 WHERE id = $1 RETURNING id",
            article_id)
        if found is None:
            abort(404, description="article not found")
        row = await conn.fetchrow(
            "INSERT INTO comments (article_id, user_id, body) VALUES ($1, $2, $3)"
            " RETURNING id, created_at", article_id, g.user_id, text.strip())
    await cache().delete(cache_key("article", article_id))
    body = {"id": row["id"], "article_id": article_id, "user_id": g.user_id,
            "created_at": row["created_at"].isoformat()}
    return body, 201, {"Location": f"/articles/{article_id}/comments/{row['id']}"}
