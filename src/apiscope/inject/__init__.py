"""Getting the agent into a live server process, and out again, without a restart."""

from __future__ import annotations

from apiscope.inject.errors import InjectionFailed, InjectionTimeout
from apiscope.inject.injector import eject_agent, inject_agent
from apiscope.inject.result import InjectionResult, read_result, result_path

__all__ = ["InjectionFailed", "InjectionResult", "InjectionTimeout", "eject_agent",
           "inject_agent", "read_result", "result_path"]
