"""How attach, run and demo end: the summary on stderr, the failures stored for a later
`apiscope report`, and the exit code, with the collectors replaced by fakes."""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from apiscope.cli import attach as attach_cli
from apiscope.cli import collecting
from apiscope.cli.collecting import Collected, collect
from apiscope.cli.main import build_parser, main
from apiscope.collection import Collection
from apiscope.collectors.injections import DetachFailure
from tests.collect.fakes import (
    FakeClients,
    FakeInjections,
    FakeResources,
    SamplerBox,
    agent_error,
    target,
)


def attach_args(session: Path, *extra: str) -> argparse.Namespace:
    return build_parser().parse_args(["attach", "11", "--no-dashboard", "--duration", "0.01",
                                      "--session", str(session), *extra])


def fake_collection(monkeypatch: pytest.MonkeyPatch, clients: FakeClients, box: SamplerBox,
                    pids: list[int], build: Any = Collection) -> None:
    """`collect()` builds its Collection with fake collectors and takes no lock."""
    monkeypatch.setattr(collecting, "CollectorLock", lambda *a, **k: nullcontext())
    monkeypatch.setattr(collecting, "Collection", partial(
        build, sampler=box, resources=FakeResources(pids), clients=clients))


def run_collect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                capsys: pytest.CaptureFixture[str], injections: FakeInjections,
                clients: FakeClients, *extra: str) -> tuple[Collected, str, Path]:
    fake_collection(monkeypatch, clients, SamplerBox(), [11, 12])
    session = tmp_path / "s.sqlite"
    done = collect(target([11, 12]), attach_args(session, *extra), inject=True,
                   injections=injections)  # type: ignore[arg-type]
    return done, capsys.readouterr().err, session


def report_target(session: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["report", str(session), "--format", "json"]) == 0
    target: dict[str, Any] = json.loads(capsys.readouterr().out)["target"]
    return target


def test_a_failed_detach_is_warned_twice_and_stored_and_the_run_still_ends_well(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    injections = FakeInjections(fail={12: "gdb: ptrace refused"})
    done, err, session = run_collect(tmp_path, monkeypatch, capsys, injections, FakeClients())
    assert done.exit_code == 0 and [f.pid for f in done.detach_failures] == [12]
    warning = ("apiscope: warning: the agent in PID 12 could not be detached (gdb: ptrace"
               " refused); retry with: apiscope detach 12")
    assert warning in err
    assert err.rstrip().splitlines()[-1] == (
        "apiscope: warning: the agent is still in PID 12: retry with: apiscope detach 12")
    target = report_target(session, capsys)
    assert target["detach_failed"] == [{"pid": 12, "reason": "gdb: ptrace refused",
                                        "retry": "apiscope detach 12"}]
    assert target["failures"] == [{"pid": 12, "detach_failed": "gdb: ptrace refused",
                                   "retry": "apiscope detach 12"}]


def test_agent_errors_are_summed_up_at_the_end_and_stored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    clients = FakeClients()
    clients.scripts[11] = [agent_error("KeyError: 'route'")]
    done, err, session = run_collect(tmp_path, monkeypatch, capsys, FakeInjections(), clients)
    assert done.exit_code == 0
    assert ("apiscope: warning: the agent in PID 11 answered 1 pull with an error (the last:"
            " KeyError: 'route')") in err
    assert "no agent answers" not in err
    assert report_target(session, capsys)["failures"] == [
        {"pid": 11, "agent_errors": 1, "agent_error": "KeyError: 'route'"}]


def test_a_clean_run_exits_0_and_stores_no_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    done, err, session = run_collect(tmp_path, monkeypatch, capsys, FakeInjections(),
                                     FakeClients())
    assert done.exit_code == 0 and done.session == session
    assert "could not be detached" not in err and "still in PID" not in err
    assert "failures" not in report_target(session, capsys)


def test_quiet_keeps_the_warnings_and_drops_the_notes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    clients = FakeClients()
    clients.scripts[11] = [agent_error("boom")]
    fake_collection(monkeypatch, clients, SamplerBox(), [11], build=retrying)
    session = tmp_path / "s.sqlite"
    collect(target([11]), attach_args(session, "--quiet"), inject=True,
            injections=FakeInjections())  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert "answered 1 pull with an error (the last: boom)" in err
    assert "was retried" not in err


def retrying(*args: Any, **kwargs: Any) -> Collection:
    """A collection whose sampler had to retry a py-spy start."""
    collection = Collection(*args, **kwargs)
    collection.sampler_stats.launch_retries = 2
    return collection


@pytest.mark.parametrize(("failures", "code"), [([], 0), ([DetachFailure(12, "x")], 0)])
def test_attach_ends_with_0_even_when_an_agent_stays_behind(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, failures: list[DetachFailure],
        code: int) -> None:
    monkeypatch.setattr(attach_cli, "check_report_path", lambda args: None)
    monkeypatch.setattr(attach_cli, "describe_target", lambda pid: target([pid]))
    monkeypatch.setattr(attach_cli, "collect",
                        lambda *a, **k: Collected(tmp_path / "s.sqlite", failures))
    assert main(["attach", "11", "--no-dashboard"]) == code
