"""The documented ways to run the app: uvicorn, gunicorn with Uvicorn workers, fixed mode."""

from __future__ import annotations

import json
import sys
import urllib.request

import pytest

from tests.support import ROOT, free_port, run_server, uvicorn_argv

pytestmark = pytest.mark.integration


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_gunicorn_config_serves_the_app_on_two_workers() -> None:
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "sample_app" / "gunicorn.conf.py")]
    env = {"SAMPLE_APP_BIND": f"127.0.0.1:{port}", "SAMPLE_APP_WORKERS": "2",
           "SAMPLE_APP_ITEMS": "200"}
    with run_server(argv, port, ready_path="/health", env=env, timeout=60) as server:
        assert get_json(f"{server.url}/health") == {
            "status": "ok", "fixed": False, "seeded_items": 200, "seeded_orders": 40}
        item = get_json(f"{server.url}/items/1")
        assert isinstance(item, dict) and item["id"] == 1


def test_uvicorn_fixed_mode_reports_itself() -> None:
    port = free_port()
    env = {"SAMPLE_APP_FIXED": "1", "SAMPLE_APP_ITEMS": "100"}
    with run_server(uvicorn_argv("sample_app.main:app", port), port, ready_path="/health",
                    env=env) as server:
        health = get_json(f"{server.url}/health")
        assert isinstance(health, dict) and health["fixed"] is True
