"""A real fleet for the Prometheus tests: two uvicorn servers, each with a headless apiscope
sidecar (`apiscope attach --no-dashboard --metrics-port`), scraped every second by a real
Prometheus loaded with the operator assets (collectors/prometheus.yml, dashboards/alerts.yml).
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

from apiscope.metrics import LiveFlags, MetricsExporter, serve_metrics, session_flags
from tests.operator.assets import ALERTS, SCRAPE_CONFIG
from tests.support import (
    ROOT,
    ServerProcess,
    free_port,
    http_ok,
    run_server,
    stop_process_group,
    uvicorn_argv,
    wait_until,
)

APP = "tests.operator.instrumented_item_app:app"
SLO_MS = 200.0

# (path pattern, route template, status, requests) per instance; `{i}` is the request number.
TRAFFIC: tuple[tuple[tuple[str, str, int, int], ...], ...] = (
    (("/items/{i}", "/items/{item_id}", 200, 40), ("/orders/{i}", "/orders/{order_id}", 200, 20),
     ("/boom", "/boom", 500, 6), ("/slow", "/slow", 200, 50)),
    (("/items/{i}", "/items/{item_id}", 200, 25), ("/orders/-{i}", "/orders/{order_id}", 404, 10),
     ("/slow", "/slow", 200, 50)),
)


@dataclass
class Instance:
    server: ServerProcess
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
    flags: list[dict[str, Any]]

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


def fetch(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        exc.close()
        return int(exc.code)


def send(instance: Instance, warm_up: bool) -> None:
    """Warm-up: one request per route. Then the bulk, eight at a time (the slow route sleeps)."""
    jobs: list[tuple[str, str, int]] = []
    for pattern, route, status, count in instance.traffic:
        for i in range(1 if warm_up else count):
            jobs.append((instance.server.url + pattern.format(i=i + 1), route, status))
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda job: fetch(job[0]), jobs))
    for (_url, route, status), got in zip(jobs, statuses, strict=True):
        assert got == status, f"{_url}: {got}"
        instance.sent[(route, status)] += 1
        if not warm_up:
            instance.bulk[route] += 1


@contextmanager
def sidecar(pid: int, metrics_port: int, session: Path,
            env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """`apiscope attach --no-inject` on a server that instruments itself, served headless."""
    argv = [sys.executable, "-m", "apiscope", "attach", str(pid), "--no-inject",
            "--no-dashboard", "--metrics-port", str(metrics_port), "--rate", "20",
            "--duration", "600", "--session", str(session)]
    proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        def serving() -> bool:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise AssertionError(f"apiscope attach exited {proc.returncode}: {err}")
            return http_ok(f"http://127.0.0.1:{metrics_port}/metrics")

        wait_until(serving, timeout=60, what="the apiscope sidecar to serve /metrics")
        yield proc
    finally:
        if proc.poll() is None:  # Ctrl-C: the sidecar ends its session cleanly
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        stop_process_group(proc)


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
                       f'(apiscope_request_duration_seconds_count{{instance="{target}"}})')
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
        instances: list[Instance] = []
        for n, traffic in enumerate(TRAFFIC):
            port = free_port()
            server = stack.enter_context(run_server(uvicorn_argv(APP, port), port,
                                                    ready_path="/health", env=env))
            session = workdir / f"instance-{n}.sqlite"
            metrics_port = free_port()
            stack.enter_context(sidecar(server.pid, metrics_port, session, env))
            instances.append(Instance(server, metrics_port, session, traffic))

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
