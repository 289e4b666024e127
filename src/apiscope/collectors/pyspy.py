"""Running py-spy and reading what it prints.

py-spy's raw format is Brendan Gregg's folded format, one line per distinct stack with its
count. With the options apiscope always passes (`--threads --idle --full-filenames`, plus
`--subprocesses` for a gunicorn master) a line reads, root first:

    process 41:"gunicorn app:app -w 2";process 43:"gunicorn ...";thread (43): MainThread;\
<module> (/srv/api/main.py:3);handler (/srv/api/main.py:18) 12

- one `process PID:"CMDLINE"` frame per ancestor when `--subprocesses` is given, outermost
  first (the master's own threads carry only the master's frame); the last one is the pid
  that was sampled;
- `thread (TID): NAME`, where TID is the OS thread id in decimal (as in /proc/PID/task) and,
  when py-spy cannot map the thread to the OS, the pthread id in hex (`0x7F3A...`); the name
  is optional;
- Python frames as `function (file:line)`, `function (file)` when the line is unknown (0),
  or a bare `function` when py-spy has no file either.

Everything here is pure except `find_pyspy`, which looks at the file system.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from apiscope.errors import TargetError, ToolMissingError
from apiscope.frames import STDLIB_PATH
from apiscope.model import Frame, StackSample
from apiscope.permissions import ptrace_denied

# py-spy prints this once it has attached and started sampling (stdout, prefixed "py-spy> "
# when stdout is not a terminal). `record` without `-d` samples until SIGINT.
READY_MARKER = "Sampling process"
_SUMMARY = re.compile(r"Samples: (\d+) Errors: (\d+)")
# With RUST_LOG=py_spy=warn (FAILED_READS_ENV), py-spy logs each failed read on stderr, with
# the wall-clock time in UTC: "[2026-12-03T16:31:34.388603801Z WARN  py_spy] Failed to get
# stack trace from 6413: Failed to suspend process".
FAILED_READS_ENV = {"RUST_LOG": "py_spy=warn"}
_FAILED_READ = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z WARN +py_spy\]"
                          r" Failed to get stack trace from \d+:")
_PROCESS = re.compile(r'process (\d+):"')
# A process frame's command line may itself hold `;` or `"`: it ends at the `";` that is
# followed by the next process frame or the thread frame.
_PROCESS_END = re.compile(r'";(?=process \d+:"|thread \()')
_THREAD = re.compile(r"thread \((0[xX][0-9a-fA-F]+|\d+)\)(?:: (.*))?$")
_LOCATED = re.compile(r"\((.*):(\d+)\)$")


@dataclass(frozen=True, slots=True)
class RecordOptions:
    """How to run `py-spy record` for one window."""

    rate_hz: int = 100
    subprocesses: bool = False
    nonblocking: bool = False
    idle: bool = True  # without it a sync sleep on the event loop is invisible


@dataclass(frozen=True, slots=True)
class RawProfile:
    """The parsed contents of one raw output file."""

    samples: tuple[StackSample, ...]
    bad_lines: int = 0  # lines that were not `stack COUNT`: skipped, counted

    @property
    def total(self) -> int:
        return sum(s.count for s in self.samples)


@dataclass(frozen=True, slots=True)
class RecordSummary:
    """py-spy's closing line: `Samples: N Errors: M` (an error is one failed read)."""

    samples: int
    errors: int


def find_pyspy(executable: str = sys.executable,
               which: Callable[[str], str | None] = shutil.which) -> str:
    """The py-spy binary: beside the running interpreter first (the virtualenv), then PATH."""
    for directory in _candidate_dirs(executable):
        candidate = directory / "py-spy"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = which("py-spy")
    if found:
        return found
    raise ToolMissingError(
        "py-spy is not installed: apiscope samples stacks with it. "
        "Install it in apiscope's environment with `pip install py-spy` (or `pipx install "
        "py-spy` for a PATH-wide copy)."
    )


def _candidate_dirs(executable: str) -> list[Path]:
    # sys.executable may be a symlink out of the virtualenv: look beside the link first.
    link_dir = Path(executable).parent
    dirs = [link_dir]
    real_dir = Path(os.path.realpath(executable)).parent
    if real_dir != link_dir:
        dirs.append(real_dir)
    return dirs


def record_argv(binary: str, pid: int, output: str, options: RecordOptions,
                duration: int | None = None) -> list[str]:
    """`py-spy record` in the raw format (samples counted per thread and stack: all the
    windows need, and a fifth of the bytes and a seventeenth of the parsing of its
    time-stamped chrometrace format); without `duration` it runs until SIGINT."""
    argv = [binary, "record", "--pid", str(pid), "--format", "raw", "--output", output,
            "--rate", str(options.rate_hz), "--threads", "--full-filenames"]
    if options.idle:
        argv.append("--idle")
    if options.subprocesses:
        argv.append("--subprocesses")
    if options.nonblocking:
        argv.append("--nonblocking")
    if duration is not None:
        argv += ["--duration", str(duration)]
    return argv


def dump_argv(binary: str, pid: int, *, subprocesses: bool = False,
              nonblocking: bool = False) -> list[str]:
    """`py-spy dump --json`: one snapshot of every thread, with `active` and `owns_gil`."""
    argv = [binary, "dump", "--pid", str(pid), "--json", "--full-filenames"]
    if subprocesses:
        argv.append("--subprocesses")
    if nonblocking:
        argv.append("--nonblocking")
    return argv


def parse_summary(stdout: str) -> RecordSummary | None:
    matches = _SUMMARY.findall(stdout)
    if not matches:
        return None
    samples, errors = matches[-1]  # the closing line is the last one
    return RecordSummary(int(samples), int(errors))


def failed_read_time(line: str) -> float | None:
    """When a failed read that py-spy logged happened (epoch seconds), None for other lines."""
    match = _FAILED_READ.match(line)
    if match is None:
        return None
    stamp = match.group(1)
    whole, _, fraction = stamp.partition(".")
    try:  # the fraction has nanoseconds: read apart, as datetime keeps microseconds only
        moment = datetime.datetime.fromisoformat(whole).replace(tzinfo=datetime.UTC)
    except ValueError:
        return None
    return moment.timestamp() + (float(f"0.{fraction}") if fraction else 0.0)


def parse_raw(text: str, default_pid: int = 0) -> RawProfile:
    """Parse a whole raw file. Samples without a process frame get `default_pid`."""
    samples: list[StackSample] = []
    bad = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        sample = parse_line(line, default_pid)
        if sample is None:
            bad += 1
        else:
            samples.append(sample)
    return RawProfile(tuple(samples), bad)


def parse_line(line: str, default_pid: int = 0) -> StackSample | None:
    """One `stack COUNT` line, or None when it is not one."""
    stack, sep, count_text = line.rstrip("\r\n").rpartition(" ")
    if not sep or not count_text.isdigit():
        return None
    pid, rest = _strip_processes(stack, default_pid)
    tid, thread_name, rest = _strip_thread(rest)
    frames = tuple(frame for frame in (parse_frame(text) for text in rest.split(";") if text)
                   if not is_timing_frame(frame)) if rest else ()
    return StackSample(pid=pid, tid=tid, thread_name=thread_name, frames=frames,
                       count=int(count_text))


def _strip_processes(stack: str, pid: int) -> tuple[int, str]:
    rest = stack
    while True:
        match = _PROCESS.match(rest)
        if match is None:
            return pid, rest
        end = _PROCESS_END.search(rest, match.end())
        if end is None:
            # No thread frame follows (py-spy run without --threads): the first `";` ends it.
            cut = rest.find('";', match.end())
            if cut < 0:
                return int(match.group(1)), ""
            return int(match.group(1)), rest[cut + 2:]
        pid = int(match.group(1))
        rest = rest[end.end():]


def _strip_thread(stack: str) -> tuple[int, str, str]:
    head, _, rest = stack.partition(";")
    if not head.startswith("thread ("):
        return 0, "", stack
    match = _THREAD.match(head)
    if match is None:
        return 0, "", stack
    tid_text, name = match.group(1), match.group(2) or ""
    # Decimal: the OS thread id. Hex: a pthread id (py-spy could not map it to the OS).
    tid = int(tid_text, 16) if tid_text[:2].lower() == "0x" else int(tid_text)
    return tid, name, rest


def is_timing_frame(frame: Frame) -> bool:
    """The agent's `TimedCall` (agent/offload.py), timing a call handed to a pool thread: left
    out of the stacks, so that the call's work reads as it would without apiscope."""
    return frame.function.endswith("__call__") and frame.file.replace("\\", "/").endswith(
        _TIMING_FILE)


_TIMING_FILE = "apiscope/agent/offload.py"


@functools.lru_cache(maxsize=1 << 16)
def parse_frame(text: str) -> Frame:
    """`function (file:line)`, `function (file)` or `function`.

    Function and file names may both hold spaces and parentheses, so the split is chosen
    among every ` (` in the text: the first one whose remainder is a path (absolute or
    `<frozen ...>`), else the last one. Never raises: what cannot be split is a bare name.
    The same frames recur in every window, so results are cached (Frame is immutable).
    """
    if not text.endswith(")"):
        return Frame(text, "", 0)
    cuts = _cuts(text)
    located = [(i, m) for i in cuts if (m := _LOCATED.match(text, i + 1)) is not None]
    if located:
        i, m = next(((i, m) for i, m in located if _is_path(m.group(1))), located[-1])
        return Frame(text[:i], m.group(1), int(m.group(2)))
    for i in cuts:
        inner = text[i + 2:-1]
        if _is_path(inner):
            return Frame(text[:i], inner, 0)
    return Frame(text, "", 0)


def _cuts(text: str) -> list[int]:
    """Every index of " (" in text."""
    found = []
    i = text.find(" (")
    while i >= 0:
        found.append(i)
        i = text.find(" (", i + 1)
    return found


def _is_path(candidate: str) -> bool:
    return candidate.startswith(("/", "<", "\\\\")) or bool(re.match(r"[A-Za-z]:\\", candidate))


def failure_error(pid: int, returncode: int | None, stderr: str) -> TargetError:
    """The user-facing error for a py-spy run that failed; `pid` is the target."""
    lowered = stderr.lower()
    if "permission denied" in lowered or "operation not permitted" in lowered:
        return TargetError(permission_message(pid))
    detail = _last_error_line(stderr) or f"py-spy exited with code {returncode}"
    return TargetError(
        f"py-spy could not sample process {pid}: {detail}. Check that the PID is a running "
        "Python process (a wrapper such as `uv run` or a pyenv shim is not: use its Python "
        "child's PID)."
    )


def permission_message(pid: int) -> str:
    return ptrace_denied(f"permission denied tracing process {pid}: py-spy needs ptrace")


def exited_message(stderr: str) -> bool:
    """True when py-spy's error says the target is gone rather than refused."""
    lowered = stderr.lower()
    return any(text in lowered for text in (
        "no such process", "check that the process is running", "process exited",
        "no such file or directory",
    ))


def _last_error_line(stderr: str) -> str:
    for line in stderr.splitlines():
        line = line.strip()
        if line.startswith("Error:"):
            return line.removeprefix("Error:").strip()
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def frames_text(frames: Sequence[Frame]) -> str:
    """Frames back in py-spy's folded form (root first): handy in messages and tests."""
    return ";".join(f.label() for f in frames)


def main_thread_site(pid: int, binary: str | None = None, timeout: float = 10.0) -> str | None:
    """Where the main thread of `pid` is now, in words, from one `py-spy dump` that does not
    stop the process: the frame it is at and, when that is the standard library's, the nearest
    caller that is not; and whether that is inside the app's lifespan startup (a worker stuck
    there serves no request). None when the process cannot be read."""
    try:
        run = subprocess.run(dump_argv(binary or find_pyspy(), pid, nonblocking=True),
                             capture_output=True, text=True, timeout=timeout, check=False)
        threads = json.loads(run.stdout) if run.returncode == 0 else []
    except (OSError, subprocess.SubprocessError, ValueError, ToolMissingError):
        return None
    main = next((t for t in threads if isinstance(t, dict) and
                 (t.get("os_thread_id") == pid or t.get("thread_name") == "MainThread")), None)
    frames = [f for f in (main or {}).get("frames", []) if isinstance(f, dict)]  # leaf first
    if not frames:
        return None

    def said(frame: dict[str, object]) -> str:
        return f"`{frame.get('name')}` ({frame.get('filename')}:{frame.get('line')})"

    site = said(frames[0])
    if _standard(str(frames[0].get("filename", ""))):
        caller = next((f for f in frames[1:] if not _standard(str(f.get("filename", "")))), None)
        if caller is not None:
            site += f", called from {said(caller)}"
    if any("lifespan" in str(f.get("name", "")) for f in frames):
        site += ", in the app's lifespan startup: it serves no request until that returns"
    return site


def _standard(filename: str) -> bool:
    """A file of Python's own (the standard library, frozen modules), not an app's or a
    package's."""
    return filename.startswith("<") or STDLIB_PATH.search(filename) is not None
