"""The accuracy corpus: each app, healthy and planted, under uvicorn and gunicorn (healthy also
under hypercorn; the Django app also under daphne), judged by the report of a real `apiscope
attach` (see `tests.corpus.harness`; `make accuracy` writes the scorecard from the uvicorn and
gunicorn runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.corpus.catalog import CORPUS, MODES, ROOT, SERVERS, CorpusApp
from tests.corpus.harness import UVLOOP, Services, run_case, sampling_timeline
from tests.corpus.judge import CaseResult, describe_flag
from tests.support import require_program, require_ptrace

pytestmark = [pytest.mark.corpus, pytest.mark.integration, pytest.mark.timeout(150)]


def _services(app: CorpusApp, request: pytest.FixtureRequest) -> Services:
    # Ask for a server only when the app needs it: the others run without PostgreSQL.
    postgres = request.getfixturevalue("postgres") if app.needs_postgres else None
    redis = request.getfixturevalue("redis_service") if app.needs_redis else None
    return Services(postgres, redis)


def _listing(flags: list[dict[str, object]]) -> str:
    return "\n".join("  " + describe_flag(flag, ROOT) for flag in flags)


def check_sampling(result: CaseResult, kept: Path) -> None:
    assert result.failure is None, result.failure
    assert not result.sampling_stopped, "apiscope said stack sampling stopped"
    assert result.samples_total > 0
    # The reads that failed while the injection's debugger held a worker are reported apart;
    # what is left comes with py-spy's hand-overs (about one a window), not with each sample.
    attempts = result.samples_total + result.samples_errors
    assert result.samples_errors <= max(10, 0.05 * attempts), (
        f"{result.samples_errors} sampling errors over {result.samples_total} samples"
        f" ({sampling_timeline(kept)})")


# Healthy runs gate every change (`make test`): a false alarm is the worst defect. Planted runs
# make the scorecard (`make accuracy`, docs/accuracy.md), where each miss is listed: they are
# deselected from `make test` by their `accuracy` mark, not weakened.
# Healthy apps are also served by hypercorn, and by uvicorn on uvloop and httptools started by
# the app's own launcher (`tests.corpus.launch`; uvloop and httptools are what
# `uvicorn[standard]` gives most deployments): a false alarm there is as bad as anywhere.
CASES = [pytest.param(mode, server, marks=[pytest.mark.accuracy] if mode == "planted" else [],
                      id=f"{mode}-{server}")
         for mode in MODES for server in SERVERS] + [
    pytest.param("healthy", "hypercorn", id="healthy-hypercorn"),
    pytest.param("healthy", UVLOOP, id="healthy-uvloop"),
    pytest.param("planted", UVLOOP, marks=[pytest.mark.accuracy], id="planted-uvloop")]


@pytest.mark.parametrize(("mode", "server"), CASES)
@pytest.mark.parametrize("app", CORPUS, ids=[app.name for app in CORPUS])
def test_corpus_case(app: CorpusApp, mode: str, server: str, request: pytest.FixtureRequest,
                     tmp_path: Path) -> None:
    judge_case(app, mode, server, request, tmp_path)


# Django Channels projects are served by daphne (Twisted running on asyncio's loop).
@pytest.mark.parametrize("mode", [
    "healthy", pytest.param("planted", marks=[pytest.mark.accuracy])])
def test_django_under_daphne(mode: str, request: pytest.FixtureRequest,
                             tmp_path: Path) -> None:
    (app,) = [app for app in CORPUS if app.name == "django_app"]
    judge_case(app, mode, "daphne", request, tmp_path)


def judge_case(app: CorpusApp, mode: str, server: str, request: pytest.FixtureRequest,
               tmp_path: Path) -> None:
    require_ptrace()
    require_program("gdb")
    require_program("py-spy")
    result = run_case(app, mode, server, _services(app, request), keep=tmp_path)
    check_sampling(result, tmp_path)
    assert not result.impossible_cpu, "CPU figures above the whole: " + "; ".join(
        result.impossible_cpu)
    if mode == "healthy":
        assert not result.false_alarms, "false alarms (medium/high flags) on a healthy app:\n" + (
            _listing(result.false_alarms))
        assert not result.outside, "flags located outside the app's files:\n" + _listing(
            result.outside)
        return
    missing = [m.label(ROOT) for m in result.missed]
    undescribed = [m.label(ROOT) for m in result.found if m not in result.described]
    assert not missing and not undescribed, (
        f"not found: {missing}; found without the right cause: {undescribed}; the report's"
        f" flags:\n{_listing(result.flags)}")
