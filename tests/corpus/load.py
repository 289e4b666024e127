"""A small threaded HTTP load: `python -m tests.corpus.load PLAN.json`.

The plan (JSON) names the base URL, how long to run (an upper bound: the harness also stops
it with SIGTERM), the number of client threads, the total request rate, an optional login
request (its `access_token` becomes a Bearer header for requests with `auth`) and a weighted
list of requests. In paths and bodies (JSON text) `{id}` becomes a random id in 1..id_max (the
request's own, else the plan's) and `{n}` a number unique to the run.
Each thread keeps its own keep-alive connection, as a pool of API clients would. At the end it
prints the count of each (route, status) as JSON on stdout.
"""

from __future__ import annotations

import http.client
import itertools
import json
import random
import signal
import sys
import threading
import time
from collections import Counter
from typing import Any

_counter = itertools.count(1)


def _fill(template: str, rng: random.Random, id_max: int) -> str:
    return template.replace("{id}", str(rng.randint(1, id_max))).replace(
        "{n}", str(next(_counter)))


class Client:
    def __init__(self, host: str, port: int, login: dict[str, Any] | None) -> None:
        self.host, self.port, self.login = host, port, login
        self.conn = http.client.HTTPConnection(host, port, timeout=10)
        self.token: str | None = None

    def send(self, method: str, path: str, body: str | None, auth: bool) -> tuple[int, bytes]:
        if auth and self.token is None and self.login is not None:
            status, data = self.send("POST", self.login["path"], json.dumps(self.login["json"]),
                                     False)
            if status == 200:
                self.token = json.loads(data)["access_token"]
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                return response.status, response.read()
            except (OSError, http.client.HTTPException):
                # The server may close a kept-alive connection; reconnect once.
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
                if attempt:
                    return 0, b""
        return 0, b""


def worker(plan: dict[str, Any], deadline: float, stop: threading.Event, seed: int,
           results: Counter[str]) -> None:
    rng = random.Random(seed)
    host, _, port = plan["url"].removeprefix("http://").partition(":")
    client = Client(host, int(port), plan.get("login"))
    requests = plan["requests"]
    weights = [r["weight"] for r in requests]
    interval = plan["concurrency"] / plan["rate"]
    next_at = time.monotonic() + rng.uniform(0, interval)
    while not stop.is_set() and next_at < deadline:
        stop.wait(max(0.0, next_at - time.monotonic()))
        next_at = max(next_at + interval, time.monotonic())
        spec = rng.choices(requests, weights)[0]
        id_max = spec.get("id_max", plan["id_max"])
        body = _fill(spec["body"], rng, id_max) if "body" in spec else None
        path = _fill(spec["path"], rng, id_max)
        status, _ = client.send(spec["method"], path, body, spec.get("auth", False))
        results[f"{spec['method']} {spec['path']} {status}"] += 1


def main(argv: list[str]) -> int:
    with open(argv[0]) as f:
        plan = json.load(f)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    deadline = time.monotonic() + plan["duration"]
    tallies: list[Counter[str]] = [Counter() for _ in range(plan["concurrency"])]
    threads = [threading.Thread(target=worker, args=(plan, deadline, stop, i, tally),
                                daemon=True) for i, tally in enumerate(tallies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps(dict(sorted(sum(tallies, Counter()).items()))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
