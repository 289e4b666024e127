"""The loader that injection executes inside the target, before the agent package exists there.

It runs as a file (`exec` of its source, `__name__` set to `PAYLOAD_NAME`, the arguments in the
global `APISCOPE_ARGS`), not as an import, because the target may not have apiscope installed.
It loads apiscope's agent package from apiscope's own files under the top-level name
`apiscope_agent` (never by adding apiscope's site-packages to the target's `sys.path`, which would
let the target import our versions of its own dependencies), then hands over to
`apiscope_agent.bootstrap.run`. Standard library only.

A target that cannot read apiscope's files (another user's, a container's: see
`apiscope.inject.rendezvous`) is sent the sources instead (`APISCOPE_ARGS["agent_sources"]`),
and the package is imported from them by a finder that answers for `apiscope_agent` names only;
its modules' file names start with `EMBEDDED_PREFIX`, which is no file (tracebacks show no
source) but still reads as apiscope's own code to the analysis.

Detaching never loads anything: a process without `apiscope_agent` has nothing to remove. After
a detach the package is dropped from `sys.modules`, so that the next attach loads the agent of
the apiscope doing it, not the one a different version of apiscope left behind.
"""

from __future__ import annotations

import base64
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import sysconfig
import time
import zlib
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

PAYLOAD_NAME = "apiscope_inject_payload"
AGENT_MODULE = "apiscope_agent"
API_VERSION = 1  # must equal `apiscope.agent.bootstrap.API_VERSION`
EMBEDDED_PREFIX = "<apiscope-injected>/apiscope/"


def main(args: Mapping[str, Any]) -> None:
    """Attach or detach as `args` says; every outcome ends as a status file."""
    started = time.perf_counter()  # loading the agent is part of the main thread's pause
    action = str(args["action"])
    result_path = str(args["result"])
    token = str(args["token"])
    try:
        agent = sys.modules.get(AGENT_MODULE)
        _make_private_dir(os.path.dirname(result_path))  # a foreign target's own directory
        busy = importing() if agent is None and action == "attach" else None
        if busy is not None:
            # Loading the agent now would import from a half-run module (a worker that is
            # importing its app when the pending call runs): no app yet, and the injector
            # tries again in a moment, as for a worker that has not loaded its app.
            _write(result_path, {"action": action, "ok": True, "token": token,
                                 "pid": os.getpid(), "apps": [],
                                 "note": f"the process was importing {busy!r}"})
            return
        if agent is None and action == "attach":
            offer_pyinstrument(args.get("pyinstrument"))
            sources = args.get("agent_sources")
            agent = (load_embedded_agent(str(sources)) if sources
                     else load_agent(str(args["agent_dir"])))
        if agent is None:
            _write(result_path, {"action": action, "ok": True, "token": token,
                                 "pid": os.getpid(), "apps": [], "restored": 0,
                                 "note": "no apiscope agent was injected into this process"})
            return
        bootstrap = importlib.import_module(AGENT_MODULE + ".bootstrap")
        if getattr(bootstrap, "API_VERSION", None) != API_VERSION:
            _other_version(bootstrap, action, result_path, token)
            return
        status = bootstrap.run(action, args.get("directory"), result_path, token, started)
        if action == "detach" and status.get("ok"):
            forget_agent()
    except Exception as exc:  # the loader itself failed: say why, leave the server alone
        _write(result_path, {"action": action, "ok": False, "token": token, "pid": os.getpid(),
                             "error": f"{type(exc).__name__}: {exc}"})


def importing() -> str | None:
    """The name of a module whose import is under way in this process, if any.

    A pending call runs between any two bytecodes, a module's body included; importing what
    that module's importer is in the middle of gives a half-initialised module (or, from another
    thread, waits on its import lock with the event loop stopped).
    """
    for name, module in list(sys.modules.items()):
        spec = getattr(module, "__spec__", None)
        if getattr(spec, "_initializing", False) is True:
            return name
    return None


def load_agent(agent_dir: str) -> ModuleType:
    """Import `<agent_dir>/__init__.py` as the package `apiscope_agent`."""
    spec = importlib.util.spec_from_file_location(
        AGENT_MODULE, os.path.join(agent_dir, "__init__.py"),
        submodule_search_locations=[agent_dir])
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the apiscope agent from {agent_dir}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[AGENT_MODULE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[AGENT_MODULE]  # a half-loaded package must not be found next time
        raise
    return module


def load_embedded_agent(packed: str) -> ModuleType:
    """Import the package `apiscope_agent` from packed sources (see `apiscope.inject.snippet`)."""
    sources = json.loads(zlib.decompress(base64.b64decode(packed)))
    finder = EmbeddedAgentFinder(sources)
    sys.meta_path.append(finder)  # after the target's own finders: only our names reach it
    try:
        return importlib.import_module(AGENT_MODULE)
    except BaseException:
        forget_agent()
        raise


class EmbeddedAgentFinder(importlib.abc.MetaPathFinder):
    """Finds `apiscope_agent` and its modules among sources held in memory."""

    def __init__(self, sources: Mapping[str, str]) -> None:
        self.loader = EmbeddedSourceLoader(sources)

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        name = module_name(fullname)
        if name is None or name not in self.loader.sources:
            return None
        # Not spec_from_file_location: it would make the name absolute (cwd + "<apiscope-...").
        spec = importlib.machinery.ModuleSpec(fullname, self.loader,
                                              origin=embedded_filename(name),
                                              is_package=name == "__init__")
        spec.has_location = True  # sets __file__
        return spec


class EmbeddedSourceLoader(importlib.abc.SourceLoader):
    """Source of `EMBEDDED_PREFIX` file names, from memory (no bytecode is cached)."""

    def __init__(self, sources: Mapping[str, str]) -> None:
        self.sources = dict(sources)

    def get_filename(self, fullname: str) -> str:
        return embedded_filename(module_name(fullname) or "")

    def get_data(self, path: str) -> bytes:
        name = os.path.splitext(os.path.basename(path))[0]
        return self.sources[name].encode("utf-8")


def module_name(fullname: str) -> str | None:
    """`__init__` for the package, the module's own name for one of its modules, else None."""
    if fullname == AGENT_MODULE:
        return "__init__"
    head, _, tail = fullname.partition(".")
    return tail if head == AGENT_MODULE and "." not in tail else None


def embedded_filename(name: str) -> str:
    return f"{EMBEDDED_PREFIX}agent/{name}.py"


def offer_pyinstrument(offer: Mapping[str, str] | None) -> None:
    """Let the agent import apiscope's own pyinstrument (for per-request async profiles) when
    the target has none and runs the very ABI it was built for (`SOABI`, e.g.
    cpython-311-x86_64-linux-gnu): a finder at the end of `sys.meta_path` answers for the
    package `pyinstrument` alone, from its own directory, so the target's own packages (its
    pyinstrument included, when it has one) always come first and nothing else of ours is
    reachable."""
    if not offer or sysconfig.get_config_var("SOABI") != offer.get("soabi"):
        return
    if importlib.util.find_spec("pyinstrument") is None:
        sys.meta_path.append(OwnPyinstrumentFinder(str(offer["path"])))


class OwnPyinstrumentFinder(importlib.abc.MetaPathFinder):
    """Finds the top-level package `pyinstrument` in one directory (its submodules are then
    found through the package's `__path__`, as any package's are)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "pyinstrument":
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, [self.directory])


def _other_version(bootstrap: ModuleType, action: str, result_path: str, token: str) -> None:
    """An agent injected by another apiscope version: detach it with its own `detach()` (the
    one function every version has), and refuse to attach on top of it."""
    if action != "detach":
        raise RuntimeError(f"this process already runs the agent of another apiscope version"
                           f" (from {os.path.dirname(bootstrap.__file__ or '?')}): run"
                           f" `apiscope detach {os.getpid()}`, then attach again")
    status = dict(bootstrap.detach())
    forget_agent()
    status.update(action=action, ok=True, token=token,
                  note="detached the agent of another apiscope version")
    _write(result_path, status)


def forget_agent() -> None:
    """Drop the agent package from `sys.modules`; objects still in use keep their modules."""
    for name in [n for n in sys.modules if n == AGENT_MODULE or n.startswith(AGENT_MODULE + ".")]:
        del sys.modules[name]
    ours = ("EmbeddedAgentFinder", "OwnPyinstrumentFinder")
    sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ not in ours]


def _make_private_dir(path: str) -> None:
    try:
        os.mkdir(path, 0o700)
    except OSError:
        pass  # there already (the agent checks it is private), or unusable: the status says


def _write(path: str, status: dict[str, Any]) -> None:
    try:
        fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(status, out)
        os.replace(path + ".tmp", path)
    except OSError:
        pass  # the injector's deadline reports it; the server must never see our failure


if __name__ == PAYLOAD_NAME:
    main(globals()["APISCOPE_ARGS"])
