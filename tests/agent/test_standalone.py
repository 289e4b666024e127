"""The agent package loads on its own: as `apiscope_agent`, from its files, stdlib only."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import apiscope.agent
from apiscope.agent.runtime import current_agent

AGENT_INIT = Path(apiscope.agent.__file__)


def load_copy(name: str = "apiscope_agent") -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        name, AGENT_INIT, submodule_search_locations=[str(AGENT_INIT.parent)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_loads_without_site_packages_and_serves_a_pull(sock_dir: str) -> None:
    """`python -S -I`: no site-packages, no apiscope on the path; only the standard library."""
    script = textwrap.dedent(f"""
        import asyncio, importlib.util, json, os, socket, sys
        spec = importlib.util.spec_from_file_location(
            "apiscope_agent", {str(AGENT_INIT)!r},
            submodule_search_locations=[{str(AGENT_INIT.parent)!r}])
        agent_pkg = importlib.util.module_from_spec(spec)
        sys.modules["apiscope_agent"] = agent_pkg
        spec.loader.exec_module(agent_pkg)

        async def app(scope, receive, send):
            await send({{"type": "http.response.start", "status": 200, "headers": []}})
            await send({{"type": "http.response.body", "body": b"hi"}})

        agent = agent_pkg.current_agent({sock_dir!r})
        wrapped = agent.middleware(app)
        agent.start()

        async def call():
            async def receive():
                return {{"type": "http.request", "body": b""}}
            async def send(message):
                pass
            await wrapped({{"type": "http", "method": "GET", "path": "/"}}, receive, send)

        asyncio.run(call())
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(agent_pkg.socket_path(os.getpid(), {sock_dir!r}))
            sock.sendall(b'{{"op": "pull"}}\\n')
            with sock.makefile("rb") as reader:
                reply = json.loads(reader.readline())
        agent_pkg.shutdown_agent()
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in
                        ("apiscope", "starlette", "sqlalchemy", "anyio", "fastapi"))
        print(json.dumps({{"reply": reply, "leaked": leaked}}))
    """)
    done = subprocess.run([sys.executable, "-S", "-I", "-c", script], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    import json

    result = json.loads(done.stdout)
    assert result["leaked"] == []
    (request,) = result["reply"]["requests"]
    _start, _duration, method, route, status, *_rest = request  # a RequestEntry, as an array
    assert (method, route, status) == ("GET", "/", 200)
    assert result["reply"]["stats"] == {"recorded": 1, "dropped": 0, "errors": 0, "skipped": 0,
                                        "keep_every": 1, "serve_cpu": 0.0}


def test_two_copies_in_one_process_share_one_agent(sock_dir: str) -> None:
    ours = current_agent(sock_dir)
    copy = load_copy()
    try:
        assert copy.current_agent() is ours
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == "apiscope_agent"]:
            del sys.modules[name]
