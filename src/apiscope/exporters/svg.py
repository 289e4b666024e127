"""A standalone interactive flamegraph SVG, in the tradition of flamegraph.pl, py-spy and inferno.

Root at the bottom, callees above, widths proportional to samples. The embedded script zooms on
a click (the frame and its callees fill the width, its callers stay as full-width bars), resets
the zoom, searches by regular expression (or plain text when the expression does not compile),
highlights matches and shows their share of all samples. Colours tell the application's code
(warm) from installed libraries (aqua) and the standard library (yellowish grey), each frame's
kind judged by `apiscope.frames` as the report and the dashboard judge it.

Boxes narrower than 0.1 px are left out (with their callees, which are narrower still): a
million-sample profile stays a file a browser opens at once.
"""

from __future__ import annotations

import html
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources

from apiscope.exporters.base import Profile
from apiscope.exporters.tree import FlameNode
from apiscope.frames import FrameKinds, Kind

WIDTH = 1200
FRAME_HEIGHT = 16
PAD_X = 10
PAD_TOP = 50
PAD_BOTTOM = 28
FONT_SIZE = 12
CHAR_WIDTH = 7.3  # of the 12 px monospace font: used to fit labels in boxes
MIN_WIDTH_PX = 0.1
INNER_WIDTH = WIDTH - 2 * PAD_X

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


@dataclass(frozen=True, slots=True)
class Box:
    """One frame to draw: position and width are fractions of the whole graph."""

    depth: int
    x: float
    width: float
    label: str
    tip: str
    fill: str


def escape(text: str) -> str:
    """Text safe in XML content and attribute values (control characters XML 1.0 forbids are
    replaced, since file and function names come from the profiled process)."""
    return html.escape(_CONTROL.sub("?", text), quote=True)


def fit_label(label: str, width_px: float) -> str:
    chars = int((width_px - 6) / CHAR_WIDTH)
    if chars < 3:
        return ""
    return label if len(label) <= chars else label[: chars - 2] + ".."


# -- colours ------------------------------------------------------------------------------------


def _shade(name: str) -> float:
    # The same function keeps its colour across exports: hash the name, not the position.
    return (zlib.crc32(name.encode("utf-8", "replace")) % 1000) / 1000


def fill_for(kind: Kind | None, function: str, shade: float | None = None) -> str:
    v = _shade(function) if shade is None else shade
    if kind is None:  # the "all" root, process/thread roots, the pruned "other"
        grey = int(190 + 30 * v)
        return f"rgb({grey},{grey},{grey})"
    if kind == "app":  # warm, like flamegraph.pl's "hot" palette
        return f"rgb({int(205 + 50 * v)},{int(230 * (1 - v) * 0.6 + 40)},{int(55 * v)})"
    if kind == "library":  # aqua
        return f"rgb({int(50 + 60 * v)},{int(165 + 55 * v)},{int(165 + 55 * v)})"
    grey = int(175 + 45 * v)  # stdlib: yellowish grey
    return f"rgb({grey},{grey},{int(grey * 0.75)})"


# -- layout -------------------------------------------------------------------------------------


def flame_boxes(tree: FlameNode, kinds: FrameKinds | None = None) -> list[Box]:
    """The boxes of a call tree, pre-order, leaving out those narrower than 0.1 px; `kinds`
    tells each frame's kind (without the session's app roots when not given)."""
    kinds = kinds or FrameKinds()
    total = tree.value
    if total <= 0:
        return []
    boxes: list[Box] = []
    pending: list[tuple[FlameNode, int, int]] = [(tree, 0, 0)]
    while pending:
        node, depth, offset = pending.pop()
        width = node.value / total
        if width * INNER_WIDTH < MIN_WIDTH_PX:
            continue
        boxes.append(Box(depth, offset / total, width, node.name, _tip(node, total),
                         fill_for(kinds(node.frame), node.function)))
        children = []
        start = offset
        for child in node.sorted_children():
            children.append((child, depth + 1, start))
            start += child.value
        pending.extend(reversed(children))
    return boxes


def _tip(node: FlameNode, total: int) -> str:
    share = 100 * node.value / total
    self_share = 100 * node.self_value / total
    return (f"{node.name}\n{node.value:,} samples, {share:.2f}% of all"
            f" (self {node.self_value:,}, {self_share:.2f}%)")


# -- the document -------------------------------------------------------------------------------


def _script() -> str:
    text = resources.files("apiscope.exporters").joinpath("templates/flamegraph.js").read_text(
        encoding="utf-8")
    return text.replace("]]>", "]] >")  # cannot end the CDATA section early


def _frame_element(box: Box, y_of: Sequence[float]) -> str:
    x = PAD_X + box.x * INNER_WIDTH
    w = box.width * INNER_WIDTH
    label = escape(box.label)
    return (f'<g class="frame" data-x="{box.x:.7f}" data-w="{box.width:.7f}"'
            f' data-d="{box.depth}" data-n="{label}"><title>{escape(box.tip)}</title>'
            f'<rect x="{x:.2f}" y="{y_of[box.depth]:.1f}" width="{w:.2f}"'
            f' height="{FRAME_HEIGHT - 1}" fill="{box.fill}" rx="2" ry="2"/>'
            f'<text x="{x + 3:.2f}" y="{y_of[box.depth] + FRAME_HEIGHT - 4.5:.1f}">'
            f"{escape(fit_label(box.label, w))}</text></g>")


_STYLE = (
    "text{font-family:monospace;font-size:12px;fill:#000}"
    " .frame:hover rect{stroke:#000;stroke-width:0.5;cursor:pointer}"
    " .frame text{pointer-events:none}"
    " .control{cursor:pointer;fill:#246}"
    " .control:hover{text-decoration:underline}"
    " .hidden{display:none}"
    " .parent rect{opacity:0.55}"
    " .title{font-size:16px;text-anchor:middle}"
)


def svg_document(boxes: Iterable[Box], *, title: str, subtitle: str = "",
                 legend: Sequence[tuple[str, str]] = (), standalone: bool = True) -> str:
    """The SVG text around the boxes: title, controls, legend, the frames and the script."""
    boxes = list(boxes)
    depth = max((b.depth for b in boxes), default=0) + 1
    height = PAD_TOP + depth * FRAME_HEIGHT + PAD_BOTTOM
    # Root at the bottom: depth 0 sits just above the details line.
    y_of = [height - PAD_BOTTOM - (d + 1) * FRAME_HEIGHT for d in range(depth)]
    parts = []
    if standalone:
        parts.append('<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n')
    parts.append(
        f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" class="flamegraph"'
        f' width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}"'
        f' data-width="{WIDTH}" data-pad="{PAD_X}" data-char="{CHAR_WIDTH}">\n'
        f"<style>{_STYLE}</style>\n"
        f'<rect class="background" x="0" y="0" width="{WIDTH}" height="{height}"'
        ' fill="#f8f8f2"/>\n'
        f'<text class="title" x="{WIDTH / 2}" y="22">{escape(title)}</text>\n'
        f'<text class="subtitle" x="{WIDTH / 2}" y="40" style="text-anchor:middle">'
        f"{escape(subtitle)}</text>\n"
        f'<text class="control reset hidden" x="{PAD_X}" y="22">Reset Zoom</text>\n'
        f'<text class="control search" x="{WIDTH - PAD_X}" y="22"'
        ' style="text-anchor:end">Search</text>\n'
        f'<text class="matched" x="{WIDTH - PAD_X}" y="{height - 8}"'
        ' style="text-anchor:end"></text>\n'
        f'<text class="details" x="{PAD_X}" y="{height - 8}"> </text>\n')
    parts.extend(_legend(legend))
    parts.append('<g class="frames">\n')
    parts.extend(_frame_element(b, y_of) + "\n" for b in boxes)
    parts.append("</g>\n")
    parts.append(f'<script type="text/ecmascript"><![CDATA[\n{_script()}\n]]></script>\n')
    parts.append("</svg>\n")
    return "".join(parts)


def _legend(entries: Sequence[tuple[str, str]]) -> list[str]:
    out = []
    x = PAD_X
    for name, fill in entries:
        out.append(f'<rect class="legend" x="{x}" y="32" width="10" height="10" fill="{fill}"/>'
                   f'<text x="{x + 14}" y="41">{escape(name)}</text>\n')
        x += 14 + int(len(name) * CHAR_WIDTH) + 14
    return out


FLAME_LEGEND = (("app", fill_for("app", "", 0.5)), ("library", fill_for("library", "", 0.5)),
                ("stdlib", fill_for("stdlib", "", 0.5)))


def render_svg(tree: FlameNode, title: str = "Flame Graph", *, standalone: bool = True,
               app_roots: Sequence[str] = ()) -> str:
    """The interactive flamegraph of a call tree (`standalone=False` for inlining in HTML);
    `app_roots` are the session's (see `apiscope.analysis.attribution.app_roots`)."""
    subtitle = f"{tree.value:,} samples"
    return svg_document(flame_boxes(tree, FrameKinds(app_roots)), title=title, subtitle=subtitle,
                        legend=FLAME_LEGEND, standalone=standalone)


class SvgRenderer:
    name = "svg"
    suffix = ".svg"

    def render(self, profile: Profile) -> str:
        return render_svg(profile.tree(), profile.title, app_roots=profile.app_roots)
