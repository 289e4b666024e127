"""Where the thresholds come from: --config, else the project's pyproject.toml, else defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from apiscope.analysis.thresholds import Thresholds, resolve_thresholds
from apiscope.errors import UsageError


def test_defaults_without_config_or_pyproject(tmp_path: Path) -> None:
    assert resolve_thresholds(start=tmp_path) == Thresholds()


def test_pyproject_table_is_found_from_a_subdirectory(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        "[project]\nname = 'shop'\n\n[tool.apiscope.thresholds]\nslo_ms = 80\n"
        "error_share = [0.01, 0.1, 0.3]\n")
    # A package's own pyproject.toml without our table does not hide the root's (as in ruff).
    package = tmp_path / "services" / "api"
    package.mkdir(parents=True)
    (package / "pyproject.toml").write_text("[project]\nname = 'api'\n")
    found = resolve_thresholds(start=package)
    assert found.slo_ms == 80.0 and found.error_share == (0.01, 0.1, 0.3)
    assert found.min_requests == Thresholds().min_requests


def test_tool_apiscope_itself_may_hold_the_thresholds(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.apiscope]\nmin_requests = 3\n")
    assert resolve_thresholds(start=tmp_path).min_requests == 3


def test_explicit_config_wins_over_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.apiscope.thresholds]\nslo_ms = 80\n")
    config = tmp_path / "ci.toml"
    config.write_text("[thresholds]\nslo_ms = 500\n")
    assert resolve_thresholds(config, start=tmp_path).slo_ms == 500.0


def test_a_bad_pyproject_entry_names_the_file_and_table(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.apiscope]\nslo = 80\n")
    with pytest.raises(UsageError) as caught:
        resolve_thresholds(start=tmp_path)
    message = str(caught.value)
    assert "'slo'" in message and "[tool.apiscope] of" in message and "slo_ms" in message
