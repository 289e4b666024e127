"""Requests that never finished: still running, no response begun, when the collection ended.

A request that hangs (a pool with no free connection, a lock never released, an outside call
with no timeout) is never recorded, since only finished requests are; a server whose requests
all hang would otherwise read as idle and healthy. The agent lists, once at the end, every
request running longer than the objective (and a second) that has not begun its response
(`UnfinishedRequest`). Here they become evidence for `slow_endpoint`.

Running long is not hanging: a long poll waits by design, an upload lasts as long as the client
sends. So a request counts as stuck only against its own route's finished requests: running
`STUCK_FACTOR` times their p99 or more, and at least `STUCK_MIN_MS`. A route that finished too
few requests to compare with gets a low flag at most. Requests waiting for the client's body
are the client's, never the server's: left out.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from apiscope.analysis.attribution import library_call, user_frame
from apiscope.analysis.context import AnalysisContext
from apiscope.analysis.flags import frame_location, where
from apiscope.analysis.stats import percentile
from apiscope.model import Frame, UnfinishedRequest

STUCK_FACTOR = 10.0
STUCK_MIN_MS = 2000.0
# Where a request waits for its client to send the body: the server's receive(), and the
# frameworks' readers of the request body (hypercorn's receive is a queue's get: only the
# reader above it names the wait). An app awaiting an outside call's body is not here.
_CLIENT_BODY = (
    ("/uvicorn/protocols/", frozenset({"receive"})),
    ("/hypercorn/", frozenset({"receive"})),
    ("/anycorn/", frozenset({"receive"})),
    ("/daphne/", frozenset({"receive"})),
    ("/starlette/requests.py", frozenset({"stream", "body", "form", "json", "_get_form"})),
    ("/litestar/connection/", frozenset({"stream", "body", "form", "json", "msgpack"})),
    ("/django/core/handlers/asgi.py", frozenset({"read_body"})),
)

SUGGESTION = ("a request that never finishes waits for something that does not come: a"
              " connection from an exhausted pool (or held by a request that waits for a"
              " second one), a lock, an outside call with no timeout; put a timeout on the"
              " wait, size the pool for the concurrency, and run `apiscope dump PID` while it"
              " happens to see each request's await chain")


@dataclass(frozen=True, slots=True)
class Stuck:
    """A route's requests still running at the end, judged against its finished ones."""

    requests: list[UnfinishedRequest]  # oldest first
    finished: int  # the route's finished requests
    finished_p99_ms: float | None  # None: too few to compare with
    where: Frame | None  # the innermost application frame most of them waited at
    call: str | None  # the library function that frame called, if the wait was in one

    @property
    def proven(self) -> bool:
        """Stuck against the route's own finished requests (not merely long)."""
        return self.finished_p99_ms is not None

    @property
    def severity(self) -> str:
        if not self.proven or len(self.requests) == 1:
            return "low"
        return "medium" if len(self.requests) == 2 else "high"

    def evidence(self) -> str:
        oldest = self.requests[0].elapsed_ms / 1000.0
        n = len(self.requests)
        text = (f"{n} request{'s' if n > 1 else ''} of this route {'were' if n > 1 else 'was'}"
                f" still running with no response begun when the session ended, the oldest"
                f" for {oldest:.1f} s")
        if self.finished_p99_ms is not None:
            text += (f", where its {self.finished} finished requests took"
                     f" {self.finished_p99_ms:.0f} ms or less (p99)")
        else:
            text += (f"; it finished {self.finished} request{'s' if self.finished != 1 else ''},"
                     " too few to tell a request stuck from one long by design (a long poll)")
        if self.where is not None:
            call = f" in {self.call}()" if self.call else ""
            text += f"; waiting at {where(frame_location(self.where))}{call}"
        return text


def _waits_for_client(request: UnfinishedRequest) -> bool:
    """Whether the request waits for its client's body (a slow upload is the client's time)."""
    for frame in request.chain:
        path, name = frame.file.replace("\\", "/"), frame.function.rsplit(".", 1)[-1]
        if any(part in path and name in names for part, names in _CLIENT_BODY):
            return True
    return False


def _where(request: UnfinishedRequest, roots: Sequence[str]) -> tuple[Frame | None, str | None]:
    """The innermost application frame of its await chain (else of its thread's stack), and
    the library function that frame was in a call of."""
    for frames in (request.chain, request.thread):
        frame = user_frame(frames, roots)
        if frame is not None:
            return frame, library_call(frames, frame)
    return None, None


def stuck_requests(ctx: AnalysisContext) -> dict[str, Stuck]:
    """The routes with requests stuck at the end, by endpoint."""
    floor = max(STUCK_MIN_MS, ctx.slo_ms)
    by_route: dict[str, list[UnfinishedRequest]] = defaultdict(list)
    for request in ctx.data.unfinished:
        if request.elapsed_ms >= floor and not _waits_for_client(request):
            by_route[request.endpoint].append(request)
    out = {}
    for endpoint, requests in by_route.items():
        finished = ctx.by_endpoint.get(endpoint, [])
        p99 = None
        if len(finished) >= ctx.thresholds.min_requests:
            p99 = percentile(sorted(r.latency_ms for r in finished), 0.99)
            requests = [r for r in requests if r.elapsed_ms >= STUCK_FACTOR * p99]
            if not requests:
                continue  # as long as the route's own slow requests: not stuck
        places = Counter(_where(r, ctx.matcher.roots) for r in requests)
        where, call = max(places.items(), key=lambda kv: (kv[0][0] is not None, kv[1]))[0]
        out[endpoint] = Stuck(sorted(requests, key=lambda r: -r.elapsed_ms), len(finished),
                              p99, where, call)
    return out
