from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from apiscope.agent import bootstrap
from apiscope.inject import payload
from apiscope.inject.snippet import InjectArgs, build_snippet, c_string_literal


def test_c_string_literal_escapes_quotes_backslashes_and_non_ascii() -> None:
    literal, size = c_string_literal('a"b\\c\nd é')
    assert literal == '"a\\"b\\\\c\\012d \\303\\251"'
    assert size == len('a"b\\c\nd é'.encode()) + 1


def test_snippet_runs_the_payload_and_reports_no_app(tmp_path: Path) -> None:
    """The snippet, run by an interpreter without site-packages (so without apiscope), loads
    the agent from apiscope's files, finds no ASGI app and says so, starting nothing."""
    result = tmp_path / "inject-status.json"
    snippet = build_snippet(InjectArgs(action="attach", directory=str(tmp_path),
                                       result=str(result), token="t0k"))
    check = ("import sys, threading; print('apiscope' in sys.modules,"
             " 'apiscope_agent' in sys.modules, threading.active_count())")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", snippet + check], capture_output=True,
                          text=True, timeout=60, check=True)
    status = json.loads(result.read_text())
    assert status["token"] == "t0k" and status["ok"] is True
    assert status["apps"] == [] and "no ASGI app" in status["note"]
    assert "socket" not in status
    assert done.stdout.split() == ["False", "True", "1"]  # the agent loaded; no thread
    assert result.stat().st_mode & 0o777 == 0o600


def test_snippet_waits_while_the_process_is_importing(tmp_path: Path) -> None:
    """Run in the middle of a module's import (a worker importing its app when the pending
    call comes), the payload loads nothing, which would import half-run modules, and answers
    "no app yet" naming the import, so that the injector tries again later."""
    result = tmp_path / "inject-status.json"
    snippet = build_snippet(InjectArgs(action="attach", directory=str(tmp_path),
                                       result=str(result), token="t2"))
    check = "import sys; print('apiscope_agent' in sys.modules)\n"
    (tmp_path / "halfway.py").write_text(snippet + "\n" + check)
    done = subprocess.run([sys.executable, "-I", "-S", "-c",
                           f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import halfway"],
                          capture_output=True, text=True, timeout=60, check=True)
    status = json.loads(result.read_text())
    assert status["ok"] is True and status["apps"] == [], status
    assert "halfway" in status["note"]
    assert done.stdout.strip() == "False"


def test_snippet_detach_without_agent_loads_nothing(tmp_path: Path) -> None:
    result = tmp_path / "inject-status.json"
    snippet = build_snippet(InjectArgs(action="detach", directory=str(tmp_path),
                                       result=str(result), token="t1"))
    check = "import sys; print('apiscope_agent' in sys.modules)"
    done = subprocess.run([sys.executable, "-I", "-S", "-c", snippet + check],
                          capture_output=True, text=True, timeout=60, check=True)
    status = json.loads(result.read_text())
    assert status["ok"] is True and status["restored"] == 0
    assert done.stdout.strip() == "False"


def test_snippet_swallows_every_error(tmp_path: Path) -> None:
    """A missing payload must not raise in the target: the interpreter carries on."""
    snippet = build_snippet(InjectArgs(action="attach", directory=str(tmp_path),
                                       result=str(tmp_path / "s.json"), token="x",
                                       payload=str(tmp_path / "missing.py")))
    done = subprocess.run([sys.executable, "-I", "-c", snippet + "print('alive')"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "alive"
    assert done.stderr == ""


def test_payload_and_bootstrap_agree_on_their_contract() -> None:
    assert payload.API_VERSION == bootstrap.API_VERSION
