"""Flamegraph exports: one format per module, all drawn from the same sliced samples.

`RENDERERS` is the registry the CLI reads: each entry renders a `Profile` to text;
`BINARY_RENDERERS` those that render to bytes (pprof's gzipped protobuf).
"""

from __future__ import annotations

from typing import Protocol

from apiscope.exporters.base import Profile, Renderer
from apiscope.exporters.folded import FoldedRenderer
from apiscope.exporters.html import HtmlRenderer
from apiscope.exporters.pprof import PprofRenderer
from apiscope.exporters.speedscope import SpeedscopeRenderer
from apiscope.exporters.svg import SvgRenderer

RENDERERS: list[Renderer] = [SvgRenderer(), SpeedscopeRenderer(), FoldedRenderer(),
                             HtmlRenderer()]


class BinaryRenderer(Protocol):
    """One export format whose file is not text."""

    name: str
    suffix: str

    def render(self, profile: Profile) -> bytes: ...


BINARY_RENDERERS: list[BinaryRenderer] = [PprofRenderer()]
FORMATS = [r.name for r in RENDERERS] + [r.name for r in BINARY_RENDERERS]


def renderer(name: str) -> Renderer:
    for candidate in RENDERERS:
        if candidate.name == name:
            return candidate
    raise KeyError(name)


def any_renderer(name: str) -> Renderer | BinaryRenderer:
    """The renderer of any format, text or binary."""
    for candidate in BINARY_RENDERERS:
        if candidate.name == name:
            return candidate
    return renderer(name)


__all__ = ["BINARY_RENDERERS", "FORMATS", "RENDERERS", "BinaryRenderer", "Profile", "Renderer",
           "any_renderer", "renderer"]
