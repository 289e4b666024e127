"""A real fleet for the Prometheus tests, scraped every second by a real Prometheus loaded with
the operator assets (collectors/prometheus.yml, dashboards/alerts.yml). Two uvicorn servers,
collected the two ways a deployment does it:

- a sidecar: `apiscope attach --no-inject --no-dashboard --metrics-port` beside a server whose
  app adds the agent itself (`apiscope.instrument`, as the gunicorn hook does);
- `apiscope run --no-dashboard --metrics-port -- uvicorn ...`: the agent loads at start-up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apiscope.flag import Flag
from apiscope.metrics import LiveFlags, MetricsExporter, serve_metrics, session_flags
from tests.operator.assets import ALERTS, SCRAPE_CONFIG
from tests.support import (
    ROOT,
    fetch_status,
    free_port,
    http_ok,
    run_server,
    stop_process_group,
    uvicorn_argv,
    wait_until,
)

INSTRUMENTED_APP = "tests.operator.instrumented_item_app:app"
PLAIN_APP = "tests.operator.item_app:app"
SLO_MS = 200.0
# /boom's tracebacks would go to a stderr pipe nobody reads until the end: a full pipe would
# stall the server. The last --log-level wins.
QUIET = ("--log-level", "critical")

# (path pattern, route template, status, requests) per instance; `{i}` is the request number.
TRAFFIC: tuple[tuple[tuple[str, str, int, int], ...], ...] = (
    (("/items/{i}", "/items/{item_id}", 200, 40), ("/orders/{i}", "/orders/{order_id}", 200, 20),
     ("/boom", "/boom", 500, 6), ("/slow", "/slow", 200, 50)),
    (("/items/{i}", "/items/{item_id}", 200, 25), ("/orders/-{i}", "/orders/{order_id}", 404, 10),
     ("/slow", "/slow", 200, 50)),
)


@dataclass
class Instance:
    url: str  # the API server's
    metrics_port: int
    session: Path
    traffic: tuple[tuple[str, str, int, int], ...]
    sent: Counter[tuple[str, int]] = field(default_factory=Counter)  # (route, status) -> n
    bulk: Counter[str] = field(default_factory=Counter)  # route -> requests after warm-up

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.metrics_port}"


@dataclass
class Fleet:
    prometheus: str
    instances: list[Instance]
    flags_target: str
    flags: list[Flag]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; fails the test if Prometheus reports an error."""
        data = get_json(f"{self.prometheus}/api/v1/query?"
                        + urllib.parse.urlencode({"query": expr}))
        assert data["status"] == "success", f"{expr}: {data}"
        result: list[dict[str, Any]] = data["data"]["result"]
        return result


def get_json(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            data: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        data = json.loads(exc.read())
        exc.close()
    return data


def send(instance: Instance, warm_up: bool) -> None:
    """Warm-up: one request per route. Then the bulk, eight at a time (the slow route sleeps)."""
    jobs: list[tuple[str, str, int]] = []
    for pattern, route, status, count in instance.traffic:
        for i in range(1 if warm_up else count):
            jobs.append((instance.url + pattern.format(i=i + 1), route, status))
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda job: fetch_status(job[0]), jobs))
    for (_url, route, status), got in zip(jobs, statuses, strict=True):
        assert got == status, f"{_url}: {got}"
        instance.sent[(route, status)] += 1
        if not warm_up:
            instance.bulk[route] += 1


def collector_argv(command: str, metrics_port: int, session: Path) -> list[str]:
    return [sys.executable, "-m", "apiscope", command, "--no-dashboard", "--metrics-port",
            str(metrics_port), "--rate", "20", "--duration", "600", "--session", str(session)]


@contextmanager
def collecting(argv: list[str], ready_urls: list[str],
               env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """An apiscope collecting command, until every URL in `ready_urls` answers."""
    proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        def serving() -> bool:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise AssertionError(f"apiscope {argv[3]} exited {proc.returncode}: {err}")
            return all(http_ok(url) for url in ready_urls)

        wait_until(serving, timeout=60, what=f"apiscope {argv[3]} to serve {ready_urls}")
        yield proc
    finally:
        if proc.poll() is None:  # Ctrl-C: apiscope ends its session cleanly
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        stop_process_group(proc)


@contextmanager
def attached_sidecar(workdir: Path, traffic: tuple[tuple[str, str, int, int], ...],
                     env: dict[str, str]) -> Iterator[Instance]:
    port, metrics_port = free_port(), free_port()
    session = workdir / "sidecar.sqlite"
    with run_server(uvicorn_argv(INSTRUMENTED_APP, port, *QUIET), port, ready_path="/health",
                    env=env) as server:
        argv = collector_argv("attach", metrics_port, session) + [str(server.pid), "--no-inject"]
        with collecting(argv, [f"http://127.0.0.1:{metrics_port}/metrics"], env):
            yield Instance(server.url, metrics_port, session, traffic)


@contextmanager
def run_under_apiscope(workdir: Path, traffic: tuple[tuple[str, str, int, int], ...],
                       env: dict[str, str]) -> Iterator[Instance]:
    port, metrics_port = free_port(), free_port()
    session = workdir / "run.sqlite"
    argv = collector_argv("run", metrics_port, session)
    argv += ["--", *uvicorn_argv(PLAIN_APP, port, *QUIET)]
    url = f"http://127.0.0.1:{port}"
    with collecting(argv, [f"http://127.0.0.1:{metrics_port}/metrics", f"{url}/health"], env):
        yield Instance(url, metrics_port, session, traffic)


def prometheus_config(workdir: Path, targets: list[dict[str, Any]]) -> Path:
    """collectors/prometheus.yml with a 1 s scrape and our targets in its file_sd directory."""
    text = SCRAPE_CONFIG.read_text(encoding="utf-8")
    for old, new in (("scrape_interval: 15s", "scrape_interval: 1s"),
                     ("scrape_timeout: 10s", "scrape_timeout: 1s"),
                     ("evaluation_interval: 15s", "evaluation_interval: 1s"),
                     ("- ../dashboards/alerts.yml", f"- {ALERTS}")):
        assert text.count(old) == 1, f"collectors/prometheus.yml no longer says {old!r}"
        text = text.replace(old, new)
    (workdir / "targets").mkdir()
    (workdir / "targets" / "fleet.json").write_text(json.dumps(targets), encoding="utf-8")
    config = workdir / "prometheus.yml"
    config.write_text(text, encoding="utf-8")
    return config


def prometheus_argv(program: str, config: Path, port: int, storage: Path) -> list[str]:
    return [program, f"--config.file={config}", f"--storage.tsdb.path={storage}",
            f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h",
            "--log.level=warn"]


def counts_by_route(fleet: Fleet, target: str) -> Counter[tuple[str, int]]:
    rows = fleet.query("sum by (route, status) "
                       f'(apiscope_requests_total{{instance="{target}"}})')
    return Counter({(r["metric"]["route"], int(r["metric"]["status"])): int(float(r["value"][1]))
                    for r in rows})


def routes_seen(fleet: Fleet, instance: Instance) -> bool:
    seen = counts_by_route(fleet, instance.target)
    return all(seen.get(key, 0) >= n for key, n in instance.sent.items())


@contextmanager
def running_fleet(workdir: Path, prometheus: str) -> Iterator[Fleet]:
    sockets = workdir / "sockets"
    sockets.mkdir(mode=0o700)
    env = {"APISCOPE_SOCKET_DIR": str(sockets)}
    with ExitStack() as stack:
        instances = [stack.enter_context(attached_sidecar(workdir, TRAFFIC[0], env)),
                     stack.enter_context(run_under_apiscope(workdir, TRAFFIC[1], env))]

        # The flags as `LiveFlags` computes them from the first instance's session as it is
        # being written, served for Prometheus as a third target.
        flags_exporter = MetricsExporter()
        flags_port = free_port()
        flags_server = serve_metrics(flags_exporter, "127.0.0.1", flags_port)
        stack.callback(flags_server.server_close)
        stack.callback(flags_server.shutdown)
        live_flags = LiveFlags(flags_exporter, session_flags(instances[0].session, SLO_MS))

        targets = [{"targets": [i.target for i in instances], "labels": {"service": "items"}},
                   {"targets": [f"127.0.0.1:{flags_port}"], "labels": {"service": "flags"}}]
        prom_port = free_port()
        config = prometheus_config(workdir, targets)
        prom = stack.enter_context(run_server(
            prometheus_argv(prometheus, config, prom_port, workdir / "tsdb"), prom_port,
            ready_path="/-/ready", timeout=60))
        fleet = Fleet(prom.url, instances, f"127.0.0.1:{flags_port}", [])

        for instance in instances:  # every series exists in Prometheus before the bulk
            send(instance, warm_up=True)
        for instance in instances:
            wait_until(lambda i=instance: routes_seen(fleet, i), timeout=60,
                       what=f"Prometheus to see the warm-up requests of {instance.target}")
        for instance in instances:
            send(instance, warm_up=False)
        for instance in instances:
            wait_until(lambda i=instance: counts_by_route(fleet, i.target) >= i.sent,
                       timeout=60, what=f"Prometheus to count the requests of {instance.target}")

        def flags_ready() -> bool:
            return live_flags.refresh() and bool(fleet.query(
                f'apiscope_flags_active{{instance="{fleet.flags_target}"}} > 0'))

        wait_until(flags_ready, timeout=60, interval=1.0,
                   what="flags from the session analysis to reach Prometheus")
        fleet.flags = list(session_flags(instances[0].session, SLO_MS)())
        yield fleet
