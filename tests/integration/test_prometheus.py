"""A real Prometheus scraping two real apiscope collectors, and the fleet view reading it back.

Checks through Prometheus' HTTP API that the exposition is right where it matters to operators:
exact request counts per route, rates and p95 that agree with the traffic sent and with the
session file, every Grafana and alert-rule query, two instances as two `instance` labels.
"""

from __future__ import annotations

import math
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from apiscope.fleet import PrometheusClient, create_fleet_app, fetch_snapshot
from apiscope.metrics import LATENCY_BUCKETS
from apiscope.store import SessionReader
from tests.integration.prometheus_fleet import Fleet, Instance, get_json, running_fleet
from tests.operator.assets import grafana_expressions
from tests.support import require_program, require_ptrace, wait_until

pytestmark = pytest.mark.integration

WINDOW = "5m"  # covers the whole test run: rates then measure exactly the traffic sent


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    require_ptrace()  # the sidecars sample stacks with py-spy
    prometheus = require_program("prometheus")
    require_program("py-spy")
    with running_fleet(tmp_path_factory.mktemp("fleet"), prometheus) as running:
        yield running


def values(rows: list[dict[str, Any]], *labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(r["metric"].get(label, "") for label in labels): float(r["value"][1])
            for r in rows}


def test_two_sidecars_are_two_instances(fleet: Fleet) -> None:
    rows = fleet.query("count by (instance) (apiscope_request_duration_seconds_count)")
    assert {key[0] for key in values(rows, "instance")} == {i.target for i in fleet.instances}
    up = values(fleet.query('up{job="apiscope"}'), "instance")
    assert up == {(i.target,): 1.0 for i in fleet.instances} | {(fleet.flags_target,): 1.0}


def test_request_counts_per_route_and_status_are_exact(fleet: Fleet) -> None:
    for instance in fleet.instances:
        rows = fleet.query("sum by (route, status) (apiscope_requests_total"
                           f'{{instance="{instance.target}"}})')
        counted = {(k[0], int(k[1])): int(v) for k, v in values(rows, "route", "status").items()}
        for key, sent in instance.sent.items():
            assert counted[key] == sent, f"{instance.target} {key}"
        assert all(not route.startswith(("/items/1", "/orders/1")) for route, _ in counted)
        # the histogram has the status class, and no pid
        rows = fleet.query("sum by (route, status) (apiscope_request_duration_seconds_count"
                           f'{{instance="{instance.target}"}})')
        classes = {k: int(v) for k, v in values(rows, "route", "status").items()}
        for (route, status), sent in instance.sent.items():
            assert classes[(route, f"{status // 100}xx")] >= sent
        assert not fleet.query('apiscope_request_duration_seconds_count{pid!=""}')


def test_a_live_scrape_passes_promtool_check_metrics(fleet: Fleet) -> None:
    promtool = require_program("promtool")
    for instance in fleet.instances:
        url = f"http://{instance.target}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read()
        assert b"apiscope_build_info{" in text and b"apiscope_slo_seconds 0.2" in text
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                               timeout=60, check=False)
        # promtool prints each lint problem and exits 1 on any: no output means no warning
        assert (check.returncode, check.stdout, check.stderr) == (0, b"", b""), url


def test_request_rates_agree_with_the_traffic(fleet: Fleet) -> None:
    for instance in fleet.instances:
        selector = f'apiscope_request_duration_seconds_count{{instance="{instance.target}"}}'
        rates = {k[0]: v for k, v in values(fleet.query(
            f"sum by (route) (rate({selector}[{WINDOW}]))"), "route").items()}
        raw: dict[str, list[list[tuple[float, float]]]] = {}
        for series in fleet.query(f"{selector}[{WINDOW}]"):  # the scraped samples themselves
            raw.setdefault(series["metric"]["route"], []).append(
                [(float(t), float(v)) for t, v in series["values"]])
        for route, bulk in instance.bulk.items():
            assert len(raw[route]) == 1  # one status and one pid per route in this traffic
            points = raw[route][0]
            # The series existed (warm-up) before the bulk was sent: the scraped counts rose
            # by exactly the bulk inside the window...
            assert points[-1][1] - points[0][1] == bulk, (instance.target, route, points)
            # ...and rate() extrapolates that rise towards both ends of the window, by at most
            # 1.1 average scrape intervals at each end (Prometheus' extrapolatedRate).
            span = points[-1][0] - points[0][0]
            step = span / (len(points) - 1)
            increase = rates[route] * 300
            assert bulk * 0.99 <= increase <= bulk * (span + 2.2 * step) / span * 1.01, (
                instance.target, route, increase, span, step)


def bucket_of(seconds: float) -> float:
    return next((b for b in LATENCY_BUCKETS if seconds <= b), math.inf)


def session_durations(instance: Instance, route: str) -> list[float]:
    expected = sum(n for (r, _status), n in instance.sent.items() if r == route)

    def read() -> list[float]:
        with SessionReader(instance.session) as reader:
            found = [r.duration_ms / 1000.0 for r in reader.requests() if r.route == route]
        return found if len(found) == expected else []

    return wait_until(read, timeout=30, interval=0.5, what=f"{route} in the session file")


def test_p95_per_route_agrees_with_the_session(fleet: Fleet) -> None:
    instance = fleet.instances[0]
    rates = fleet.query(f"histogram_quantile(0.95, sum by (le, route) (rate("
                        f'apiscope_request_duration_seconds_bucket{{instance="{instance.target}"}}'
                        f"[{WINDOW}])))")
    over_window = {k[0]: v for k, v in values(rates, "route").items()}
    totals = fleet.query("histogram_quantile(0.95, sum by (le, route) ("
                         f'apiscope_request_duration_seconds_bucket{{instance="{instance.target}"}}'
                         "))")
    whole_run = {k[0]: v for k, v in values(totals, "route").items()}
    for route in instance.bulk:
        durations = sorted(session_durations(instance, route))
        rank = math.ceil(0.95 * len(durations)) - 1
        # histogram_quantile interpolates inside the bucket holding the 95th percentile: the
        # estimate and the exact value from the session lie in the same bucket.
        assert bucket_of(whole_run[route]) == bucket_of(durations[rank]), route
        assert math.isfinite(over_window[route]) and over_window[route] > 0, route
    assert 0.25 < over_window["/slow"] <= 0.5  # asyncio.sleep(0.25): the (0.25, 0.5] bucket


def test_every_grafana_query_runs_and_request_panels_have_data(fleet: Fleet) -> None:
    for name, expr in grafana_expressions(rate_interval=WINDOW).items():
        result = fleet.query(expr)  # fails on any PromQL error
        if "apiscope_request_duration_seconds" in expr:
            assert result, f"{name}: no data for {expr}"


def rules(fleet: Fleet) -> list[dict[str, Any]]:
    data = get_json(f"{fleet.prometheus}/api/v1/rules")
    return [rule for group in data["data"]["groups"] for rule in group["rules"]]


def test_alert_rules_load_evaluate_and_see_the_slow_and_failing_routes(fleet: Fleet) -> None:
    def all_evaluated() -> list[dict[str, Any]]:
        found = rules(fleet)
        done = len(found) == 9 and all(r["health"] == "ok" and
                                       not r["lastEvaluation"].startswith("0001")
                                       for r in found)
        return found if done else []

    loaded = {r["name"]: r for r in wait_until(all_evaluated, timeout=30, interval=0.5,
                                               what="every alert rule to be evaluated")}
    for rule in loaded.values():
        fleet.query(rule["query"])  # Prometheus' own rendering of each rule's PromQL runs
    a, b = fleet.instances
    slow = values(fleet.query(loaded["ApiscopeRouteP95OverSLO"]["query"]), "instance", "route")
    assert set(slow) == {(a.target, "/slow"), (b.target, "/slow")}
    failing = values(fleet.query(loaded["ApiscopeRouteErrorRate"]["query"]), "instance",
                     "route")
    assert failing == {(a.target, "/boom"): 1.0}  # B's 404s are not server errors


    def error_alert_pending() -> bool:
        alerts = get_json(f"{fleet.prometheus}/api/v1/alerts")["data"]["alerts"]
        return any(x["labels"]["alertname"] == "ApiscopeRouteErrorRate" and
                   x["labels"].get("route") == "/boom" and
                   x["labels"].get("instance") == a.target for x in alerts)

    wait_until(error_alert_pending, timeout=30, interval=0.5,
               what="the error-rate alert on /boom to be pending")


def test_live_flags_from_the_session_reach_prometheus(fleet: Fleet) -> None:
    assert fleet.flags, "the analysis raised no flag on a session with a 500 route and a slow one"
    rows = fleet.query(f'apiscope_flags_active{{instance="{fleet.flags_target}"}} > 0')
    exported = {k: int(v) for k, v in values(rows, "kind", "severity").items()}
    expected: dict[tuple[str, ...], int] = {}
    for flag in fleet.flags:
        key = (flag.kind, flag.severity)
        expected[key] = expected.get(key, 0) + 1
    assert exported == expected


def test_fleet_snapshot_puts_instances_side_by_side(fleet: Fleet) -> None:
    snapshot = fetch_snapshot(PrometheusClient(fleet.prometheus), window=WINDOW)
    a, b = fleet.instances
    assert {a.target, b.target, fleet.flags_target} <= set(snapshot.instances)
    rows = {(r.instance, r.route): r for r in snapshot.routes}
    assert {route for (inst, route) in rows if inst == a.target} >= set(a.bulk)
    assert {route for (inst, route) in rows if inst == b.target} >= set(b.bulk)
    assert rows[(a.target, "/boom")].error_rate == 1.0
    assert rows[(b.target, "/orders/{order_id}")].error_rate == 0.0
    for inst in (a, b):
        slow = rows[(inst.target, "/slow")]
        assert slow.p95_ms is not None and 250.0 < slow.p95_ms <= 500.0
        assert slow.rps > 0
    assert snapshot.flags_of(fleet.flags_target)
    # Each collecting command also publishes its own session's flags: /boom answers 500 on the
    # first instance only (the second one's 404s are not errors).
    assert "error_rate" in {f.kind for f in snapshot.flags_of(a.target)}
    assert "error_rate" not in {f.kind for f in snapshot.flags_of(b.target)}


@pytest.mark.browser
def test_fleet_view_renders_in_chromium(fleet: Fleet, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    from tests.dashboard.browser import chromium, console_errors

    app = create_fleet_app(fleet.prometheus, window=WINDOW, refresh_ms=60_000)
    server = make_server("127.0.0.1", 0, app.server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    a, b = fleet.instances
    try:
        with chromium(tmp_path / "profile", tmp_path / "downloads") as driver:
            driver.get(f"http://127.0.0.1:{server.server_port}/")

            def table_text() -> str:
                found = driver.find_elements(By.ID, "fleet-routes-table")
                text = str(found[0].text) if found else ""
                return text if a.target in text and b.target in text else ""

            text = wait_until(table_text, timeout=60, interval=0.5,
                              what="the fleet table to list both instances")
            assert "GET /slow" in text and "GET /boom" in text and "100.0%" in text
            flags = driver.find_element(By.ID, "fleet-flags-table").text
            kinds = {f.kind for f in fleet.flags}
            assert all(kind in flags for kind in kinds)
            wait_until(lambda: len(driver.find_elements(
                By.CSS_SELECTOR, "#fleet-p95 .bars path")) >= 2, timeout=30,
                what="the p95 chart's bars")
            status = driver.find_element(By.ID, "fleet-status").text
            assert "instances" in status and "cannot refresh" not in status
            assert console_errors(driver) == []
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
