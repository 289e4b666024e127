"""`python -m tests.corpus.scorecard [--output docs/accuracy.md] [--only APP]`: run the whole
corpus matrix (apps x healthy/planted x uvicorn/gunicorn) and write the scorecard."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

from tests.corpus.catalog import CORPUS, MODES, ROOT, SERVERS, CorpusApp
from tests.corpus.harness import ATTACH_SECONDS, Services, run_case
from tests.corpus.judge import CaseResult, describe_flag
from tests.services import postgres_server, redis_server

COMMAND = "make accuracy"


def run_matrix(apps: list[CorpusApp]) -> list[CaseResult]:
    results = []
    with ExitStack() as stack:
        postgres = (stack.enter_context(postgres_server())
                    if any(a.needs_postgres for a in apps) else None)
        redis = stack.enter_context(redis_server()) if any(a.needs_redis for a in apps) else None
        services = Services(postgres, redis)
        for app in apps:
            for server in SERVERS:
                for mode in MODES:
                    print(f"corpus: {app.name} {mode} under {server}", file=sys.stderr)
                    results.append(run_case(app, mode, server, services))
    return results


def _pair(results: list[CaseResult], app: str, server: str) -> tuple[CaseResult, CaseResult]:
    by_mode = {r.mode: r for r in results if r.app == app and r.server == server}
    return by_mode["planted"], by_mode["healthy"]


def table(results: list[CaseResult]) -> list[str]:
    lines = ["| app | server | planted found / planted | description right / found |"
             " healthy routes | false alarms (medium+high) | low flags | flags outside the app"
             " | samples errors (healthy, planted) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    seen = sorted({(r.app, r.server) for r in results}, key=lambda k: (k[0], k[1] != "uvicorn"))
    for app, server in seen:
        planted, healthy = _pair(results, app, server)
        outside = len(planted.outside) + len(healthy.outside)
        cells = [app, server,
                 _or_failed(planted, f"{len(planted.found)} / {len(planted.expected)}"),
                 _or_failed(planted, f"{len(planted.described)} / {len(planted.found)}"),
                 _or_failed(healthy, str(healthy.endpoints)),
                 _or_failed(healthy, str(len(healthy.false_alarms))),
                 _or_failed(healthy, str(len(healthy.low_flags))), str(outside),
                 f"{_errors(healthy)}, {_errors(planted)}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _or_failed(result: CaseResult, text: str) -> str:
    return "run failed" if result.failure else text


def _errors(result: CaseResult) -> str:
    stopped = ", sampling stopped" if result.sampling_stopped else ""
    return f"{result.samples_errors}/{result.samples_total}{stopped}"


def findings(results: list[CaseResult]) -> list[str]:
    """Each miss, each wrongly described find, each false alarm, outside flag and impossible
    CPU figure, with the report's evidence."""
    lines = []
    for r in results:
        where = f"{r.app} {r.mode} under {r.server}"
        if r.failure:
            lines.append(f"- {where}: the run failed: {r.failure}")
            continue
        for marker in r.missed:
            flags = [f for f in r.flags if f.get("kind") == marker.kind]
            seen = "; ".join(describe_flag(f, ROOT) for f in flags) or "no flag of that kind"
            lines.append(f"- {where}: missed {marker.label(ROOT)}. Flags of that kind: {seen}")
        for marker in r.found:
            if marker not in r.described:
                lines.append(f"- {where}: found {marker.label(ROOT)} without the right cause")
        for flag in r.false_alarms:
            lines.append(f"- {where}: false alarm: {describe_flag(flag, ROOT)}")
        for flag in r.outside:
            lines.append(f"- {where}: outside the app: {describe_flag(flag, ROOT)}")
        for problem in r.impossible_cpu:
            lines.append(f"- {where}: impossible CPU figure: {problem}")
    return lines or ["- none"]


def healthy_low_flags(results: list[CaseResult]) -> list[str]:
    """What apiscope says of healthy code below the alarm: each low flag, with its evidence."""
    lines = [f"- {r.app} under {r.server}: {describe_flag(flag, ROOT)}"
             for r in results if r.mode == "healthy" and not r.failure
             for flag in r.low_flags]
    return lines or ["- none"]


def cpu_shares(results: list[CaseResult]) -> list[str]:
    lines = []
    for r in results:
        top = sorted(r.cpu_shares.items(), key=lambda kv: -kv[1])[:4]
        shown = ", ".join(f"`{route}` {share:.2f}" for route, share in top) or "no endpoints"
        lines.append(f"- {r.app} {r.mode} under {r.server}: {shown}")
    return lines


def measured_build() -> str:
    """Which apiscope was measured: `$APISCOPE_REVISION`, else the repository's revision."""
    if os.environ.get("APISCOPE_REVISION"):
        return os.environ["APISCOPE_REVISION"]
    done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def render(results: list[CaseResult]) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = (f"{os.cpu_count()} cores, Python {platform.python_version()},"
               f" {platform.system()} {platform.release()}")
    return "\n".join([
        "# Accuracy scorecard", "",
        "Realistic apps (`tests/corpus/apps/`), each served for real in a healthy mode and in"
        " a mode with planted bottlenecks (each planted line ends with `# planted: KIND CAUSE`),"
        " under uvicorn (one process) and gunicorn (two Uvicorn workers), with a bounded load from"
        f" a separate process, judged by the report of `apiscope attach PID --duration"
        f" {ATTACH_SECONDS} --no-dashboard --report out.json`. A planted bottleneck is found when"
        " a flag of its kind points at its exact file and line; its description is right when"
        " `metric.cause` (for `event_loop_blocked` and `cpu_hotspot`) names the planted cause"
        " (`native`, C code that released the GIL, is `cpu` with `metric.gil_free_share` of a"
        " half or more; Python's CPU work, less). On"
        " a healthy app every medium or high flag is a false alarm, and a flag located outside"
        " the app's own files is a defect at any severity.", "",
        f"Command: `{COMMAND}`. apiscope: {measured_build()}. Machine: {machine}. Date: {now}.",
        "",
        *table(results), "",
        "## Misses and false alarms", "", *findings(results), "",
        "## Low flags on the healthy apps", "", *healthy_low_flags(results), "",
        "## Endpoint CPU shares (largest four per run)", "", *cpu_shares(results), ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "accuracy.md")
    parser.add_argument("--only", action="append", help="run only this app (repeatable)")
    args = parser.parse_args(argv)
    apps = [a for a in CORPUS if not args.only or a.name in args.only]
    results = run_matrix(apps)
    args.output.write_text(render(results))
    print(f"scorecard written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
