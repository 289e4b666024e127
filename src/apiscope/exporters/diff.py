"""A differential flamegraph of two sessions (for `apiscope diff --format svg`).

Each side is normalized by its own total samples, so a longer or busier second session does not
read as growth everywhere. A box's width is the mean of its two shares (frames that vanished or
appeared stay visible, and callees never outgrow their caller); its colour is the change of its
inclusive share: red grew, blue shrank, white unchanged, saturated at the largest change.
"""

from __future__ import annotations

from apiscope.exporters.svg import INNER_WIDTH, MIN_WIDTH_PX, Box, svg_document
from apiscope.exporters.tree import DiffNode, FlameNode, diff_trees


def diff_fill(delta: float, scale: float) -> str:
    if scale <= 0 or delta == 0:
        return "rgb(250,250,250)"
    strength = min(1.0, abs(delta) / scale)
    fade = int(220 * (1 - strength))
    return f"rgb(255,{fade},{fade})" if delta > 0 else f"rgb({fade},{fade},255)"


def _tip(node: DiffNode) -> str:
    return (f"{node.name}\nbase {100 * node.base:.2f}% ({node.base_count:,} samples)"
            f" -> new {100 * node.new:.2f}% ({node.new_count:,} samples),"
            f" {100 * node.delta:+.2f} points")


def diff_boxes(tree: DiffNode) -> list[Box]:
    """The boxes of a differential tree, pre-order, leaving out those narrower than 0.1 px."""
    nodes: list[tuple[DiffNode, int, float]] = []
    pending: list[tuple[DiffNode, int, float]] = [(tree, 0, 0.0)]
    while pending:
        node, depth, offset = pending.pop()
        if node.width * INNER_WIDTH < MIN_WIDTH_PX:
            continue
        nodes.append((node, depth, offset))
        children = []
        start = offset
        for child in node.sorted_children():
            children.append((child, depth + 1, start))
            start += child.width
        pending.extend(reversed(children))
    scale = max((abs(n.delta) for n, d, _ in nodes if d > 0), default=0.0)
    return [Box(depth, offset, node.width, node.name, _tip(node), diff_fill(node.delta, scale))
            for node, depth, offset in nodes]


LEGEND = (("grew", diff_fill(1, 1)), ("shrank", diff_fill(-1, 1)), ("unchanged", diff_fill(0, 1)))


def render_diff_svg(base_tree: FlameNode, new_tree: FlameNode,
                    title: str = "Differential Flame Graph", *, standalone: bool = True) -> str:
    """The differential flamegraph of two call trees (from `build_tree`)."""
    subtitle = (f"base {base_tree.value:,} samples, new {new_tree.value:,} samples;"
                " widths: mean share, colour: change of share")
    return svg_document(diff_boxes(diff_trees(base_tree, new_tree)), title=title,
                        subtitle=subtitle, legend=LEGEND, standalone=standalone)
