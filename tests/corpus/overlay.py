"""uvloop and httptools, for the corpus apps served as `uvicorn[standard]` serves them.

Installing `uvicorn[standard]` (what `fastapi[standard]` and most deployments pull in) gives
uvicorn uvloop's C event loop and httptools' parser, and uvicorn picks them by default. They
are not in the test environment itself, where every other test relies on the standard asyncio
loop; they are installed once into a directory of their own (`OVERLAY`), which only the servers
that should use them get on their `PYTHONPATH`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.corpus.catalog import ROOT
from tests.pythons.targets import built_once

OVERLAY = ROOT / ".venv" / "overlays" / "uvicorn-standard"
PACKAGES = ("uvloop", "httptools")


def uvicorn_standard() -> Path:
    """The overlay directory, installed when missing (pip, from the package index)."""
    return built_once(OVERLAY, _install)


def _install(directory: Path) -> str:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                    "--disable-pip-version-check", "--target", str(directory), *PACKAGES],
                   check=True, capture_output=True, timeout=600)
    return " ".join(PACKAGES) + "\n"
