"""Django: the route template of each request, and the route table, read without importing
Django (the agent only looks at modules the process has already imported).

Templates: Django resolves each request itself and keeps the match on the request
(`request.resolver_match.route`: the full route, `include()` prefixes joined). The ASGI
handler builds that request from the very scope dict the agent passes down, so the agent
gives the handler a `request_class` that also leaves the request in the scope under
`REQUEST_KEY`; after the response the middleware takes it out (breaking the scope <-> request
cycle) and reads the match. Django routed the request once; the agent never routes again.

`path()` routes keep Django's own notation, with a leading slash (`/api/items/<int:pk>/`);
`re_path()` regexes are shown in a normalised form: anchors dropped, escapes undone, each
group a placeholder named after it (`^articles/(?P<year>[0-9]{4})/$` -> `/articles/{year}/`),
`{}` for an unnamed one and for any other part that matches many texts (`[^/]*`, `\\d+`).
"""

from __future__ import annotations

import sys
from typing import Any

from .handlers import RouteRow, handler_row
from .patching import MARK

REQUEST_KEY = "apiscope.django_request"
_REGEX_MARKS = ("^", "$", "(", "\\", "[")


def install_request_hook(handler: Any) -> bool:
    """Make a Django ASGIHandler leave each request in its scope; False when already done."""
    current = handler.request_class
    original = getattr(current, MARK, None)
    if original is not None and getattr(current, "__module__", None) == __name__:
        return False  # ours, from this copy of the agent
    original = original if original is not None else current

    def request_class(scope: Any, body_file: Any) -> Any:
        request = original(scope, body_file)
        scope[REQUEST_KEY] = request
        return request

    setattr(request_class, MARK, original)
    handler.request_class = request_class  # on the instance: the class stays Django's own
    return True


def remove_request_hook(handler: Any) -> bool:
    """Undo `install_request_hook` (whichever copy of the agent installed it)."""
    original = getattr(handler.request_class, MARK, None)
    if original is None:
        return False
    if "request_class" in vars(handler):
        del handler.request_class
    if handler.request_class is not original:
        handler.request_class = original
    return True


class DjangoTemplates:
    """Route template of a finished request's resolver match, cached per route string."""

    def __init__(self) -> None:
        self._cache: dict[str, str] = {}

    def __call__(self, request: Any) -> str | None:
        match = getattr(request, "resolver_match", None)
        route = getattr(match, "route", None) if match is not None else None
        if route is None:
            return None  # Django matched nothing (a 404), or failed before routing
        found = self._cache.get(route)
        if found is None:
            found = django_template(route)
            if len(self._cache) > 10_000:  # bounded: routes are few, but be safe
                self._cache.clear()
            self._cache[route] = found
        return found


def django_template(route: str) -> str:
    """A resolver match's route as a template: `path()` routes as written, regexes normalised."""
    text = regex_template(route) if any(m in route for m in _REGEX_MARKS) else route
    return text if text.startswith("/") else "/" + text


def regex_template(regex: str) -> str:
    """`^articles/(?P<year>[0-9]{4})/$` -> `articles/{year}/`; unnamed groups and what else
    matches more than one text (a class `[^/]+`, `.`, `\\d+`) are `{}`."""
    out: list[str] = []
    i, n = 0, len(regex)
    while i < n:
        char = regex[i]
        if char == "(":
            end = _group_end(regex, i)
            after = _quantifier_end(regex, end + 1)
            repeated = regex[end + 1:after].lstrip("?") != ""  # `*`, `+`, `{m,n}`
            group = regex[i:end + 1]
            out.append("{}" if repeated and group.startswith("(?:") else _placeholder(group))
            i = after
            continue
        if char == "[" or char == "." or (char == "\\" and regex[i + 1:i + 2] in _CLASS_ESCAPES):
            end = _class_end(regex, i) if char == "[" else i + (2 if char == "\\" else 1)
            out.append("{}")
            i = _quantifier_end(regex, end)
            continue
        if char == "\\" and i + 1 < n:
            nxt = regex[i + 1]
            out.append(nxt if not nxt.isalnum() else "\\" + nxt)
            i += 2
            continue
        if char == "?" and out:  # an optional literal (`api/?`): shown as if present
            i += 1
            continue
        if char not in "^$":
            out.append(char)
        i += 1
    return "".join(out)


_CLASS_ESCAPES = ("d", "D", "w", "W", "s", "S")


def _quantifier_end(regex: str, i: int) -> int:
    """Index just past a quantifier starting at `i` (`*`, `+`, `?`, `{m,n}`, lazy or not)."""
    if i < len(regex) and regex[i] in "*+?":
        i += 1
    elif i < len(regex) and regex[i] == "{":
        close = regex.find("}", i)
        if close > i and all(c.isdigit() or c == "," for c in regex[i + 1:close]):
            i = close + 1
        else:
            return i
    else:
        return i
    return i + 1 if i < len(regex) and regex[i] == "?" else i


def _class_end(regex: str, start: int) -> int:
    """Index just past the character class opened at `start` (a `]` first in it is literal)."""
    i = start + 1
    if i < len(regex) and regex[i] == "^":
        i += 1
    if i < len(regex) and regex[i] == "]":
        i += 1
    while i < len(regex):
        if regex[i] == "\\":
            i += 2
            continue
        if regex[i] == "]":
            return i + 1
        i += 1
    return len(regex)


def _placeholder(group: str) -> str:
    if group.startswith("(?P<"):
        return "{" + group[4:group.index(">")] + "}"
    if group.startswith("(?:"):  # non-capturing: its text is the literal alternative
        return regex_template(group[3:-1])
    return "{}"


def _group_end(regex: str, start: int) -> int:
    """Index of the parenthesis closing the group opened at `start`."""
    depth, i, in_class = 0, start, False
    while i < len(regex):
        char = regex[i]
        if char == "\\":
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return len(regex) - 1


# -- the route table ------------------------------------------------------------------------


def django_rows() -> list[RouteRow]:
    """The URLconf's routes; empty until Django has imported its URLconf (its first request)."""
    urls = sys.modules.get("django.urls")
    conf = sys.modules.get("django.conf")
    if urls is None or conf is None:
        return []
    root = getattr(conf.settings, "ROOT_URLCONF", None)
    if not isinstance(root, str) or root not in sys.modules:
        return []  # importing the app's URLconf from the agent's thread is not ours to do
    rows: list[RouteRow] = []
    _walk(urls.get_resolver().url_patterns, "", rows)
    return rows


def _walk(patterns: Any, prefix: str, rows: list[RouteRow]) -> None:
    for pattern in patterns:
        route = _join(prefix, str(pattern.pattern))
        sub = getattr(pattern, "url_patterns", None)
        if sub is not None:  # include(): a resolver with its own patterns
            _walk(sub, route, rows)
        else:
            rows.extend(view_rows(pattern.callback, django_template(route)))


def _join(prefix: str, route: str) -> str:
    # As Django joins routes into `ResolverMatch.route`, so both spell a template alike.
    return route if not prefix else prefix + (route[1:] if route.startswith("^") else route)


def view_rows(callback: Any, template: str) -> list[RouteRow]:
    """Rows of one view: a class-based view per method it defines, a DRF viewset per action,
    a function view per method its `require_http_methods` allows (else GET)."""
    cls = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
    actions = getattr(callback, "actions", None)
    if cls is not None and isinstance(actions, dict):  # DRF: {"get": "list", "post": "create"}
        return [handler_row(m.upper(), template, getattr(cls, a), cls)
                for m, a in actions.items() if callable(getattr(cls, a, None))]
    if cls is not None:
        names = getattr(cls, "http_method_names", ())
        return [handler_row(m.upper(), template, getattr(cls, m), cls) for m in names
                if callable(getattr(cls, m, None)) and not _framework_default(getattr(cls, m))]
    return [handler_row(m, template, callback) for m in _allowed_methods(callback)]


def _framework_default(func: Any) -> bool:
    # View.options (and DRF's) answers for every class-based view: not the app's handler.
    module = getattr(func, "__module__", None) or ""
    return getattr(func, "__name__", "") == "options" and module.startswith(
        ("django.", "rest_framework."))


def _allowed_methods(callback: Any) -> list[str]:
    # `require_http_methods(["GET", "POST"])` keeps its list in the wrapper's closure.
    for cell in getattr(callback, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if (isinstance(value, (list, tuple, set)) and value
                and all(isinstance(m, str) and m.isupper() for m in value)):
            return sorted(value)
    return ["GET"]
