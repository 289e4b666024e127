"""`instrument(app)`: add the agent to an app in code, before the server starts it."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from .middleware import AgentMiddleware
from .runtime import Agent, current_agent

logger = logging.getLogger("apiscope")

_MARK = "_apiscope_agent"


def instrument(app: Any, *, directory: str | None = None, start: bool = True,
               agent: Agent | None = None, profile_every: int | None = None) -> Any:
    """Record every HTTP request of `app` and serve the records on the agent's socket.

    A Starlette/FastAPI app is changed in place and returned: the agent wraps its whole
    middleware stack, outside the server-error middleware, so it sees the 500 that middleware
    sends and the exception it re-raises. Any other ASGI callable is returned wrapped.
    Instrumenting twice changes nothing. `start=False` leaves the socket server off;
    `directory` overrides the socket directory; `profile_every=N` profiles one request in N
    per route with pyinstrument (0 turns per-request profiles off; see docs/profiling.md).
    """
    agent = agent if agent is not None else current_agent(directory)
    if profile_every is not None:
        agent.configure_profiling(replace(agent.profiling.options, every=profile_every))
    if _is_starlette(app):
        _wrap_stack(app, agent)
        agent.add_routes(app)
        result = app
    elif _is_agent_middleware(app):
        result = app
    else:
        agent.add_routes(app)
        result = agent.middleware(app)
    if start:
        _start(agent)
    return result


def _is_starlette(app: Any) -> bool:
    return hasattr(app, "build_middleware_stack") and hasattr(app, "middleware_stack")


def _is_agent_middleware(app: Any) -> bool:
    # By name as well: the injected copy of this package has its own AgentMiddleware class.
    return isinstance(app, AgentMiddleware) or type(app).__name__ == "AgentMiddleware"


def _wrap_stack(app: Any, agent: Agent) -> None:
    if vars(app).get(_MARK) or _is_agent_middleware(app.middleware_stack):
        return
    setattr(app, _MARK, True)
    if app.middleware_stack is not None:  # already serving: the next request uses the wrapper
        app.middleware_stack = agent.middleware(app.middleware_stack)
        return
    build = app.build_middleware_stack

    def build_with_agent() -> Any:
        return agent.middleware(build())

    # Starlette builds its stack on the first call; shadowing the method on the instance puts
    # the agent outermost, which `add_middleware` cannot (it nests inside the error middleware).
    app.build_middleware_stack = build_with_agent


def _start(agent: Agent) -> None:
    try:
        agent.start()
    except OSError as exc:  # an unsafe socket directory, a socket in use: the app must still run
        logger.warning("apiscope agent not serving: %s", exc)
