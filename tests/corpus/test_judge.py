"""The corpus's judging rules on hand-built reports (no server needed)."""

from __future__ import annotations

from pathlib import Path

from tests.corpus.judge import CaseResult, impossible_cpu, judge
from tests.corpus.markers import markers_in_file

SOURCE = '''import time

@route("/a")
async def handler():  # planted: slow_endpoint wait
    time.sleep(1)  # planted: event_loop_blocked wait
'''


def flag(kind: str, path: Path, line: int, severity: str = "high",
         cause: str | None = None, gil_free: float | None = None) -> dict[str, object]:
    metric: dict[str, object] = {"cause": cause} if cause else {}
    if gil_free is not None:
        metric["gil_free_share"] = gil_free
    return {"kind": kind, "severity": severity, "route": "GET /a", "evidence": "e",
            "location": {"file": str(path), "line": line, "function": "handler"},
            "metric": metric}


def test_markers_and_handler_lines(tmp_path: Path) -> None:
    path = tmp_path / "app.py"
    path.write_text(SOURCE)
    slow, blocked = markers_in_file(path)
    assert (slow.kind, slow.cause, slow.lines) == ("slow_endpoint", "wait", {3, 4})
    assert (blocked.kind, blocked.cause, blocked.lines) == ("event_loop_blocked", "wait", {5})


def test_planted_run_needs_kind_line_and_cause(tmp_path: Path) -> None:
    path = tmp_path / "app.py"
    path.write_text(SOURCE)
    result = CaseResult("a", "planted", "uvicorn", expected=markers_in_file(path))
    report = {"flags": [flag("slow_endpoint", path, 3, "low"),
                        flag("event_loop_blocked", path, 5, cause="cpu")]}
    judged = judge(result, report, "", tmp_path, tmp_path)
    assert [m.kind for m in judged.found] == ["slow_endpoint"]
    assert [m.kind for m in judged.missed] == ["event_loop_blocked"]

    result = CaseResult("a", "planted", "uvicorn", expected=markers_in_file(path))
    judged = judge(result, {"flags": [flag("event_loop_blocked", path, 5)]}, "", tmp_path,
                   tmp_path)
    assert [m.kind for m in judged.found] == ["event_loop_blocked"]
    assert judged.described == []  # found, but the report does not say cpu or wait


def test_c_code_without_the_gil_is_cpu_told_apart_from_python(tmp_path: Path) -> None:
    path = tmp_path / "app.py"
    path.write_text("async def handler():\n    hash()  # planted: event_loop_blocked native\n")

    def judged(**metric: object) -> tuple[list[str], list[str]]:
        result = CaseResult("a", "planted", "uvicorn", expected=markers_in_file(path))
        out = judge(result, {"flags": [flag("event_loop_blocked", path, 2, **metric)]}, "",
                    tmp_path, tmp_path)  # type: ignore[arg-type]
        return [m.cause for m in out.found], [m.cause for m in out.described]

    assert judged(cause="cpu", gil_free=0.9) == (["native"], ["native"])
    assert judged(cause="cpu", gil_free=0.1) == (["native"], [])  # said to be Python
    assert judged(cause="cpu") == (["native"], [])
    assert judged(cause="wait") == ([], [])


def test_healthy_run_counts_alarms_and_flags_outside_the_app(tmp_path: Path) -> None:
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    library = tmp_path / "site-packages" / "lib.py"
    report = {"flags": [flag("cpu_hotspot", app_dir / "x.py", 3, "medium"),
                        flag("cpu_hotspot", library, 9, "low")],
              "samples": {"total": 100, "errors": 2}}
    judged = judge(CaseResult("a", "healthy", "gunicorn"), report,
                   "apiscope: stack sampling stopped", app_dir, tmp_path)
    assert len(judged.false_alarms) == 1 and len(judged.low_flags) == 1
    assert [f["location"]["file"] for f in judged.outside] == [str(library)]  # type: ignore[index]
    assert judged.sampling_stopped and judged.samples_errors == 2


def test_cpu_shares_above_the_whole_are_impossible() -> None:
    sound = {"endpoints": [{"route": "GET /a", "cpu_share": 0.6},
                           {"route": "GET /b", "cpu_share": 0.3}],
             "processes": [{"pid": 7, "server_cpu_share": 0.1}],
             "flags": [{"kind": "cpu_hotspot", "route": "GET /a", "metric": {"cpu_share": 0.5}}]}
    assert impossible_cpu(sound) == []
    broken = {"endpoints": [{"route": "GET /a", "cpu_share": 0.9},
                            {"route": "GET /b", "cpu_share": 0.3}],
              "processes": [{"pid": 7, "server_cpu_share": 1.4}],
              "flags": [{"kind": "cpu_hotspot", "route": None, "metric": {"cpu_share": 3.21}}]}
    assert impossible_cpu(broken) == [
        "the endpoints' CPU shares add up to 1.20", "process 7's server share is 1.40",
        "cpu_hotspot on no route claims 3.21 of the target's CPU time"]
