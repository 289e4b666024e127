"""The analysis rules: one per flag kind, each a one-method object, run in `RULES` order.

A rule reads an `AnalysisContext` and returns flags (`apiscope.flag.Flag`). Rules later
in the list see the earlier rules' flags in `ctx.earlier`: `slow_endpoint` runs last so its
evidence can name what explains the latency.
"""

from __future__ import annotations

from typing import Protocol

from apiscope.analysis.context import AnalysisContext, Flag
from apiscope.analysis.rules.cpu_hotspot import CpuHotspotRule
from apiscope.analysis.rules.error_rate import ErrorRateRule
from apiscope.analysis.rules.event_loop_blocked import EventLoopBlockedRule
from apiscope.analysis.rules.gil_contention import GilContentionRule
from apiscope.analysis.rules.memory_growth import MemoryGrowthRule
from apiscope.analysis.rules.n_plus_one import NPlusOneRule
from apiscope.analysis.rules.slow_await import SlowAwaitRule
from apiscope.analysis.rules.slow_endpoint import SlowEndpointRule
from apiscope.analysis.rules.threadpool_saturation import ThreadPoolSaturationRule


class Rule(Protocol):
    kind: str

    def check(self, ctx: AnalysisContext) -> list[Flag]: ...


RULES: list[Rule] = [
    EventLoopBlockedRule(),
    CpuHotspotRule(),
    NPlusOneRule(),
    MemoryGrowthRule(),
    ThreadPoolSaturationRule(),
    GilContentionRule(),
    ErrorRateRule(),
    SlowAwaitRule(),
    SlowEndpointRule(),
]

__all__ = ["RULES", "Rule"]
