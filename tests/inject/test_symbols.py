"""Finding the injection's functions in live processes, checked against gdb's own lookup."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from apiscope.inject import symbols
from apiscope.inject.symbols import find_functions
from tests.support import require_program, require_ptrace

SLEEPER = "import time\nprint('ready', flush=True)\nwhile True: time.sleep(0.05)"


@contextmanager
def sleeping(python: str) -> Iterator[int]:
    """A sleeping interpreter's PID, once it runs (until then the child may not have exec'd)."""
    with subprocess.Popen([python, "-c", SLEEPER], stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            yield proc.pid
        finally:
            proc.kill()


def interpreters() -> list[str]:
    """This environment's interpreter (libpython shared or not, as built) and the system's
    (Debian's is a static, non-PIE executable: its symbols are at fixed addresses)."""
    found = [os.path.realpath(sys.executable)]
    system = Path("/usr/bin/python3")
    if system.exists() and os.path.realpath(system) not in found:
        found.append(os.path.realpath(system))
    return found


@pytest.fixture(params=interpreters())
def python_process(request: pytest.FixtureRequest) -> Iterator[int]:
    with sleeping(request.param) as pid:
        yield pid


def gdb_lookup(pid: int) -> tuple[int, int, int]:
    gdb = require_program("gdb")
    done = subprocess.run(
        [gdb, "-batch", "-nx", "--readnever", "-p", str(pid),
         "-ex", 'printf "found %p %p %p\\n", &Py_AddPendingCall, &PyRun_SimpleString, &mmap'],
        capture_output=True, text=True, timeout=60)
    match = re.search(r"found (0x[0-9a-f]+) (0x[0-9a-f]+) (0x[0-9a-f]+)", done.stdout)
    assert match, done.stdout + done.stderr
    return int(match.group(1), 16), int(match.group(2), 16), int(match.group(3), 16)


def test_the_addresses_are_the_ones_gdb_finds(python_process: int) -> None:
    require_ptrace()
    functions = find_functions(python_process)
    assert functions is not None
    assert (functions.add_pending_call, functions.run_simple_string,
            functions.mmap) == gdb_lookup(python_process)


def test_a_process_that_is_not_python_has_none() -> None:
    require_ptrace()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        assert find_functions(sleeper.pid) is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_an_address_whose_code_differs_from_the_file_is_not_used(python_process: int) -> None:
    # The C library's symbol table read against another file's place in memory (what a
    # library replaced on disk after the process loaded it would give): the bytes there are
    # not mmap's, and nothing is returned. Against its own place, mmap is found.
    require_ptrace()
    mapped = dict(symbols._mapped_files(python_process))
    libc = next(path for path in mapped if Path(path).name.startswith("libc"))
    elsewhere = next(start for path, start in mapped.items() if path != libc)
    with open(f"/proc/{python_process}/root{libc}", "rb") as elf:
        assert symbols._addresses(elf, mapped[libc], ["mmap"], python_process)
        assert symbols._addresses(elf, elsewhere, ["mmap"], python_process) == {}


def test_a_library_deleted_since_it_was_loaded_is_not_read(tmp_path: Path) -> None:
    # An upgrade that replaced the interpreter's files under a running server: the mapping
    # names a deleted file, which is not the one on disk.
    require_ptrace()
    copy = tmp_path / "python3"
    copy.write_bytes(Path(os.path.realpath(sys.executable)).read_bytes())
    copy.chmod(0o755)
    with sleeping(str(copy)) as pid:
        maps = Path(f"/proc/{pid}/maps")
        assert str(copy) in maps.read_text()
        copy.unlink()
        assert str(copy) + " (deleted)" in maps.read_text()
        assert str(copy) not in dict(symbols._mapped_files(pid))


def test_a_process_that_is_gone_has_none() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert find_functions(proc.pid) is None
