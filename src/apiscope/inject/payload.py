"""The loader that injection executes inside the target, before the agent package exists there.

It runs as a file (`exec` of its source, `__name__` set to `PAYLOAD_NAME`, the arguments in the
global `APISCOPE_ARGS`), not as an import, because the target may not have apiscope installed.
It loads apiscope's agent package from apiscope's own files under the top-level name
`apiscope_agent` (never by adding apiscope's site-packages to the target's `sys.path`, which would
let the target import our versions of its own dependencies), then hands over to
`apiscope_agent.bootstrap.run`. Standard library only.

Detaching never loads anything: a process without `apiscope_agent` has nothing to remove. After
a detach the package is dropped from `sys.modules`, so that the next attach loads the agent of
the apiscope doing it, not the one a different version of apiscope left behind.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Mapping
from types import ModuleType
from typing import Any

PAYLOAD_NAME = "apiscope_inject_payload"
AGENT_MODULE = "apiscope_agent"
API_VERSION = 1  # must equal `apiscope.agent.bootstrap.API_VERSION`


def main(args: Mapping[str, Any]) -> None:
    """Attach or detach as `args` says; every outcome ends as a status file."""
    started = time.perf_counter()  # loading the agent is part of the main thread's pause
    action = str(args["action"])
    result_path = str(args["result"])
    token = str(args["token"])
    try:
        agent = sys.modules.get(AGENT_MODULE)
        if agent is None and action == "attach":
            agent = load_agent(str(args["agent_dir"]))
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
