"""Regenerate the README's dashboard screenshots.

    python -m tests.dashboard.screenshots docs/ [SESSION]

writes docs/dashboard-overview.png and docs/dashboard-flamegraph.png (needs Chromium), from
SESSION (e.g. one `apiscope demo --session demo.sqlite` wrote) or a synthetic session.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from apiscope.dashboard import create_app, start_server_thread
from tests.dashboard.browser import chromium, console_errors
from tests.dashboard.synthetic import write_session
from tests.support import free_port, wait_until


def _ready(driver: Any, css: str) -> None:
    wait_until(lambda: driver.execute_script(
        "return document.querySelector(arguments[0]) !== null &&"
        " document.querySelector('[data-dash-is-loading=\"true\"]') === null;", css),
        timeout=60, what=css)
    time.sleep(1.0)  # let plotly finish its transition before the picture is taken


def take(out_dir: Path, session: Path | None = None) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if session is None:
            session = write_session(Path(tmp) / "demo.sqlite", seconds=120, window_s=1.0)
        handle = start_server_thread(create_app(session, live=False), "127.0.0.1", free_port())
        try:
            with chromium(Path(tmp) / "profile", Path(tmp) / "downloads") as driver:
                driver.set_window_size(1400, 1150)
                shots = []
                for page, css, name in (("", "#endpoints-table", "dashboard-overview.png"),
                                        ("flamegraph", "#flame .main-svg",
                                         "dashboard-flamegraph.png")):
                    driver.get(handle.url + page)
                    _ready(driver, css)
                    errors = console_errors(driver)
                    if errors:
                        raise RuntimeError(f"the page logged errors: {errors}")
                    driver.save_screenshot(str(out_dir / name))
                    shots.append(out_dir / name)
                return shots
        finally:
            handle.stop()


if __name__ == "__main__":
    given = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    for path in take(Path(sys.argv[1] if len(sys.argv) > 1 else "docs"), given):
        print(path)
