"""The operator assets as the tests see them: paths, and the Grafana dashboard's PromQL."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from tests.support import ROOT

COLLECTORS = ROOT / "collectors"
DASHBOARDS = ROOT / "dashboards"
GRAFANA_JSON = DASHBOARDS / "apiscope-grafana.json"
ALERTS = DASHBOARDS / "alerts.yml"
SCRAPE_CONFIG = COLLECTORS / "prometheus.yml"

# What Grafana puts in place of its variables before sending a query: "All" instances and routes
# (the dashboard's allValue), and a rate window a few scrape intervals long.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$instance": ".*",
    "$route": ".*",
}


def grafana_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(GRAFANA_JSON.read_text(encoding="utf-8"))
    return data


def grafana_panels() -> list[dict[str, Any]]:
    return list(grafana_dashboard()["panels"])


def grafana_expressions(rate_interval: str = "1m") -> dict[str, str]:
    """Every panel query, variables substituted as Grafana does: `title/refId` -> PromQL."""
    values = {**GRAFANA_VARIABLES, "$__rate_interval": rate_interval}
    pattern = re.compile("|".join(re.escape(k) for k in sorted(values, key=len, reverse=True)))
    out: dict[str, str] = {}
    for panel in grafana_panels():
        for target in panel["targets"]:
            expr = pattern.sub(lambda m: values[m.group(0)], target["expr"])
            out[f"{panel['title']}/{target['refId']}"] = expr
    return out


def check_promql_offline(promtool: str, expressions: dict[str, str], workdir: Path) -> None:
    """Parse every expression with Prometheus' own parser (as recording rules via promtool)."""
    body = ["groups:", "  - name: parse-check", "    rules:"]
    for i, expr in enumerate(expressions.values()):
        body += [f"      - record: check:expr_{i}", f"        expr: {json.dumps(expr)}"]
    path = workdir / "parse-check.yml"
    path.write_text("\n".join(body) + "\n", encoding="utf-8")
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
