"""What every export format shares: the profile it renders and the one-method renderer base."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from apiscope.exporters.tree import FlameNode, aggregate_stacks, tree_from_stacks
from apiscope.model import Frame, StackSample
from apiscope.report import Report


@dataclass(frozen=True, slots=True)
class Profile:
    """The samples of one export (already sliced and merged) and what goes around them."""

    samples: Sequence[StackSample]
    title: str = "apiscope flamegraph"
    report: Report | None = None  # the session's report, for the html page
    threads: bool = False  # add a process and a thread root frame to every stack
    # For formats that carry more than counts (pprof): the sampling rate, the endpoint a stack
    # serves (the report's attribution) and the session's (start, seconds).
    rate_hz: int | None = None
    endpoint_of: Callable[[Sequence[Frame]], str | None] | None = None
    span: tuple[float, float] | None = None
    # The directories of the application's code (`apiscope.analysis.attribution.app_roots`), so
    # that the formats drawing frame kinds judge them as the report does.
    app_roots: Sequence[str] = ()

    @property
    def total(self) -> int:
        return sum(s.count for s in self.samples)

    def stacks(self) -> dict[tuple[Frame, ...], int]:
        """Count per distinct stack, with the process/thread root frames when asked."""
        if not self.threads:
            return aggregate_stacks(self.samples)
        out: dict[tuple[Frame, ...], int] = {}
        for s in self.samples:
            key = (*thread_frames(s), *s.frames)
            out[key] = out.get(key, 0) + s.count
        return out

    def tree(self) -> FlameNode:
        return tree_from_stacks(self.stacks())


def thread_frames(sample: StackSample) -> tuple[Frame, Frame]:
    """Root frames naming the process and the thread, in the spirit of py-spy's --threads."""
    thread = f"thread ({sample.tid:#x})" + (f": {sample.thread_name}"
                                             if sample.thread_name else "")
    return Frame(f"process {sample.pid}", "", 0), Frame(thread, "", 0)


class Renderer(Protocol):
    """One export format."""

    name: str  # the --format value
    suffix: str  # the usual file name suffix

    def render(self, profile: Profile) -> str: ...
