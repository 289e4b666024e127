"""The command line's wiring: every contract command, its help, and usage errors."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from apiscope.cli.main import COMMANDS, main
from tests.support import ROOT

CONTRACT_COMMANDS = ["attach", "run", "demo", "dashboard", "report", "export", "diff", "detach",
                     "dump"]
COLLECT_OPTIONS = ["--duration", "--rate", "--session", "--no-dashboard", "--host", "--port",
                   "--report", "--slo-ms", "--metrics-port"]


def test_every_contract_command_is_registered() -> None:
    assert [c.name for c in COMMANDS] == CONTRACT_COMMANDS


@pytest.mark.parametrize("command", CONTRACT_COMMANDS)
def test_each_command_answers_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"apiscope {command}" in out
    if command in ("attach", "run", "demo"):
        for option in COLLECT_OPTIONS:
            assert option in out
    if command == "attach":
        assert "--no-inject" in out


@pytest.mark.parametrize("argv", [
    ["attach"],  # no PID
    ["attach", "abc"],
    ["attach", "123", "--rate", "0"],
    ["attach", "123", "--port", "70000"],
    ["report", "s.sqlite", "--fail-on", "critical"],
    ["export", "s.sqlite"],  # --format is required
    ["frobnicate"],
])
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_run_without_a_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--no-dashboard"]) == 2
    assert "no server command" in capsys.readouterr().err


def test_run_of_a_missing_program_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--no-dashboard", "--", "no-such-server-program"]) == 2
    assert "no-such-server-program" in capsys.readouterr().err


def test_report_path_must_be_json_or_html(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--no-dashboard", "--report", "r.txt", "--", "true"]) == 2
    assert ".json or .html" in capsys.readouterr().err


def test_console_script_entry_runs_and_reports_errors_without_traceback() -> None:
    done = subprocess.run([sys.executable, "-m", "apiscope", "report", "missing.sqlite"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "no session file" in done.stderr
    assert "Traceback" not in done.stderr


def test_run_of_a_command_that_is_no_server_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    # Either it already exited, or it is still a shell and not Python: both are exit 2.
    assert main(["run", "--no-dashboard", "--", "sh", "-c", "exit 3"]) == 2
    err = capsys.readouterr().err
    assert "exited with code 3 before it could be profiled" in err or "not a Python" in err


def test_version_is_the_installed_distribution_s(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"apiscope {version('apiscope')}"


def test_report_help_documents_its_formats(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    out = capsys.readouterr().out
    assert all(f"\n  {fmt} " in out for fmt in ("text", "json", "html"))


def test_an_internal_error_is_one_short_message_and_a_private_file(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # A bug cannot be had on purpose: the report command is made to raise as one would.
    from apiscope.cli.report import ReportCommand

    def broken(self: ReportCommand, args: object) -> int:
        raise KeyError("window 7")

    monkeypatch.setattr(ReportCommand, "run", broken)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert main(["report", str(tmp_path / "s.sqlite")]) == 1  # the contract's internal failure
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[0] == "apiscope: internal error: KeyError: 'window 7'"
    (saved,) = tmp_path.glob("apiscope-error-*.txt")
    assert str(saved) in err
    assert saved.stat().st_mode & 0o777 == 0o600
    text = saved.read_text()
    assert "Traceback" in text and "raise KeyError(\"window 7\")" in text
