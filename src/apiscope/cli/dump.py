"""`apiscope dump PID`: what the server is doing right now, request by request.

Each in-flight request with its route, elapsed time, the await chain its coroutine is suspended
in (down to the awaited call) and the thread running it; then every thread's stack. The agent
answers (`{"op": "dump"}`, see `apiscope.agent.inflight`); it is injected when absent. Where
injection is impossible (ptrace refused), `py-spy dump` gives the threads alone, and
the output says so.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

from apiscope.cli.base import positive_int
from apiscope.collectors.agent_client import AgentClient, AgentUnavailable
from apiscope.collectors.pyspy import dump_argv, find_pyspy
from apiscope.collectors.target import describe_target
from apiscope.errors import ApiscopeError, TargetError
from apiscope.frames import is_app_frame
from apiscope.model import Frame

DUMP_TIMEOUT = 10.0  # seconds for the agent to walk every task and thread
STUCK_SECONDS = 10.0  # a request this old is marked STUCK in the text output
SLOW_SECONDS = 1.0

Dump = dict[str, Any]


class DumpCommand:
    name = "dump"
    help = ("what a server is doing right now: each request in flight with its await chain,"
            " and every thread's stack")

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("pid", type=positive_int, metavar="PID",
                            help="the server process (uvicorn, gunicorn master or worker)")
        parser.add_argument("--json", action="store_true",
                            help="one JSON object per process, every frame included")

    def run(self, args: argparse.Namespace) -> int:
        target = describe_target(args.pid)
        dumps = [dump_process(pid) for pid in target.pids]
        if args.json:
            print(json.dumps(dumps if len(dumps) > 1 else dumps[0], indent=2))
        else:
            print("\n\n".join(render_text(d) for d in dumps))
        return 0


def dump_process(pid: int) -> Dump:
    """The agent's dump of `pid`, injecting it if needed, else py-spy's threads."""
    with AgentClient(pid, timeout=DUMP_TIMEOUT) as client:
        try:
            return _checked(client.request({"op": "dump"}), "agent")
        except AgentUnavailable:
            pass
        except _OldAgent as exc:
            return pyspy_dump(pid, str(exc))
    try:
        from apiscope.inject import inject_agent

        result = inject_agent(pid)
    except ApiscopeError as exc:
        return pyspy_dump(pid, f"the agent could not be injected: {exc.message}")
    if not result.apps:
        return pyspy_dump(pid, "the process serves no ASGI app that apiscope can find")
    with AgentClient(pid, timeout=DUMP_TIMEOUT) as client:
        try:
            answer = _checked(client.request({"op": "dump"}), "injected")
        except (AgentUnavailable, _OldAgent) as exc:
            return pyspy_dump(pid, f"the injected agent did not answer: {exc}")
    print(f"apiscope: injected the agent into PID {pid} (`apiscope detach {pid}` removes it);"
          " requests that started before it are listed without an elapsed time",
          file=sys.stderr)
    return answer


class _OldAgent(Exception):
    """An agent that does not know the dump request (from an older apiscope)."""


def _checked(answer: Dump, source: str) -> Dump:
    if "error" in answer:
        raise _OldAgent(f"the agent cannot dump ({answer['error']})")
    return {**answer, "source": source}


def pyspy_dump(pid: int, reason: str) -> Dump:
    """Every thread's stack from `py-spy dump`: no requests, said so in `note`."""
    try:
        run = subprocess.run(dump_argv(find_pyspy(), pid), capture_output=True, text=True,
                             timeout=30, check=False)
    except subprocess.TimeoutExpired:
        raise TargetError(f"py-spy dump of PID {pid} did not finish in 30 s: {reason}") from None
    if run.returncode != 0:
        raise TargetError(f"py-spy dump of PID {pid} failed ({run.stderr.strip()[:300]}), and"
                          f" {reason}: run apiscope as root or the server's user")
    threads = [{"ident": t.get("thread_id"), "native_id": t.get("os_thread_id") or 0,
                "name": t.get("thread_name") or "",
                "frames": [{"function": f.get("name"), "file": f.get("filename"),
                            "line": f.get("line") or 0} for f in reversed(t.get("frames", []))]}
               for t in json.loads(run.stdout or "[]")]
    return {"pid": pid, "source": "py-spy", "requests": [], "threads": threads,
            "note": f"threads only, no requests: {reason}"}


# -- text ---------------------------------------------------------------------------------------

def render_text(dump: Dump) -> str:
    requests, threads = dump.get("requests", []), dump.get("threads", [])
    python = f", Python {dump['python']}" if dump.get("python") else ""
    lines = [f"PID {dump['pid']}{python}: {len(requests)} request(s) in flight,"
             f" {len(threads)} thread(s)"]
    if dump.get("note"):
        lines.append(f"note: {dump['note']} (py-spy dump)")
    if dump.get("requests_unread"):
        lines.append(f"note: the requests in flight could not be read ({dump['requests_unread']});"
                     " the threads' stacks below are complete")
    by_ident = {t["ident"]: t for t in threads}
    busy: dict[int, str] = {}
    for request in requests:
        lines += ["", *_request_lines(request, by_ident)]
        if request.get("thread") is not None:
            busy[request["thread"]] = f"{request['method']} {request['route']}"
    for thread in threads:
        serving = busy.get(thread["ident"])
        lines += ["", f"Thread {thread.get('name') or '?'} (tid {thread.get('native_id')})"
                  + (f", running {serving}" if serving else "") + ":"]
        lines += [f"    {_frame(f)}" for f in reversed(thread["frames"])]
    return "\n".join(lines)


def _request_lines(request: Dump, threads: dict[int, Dump]) -> list[str]:
    elapsed = request.get("elapsed_s")
    mark = ("?" if elapsed is None else "STUCK" if elapsed >= STUCK_SECONDS
            else "SLOW" if elapsed >= SLOW_SECONDS else "")
    age = f"{elapsed:8.2f} s" if elapsed is not None else "  started before the agent"
    chain = request.get("await_chain", [])
    thread = threads.get(request.get("thread") or -1)
    head = f"{mark:5} {age}  {request['method']} {request['route']}  {_doing(request, thread)}"
    hidden = len(chain) - _shown(chain)
    out = [head, "      await chain, innermost first:"]
    out += [f"        {_frame(f)}" for f in list(reversed(chain))[:_shown(chain)]]
    if hidden:
        out.append(f"        ... {hidden} server and framework frames (--json lists them)")
    return out


def _doing(request: Dump, thread: Dump | None) -> str:
    """One phrase: what the request waits on, and where in the application."""
    chain = request.get("await_chain", [])
    on_thread = thread is not None and (request.get("running") or request.get("awaiting"))
    if on_thread and thread is not None:
        frames = thread.get("frames", [])
        where = _innermost_app(frames)
        # Pool threads share one name: the tid tells which of the stacks below is this one.
        name = f"{thread.get('name')} (tid {thread.get('native_id')})"
        text = (f"running on thread {name}" if request.get("running") else
                f"waiting for thread {name}")
        return text + (f", in {_frame(where)}" if where else "")
    awaited = chain[-1] if chain else None
    where = _innermost_app(chain)
    text = f"awaiting {awaited['function']}()" if awaited else "not started"
    return text + (f" from {_frame(where)}" if where and where is not awaited else "")


def _shown(chain: list[Dump]) -> int:
    """Frames shown in text: from the awaited call up to the outermost application frame."""
    app = [i for i, f in enumerate(chain) if _is_app(f)]
    return len(chain) - app[0] if app else min(len(chain), 3)


def _innermost_app(frames: list[Dump]) -> Dump | None:
    return next((f for f in reversed(frames) if _is_app(f)), None)


def _is_app(frame: Dump) -> bool:
    """The application's frame, as the report judges it (`apiscope.frames`); the target's
    route table is not at hand, so an app installed into site-packages reads as a library."""
    return is_app_frame(Frame(str(frame.get("function") or ""), str(frame.get("file") or ""),
                              int(frame.get("line") or 0)), ())


def _frame(frame: Dump) -> str:
    return f"{frame.get('function')} ({frame.get('file')}:{frame.get('line')})"
