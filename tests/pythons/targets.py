"""Target environments: one small virtualenv per CPython version, with uvicorn and Starlette.

The servers that the version matrix attaches to run on other interpreters than apiscope's own,
from environments that hold nothing of apiscope (as a production server's would). Each is built
once, under `.venv/targets/<X.Y>/`, and reused: `make target-venvs` builds them all ahead of the
tests, and a test asking for a missing one builds it (a minute per version, from the package
index).

    python -m tests.pythons.targets [X.Y|system ...]   # build (or check) the environments
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ROOT / ".venv" / "targets"
VERSIONS = ("3.9", "3.10", "3.11", "3.12", "3.13")
# The distribution's own python3: readable by every user (a version manager's interpreters live
# in a home directory), so the tests that run a server as another user build on it.
SYSTEM = "system"
SYSTEM_PYTHON = "/usr/bin/python3"
# No extras: uvicorn then runs the standard asyncio loop and h11, which every version has
# (uvloop and httptools are what `uvicorn[standard]` adds; see docs/status.md).
PACKAGES = ("uvicorn", "starlette")
READY = ".apiscope-target-ready"


class NoInterpreter(LookupError):
    """No CPython of the asked version is installed here."""


def interpreter(version: str) -> str:
    """A real `pythonX.Y` executable (not a version manager's shim), or the system's python3."""
    if version == SYSTEM:
        if os.access(SYSTEM_PYTHON, os.X_OK):
            return SYSTEM_PYTHON
        raise NoInterpreter(f"{SYSTEM_PYTHON} is not installed (apt-get install python3-venv)")
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = sorted(glob.glob(os.path.join(pyenv_root, "versions", f"{version}.*",
                                               "bin", "python")), reverse=True)
    candidates += [f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]
    for path in candidates:
        if os.access(path, os.X_OK) and _version_of(path) == version:
            return path
    raise NoInterpreter(f"no CPython {version} found (looked in {pyenv_root}/versions and"
                        " /usr/bin); install it, e.g. `pyenv install " + version + "`")


def target_python(version: str) -> Path:
    """The python of the target environment for `version`, built when missing."""
    env = built_once(TARGETS / version, lambda env: _build(version, env))
    return env / "bin" / "python"


def built_once(directory: Path, build: Callable[[Path], str]) -> Path:
    """`directory`, made by `build(directory)` unless an earlier build finished (`build`
    returns what the ready mark says it holds); two test runs at once: one builds."""
    if (directory / READY).exists():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f".{directory.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (directory / READY).exists():
            shutil.rmtree(directory, ignore_errors=True)  # a half-built one, interrupted
            mark = build(directory)
            (directory / READY).write_text(mark)
    return directory


def _build(version: str, env: Path) -> str:
    base = interpreter(version)
    _run([base, "-m", "venv", str(env)])
    _run([str(env / "bin" / "python"), "-m", "pip", "install", "--quiet",
          "--disable-pip-version-check", *PACKAGES])
    return _version_of(str(env / "bin" / "python")) + "\n"


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {(done.stderr or done.stdout)[-2000:]}")


def _version_of(python: str) -> str:
    done = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                          capture_output=True, text=True, timeout=60)
    return done.stdout.strip()


def main(argv: list[str]) -> int:
    for version in argv or (*VERSIONS, SYSTEM):
        try:
            print(f"{version}: {target_python(version)}")
        except NoInterpreter as exc:
            print(f"{version}: skipped: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
