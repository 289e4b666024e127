"""The route tables of the apps the agent serves, read by duck typing (no framework import).

Starlette/FastAPI tables are read here; Django's, Litestar's, Quart's, Flask's and Falcon's in
their own modules (the last three also match each request's template at pull time: `resolve`,
a Flask app mounted in a Starlette app included). Besides
the table itself, `RouteRegistry` remembers the full template of every Starlette route object:
inside a Mount, `scope["route"]` is the inner route, whose template lacks the mount's prefix.
It also notes which routing sources named the requests' routes (`routing()`), so that a report
can say whether its routes are the framework's templates or grouped from raw paths.
"""

from __future__ import annotations

import inspect
import random
import re
import time
from collections.abc import Callable
from typing import Any

from .django_routes import django_rows
from .frameworks import (
    DJANGO,
    FALCON,
    FLASK,
    LITESTAR,
    QUART,
    STARLETTE,
    apps_inside,
    framework_of,
    wrapper_chain,
)
from .handlers import RouteRow, handler_row
from .litestar_routes import litestar_rows
from .matched_routes import (
    DEFERRED,
    UNMATCHED,
    Matcher,
    falcon_matcher,
    falcon_rows,
    mounted,
    werkzeug_matcher,
    werkzeug_rows,
)
from .pathgroups import normalise_path

INFERRED = "inferred"
# In a walk's `inside`: a FastAPI inclusion read from its router's routes, its contexts unbuilt.
UNBUILT = "fastapi inclusion not built"
_CONVERTER = re.compile(r"\{(\w+):[^}]*\}")
_HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD")
_MATCHED = {QUART: (werkzeug_rows, werkzeug_matcher), FLASK: (werkzeug_rows, werkzeug_matcher),
            FALCON: (falcon_rows, falcon_matcher)}
REFRESH_FIRST = 1.0  # seconds: a table that just changed is read again this soon
REFRESH_MOST = 30.0  # seconds: and an unchanged one at least this often
MAX_RESOLVED = 4096  # (method, path) pairs whose template is remembered: ids make paths unbounded


def template_of(route: Any) -> str:
    """The route's template with converters stripped (`/items/{id}`, not `{id:int}`)."""
    return str(getattr(route, "path_format", None) or getattr(route, "path", ""))


def _route_rows(route: Any, template: str) -> list[RouteRow]:
    endpoint = getattr(route, "endpoint", None)
    methods = getattr(route, "methods", None)
    if endpoint is None:
        return []
    if inspect.isclass(endpoint):  # an HTTPEndpoint: one handler per method it defines
        return _endpoint_class_rows(endpoint, template)
    if not methods:  # a route without methods (WebSocketRoute, a raw ASGI endpoint)
        kind = "WEBSOCKET" if type(route).__name__ == "WebSocketRoute" else "*"
        return [handler_row(kind, template, endpoint)]
    # Starlette adds HEAD to every GET route: list it only when it is the route's own.
    listed = sorted(m for m in methods if not (m == "HEAD" and "GET" in methods))
    return [handler_row(m, template, endpoint) for m in listed]


def _endpoint_class_rows(endpoint: type, template: str) -> list[RouteRow]:
    return [handler_row(m, template, getattr(endpoint, m.lower()), endpoint)
            for m in _HTTP_METHODS if callable(getattr(endpoint, m.lower(), None))]


class RouteRegistry:
    """The route tables of the apps the agent serves, and each route object's full template.

    `refresh()` re-reads every app (routes may be added after `instrument(app)`); it builds new
    containers and swaps them in, so the middleware's lookups never see a half-built table.
    """

    def __init__(self) -> None:
        self.rows: list[RouteRow] = []
        # id(route) -> (route, template); the route is kept so that its id is never reused.
        # Replaced whole by `refresh`; the middleware reads it directly on the request path.
        self.templates: dict[int, tuple[Any, str]] = {}
        self._apps: list[Any] = []
        self._litestar: list[Any] = []
        self._django = False
        # Apps whose requests are matched at pull time: (framework, app, its matcher, the
        # prefix it is mounted at in a Starlette app, None for an app served as it is).
        self._matched: list[tuple[str, Any, Matcher, str | None]] = []
        self._resolved: dict[tuple[str, str], str] = {}
        self.errors = 0  # matches that failed (the path is grouped instead)
        # Changes with the table: a collector that has this one is not sent it again. From a
        # random start, so that an agent started anew is never taken for the one before.
        self.version = random.randrange(1 << 30)
        self._refreshed = 0.0
        self._refresh_every = REFRESH_FIRST  # seconds between `refresh_if_due`'s re-reads
        # Which sources named recorded routes: framework names, or INFERRED. The middleware
        # adds to it per request (a set add of a constant: no allocation).
        self.sources: set[str] = set()
        # Called with each new table (`AppFiles.learn_routes`: an installed app's directories).
        self.listeners: list[Callable[[list[RouteRow]], None]] = []
        # FastAPI's inclusions whose route contexts were not built when the table was read.
        self._unbuilt: list[Any] = []

    def add_app(self, app: Any) -> None:
        """Read the route table of a framework app: Starlette's `app.routes` (recursing into
        Mounts), a Litestar app's routes or Django's URLconf.

        An app already known (a Starlette app and its router share one route list) is re-read
        instead, at most once a second: it may have gained routes since.
        """
        framework = framework_of(app)
        if framework in _MATCHED:
            self._add_matched(framework, app, None)
            self.refresh()
            return
        if framework == DJANGO or framework == LITESTAR:
            if framework == DJANGO:
                self._django = True
            elif not any(known is app for known in self._litestar):
                self._litestar.append(app)
            self.refresh()
            return
        routes = getattr(app, "routes", None)
        if routes is None:
            return
        if any(known.routes is routes for known in self._apps):
            if time.monotonic() - self._refreshed < 1.0:
                return
        else:
            self._apps.append(app)
        self.refresh()

    def _add_matched(self, framework: str, app: Any, prefix: str | None) -> None:
        if not any(known is app for _, known, _, _ in self._matched):
            match = mounted(prefix or "", _MATCHED[framework][1](app))
            self._matched.append((framework, app, match, prefix))

    def refresh_if_due(self) -> None:
        """`refresh()`, asked at every pull: at once after a change, and less often the longer
        the table stays the same (twice as long after each refresh that finds it unchanged,
        up to `REFRESH_MOST` seconds). Apps add their routes as they start, and seldom after;
        re-reading MLflow's few hundred Flask rules at every pull was a third of the agent's
        CPU in its workers."""
        if time.monotonic() - self._refreshed < self._refresh_every:
            return
        changed = self.refresh()
        self._refresh_every = REFRESH_FIRST if changed else min(
            REFRESH_MOST, self._refresh_every * 2)

    def refresh(self) -> bool:
        """Re-read every app's routes; True when the table changed."""
        self._refreshed = time.monotonic()
        rows: list[RouteRow] = []
        templates: dict[int, tuple[Any, str]] = {}
        inside: list[tuple[str, str, Any]] = []
        for app in self._apps:
            _walk(app.routes, "", rows, templates, inside)
        unbuilt = []
        for prefix, framework, app in inside:
            if framework == UNBUILT:
                unbuilt.append(app)
            else:
                self._add_matched(framework, app, prefix)
        self._unbuilt = unbuilt
        for litestar in self._litestar:
            rows.extend(litestar_rows(litestar))
        if self._django:
            rows.extend(django_rows())
        for framework, app, _, mount in self._matched:
            rows.extend(_prefixed(mount or "", _MATCHED[framework][0](app)))
        changed = rows != self.rows
        if changed:
            self.version += 1
            self._resolved = {}
        self.rows, self.templates = rows, templates
        if changed:
            for listener in self.listeners:
                try:
                    listener(rows)
                except Exception:
                    self.errors += 1
        return changed

    def listen(self, listener: Callable[[list[RouteRow]], None]) -> None:
        """Call `listener` with the table now and with each new one (once per listener)."""
        if listener not in self.listeners:
            self.listeners.append(listener)
            if self.rows:
                listener(self.rows)

    @property
    def deferred(self) -> bool:
        """True when requests not named from the scope are matched at pull time (`resolve`)."""
        return bool(self._matched)

    def resolve(self, method: str, path: str) -> str:
        """The template of a request to `path` (`DEFERRED` + path as recorded, or the path):
        the first app's router that matches it; `<unmatched>` when none does, the path grouped
        when a router fails (counted in `errors`)."""
        if path[:1] == DEFERRED:
            path = path[1:]
        if not self._matched:
            return normalise_path(path)
        key = (method, path)
        found = self._resolved.get(key)
        if found is not None:
            return found
        found, source = UNMATCHED, self._matched[0][0]
        try:
            for framework, _, match, prefix in self._matched:
                found = match(method, path)
                # The first Mount whose prefix the path is under serves it, as in Starlette.
                if found != UNMATCHED or prefix is not None and _under(prefix, path):
                    source = framework
                    break
        except Exception:
            self.errors += 1
            self.sources.add(INFERRED)
            return normalise_path(path)
        self.sources.add(source)
        if len(self._resolved) >= MAX_RESOLVED:
            self._resolved.clear()
        self._resolved[key] = found
        return found

    def resolve_entries(self, entries: list[Any]) -> list[Any]:
        """`entries` (the recorder's `RequestEntry`s) with every deferred route named."""
        if self._matched:
            for index, entry in enumerate(entries):
                if entry.route[:1] == DEFERRED:
                    entries[index] = entry._replace(route=self.resolve(entry.method, entry.route))
        return entries

    def routing(self) -> dict[str, Any]:
        """Where the recorded routes came from: "framework" (templates the framework
        matched), "inferred" (raw paths grouped, ids as placeholders), "mixed" or "none"."""
        sources = set(self.sources)
        frameworks = sorted(sources - {INFERRED})
        if not sources:
            source = "none"
        elif INFERRED not in sources:
            source = "framework"
        else:
            source = "inferred" if not frameworks else "mixed"
        return {"source": source, "frameworks": frameworks}

    def built_since(self) -> bool:
        """Whether FastAPI has built the route contexts of an inclusion it had not when the
        table was read (a request went through it first): a re-read names them."""
        return any(_built(included) for included in self._unbuilt)

    def template(self, route: Any) -> str | None:
        """The full template of a route object (or FastAPI route context, or endpoint)."""
        found = self.templates.get(id(route))
        return found[1] or None if found is not None and found[0] is route else None


def _add_endpoint(templates: dict[int, tuple[Any, str]], endpoint: Any, template: str) -> None:
    # FastAPI serves /docs and /openapi.json as low-priority routes that leave no
    # scope["route"], only scope["endpoint"]: an endpoint of exactly one route names it.
    known = templates.get(id(endpoint))
    if known is None:
        templates[id(endpoint)] = (endpoint, template)
    elif known[1] != template:
        templates[id(endpoint)] = (endpoint, "")  # shared by several routes: ambiguous


def _under(prefix: str, path: str) -> bool:
    return not prefix or path == prefix or path.startswith(prefix + "/")


def _prefixed(prefix: str, rows: list[RouteRow]) -> list[RouteRow]:
    return rows if not prefix else [{**row, "template": prefix + row["template"]}
                                    for row in rows]


def _walk(routes: Any, prefix: str, rows: list[RouteRow],
          templates: dict[int, tuple[Any, str]], inside: list[tuple[str, str, Any]]) -> None:
    """Rows and templates of a Starlette route list; `inside` gets (prefix, framework, app)
    of each app mounted in it whose requests are matched at pull time (a Flask app behind
    Starlette's WSGIMiddleware), and (prefix, UNBUILT, inclusion) of each FastAPI inclusion
    whose route contexts were not built yet."""
    for route in routes:
        if hasattr(route, "effective_route_contexts"):
            _walk_included(route, prefix, rows, templates, inside)
            continue
        sub_routes = getattr(route, "routes", None)
        path = getattr(route, "path", None)
        if path is None:  # Host(): routes without a path prefix of their own
            if sub_routes is not None:
                _walk(sub_routes, prefix, rows, templates, inside)
            continue
        template = prefix + template_of(route)
        templates[id(route)] = (route, template)
        if sub_routes is not None and not hasattr(route, "endpoint"):  # a Mount
            mount_prefix = prefix + _CONVERTER.sub(r"{\1}", str(path))
            if not sub_routes:
                _mounted_app(route, mount_prefix, template, rows, templates, inside)
            _walk(sub_routes, mount_prefix, rows, templates, inside)
        else:
            rows.extend(_route_rows(route, template))
            if getattr(route, "endpoint", None) is not None:
                _add_endpoint(templates, route.endpoint, template)


def _mounted_app(mount: Any, prefix: str, template: str, rows: list[RouteRow],
                 templates: dict[int, tuple[Any, str]],
                 inside: list[tuple[str, str, Any]]) -> None:
    """A Mount of an app with no Starlette routes of its own (`mount.routes` is empty).

    - A framework whose requests are matched at pull time inside it (Flask behind
      `WSGIMiddleware`): its requests, which leave the mounted app, not a route, in
      `scope["endpoint"]`, are deferred (`DEFERRED` as the mounted app's template).
    - A Starlette router behind middleware (`Mount("/api", app=AuthMiddleware(api))`, as
      admin panels guard their API): the router's routes, under the mount's prefix.
    - Another framework's app (Django, Litestar): left to name its own requests.
    - Anything else serves its requests itself (an `HTTPEndpoint` class or an ASGI function,
      maybe behind middleware, as a rate-limited login is; static files): the mount's
      template names its requests (Starlette leaves the mounted app in `scope["endpoint"]`),
      and an endpoint class's or function's handlers are rows under it, so that their frames
      are known as that route's.
    """
    app = getattr(mount, "app", None)
    if app is None:
        return
    frameworks = apps_inside(app)
    for framework, found in frameworks:
        if framework in _MATCHED:
            inside.append((prefix, framework, found))
            templates[id(app)] = (app, DEFERRED)
            return
        routes = getattr(found, "routes", None)
        if framework == STARLETTE and isinstance(routes, list):
            _walk(routes, prefix, rows, templates, inside)
            return
    if frameworks:
        return
    for current in wrapper_chain(app):
        if inspect.isclass(current):
            rows.extend(_endpoint_class_rows(current, template))
            break
        if inspect.isfunction(current):
            rows.append(handler_row("*", template, current))
            break
    _add_endpoint(templates, app, template)


def _walk_included(included: Any, prefix: str, rows: list[RouteRow],
                   templates: dict[int, tuple[Any, str]],
                   inside: list[tuple[str, str, Any]]) -> None:
    """A router FastAPI includes lazily: its routes keep their own path (one route object can
    be included under several prefixes), and each inclusion gets an effective route context
    holding the prefixed path. Requests carry that context in `scope["fastapi"]`.

    FastAPI builds an inclusion's contexts when a request is first routed through it, which
    analyses every route's dependencies: a few hundred routes took a second. Contexts it has
    built are read (their objects name requests at once); an inclusion no request has gone
    through yet is read from its router's own routes under its prefix, building nothing, and
    its requests are named from their context's path (`AgentMiddleware.route_of`)."""
    if not _built(included):
        context = getattr(included, "include_context", None)
        router = getattr(included, "original_router", None)
        routes = getattr(router, "routes", None)
        if context is not None and isinstance(routes, list):
            inner = prefix + _CONVERTER.sub(r"{\1}", str(getattr(context, "prefix", "")))
            _walk(routes, inner, rows, templates, inside)
            inside.append((prefix, UNBUILT, included))
            return
    candidates = (included.effective_candidates() if hasattr(included, "effective_candidates")
                  else included.effective_route_contexts())
    for context in candidates:
        if hasattr(context, "effective_route_contexts"):  # an inclusion inside this one
            _walk_included(context, prefix, rows, templates, inside)
            continue
        local = effective_template(context)
        template = prefix + local
        templates[id(context)] = (context, template)
        original = context.original_route
        sub_routes = getattr(original, "routes", None)
        if sub_routes is not None and not hasattr(original, "endpoint"):  # an included Mount
            mount_path = str(getattr(context.starlette_route, "path", ""))
            _walk(sub_routes, prefix + _CONVERTER.sub(r"{\1}", mount_path), rows, templates,
                  inside)
        else:
            rows.extend(_route_rows(original, template))


def _built(included: Any) -> bool:
    """Whether FastAPI has built this inclusion's route contexts for its routes as they are
    now (True where that cannot be told: the contexts are then asked for)."""
    try:
        version = included.original_router._get_routes_version()
        return bool(included._effective_candidates_version == version)
    except Exception:
        return True


def effective_template(context: Any) -> str:
    """The prefixed template of a FastAPI effective route context."""
    return str(getattr(context.starlette_route, "path_format", None)
               or getattr(context, "path_format", ""))
