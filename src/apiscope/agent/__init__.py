"""The in-process agent: records each request of an ASGI app and serves them to the collector.

Standard library only, relative imports only: these files are also loaded into targets that
don't have apiscope installed, as a top-level package named `apiscope_agent`.
"""

from __future__ import annotations

from .middleware import AgentMiddleware
from .paths import SocketDirError
from .recorder import Recorder, RequestEntry
from .runtime import Agent, current_agent, shutdown_agent, socket_dir, socket_path

__all__ = [
    "Agent",
    "AgentMiddleware",
    "Recorder",
    "RequestEntry",
    "SocketDirError",
    "current_agent",
    "shutdown_agent",
    "socket_dir",
    "socket_path",
]
