"""`uvicorn tests.corpus.apps.quart_app.app:app` (DATABASE_URL, REDIS_URL, CORPUS_PLANTED).

The app factory: two blueprints, `before_serving`/`after_serving` hooks for the clients, a
`before_request` hook that resolves the bearer token through Redis, an `after_request` stamp,
a context processor, an error handler, and a plain `def` view that Quart runs in its thread
pool (blocking psycopg there). CORPUS_PLANTED turns on a blocking call in the article view and
an N+1 in the feed.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

from quart import Quart, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from . import articles, users
from .auth import load_user
from .config import from_env
from .extensions import close_clients, open_clients, sync_connection

DAILY_REPORT_SQL = """
WITH days AS (
    SELECT generate_series(date_trunc('day', now()) - interval '13 days',
                           date_trunc('day', now()), interval '1 day') AS day
),
c AS (
    SELECT date_trunc('day', created_at) AS day, count(*) AS comments,
           count(DISTINCT user_id) AS commenters, count(DISTINCT article_id) AS articles
    FROM comments
    WHERE created_at >= date_trunc('day', now()) - interval '13 days'
    GROUP BY 1
),
p AS (
    SELECT date_trunc('day', published_at) AS day, count(*) AS published
    FROM articles
    WHERE published_at >= date_trunc('day', now()) - interval '13 days'
    GROUP BY 1
)
SELECT days.day::date AS day, COALESCE(p.published, 0) AS published,
       COALESCE(c.comments, 0) AS comments, COALESCE(c.commenters, 0) AS commenters,
       COALESCE(c.articles, 0) AS commented_articles
FROM days LEFT JOIN c USING (day) LEFT JOIN p USING (day)
ORDER BY days.day
"""


def create_app() -> Quart:
    app = Quart(__name__)
    app.config.update(from_env())
    app.register_blueprint(articles.bp)
    app.register_blueprint(users.bp)

    @app.before_serving
    async def startup() -> None:
        await open_clients(app)

    @app.after_serving
    async def shutdown() -> None:
        await close_clients(app)

    app.before_request(load_user)

    @app.after_request
    async def stamp(response: Response) -> Response:
        response.headers["X-Request-ID"] = request.headers.get("X-Request-ID") or uuid.uuid4().hex
        started = g.get("started")
        if started is not None:
            elapsed = (time.perf_counter() - started) * 1000
            response.headers["Server-Timing"] = f"app;dur={elapsed:.1f}"
        return response

    @app.context_processor
    async def template_globals() -> dict[str, Any]:
        return {"now": datetime.now(UTC)}

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> tuple[Response, int]:
        return jsonify(error=exc.name, detail=exc.description), exc.code or 500

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "db_pool": app.extensions["db"].get_size()}

    @app.get("/reports/daily")
    def daily_report() -> dict[str, Any]:
        # A sync view: Quart runs it in its thread pool, where a blocking driver is fine.
        rows = sync_connection().execute(DAILY_REPORT_SQL).fetchall()
        days = [{"day": r[0].isoformat(), "published": r[1], "comments": r[2],
                 "commenters": r[3], "commented_articles": r[4]} for r in rows]
        return {"days": days, "totals": {"published": sum(d["published"] for d in days),
                                         "comments": sum(d["comments"] for d in days)}}

    return app


app = create_app()
