"""The py-spy raw-format parser, on real py-spy output saved from real servers."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from apiscope.collectors.pyspy import (
    RecordOptions,
    dump_argv,
    failed_read_time,
    failure_error,
    find_pyspy,
    parse_frame,
    parse_line,
    parse_raw,
    parse_summary,
    record_argv,
)
from apiscope.errors import TargetError, ToolMissingError
from apiscope.model import Frame, StackSample

FIXTURES = Path(__file__).parent / "fixtures"
APP = "/srv/api/app.py"


def load(name: str, default_pid: int = 0) -> tuple[StackSample, ...]:
    profile = parse_raw((FIXTURES / name).read_text(), default_pid=default_pid)
    assert profile.bad_lines == 0
    return profile.samples


def per_thread(samples: tuple[StackSample, ...]) -> dict[tuple[int, int], int]:
    counts: Counter[tuple[int, int]] = Counter()
    for s in samples:
        counts[(s.pid, s.tid)] += s.count
    return dict(counts)


def test_uvicorn_async_fixture_has_one_thread_and_every_sample() -> None:
    samples = load("uvicorn_async.txt", default_pid=9385)
    assert len(samples) == 43
    # py-spy's closing line said "Samples: 199": 2 s at 100 Hz, one thread.
    assert per_thread(samples) == {(9385, 9385): 199}
    assert {s.thread_name for s in samples} == {"MainThread"}


def test_frames_are_root_first_with_file_and_line() -> None:
    samples = load("uvicorn_async.txt")
    listcomp = [s for s in samples if s.frames[-1].function == "<lambda>.<locals>.<listcomp>"]
    assert sum(s.count for s in listcomp) == 66
    frames = listcomp[0].frames
    assert frames[0] == Frame("_run_module_as_main", "<frozen runpy>", 198)
    assert frames[2] == Frame(
        "<module>", "/srv/api/.venv/lib/python3.11/site-packages/uvicorn/__main__.py", 4)
    assert frames[-3:] == (
        Frame("via_lambda", APP, 29),
        Frame("<lambda>", APP, 24),
        Frame("<lambda>.<locals>.<listcomp>", APP, 24),
    )


def test_sleep_inside_async_handler_shows_the_handler_line_as_leaf() -> None:
    samples = load("uvicorn_async_sleep.txt")
    leaves: Counter[Frame] = Counter()
    for s in samples:
        leaves[s.frames[-1]] += s.count
    assert leaves[Frame("render", APP, 9)] == 188
    render = next(s for s in samples if s.frames[-1] == Frame("render", APP, 9))
    assert render.frames[-2] == Frame("block", APP, 34)


def test_sync_handler_runs_on_anyio_worker_threads() -> None:
    samples = load("uvicorn_sync_threadpool.txt", default_pid=9562)
    assert per_thread(samples) == {(9562, 9562): 199, (9562, 9575): 199, (9562, 9576): 199}
    names = {s.tid: s.thread_name for s in samples}
    assert names == {9562: "MainThread", 9575: "AnyIO worker thread",
                     9576: "AnyIO worker thread"}
    handler: Counter[tuple[int, int]] = Counter()
    for s in samples:
        if s.frames[-1].function == "sync_handler":
            handler[(s.tid, s.frames[-1].line)] += s.count
    assert handler == {(9575, 41): 17, (9575, 42): 24, (9575, 43): 110,
                       (9576, 41): 15, (9576, 42): 12, (9576, 43): 133}


def test_gunicorn_subprocesses_attribute_samples_to_each_worker_pid() -> None:
    samples = load("gunicorn_subprocesses.txt")
    assert sum(s.count for s in samples) == 1479
    assert per_thread(samples) == {
        (9593, 9593): 199, (9593, 9601): 199,  # the master: arbiter and its loop thread
        (9599, 9599): 199, (9599, 9608): 199, (9599, 9633): 90,  # worker 1
        (9600, 9600): 199, (9600, 9607): 199, (9600, 9616): 195,  # worker 2
    }
    # Process frames are not frames: the stack starts at the interpreter's first frame.
    assert all(not s.frames[0].function.startswith("process ") for s in samples)
    names = {(s.pid, s.tid): s.thread_name for s in samples}
    assert names[(9593, 9601)] == "Thread-1 (_run_loop)"


def test_thread_name_with_parentheses_and_hex_pthread_id() -> None:
    sample = parse_line("thread (0x7F3A2C1B2740): Thread-1 (_run_loop);run (/a.py:3) 5")
    assert sample is not None
    assert (sample.tid, sample.thread_name) == (0x7F3A2C1B2740, "Thread-1 (_run_loop)")
    assert sample.frames == (Frame("run", "/a.py", 3),)


def test_thread_without_name_and_without_frames() -> None:
    sample = parse_line("thread (42) 7", default_pid=9)
    assert sample == StackSample(pid=9, tid=42, thread_name="", frames=(), count=7)


def test_process_command_line_with_semicolons_and_quotes() -> None:
    line = ('process 10:"python -c "import app; app.main()"";process 11:"worker; x";'
            "thread (11): MainThread;main (/srv/a b (copy)/app.py:5) 3")
    sample = parse_line(line)
    assert sample is not None
    assert (sample.pid, sample.tid, sample.count) == (11, 11, 3)
    assert sample.frames == (Frame("main", "/srv/a b (copy)/app.py", 5),)


@pytest.mark.parametrize(("text", "frame"), [
    ("<module> (/srv/app.py:1)", Frame("<module>", "/srv/app.py", 1)),
    ("<lambda> (/srv/app.py:24)", Frame("<lambda>", "/srv/app.py", 24)),
    ("f.<locals>.<genexpr> (/srv/app.py:7)", Frame("f.<locals>.<genexpr>", "/srv/app.py", 7)),
    ("weird name (x) (/srv/app.py:3)", Frame("weird name (x)", "/srv/app.py", 3)),
    ("g (/srv/my app (2)/m.py:9)", Frame("g", "/srv/my app (2)/m.py", 9)),
    ("_run_code (<frozen runpy>:88)", Frame("_run_code", "<frozen runpy>", 88)),
    ("h (asyncio/base_events.py:607)", Frame("h", "asyncio/base_events.py", 607)),
    ("native_call (/usr/lib/libfoo.so)", Frame("native_call", "/usr/lib/libfoo.so", 0)),
    ("0x7f3a2c1b2740", Frame("0x7f3a2c1b2740", "", 0)),
    ("unknown (x)", Frame("unknown (x)", "", 0)),
    ("", Frame("", "", 0)),
])
def test_odd_frames_parse(text: str, frame: Frame) -> None:
    assert parse_frame(text) == frame


def test_malformed_lines_are_counted_not_fatal() -> None:
    text = "\n".join([
        "thread (1): MainThread;a (/a.py:1) 2",
        "garbage without a count",
        "thread (1): MainThread;b (/a.py:2) x",
        "",
        "thread (1): MainThread;??? (???) 1",
        "thread (1): MainThread;c (/a.py:3) 4",
    ])
    profile = parse_raw(text, default_pid=5)
    assert profile.bad_lines == 2
    assert profile.total == 7
    assert [s.frames[-1].function for s in profile.samples] == ["a", "??? (???)", "c"]


def test_summary_line() -> None:
    out = ("py-spy> Sampling process 100 times a second. Press Control-C to exit.\n\n"
           "py-spy> Stopped sampling because Control-C pressed\n"
           "py-spy> Wrote raw flamegraph data to '/tmp/w.txt'. Samples: 321 Errors: 4\n")
    summary = parse_summary(out)
    assert summary is not None and (summary.samples, summary.errors) == (321, 4)
    assert parse_summary("nothing") is None


def test_a_failed_read_logged_by_py_spy_gives_its_time() -> None:
    line = ("[2026-12-03T16:31:34.388603801Z WARN  py_spy] Failed to get stack trace from 6413:"
            " Failed to suspend process\n")
    assert failed_read_time(line) == pytest.approx(1796315494.388603801, abs=1e-6)
    assert failed_read_time(line.replace(".388603801", "")) == 1796315494.0
    assert failed_read_time("[2026-12-03T16:31:34Z WARN  py_spy] something else\n") is None
    assert failed_read_time("py-spy> Sampling process 100 times a second.\n") is None


def test_record_and_dump_command_lines() -> None:
    argv = record_argv("/bin/py-spy", 42, "/tmp/o.txt",
                       RecordOptions(rate_hz=250, subprocesses=True, nonblocking=True))
    assert argv == ["/bin/py-spy", "record", "--pid", "42", "--format", "raw", "--output",
                    "/tmp/o.txt", "--rate", "250", "--threads", "--full-filenames", "--idle",
                    "--subprocesses", "--nonblocking"]
    assert record_argv("p", 1, "o", RecordOptions(), duration=2)[-2:] == ["--duration", "2"]
    assert dump_argv("p", 7, nonblocking=True) == [
        "p", "dump", "--pid", "7", "--json", "--full-filenames", "--nonblocking"]


def test_find_pyspy_prefers_the_interpreters_directory(tmp_path: Path) -> None:
    binary = tmp_path / "py-spy"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    found = find_pyspy(str(tmp_path / "python"), which=lambda name: "/usr/bin/py-spy")
    assert found == str(binary)


def test_find_pyspy_falls_back_to_path_then_fails_with_the_fix(tmp_path: Path) -> None:
    python = str(tmp_path / "python")
    assert find_pyspy(python, which=lambda name: "/opt/bin/py-spy") == "/opt/bin/py-spy"
    with pytest.raises(ToolMissingError) as info:
        find_pyspy(python, which=lambda name: None)
    assert "pip install py-spy" in info.value.message
    assert info.value.exit_code == 2


def test_find_pyspy_in_this_environment() -> None:
    assert os.access(find_pyspy(), os.X_OK)


def test_permission_error_names_every_fix() -> None:
    stderr = ("Permission Denied: Try running again with elevated permissions by going "
              "'sudo env \"PATH=$PATH\" !!'\n")
    error = failure_error(123, 1, stderr)
    assert isinstance(error, TargetError) and error.exit_code == 2
    for fix in ("kernel.yama.ptrace_scope", "CAP_SYS_PTRACE", "--cap-add SYS_PTRACE", "123"):
        assert fix in error.message


def test_other_failures_quote_py_spys_error() -> None:
    stderr = "Error: Failed to find python version from target process\n"
    error = failure_error(77, 1, stderr)
    assert "Failed to find python version" in error.message
    assert "77" in error.message
