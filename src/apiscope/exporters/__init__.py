"""Flamegraph exports: one format per module, all drawn from the same sliced samples.

`RENDERERS` is the registry the CLI reads: each entry renders a `Profile` to text.
"""

from __future__ import annotations

from apiscope.exporters.base import Profile, Renderer
from apiscope.exporters.folded import FoldedRenderer
from apiscope.exporters.html import HtmlRenderer
from apiscope.exporters.speedscope import SpeedscopeRenderer
from apiscope.exporters.svg import SvgRenderer

RENDERERS: list[Renderer] = [SvgRenderer(), SpeedscopeRenderer(), FoldedRenderer(),
                             HtmlRenderer()]


def renderer(name: str) -> Renderer:
    for candidate in RENDERERS:
        if candidate.name == name:
            return candidate
    raise KeyError(name)


__all__ = ["RENDERERS", "Profile", "Renderer", "renderer"]
