"""Session size per hour at 100 Hz over a gunicorn master with 4 Uvicorn workers.

A real `apiscope attach` records the server under steady light load (the item endpoint from
`benchmarks.apps`); once it has ended (the write-ahead log checkpointed into the file), the
file's size over the session's own duration is projected to an hour. Start-up costs (the route
table, the first frames and stacks) are included, so the projection errs high. Requests are a
row each, so the request rate is reported beside the figure.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any

from apiscope.store import SessionReader
from benchmarks.harness import ROOT, free_port, wait_http


def steady_load(url: str, rps: float, stop: threading.Event) -> int:
    sent = 0
    interval = 1.0 / rps
    next_at = time.monotonic()
    while not stop.is_set():
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                resp.read()
            sent += 1
        except OSError:
            pass
        next_at += interval
        stop.wait(max(0.0, next_at - time.monotonic()))
    return sent


WARM_UP = 15.0  # seconds of the session before its growth is measured


def run(seconds: float = 40.0, rps: float = 50.0) -> dict[str, Any]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-k", "uvicorn.workers.UvicornWorker", "-w", "4",
         "-b", f"127.0.0.1:{port}", "--log-level", "warning", "benchmarks.apps:app"],
        cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/items/1"
    with tempfile.TemporaryDirectory() as tmp:
        session = Path(tmp) / "size.sqlite"
        try:
            wait_http(url)
            time.sleep(2)  # all four workers up
            stop = threading.Event()
            loader = threading.Thread(target=steady_load, args=(url, rps, stop), daemon=True)
            loader.start()
            collector = subprocess.Popen(
                [sys.executable, "-m", "apiscope", "attach", str(server.pid), "--no-dashboard",
                 "--rate", "100", "--session", str(session), "--duration", str(seconds + 30)],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)
            # Growth is measured after a warm-up: the first seconds store every distinct stack
            # and frame once (most of a short session), which an hour does not repeat.
            time.sleep(WARM_UP)
            first = (time.monotonic(), logical_size(session))
            time.sleep(seconds)
            last = (time.monotonic(), logical_size(session))
            os.killpg(collector.pid, signal.SIGINT)
            collector.wait(60)
            stop.set()
            loader.join()
            with SessionReader(session) as reader:
                meta = reader.meta()
            with closing(sqlite3.connect(f"file:{session}?mode=ro", uri=True)) as conn:
                requests = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
            size = session.stat().st_size
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)
    assert meta.start is not None and meta.end is not None, "the collector noted no span"
    duration = meta.end - meta.start
    growth = (last[1] - first[1]) / (last[0] - first[0])
    return {"seconds": last[0] - first[0], "bytes": size, "warm_up_bytes": first[1],
            "mb_per_hour": growth * 3600 / 1e6, "request_rate": requests / duration,
            "workers": 4, "rate_hz": 100}


def logical_size(session: Path) -> int:
    """The session's size as a reader sees it (the pages of the file and of its write-ahead
    log), in bytes."""
    with closing(sqlite3.connect(f"file:{session}?mode=ro", uri=True)) as conn:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        return int(pages * conn.execute("PRAGMA page_size").fetchone()[0])


if __name__ == "__main__":
    print(run())
