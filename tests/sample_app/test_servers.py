"""The documented ways to run the app: uvicorn, gunicorn with Uvicorn workers, fixed mode, and
gunicorn's workers sharing one PostgreSQL database and one Redis."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.services import PostgresServer, RedisServer
from tests.support import ROOT, free_port, run_server, uvicorn_argv, wait_until

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


def post_json(url: str, body: dict[str, object]) -> object:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def workers_started(log: Path, count: int) -> bool:
    text = log.read_text()
    assert "Application startup failed" not in text, text[-3000:]
    return text.count("Application startup complete") == count


def test_gunicorn_workers_share_postgres_and_redis(postgres: PostgresServer,
                                                   redis_service: RedisServer,
                                                   tmp_path: Path) -> None:
    # Three workers start at once against one empty database: the schema and the data are
    # created once (advisory locks), and no worker fails to boot on the other's tables.
    port, log = free_port(), tmp_path / "gunicorn.log"
    argv = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "sample_app" / "gunicorn.conf.py"),
            "--error-logfile", str(log)]
    env = {"SAMPLE_APP_BIND": f"127.0.0.1:{port}", "SAMPLE_APP_WORKERS": "3",
           "SAMPLE_APP_ITEMS": "200", "SAMPLE_APP_FIXED": "1", "SAMPLE_APP_LOG_LEVEL": "info",
           "DATABASE_URL": postgres.create_database("gunicorn_workers"),
           "REDIS_URL": redis_service.url}
    with run_server(argv, port, ready_path="/health", env=env, timeout=60) as server:
        # One worker answering is not all three ready: wait for each one's lifespan.
        wait_until(lambda: workers_started(log, 3), timeout=60,
                   what="three workers to finish their start-up")
        created = post_json(f"{server.url}/items/", {"name": "shared lamp", "price_cents": 500})
        assert isinstance(created, dict) and created["id"] == 201
        # New connections each time: the kernel spreads them over the workers, and every one
        # sees the same seeded rows and the new item.
        for _ in range(12):
            assert get_json(f"{server.url}/health") == {
                "status": "ok", "fixed": True, "seeded_items": 200, "seeded_orders": 40}
            assert get_json(f"{server.url}/items/{created['id']}") == created
            assert isinstance(get_json(f"{server.url}/items/7/summary"), dict)
        workers = psutil.Process(server.proc.pid).children()
        assert len(workers) == 3 and server.proc.poll() is None
    assert "Traceback" not in log.read_text()
    postgres.drop_database("gunicorn_workers")


def test_uvicorn_fixed_mode_reports_itself() -> None:
    port = free_port()
    env = {"SAMPLE_APP_FIXED": "1", "SAMPLE_APP_ITEMS": "100"}
    with run_server(uvicorn_argv("sample_app.main:app", port), port, ready_path="/health",
                    env=env) as server:
        health = get_json(f"{server.url}/health")
        assert isinstance(health, dict) and health["fixed"] is True
