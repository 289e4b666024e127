"""The analysis of a real session: a real uvicorn under `apiscope run`, sampled by real py-spy.

The app has one async handler that blocks the event loop with `time.sleep` and one healthy
handler; the report must flag the blocking call's line and leave the healthy route alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from apiscope.cli.main import main
from tests.support import free_port, http_ok, require_program, require_ptrace, wait_until

APP = '''\
import time

from fastapi import FastAPI

app = FastAPI()


@app.get("/fast")
async def fast() -> dict[str, bool]:
    return {"ok": True}


@app.get("/audit")
async def audit() -> dict[str, bool]:
    time.sleep(0.05)  # blocks the event loop
    return {"ok": True}
'''
SLEEP_LINE = 15

pytestmark = pytest.mark.integration


def _drive(url: str, stop: threading.Event) -> None:
    while not stop.is_set():
        for path in ("/fast", "/fast", "/audit"):
            try:
                with urllib.request.urlopen(url + path, timeout=5) as resp:
                    resp.read()
            except OSError:
                if stop.wait(0.05):
                    return


def test_blocking_sleep_in_async_handler_is_flagged(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    require_ptrace()
    require_program("py-spy")
    (tmp_path / "blockapp.py").write_text(APP)
    port, session = free_port(), tmp_path / "s.sqlite"
    argv = [sys.executable, "-m", "apiscope", "run", "--duration", "8", "--no-dashboard",
            "--session", str(session), "--", sys.executable, "-m", "uvicorn", "blockapp:app",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    stop = threading.Event()
    drivers = [threading.Thread(target=_drive, args=(f"http://127.0.0.1:{port}", stop))
               for _ in range(3)]
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/fast") or proc.poll() is not None,
                   timeout=30, what="the app to serve")
        for driver in drivers:
            driver.start()
        _, err = proc.communicate(timeout=60)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for driver in drivers:
            if driver.is_alive():
                driver.join(10)
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    assert main(["report", str(session), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"]["total"] > 0
    blocked = [f for f in report["flags"] if f["kind"] == "event_loop_blocked"]
    assert blocked, report["flags"]
    location = blocked[0]["location"]
    assert location["file"].endswith("blockapp.py") and location["line"] == SLEEP_LINE
    assert blocked[0]["route"] in (None, "GET /audit")
    # /fast itself is healthy; on a loaded machine its latency may suffer from the blocked loop,
    # and then the slow_endpoint flag must say so.
    for flag in report["flags"]:
        if flag["route"] == "GET /fast":
            assert flag["kind"] == "slow_endpoint" and "blocked by" in flag["evidence"], flag
