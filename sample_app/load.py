"""Load generator for the sample app: `python -m sample_app.load --duration 25`.

Drives a weighted mix over every endpoint (see `sample_app.loadmix`), stops at whichever
bound comes first (`--duration`, `--requests`), and reports per route (METHOD TEMPLATE)
the count, latency percentiles and errors (5xx, timeouts, connection failures).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from sample_app.loadmix import DEFAULT_CONCURRENCY, DEFAULT_MIX, Catalog, Request, Scenario

DEFAULT_URL = "http://127.0.0.1:8000"
STOP_GRACE_SECONDS = 2.0  # in-flight requests at the deadline get this long to finish


class LoadError(Exception):
    """A load run that cannot start: the message says why and what to do."""


@dataclass
class RouteStats:
    route: str
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    errors: int = 0

    @property
    def count(self) -> int:
        return len(self.latencies_ms)

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile in ms (0.0 when there is no request)."""
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]

    def to_dict(self, seconds: float) -> dict[str, Any]:
        return {"route": self.route, "count": self.count,
                "rps": round(self.count / seconds, 2) if seconds > 0 else 0.0,
                "p50_ms": round(self.percentile(50), 2), "p95_ms": round(self.percentile(95), 2),
                "p99_ms": round(self.percentile(99), 2),
                "max_ms": round(max(self.latencies_ms, default=0.0), 2),
                "errors": self.errors, "statuses": dict(sorted(self.statuses.items()))}


@dataclass
class LoadResult:
    url: str
    seconds: float
    stopped_by: str  # "duration" or "requests"
    routes: dict[str, RouteStats]

    @property
    def requests(self) -> int:
        return sum(stats.count for stats in self.routes.values())

    @property
    def errors(self) -> int:
        return sum(stats.errors for stats in self.routes.values())

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "seconds": round(self.seconds, 3), "stopped_by": self.stopped_by,
                "requests": self.requests, "errors": self.errors,
                "routes": [self.routes[route].to_dict(self.seconds)
                           for route in sorted(self.routes)]}


class _Pacer:
    """Hands out start times `burst` at a time, `rate` requests per second in all."""

    def __init__(self, rate: float | None, burst: int, start: float) -> None:
        self._interval = burst / rate if rate else 0.0
        self._burst = burst
        self._next = start
        self._given = 0

    def claim(self, now: float) -> float:
        if not self._interval:
            return now
        if self._given == 0:
            # Never bank missed slots: a late worker must not cause a catch-up burst.
            self._next = max(self._next, now)
        slot = self._next
        self._given += 1
        if self._given == self._burst:
            self._given = 0
            self._next += self._interval
        return slot


IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


class _Run:
    """The shared state of one load run: bounds, statistics, the catalog."""

    def __init__(self, catalog: Catalog, deadline: float, max_requests: int | None) -> None:
        self.catalog = catalog
        self.deadline = deadline
        self.remaining = max_requests
        self.routes: dict[str, RouteStats] = {}

    def take_ticket(self) -> bool:
        if self.remaining is None:
            return True
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True

    async def worker(self, scenario: Scenario, client: httpx.AsyncClient, pacer: _Pacer,
                     rng: random.Random) -> None:
        stats = self.routes.setdefault(scenario.route, RouteStats(scenario.route))
        while True:
            slot = pacer.claim(time.monotonic())
            if slot >= self.deadline or not self.take_ticket():
                return
            await asyncio.sleep(max(0.0, slot - time.monotonic()))
            await self._send(scenario, client, rng, stats)

    async def _send(self, scenario: Scenario, client: httpx.AsyncClient, rng: random.Random,
                    stats: RouteStats) -> None:
        request = scenario.build(rng, self.catalog)
        started = time.perf_counter()
        try:
            response = await _send_retrying(client, request)
            status = str(response.status_code)
            failed = response.status_code >= 500
        except httpx.TimeoutException:
            status, failed = "timeout", True
        except httpx.TransportError as exc:
            status, failed = type(exc).__name__, True
        stats.latencies_ms.append((time.perf_counter() - started) * 1000)
        stats.statuses[status] += 1
        stats.errors += failed


async def _send_retrying(client: httpx.AsyncClient, request: Request) -> httpx.Response:
    try:
        return await _send_once(client, request)
    except (httpx.ReadError, httpx.RemoteProtocolError):
        # A kept-alive connection the server had just closed (uvicorn closes it after an
        # unhandled exception): like browsers and urllib3, retry idempotent requests once.
        if request.method not in IDEMPOTENT:
            raise
        return await _send_once(client, request)


async def _send_once(client: httpx.AsyncClient, request: Request) -> httpx.Response:
    response = await client.request(request.method, request.path, params=request.params,
                                    json=request.json)
    await response.aread()
    return response


async def run_load(url: str = DEFAULT_URL, duration: float | None = 30.0,
                   max_requests: int | None = None, concurrency: int = DEFAULT_CONCURRENCY, *,
                   mix: Sequence[Scenario] = DEFAULT_MIX, allow_remote: bool = False,
                   timeout: float = 10.0, seed: int = 0, ready_timeout: float = 15.0,
                   transport: httpx.AsyncBaseTransport | None = None) -> LoadResult:
    """Drive `mix` at `url` until `duration` seconds or `max_requests` requests, first wins."""
    _check_bounds(duration, max_requests)
    check_target(url, allow_remote)
    workers = allocate_workers([s.workers for s in mix], concurrency)
    async with AsyncExitStack() as stack:
        # One client (one connection pool) per route, as if each were a different caller: a
        # connection the server drops on one route's errors never fails another route.
        clients = [await stack.enter_async_context(_client(url, count, timeout, transport))
                   for count in workers]
        catalog = await discover_catalog(clients[0], ready_timeout)
        start = time.monotonic()
        run = _Run(catalog, start + (duration or math.inf), max_requests)
        await _finish(_start_workers(run, mix, clients, workers, start, seed), run.deadline)
        seconds = time.monotonic() - start
    stopped_by = "requests" if run.remaining == 0 else "duration"
    return LoadResult(url=url, seconds=seconds, stopped_by=stopped_by, routes=run.routes)


def _client(url: str, connections: int, timeout: float,
            transport: httpx.AsyncBaseTransport | None) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits, transport=transport)


def _start_workers(run: _Run, mix: Sequence[Scenario], clients: Sequence[httpx.AsyncClient],
                   workers: Sequence[int], start: float, seed: int) -> list[asyncio.Task[None]]:
    """`workers[i]` tasks for scenario i, sharing one pacer; each with its own random stream."""
    tasks = []
    for index, (scenario, client, count) in enumerate(zip(mix, clients, workers, strict=True)):
        pacer = _Pacer(scenario.rate, scenario.burst, start)
        for n in range(count):
            rng = random.Random(f"{seed}:{index}:{n}")
            tasks.append(asyncio.create_task(run.worker(scenario, client, pacer, rng)))
    return tasks


async def _finish(tasks: list[asyncio.Task[None]], deadline: float) -> None:
    """Wait for the workers; past the deadline, give in-flight requests a short grace."""
    timeout = None if math.isinf(deadline) else \
        max(0.0, deadline - time.monotonic()) + STOP_GRACE_SECONDS
    _done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for outcome in outcomes:
        # A worker that failed (not one cancelled at the end) is a bug in the generator itself.
        if isinstance(outcome, Exception):
            raise outcome


def _check_bounds(duration: float | None, max_requests: int | None) -> None:
    if duration is None and max_requests is None:
        raise LoadError("give a bound: --duration SECONDS, --requests N, or both")
    if duration is not None and duration <= 0:
        raise LoadError(f"--duration must be positive, not {duration}")
    if max_requests is not None and max_requests <= 0:
        raise LoadError(f"--requests must be positive, not {max_requests}")


def check_target(url: str, allow_remote: bool) -> None:
    """Refuse anything but this machine unless asked: this tool generates real load."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise LoadError(f"--url {url!r} is not an http(s) URL like {DEFAULT_URL}")
    if allow_remote or parts.hostname == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise LoadError(f"{parts.hostname} is not a loopback address: load is only sent to this "
                        "machine; pass --allow-remote if you own that server")


def allocate_workers(shares: Sequence[int], concurrency: int) -> list[int]:
    """Split `concurrency` workers by `shares` (largest remainder), at least one each."""
    if concurrency < len(shares):
        raise LoadError(f"--concurrency must be at least {len(shares)} (one worker per route in "
                        f"the mix), not {concurrency}")
    total = sum(shares)
    quotas = [share * concurrency / total for share in shares]
    counts = [max(1, math.floor(quota)) for quota in quotas]
    by_remainder = sorted(range(len(shares)), key=lambda i: quotas[i] - counts[i], reverse=True)
    for i in range(concurrency - sum(counts)):
        counts[by_remainder[i % len(shares)]] += 1
    while sum(counts) > concurrency:
        counts[max(range(len(counts)), key=lambda i: counts[i])] -= 1
    return counts


async def discover_catalog(client: httpx.AsyncClient, ready_timeout: float) -> Catalog:
    """Ask /health how much data was seeded, waiting for the server to come up."""
    deadline = time.monotonic() + ready_timeout
    while True:
        try:
            response = await client.get("/health")
            if response.status_code == 200:
                body = response.json()
                return Catalog(items=int(body["seeded_items"]), orders=int(body["seeded_orders"]))
            problem = f"GET /health answered {response.status_code}"
        except (httpx.TransportError, ValueError, KeyError) as exc:
            problem = f"GET /health failed: {exc!r}"
        if time.monotonic() > deadline:
            raise LoadError(f"no sample app answering at {client.base_url} ({problem}); start it "
                            "with `uvicorn sample_app.main:app` or pass --url")
        await asyncio.sleep(0.2)


def format_table(result: LoadResult) -> str:
    header = f"{'route':<32} {'count':>6} {'rps':>7} {'p50 ms':>8} {'p95 ms':>8} " \
             f"{'p99 ms':>8} {'errors':>6}"
    lines = [header, "-" * len(header)]
    for row in result.to_dict()["routes"]:
        lines.append(f"{row['route']:<32} {row['count']:>6} {row['rps']:>7.1f} "
                     f"{row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f} {row['p99_ms']:>8.1f} "
                     f"{row['errors']:>6}")
    lines.append(f"{result.requests} requests in {result.seconds:.1f} s "
                 f"(stopped by {result.stopped_by}), {result.errors} errors")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sample_app.load", description=__doc__)
    parser.add_argument("--url", default=DEFAULT_URL, help=f"server base URL ({DEFAULT_URL})")
    parser.add_argument("--duration", type=float, default=None,
                        help="stop after this many seconds (default 30 without --requests)")
    parser.add_argument("--requests", type=int, default=None, help="stop after N requests")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                        help=f"requests in flight at most ({DEFAULT_CONCURRENCY})")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request timeout (s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the request mix")
    parser.add_argument("--json", type=Path, default=None, help="also write the stats here")
    parser.add_argument("--quiet", action="store_true", help="do not print the table")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a server that is not on this machine")
    args = parser.parse_args(argv)
    if args.duration is None and args.requests is None:
        args.duration = 30.0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = asyncio.run(run_load(args.url, args.duration, args.requests, args.concurrency,
                                      allow_remote=args.allow_remote, timeout=args.timeout,
                                      seed=args.seed))
    except LoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if not args.quiet:
        print(format_table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
