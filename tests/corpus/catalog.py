"""The corpus: each app, how to prepare and serve it, the load mix of each mode, what is planted.

A request in a mix is `{"method", "path", "weight"}` plus optional `body` (JSON text), `auth`
(send the login's Bearer token) and `id_max` (see `tests.corpus.load`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.corpus.markers import Marker, read_markers

ROOT = Path(__file__).resolve().parent.parent.parent
APPS = Path(__file__).resolve().parent / "apps"
PLANTED_ENV = {"CORPUS_PLANTED": "1"}
Request = dict[str, Any]


@dataclass(frozen=True)
class CorpusApp:
    name: str
    app_dir: Path  # the app's own files: a flag anywhere else is outside the app
    asgi: str  # module:attribute
    ready_path: str
    healthy: list[Request] = field(default_factory=list)
    planted: list[Request] = field(default_factory=list)
    login: Request | None = None
    id_max: int = 100
    needs_postgres: bool = False
    needs_redis: bool = False
    prestart: str | None = None  # a module run once before the server starts
    healthy_env: dict[str, str] = field(default_factory=dict)
    planted_env: dict[str, str] = field(default_factory=lambda: dict(PLANTED_ENV))
    # The sample app drives itself (`python -m sample_app.load`): argv after the URL option.
    own_load: list[str] | None = None
    expected: Callable[[CorpusApp], list[Marker]] = lambda app: read_markers(app.app_dir)

    def mix(self, planted: bool) -> list[Request]:
        return self.healthy + self.planted if planted else self.healthy


def _get(path: str, weight: int, **extra: Any) -> Request:
    return {"method": "GET", "path": path, "weight": weight, **extra}


V1 = "/api/v1"
FASTAPI_PG = CorpusApp(
    name="fastapi_pg", app_dir=APPS / "fastapi_pg", asgi="tests.corpus.apps.fastapi_pg.main:app",
    ready_path=f"{V1}/utils/health-check/", needs_postgres=True, needs_redis=True,
    prestart="tests.corpus.apps.fastapi_pg.prestart", id_max=3000,
    login={"path": f"{V1}/login/access-token",
           "json": {"email": "user1@example.com", "password": "seed-password"}},
    healthy=[
        {"method": "POST", "path": f"{V1}/login/access-token", "weight": 3, "id_max": 60,
         "body": '{"email": "user{id}@example.com", "password": "seed-password"}'},
        _get(f"{V1}/users/me", 6, auth=True),
        _get(f"{V1}/users/?skip=0&limit=20", 2, auth=True),
        _get(f"{V1}/users/{{id}}", 3, auth=True, id_max=60),
        _get(f"{V1}/items/?skip=0&limit=20", 10, auth=True),
        _get(f"{V1}/items/{{id}}", 20, auth=True),
        {"method": "POST", "path": f"{V1}/items/", "weight": 4, "auth": True,
         "body": '{"title": "Load item {n}", "description": "from the load"}'},
        _get(f"{V1}/items/stats", 4),
        _get(f"{V1}/utils/health-check/", 3),
        _get(f"{V1}/utils/version", 2),
    ],
    planted=[
        _get(f"{V1}/reports/audit", 4),
        _get(f"{V1}/reports/inventory", 4),
        _get(f"{V1}/reports/checksum?rounds=150000", 3),
        _get(f"{V1}/reports/owners", 3),
        _get(f"{V1}/reports/forecast/{{id}}", 8),
        # Enough of them for the latency rules' 10 requests on a slow host as well.
        _get(f"{V1}/reports/monthly", 5),
    ],
)

DJANGO_APP = CorpusApp(
    name="django_app", app_dir=APPS / "django_app",
    asgi="tests.corpus.apps.django_app.asgi:application", ready_path="/health/",
    needs_postgres=True, prestart="tests.corpus.apps.django_app.prestart", id_max=3000,
    healthy=[
        _get("/health/", 3),
        _get("/api/books/?page={id}", 10, id_max=150),
        _get("/api/books/{id}/", 20),
        _get("/api/books/count/", 4),
        _get("/api/authors/{id}/", 8, id_max=80),
        _get("/api/authors/{id}/books/", 6, id_max=80),
        _get("/api/authors/?page={id}", 4, id_max=4),
        _get("/api/v2/books/?page={id}", 6, id_max=120),
        _get("/api/v2/books/{id}/", 6),
        {"method": "POST", "path": "/api/books/new/", "weight": 3, "id_max": 80,
         "body": '{"title": "Load {n}", "author_id": {id}, "published": "2024-05-01",'
                 ' "price_cents": 1999}'},
    ],
    # 80 authors: one author card in five asks for one that does not exist.
    planted=[_get("/reports/audit/", 4), _get("/reports/catalogue/", 4),
             _get("/reports/authors/{id}/", 8, id_max=100)],
)

LITESTAR_APP = CorpusApp(
    name="litestar_app", app_dir=APPS / "litestar_app",
    asgi="tests.corpus.apps.litestar_app.app:app", ready_path="/health",
    prestart="tests.corpus.apps.litestar_app.store", id_max=2000,
    healthy=[
        _get("/health", 3),
        _get("/notes/?notebook_id={id}&limit=20", 10, id_max=20),
        _get("/notes/{id}", 20),
        {"method": "POST", "path": "/notes/", "weight": 4, "id_max": 20,
         "body": '{"notebook_id": {id}, "title": "Load {n}", "body": "written by the load"}'},
        _get("/notebooks/{id}/stats", 6, id_max=20),
    ],
    # 20 notebooks with notes: one export in five is of an empty one.
    planted=[_get("/reports/audit", 4), _get("/reports/wordcount/{id}", 4, id_max=20),
             _get("/reports/export/{id}", 8, id_max=25)],
)

ASYNC_SHOP = CorpusApp(
    name="async_shop", app_dir=APPS / "async_shop", asgi="tests.corpus.apps.async_shop.app:app",
    ready_path="/health", needs_postgres=True, needs_redis=True,
    prestart="tests.corpus.apps.async_shop.prestart", id_max=200,
    healthy=[
        _get("/health", 2),
        _get("/products/{id}", 20),
        _get("/customers/{id}/orders?limit=20", 10),
        {"method": "POST", "path": "/orders", "weight": 4,
         "body": '{"customer_id": {id}, "product_id": {id}, "quantity": 2}'},
        _get("/quotes/{id}?quantity=3", 8),
        _get("/orders/export.csv?limit=300", 2),
        _get("/events?count=4", 2),
        _get("/orders/wait?timeout=0.8", 2),
        _get("/stats", 3),
    ],
    planted=[_get("/reports/top-customers", 4), _get("/reports/ledger", 3),
             _get("/reports/signed-export?customer_id={id}", 3), _get("/reports/price-list", 2)],
)


PORTAL = CorpusApp(
    name="portal", app_dir=APPS / "portal", asgi="tests.corpus.apps.portal.app:app",
    ready_path="/health", prestart="tests.corpus.apps.portal.store", id_max=1500,
    healthy=[
        _get("/health", 3),
        _get("/articles", 8),
        _get("/articles/{id}", 20),
        _get("/api/search?q=cache&limit=20", 6),
        {"method": "POST", "path": "/api/comments", "weight": 4,
         "body": '{"article_id": {id}, "body": "comment {n}"}'},
        {"method": "POST", "path": "/login", "weight": 3, "id_max": 50,
         "body": '{"user": "user{id}", "password": "secret"}'},
        _get("/stats", 3),
        _get("/static/site.css", 2),
    ],
    planted=[_get("/reports/digest", 4), _get("/reports/keywords", 3), _get("/api/export", 5)],
)


# Its plants sit in two routes of the healthy mix (the article view, the feed), switched on by
# CORPUS_PLANTED as django_app's viewset is: the planted mode sends no other requests.
QUART_APP = CorpusApp(
    name="quart_app", app_dir=APPS / "quart_app", asgi="tests.corpus.apps.quart_app.app:app",
    ready_path="/healthz", needs_postgres=True, needs_redis=True,
    prestart="tests.corpus.apps.quart_app.prestart", id_max=3000,
    login={"path": "/users/login",
           "json": {"username": "user1", "password": "correct-horse-battery"}},
    healthy=[
        _get("/healthz", 3),
        _get("/articles/?page={id}&per_page=20", 8, auth=True, id_max=150),
        _get("/articles/{id}", 20, auth=True),
        _get("/articles/by-slug/article-{id}", 6, auth=True),
        {"method": "POST", "path": "/articles/{id}/comments", "weight": 4, "auth": True,
         "body": '{"body": "Thanks, this helped with our rollout (#{n})."}'},
        _get("/users/{id}/feed", 12, auth=True, id_max=200),
        {"method": "POST", "path": "/users/login", "weight": 2, "id_max": 200,
         "body": '{"username": "user{id}", "password": "correct-horse-battery"}'},
        _get("/reports/daily", 3, auth=True),
    ],
)


# As quart_app's, its plants sit in routes of the healthy mix (the order view, a customer's
# orders): the planted mode sends no other requests.
FALCON_APP = CorpusApp(
    name="falcon_app", app_dir=APPS / "falcon_app", asgi="tests.corpus.apps.falcon_app.app:app",
    ready_path="/health", needs_postgres=True, prestart="tests.corpus.apps.falcon_app.prestart",
    id_max=5000,
    healthy=[
        _get("/health", 3),
        _get("/orders?limit=25&offset={id}", 8, id_max=4900),
        _get("/orders/{id}", 22),
        {"method": "POST", "path": "/orders", "weight": 4, "id_max": 200,
         "body": '{"customer_id": {id}, "currency": "EUR", "note": "load {n}", "lines":'
                 ' [{"product_id": {id}, "quantity": 2}, {"product_id": 17, "quantity": 1}]}'},
        _get("/customers/{id}", 6, id_max=200),
        _get("/customers/{id}/orders", 12, id_max=200),
        _get("/products?q=steel", 4),
        _get("/products?q=bottle&limit=10", 3),
        _get("/products/{id}", 6, id_max=500),
        _get("/reports/revenue", 2),
        _get("/reports/legacy", 2),
    ],
)


def sample_app_expected(app: CorpusApp) -> list[Marker]:
    """The sample app lists its bottlenecks in `EXPECTED_FLAGS` (checked against its sources by
    its own tests). memory_growth names no line in a run this short (see `SHORT_RUN_UNATTRIBUTED`),
    so it is not expected here."""
    from sample_app.bottlenecks import EXPECTED_FLAGS, SHORT_RUN_UNATTRIBUTED, reported_line

    out = []
    for flag in EXPECTED_FLAGS:
        if flag["kind"] in SHORT_RUN_UNATTRIBUTED:
            continue
        line = reported_line(flag)
        cause = "wait" if "sleep" in flag["call"] or "session" in flag["call"] else "cpu"
        out.append(Marker(flag["kind"], cause, (ROOT / flag["file"]).resolve(), line,
                          frozenset({line})))
    return out


SAMPLE_APP = CorpusApp(
    name="sample_app", app_dir=ROOT / "sample_app", asgi="sample_app.main:app",
    ready_path="/health", healthy_env={"SAMPLE_APP_FIXED": "1"}, planted_env={},
    own_load=["--quiet"], expected=sample_app_expected,
)

CORPUS: tuple[CorpusApp, ...] = (FASTAPI_PG, DJANGO_APP, LITESTAR_APP, ASYNC_SHOP, PORTAL,
                                  QUART_APP, FALCON_APP, SAMPLE_APP)
MODES = ("healthy", "planted")
SERVERS = ("uvicorn", "gunicorn")
