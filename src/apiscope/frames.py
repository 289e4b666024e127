"""What kind of code a stack frame runs: the application's, an installed library's or Python's.

Every view of a session asks this question: the analysis, to find the application line a
bottleneck is at; the flamegraph exports and the dashboard, to colour a frame; `apiscope dump`, to
show a request's await chain from its application frames. They all ask here, so a frame is the
same kind in the report, the SVG, the HTML page and the dashboard.

A frame is the *application's* unless it is one of these:
- the standard library: any `lib/pythonX.Y/` (or Windows `Lib/`) directory outside its
  site-packages, this interpreter's own standard library directories, and frozen modules;
- an installed package: anything under a `site-packages` or `dist-packages` directory;
- apiscope itself (the injected agent and the autostart hook run inside the target);
- a console script in a `bin/` or `Scripts/` directory (`.venv/bin/uvicorn`);
- a module body (`<module>`): an import, or the server's entry script at the root of every
  stack, never a request's code;
- code with no file of its own (`<string>`, `<frozen ...>`, code generated at run time).

The application's own modules count even when they are installed into site-packages: the
directories holding them (the "app roots", derived from the route table by
`apiscope.analysis.attribution.app_roots`) are checked first.

py-spy prints absolute paths with `--full-filenames` (which apiscope always passes) and short
ones (`asyncio/events.py`) without; a short name is looked up under this interpreter's own
directories, so that a profile recorded without full names still tells the standard library
from the application.

Frames that are not the application's are then a *library* (installed packages, their console
scripts, apiscope itself) or *stdlib*: the interpreter's own work, which also covers frozen and
generated code and module bodies. Synthetic frames (the tree's root, a process or thread root, a
pruned "other" box) have no location and no kind.

The in-process agent (`apiscope.agent.paths.AppFiles`) keeps its own copy of these rules: it
runs inside the target and may import nothing of apiscope's.
"""

from __future__ import annotations

import functools
import os
import re
import site
import sysconfig
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final, Literal

from apiscope.model import Frame

Kind = Literal["app", "library", "stdlib"]
APP: Final = "app"
LIBRARY: Final = "library"
STDLIB: Final = "stdlib"
KINDS: tuple[Kind, ...] = (APP, LIBRARY, STDLIB)

# Installed packages, wherever the target's interpreter keeps them.
THIRD_PARTY = re.compile(r"[/\\](site|dist)-packages[/\\]")
# The standard library of any interpreter (the target may run another Python than apiscope):
# a "lib/pythonX.Y/" not followed by site-/dist-packages, or a Windows "Lib/".
STDLIB_PATH = re.compile(r"[/\\]lib[/\\]python\d+(\.\d+)?t?[/\\](?!(site|dist)-packages)"
                         r"|[/\\]Lib[/\\](?!site-packages)")
# Console scripts installed by pip (`.venv/bin/uvicorn`) and system ones (`/usr/bin/gunicorn`).
SCRIPTS = re.compile(r"[/\\](bin|Scripts)[/\\][^/\\]+$")
# The agent's files wherever the target loaded them from: a session may be analysed by another
# installation of apiscope than the one that collected it.
_AGENT_FILES = re.compile(r"[/\\]apiscope[/\\](agent|autostart)[/\\][^/\\]+\.py$")
# Where the injected agent's start-up enters the target: everything called from these frames
# is apiscope's own work (its imports included), on whatever request's stack the interpreter
# ran the pending call.
_AGENT_ENTRIES = re.compile(r"[/\\]apiscope[/\\](inject[/\\]payload|agent[/\\]bootstrap)\.py$")
# The top-level package of an installed or standard library file.
_INSTALLED_PACKAGE = re.compile(r"[/\\](?:site|dist)-packages[/\\]([^/\\]+)")
_STDLIB_PACKAGE = re.compile(r"[/\\]lib[/\\]python\d+(?:\.\d+)?t?[/\\]([^/\\]+)")
# The directory an installed or standard library file was loaded from (the shortest prefix).
_INSTALL_DIR = re.compile(r"^(.*?/(?:site-packages|dist-packages|lib/python3\.\d+)/)")

# apiscope's own package directory: the injected agent runs from these files.
TOOL_ROOTS: tuple[str, ...] = (str(Path(__file__).resolve().parent),)


def norm(path: str) -> str:
    """`path` with forward slashes (Windows paths compare as POSIX ones)."""
    return path.replace("\\", "/")


def under(path: str, root: str) -> bool:
    """True when `path` is `root` or inside it (a directory boundary, not a string prefix)."""
    path, root = norm(path), norm(root).rstrip("/")
    return path == root or path.startswith(root + "/")


def is_synthetic(frame: Frame) -> bool:
    """A frame with no location: the tree's root, a process or thread root, a merged box."""
    return not frame.file and frame.line == 0


def is_tool_file(file: str, tool_roots: Sequence[str] = TOOL_ROOTS) -> bool:
    """apiscope's own code: this installation's files, or the agent's from any installation."""
    return any(under(file, root) for root in tool_roots) or bool(_AGENT_FILES.search(file))


def is_agent_entry(file: str) -> bool:
    """The injected loader or the agent's bootstrap: frames below which all is apiscope's."""
    return bool(_AGENT_ENTRIES.search(file))


def _absolute(path: str) -> bool:
    return path.startswith("/") or bool(re.match(r"[A-Za-z]:/", path))


def _dir_prefix(directory: str) -> str:
    return norm(directory).rstrip("/") + "/"


class Interpreter:
    """The standard library and installed-package directories of one interpreter.

    Paths in a session are the target's; these directories are the analysing interpreter's, so
    they only add to the path patterns above (a target running this very interpreter, short
    py-spy file names), never replace them.
    """

    def __init__(self, stdlib_dirs: Iterable[str], library_dirs: Iterable[str]) -> None:
        self.stdlib = tuple(_dir_prefix(d) for d in stdlib_dirs if d)
        self.libraries = tuple(_dir_prefix(d) for d in library_dirs if d)
        self._kinds: dict[str, Kind | None] = {}

    @classmethod
    def running(cls) -> Interpreter:
        """The directories of the interpreter running this code."""
        paths = sysconfig.get_paths()
        stdlib = {paths["stdlib"], paths["platstdlib"]}
        libraries = {paths["purelib"], paths["platlib"], *site.getsitepackages()}
        user_site = site.getusersitepackages()
        if isinstance(user_site, str):
            libraries.add(user_site)
        return cls(sorted(stdlib), sorted(libraries))

    def installed_kind(self, file: str) -> Kind | None:
        """"library" or "stdlib" when `file` is one of this interpreter's files, else None.

        An absolute path is judged by its directory; a short name (`asyncio/events.py`) by
        whether such a file exists there, the library directories first because the standard
        library directory of a virtualenv can contain its site-packages.
        """
        try:
            return self._kinds[file]
        except KeyError:
            if len(self._kinds) > 100_000:  # generated file names could grow it without end
                self._kinds.clear()
            kind = self._kinds[file] = self._installed_kind(file)
            return kind

    def _installed_kind(self, file: str) -> Kind | None:
        path = norm(file)
        if not path or path.startswith("<"):
            return None
        if _absolute(path):
            if path.startswith(self.libraries):
                return LIBRARY
            return STDLIB if path.startswith(self.stdlib) else None
        if any(os.path.isfile(d + path) for d in self.libraries):
            return LIBRARY
        if any(os.path.isfile(d + path) for d in self.stdlib):
            return STDLIB
        return None


@functools.lru_cache(maxsize=1)
def running_interpreter() -> Interpreter:
    """This interpreter's directories, read once."""
    return Interpreter.running()


def is_app_frame(frame: Frame, app_roots: Sequence[str],
                 tool_roots: Sequence[str] = TOOL_ROOTS,
                 interpreter: Interpreter | None = None) -> bool:
    """True when `frame` is the application's code (see the module docstring)."""
    if frame.function == "<module>":
        return False
    if interpreter is None:  # the common case, asked of the same files over and over
        return _is_app_file(frame.file, tuple(app_roots), tuple(tool_roots))
    return _app_file(frame.file, app_roots, tool_roots, interpreter)


@functools.lru_cache(maxsize=1 << 15)
def _is_app_file(file: str, app_roots: tuple[str, ...], tool_roots: tuple[str, ...]) -> bool:
    return _app_file(file, app_roots, tool_roots, running_interpreter())


def _app_file(file: str, app_roots: Sequence[str], tool_roots: Sequence[str],
              interpreter: Interpreter) -> bool:
    # "<frozen ...>", "<string>", code generated at run time ("<sqlalchemy generated ...>"):
    # no file of the application's.
    if not file or file.startswith("<"):
        return False
    if SCRIPTS.search(file):
        return False
    if is_tool_file(file, tool_roots):
        return False
    if any(under(file, root) for root in app_roots):
        return True
    if interpreter.installed_kind(file) is not None:
        return False
    if "/" not in norm(file):
        return True  # a bare file name (py-spy without full names) of a top-level module
    return not (THIRD_PARTY.search(file) or STDLIB_PATH.search(file))


def file_kind(file: str, tool_roots: Sequence[str] = TOOL_ROOTS,
              interpreter: Interpreter | None = None) -> Kind:
    """The kind of code in `file` when its frame is not the application's: "library" or
    "stdlib" (see the module docstring)."""
    if THIRD_PARTY.search(file) or SCRIPTS.search(file) or is_tool_file(file, tool_roots):
        return LIBRARY
    return (interpreter or running_interpreter()).installed_kind(file) or STDLIB


def frame_kind(frame: Frame, app_roots: Sequence[str] = (),
               tool_roots: Sequence[str] = TOOL_ROOTS,
               interpreter: Interpreter | None = None) -> Kind | None:
    """"app", "library" or "stdlib"; None for a synthetic frame (no file, no line)."""
    if is_synthetic(frame):
        return None
    if is_app_frame(frame, app_roots, tool_roots, interpreter):
        return APP
    return file_kind(frame.file, tool_roots, interpreter)


class FrameKinds:
    """`frame_kind` for one session's app roots, remembering each frame's answer (a view
    classifies the same few thousand frames over and over)."""

    def __init__(self, app_roots: Sequence[str] = (), tool_roots: Sequence[str] = TOOL_ROOTS,
                 interpreter: Interpreter | None = None) -> None:
        self.app_roots = tuple(app_roots)
        self._tool_roots = tuple(tool_roots)
        self._interpreter = interpreter
        self._cache: dict[Frame, Kind | None] = {}

    def __call__(self, frame: Frame) -> Kind | None:
        try:
            return self._cache[frame]
        except KeyError:
            kind = self._cache[frame] = frame_kind(frame, self.app_roots, self._tool_roots,
                                                   self._interpreter)
            return kind


def package_of(file: str) -> str:
    """The top-level package (or standard library module) a library file belongs to, ""
    for any other file."""
    match = _INSTALLED_PACKAGE.search(file) or _STDLIB_PACKAGE.search(file)
    return match.group(1).removesuffix(".py") if match else ""


def install_dir(file: str) -> str | None:
    """The directory (with a trailing slash) of the installed packages or the standard library
    `file` is in, or None for any other file."""
    match = _INSTALL_DIR.match(norm(file))
    return match.group(1) if match else None
