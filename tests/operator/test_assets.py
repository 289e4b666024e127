"""The operator assets checked with Prometheus' own tools (promtool) and by structure."""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
from pathlib import Path

from tests.operator.assets import (
    ALERTS,
    COLLECTORS,
    DASHBOARDS,
    SCRAPE_CONFIG,
    check_promql_offline,
    grafana_dashboard,
    grafana_expressions,
    grafana_panels,
)
from tests.support import require_program

HERE = Path(__file__).resolve().parent


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_program("promtool"), *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_scrape_config_is_valid_and_loads_the_alert_rules() -> None:
    result = promtool("check", "config", str(SCRAPE_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in output
    assert "WARNING" not in output  # every file_sd glob matches an example targets file


def test_scrape_config_uses_file_service_discovery() -> None:
    text = SCRAPE_CONFIG.read_text(encoding="utf-8")
    assert "file_sd_configs:" in text and "job_name: apiscope" in text
    assert list((COLLECTORS / "targets").glob("*.json"))


def test_alert_rules_are_valid() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout


def test_alert_rules_fire_on_the_series_that_should_trip_them() -> None:
    result = promtool("test", "rules", str(HERE / "alerts_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_mirror_the_flag_kinds() -> None:
    text = ALERTS.read_text(encoding="utf-8")
    for kind in ("slow_endpoint", "event_loop_blocked", "error_rate", "memory_growth",
                 "threadpool_saturation"):
        assert f"flag_kind: {kind}" in text


def test_grafana_queries_parse_with_prometheus_parser(tmp_path: Path) -> None:
    check_promql_offline(require_program("promtool"), grafana_expressions(), tmp_path)


def test_grafana_dashboard_has_the_promised_panels() -> None:
    dashboard = grafana_dashboard()
    panels = grafana_panels()
    assert dashboard["uid"] and dashboard["title"]
    assert len({p["id"] for p in panels}) == len(panels)
    exprs = " ".join(grafana_expressions().values())
    assert "histogram_quantile(0.95" in exprs
    assert any(p["type"] == "heatmap" for p in panels)
    assert "apiscope_flags_active" in exprs
    assert "apiscope_event_loop_blocked_seconds_total" in exprs
    assert 'status=~"5.."' in exprs
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "instance", "route"} <= variables
    for panel in panels:  # every query goes to the chosen Prometheus, none to a fixed one
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"] and all(t["expr"] for t in panel["targets"])


def test_grafana_panels_do_not_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in grafana_panels():
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                 for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & taken, panel["title"]
        taken |= cells


def test_gunicorn_hook_defines_post_worker_init_only() -> None:
    tree = ast.parse((COLLECTORS / "gunicorn_apiscope.py").read_text(encoding="utf-8"))
    functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert functions == ["post_worker_init"]


def test_systemd_unit_runs_a_headless_sidecar_with_ptrace_rights() -> None:
    # systemd-analyze verify does not report unknown settings outside a booted systemd, so the
    # unit is checked by what it must say.
    unit = (COLLECTORS / "apiscope-sidecar@.service").read_text(encoding="utf-8")
    sections = re.findall(r"^\[(\w+)\]$", unit, flags=re.MULTILINE)
    assert sections == ["Unit", "Service", "Install"]
    assert "apiscope attach --no-dashboard" in unit and "--metrics-port" in unit
    assert "MainPID" in unit and "BindsTo=%i.service" in unit
    assert "AmbientCapabilities=CAP_SYS_PTRACE" in unit
    assert "KillSignal=SIGINT" in unit  # apiscope ends cleanly on Ctrl-C


def systemd_exec_start(unit: str, instance: str) -> list[str]:
    """ExecStart's argv as systemd builds it: continuations, specifiers, `$$`, quoting."""
    line = unit.replace("\\\n", " ")
    command = next(x for x in line.splitlines() if x.startswith("ExecStart="))
    command = command.removeprefix("ExecStart=")
    command = re.sub(r"%(.)", lambda m: {"%": "%", "i": instance}[m.group(1)], command)
    return shlex.split(command.replace("$$", "$"))


def test_systemd_exec_start_passes_the_right_arguments(tmp_path: Path) -> None:
    unit = (COLLECTORS / "apiscope-sidecar@.service").read_text(encoding="utf-8")
    argv = systemd_exec_start(unit, "items-api")
    stubs = tmp_path / "bin"
    stubs.mkdir()
    record = tmp_path / "argv.txt"
    (stubs / "apiscope").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\n')
    (stubs / "systemctl").write_text('#!/bin/sh\n[ "$4" = items-api.service ] && echo 4242\n')
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    env = dict(re.findall(r"^Environment=(\w+)=(.*)$", unit, flags=re.MULTILINE))
    env |= {"PATH": f"{stubs}:/usr/bin:/bin", "STATE_DIRECTORY": "/var/lib/apiscope"}
    subprocess.run(argv, env=env, check=True, timeout=30)
    args = record.read_text().splitlines()
    assert args[:9] == ["attach", "--no-dashboard", "--host", "0.0.0.0", "--metrics-port",
                        "9464", "--rate", "100", "--session"]
    assert re.fullmatch(r"/var/lib/apiscope/items-api-\d{8}-\d{6}\.sqlite", args[9])
    assert args[10:] == ["4242"]


def test_kubernetes_sidecar_shares_the_process_namespace_with_ptrace() -> None:
    manifest = (COLLECTORS / "kubernetes-sidecar.yaml").read_text(encoding="utf-8")
    assert "shareProcessNamespace: true" in manifest
    assert "add: [SYS_PTRACE]" in manifest
    assert manifest.count("APISCOPE_SOCKET_DIR") == 2  # the same socket directory in both
    assert "--no-inject" in manifest and "--metrics-port 9464" in manifest


def test_every_asset_folder_has_a_readme() -> None:
    for folder in (COLLECTORS, DASHBOARDS):
        assert (folder / "README.md").is_file()
