"""Flamegraph downloads: the slice on screen, rendered by the exporters the CLI uses."""

from __future__ import annotations

from dataclasses import dataclass

from apiscope.dashboard.data import DashboardSession
from apiscope.dashboard.samples import SampleSlice
from apiscope.exporters import Profile, renderer
from apiscope.model import SampleState, StackSample

FORMATS = ("svg", "speedscope", "folded", "html")


@dataclass(frozen=True, slots=True)
class ExportFile:
    filename: str
    content: str


def export_slice(data: DashboardSession, flt: SampleSlice, fmt: str, title: str) -> ExportFile:
    """The flamegraph of `flt` in format `fmt` ("svg", "speedscope", "folded" or "html")."""
    chosen = renderer(fmt)
    counts = data.samples.stack_counts(flt)
    # The view's counts are already merged per stack; thread identity is not part of a view.
    samples = [StackSample(0, 0, "", data.samples.frames(stack_id), count, SampleState.RUNNING)
               for stack_id, count in sorted(counts.items())]
    text = chosen.render(Profile(samples, title=title, app_roots=data.app_roots()))
    return ExportFile(f"apiscope-flamegraph{chosen.suffix}", text)


def describe(flt: SampleSlice) -> str:
    """A title naming the slice, e.g. "GET /items/{item_id}, pid 1240"."""
    parts = [flt.endpoint or "all endpoints"]
    if flt.pid is not None:
        parts.append(f"pid {flt.pid}")
    if flt.tid is not None:
        parts.append(f"thread {flt.tid}")
    elif flt.roles is not None:
        parts.append("/".join(sorted(flt.roles)) + " threads")
    parts.append("on CPU" if not flt.include_blocked else "on CPU and waiting")
    if flt.include_idle:
        parts.append("with idle")
    if flt.gil_only:
        parts.append("GIL held")
    return "apiscope flamegraph: " + ", ".join(parts)
