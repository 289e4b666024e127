"""A small client for Prometheus' HTTP query API (standard library only).

Only instant queries are needed: the fleet view shows the fleet as it is now, over a rate
window. The opener is passed in so tests and callers behind proxies can swap it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from apiscope.errors import UsageError


class PrometheusError(UsageError):
    """Prometheus cannot be reached, or refused a query."""


class Response(Protocol):
    def read(self) -> bytes: ...
    def __enter__(self) -> Response: ...
    def __exit__(self, *exc: object) -> Any: ...


Opener = Callable[[urllib.request.Request, float], Response]


def _urlopen(request: urllib.request.Request, timeout: float) -> Response:
    response: Response = urllib.request.urlopen(request, timeout=timeout)
    return response


@dataclass(frozen=True, slots=True)
class Sample:
    """One series of an instant vector: its labels and value."""

    labels: dict[str, str]
    value: float


class PrometheusClient:
    """Instant queries against `base_url` (e.g. `http://prometheus:9090`)."""

    def __init__(self, base_url: str, timeout: float = 10.0, opener: Opener = _urlopen) -> None:
        parsed = urllib.parse.urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise PrometheusError(
                f"--prometheus {base_url!r} is not an http(s) URL: pass the server's address,"
                " e.g. http://localhost:9090")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._open = opener

    def query(self, expr: str, at: float | None = None) -> list[Sample]:
        """The instant vector `expr` evaluates to (now, or at epoch seconds `at`)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._get("/api/v1/query", params)
        result = data.get("data", {})
        if result.get("resultType") != "vector":
            raise PrometheusError(f"query {expr!r} returned a {result.get('resultType')},"
                                  " not an instant vector")
        return [Sample(labels=dict(item["metric"]), value=float(item["value"][1]))
                for item in result.get("result", [])]

    def check(self) -> None:
        """Raise PrometheusError unless the server answers a trivial query."""
        self._get("/api/v1/query", {"query": "1"})

    def _get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        url = f"{self.base_url}{path}?{urllib.parse.urlencode(params)}"
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        try:
            with self._open(request, self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
            exc.close()
            raise PrometheusError(f"Prometheus at {self.base_url} refused the query"
                                  f" ({exc.code}): {_error_text(body)}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PrometheusError(
                f"cannot reach Prometheus at {self.base_url} ({reason}): check the URL given"
                " to --prometheus and that the server is up") from None
        try:
            data: dict[str, Any] = json.loads(body)
        except ValueError:
            raise PrometheusError(f"{self.base_url} did not answer like a Prometheus server:"
                                  " check the URL given to --prometheus") from None
        if data.get("status") != "success":
            raise PrometheusError(f"Prometheus query failed: {data.get('error', data)}")
        return data


def _error_text(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error", body[:200]))
    except ValueError:
        return body[:200].decode(errors="replace")
