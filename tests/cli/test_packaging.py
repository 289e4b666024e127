"""The wheel as a user installs it: a headless collector without Dash, no `sample_app`."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.analysis.builder import healthy
from tests.support import ROOT

pytestmark = pytest.mark.integration


def sh(*argv: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def headless(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the wheel, a fresh virtualenv with the wheel installed without extras)."""
    work = tmp_path_factory.mktemp("headless")
    built = sh(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", work, ROOT,
               cwd=work)
    assert built.returncode == 0, built.stderr
    [wheel] = work.glob("apiscope-*.whl")
    assert sh(sys.executable, "-m", "venv", work / "venv", cwd=work).returncode == 0
    installed = sh(work / "venv/bin/python", "-m", "pip", "install", "--quiet", wheel, cwd=work)
    assert installed.returncode == 0, installed.stderr
    return wheel, work / "venv/bin"


def test_the_wheel_ships_apiscope_alone_with_dash_as_an_extra(
        headless: tuple[Path, Path]) -> None:
    wheel, _ = headless
    with zipfile.ZipFile(wheel) as zf:
        tops = {name.split("/")[0] for name in zf.namelist()}
        metadata = next(zf.read(n).decode() for n in zf.namelist() if n.endswith("METADATA"))
    assert tops == {"apiscope", wheel.name.split("-py3")[0] + ".dist-info"}
    assert 'Requires-Dist: dash>=2.17; extra == "dashboard"' in metadata


def test_headless_install_reports_and_names_the_extra(headless: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    _, bin_dir = headless
    session = healthy().write(tmp_path / "s.sqlite")
    assert sh(bin_dir / "python", "-c", "import dash", cwd=tmp_path).returncode != 0
    for argv in (["report", session], ["export", session, "--format", "folded", "-o", "f"]):
        done = sh(bin_dir / "apiscope", *argv, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    done = sh(bin_dir / "apiscope", "dashboard", session, cwd=tmp_path)
    assert done.returncode == 2 and "pip install 'apiscope[dashboard]'" in done.stderr, done
    done = sh(bin_dir / "apiscope", "run", "--duration", "1", "--", "true", cwd=tmp_path)
    assert done.returncode == 2 and "--no-dashboard" in done.stderr, done
    done = sh(bin_dir / "apiscope", "demo", cwd=tmp_path)
    assert done.returncode == 2 and "source tree" in done.stderr, done
    assert "Traceback" not in done.stderr
