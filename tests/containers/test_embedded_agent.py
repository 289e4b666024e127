"""The snippet for a foreign target carries the agent's code: run it in interpreters that have
neither apiscope nor its files at hand, on every supported version."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from apiscope.inject.rendezvous import rendezvous
from apiscope.inject.snippet import InjectArgs, build_snippet
from tests.pythons.targets import VERSIONS, NoInterpreter, interpreter
from tests.support import IN_CI


@pytest.mark.parametrize("version", VERSIONS)
def test_embedded_agent_loads_from_memory(version: str, tmp_path: Path) -> None:
    try:
        python = interpreter(version)
    except NoInterpreter as exc:
        if IN_CI:
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    directory = tmp_path / "rendezvous"  # missing: the payload makes it, 0700
    result = directory / "inject-1.json"
    snippet = build_snippet(InjectArgs(action="attach", directory=str(directory),
                                       result=str(result), token="emb",
                                       agent_dir="/nonexistent",
                                       embed=True, offer_pyinstrument=False))
    check = ("import sys, apiscope_agent.middleware as m\n"
             "print(m.__file__, sys.path == before, 'apiscope' in sys.modules)\n")
    # From a file, as the injection hands it over: the snippet is above the 128 kB one
    # command-line argument may hold. The file is the snippet only, the agent is in it.
    script = tmp_path / "snippet.py"
    script.write_text("import sys; before = list(sys.path)\n" + snippet + check)
    done = subprocess.run([python, "-I", "-S", str(script)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    status = json.loads(result.read_text())
    assert status["ok"] is True and status["token"] == "emb", status
    assert status["python"].startswith(version + ".")
    assert directory.stat().st_mode & 0o777 == 0o700
    # The analysis reads these file names as apiscope's own code, never as the app's.
    assert done.stdout.split() == ["<apiscope-injected>/apiscope/agent/middleware.py", "True",
                                   "False"]


def test_our_own_process_is_not_foreign() -> None:
    place = rendezvous(os.getpid(), None)
    assert not place.foreign and place.inside == place.outside and place.root == ""
    assert place.ns_pid == os.getpid() and place.uid == os.getuid()
