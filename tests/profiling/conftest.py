from __future__ import annotations

# The profiling tests run the agent too: the same private socket directory and clean agent.
from tests.agent.conftest import _no_leftover_agent, sock_dir

__all__ = ["_no_leftover_agent", "sock_dir"]
