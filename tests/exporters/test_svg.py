from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from apiscope.exporters.base import Profile
from apiscope.exporters.diff import render_diff_svg
from apiscope.exporters.svg import INNER_WIDTH, PAD_X, SvgRenderer, render_svg
from apiscope.exporters.tree import FlameNode, build_tree, walk
from apiscope.model import Frame, StackSample
from tests.exporters.sessions import (
    IDLE_STACK,
    ITEMS_LOAD_STACK,
    ITEMS_STACK,
    LOAD,
    READ_ITEM,
    RUN,
    SELECT,
    WORKER_STACK,
)

NS = {"s": "http://www.w3.org/2000/svg"}


def tree() -> FlameNode:
    return build_tree([StackSample(1, 1, "", ITEMS_STACK, 30),
                       StackSample(1, 1, "", ITEMS_LOAD_STACK, 20),
                       StackSample(1, 1, "", IDLE_STACK, 40),
                       StackSample(1, 2, "", WORKER_STACK, 10)])


def frames(svg: str) -> list[ET.Element]:
    root = ET.fromstring(svg.encode())
    return root.findall(".//s:g[@class='frame']", NS)


def by_name(svg: str) -> dict[str, ET.Element]:
    return {g.get("data-n", ""): g for g in frames(svg)}


def rgb(g: ET.Element) -> tuple[int, ...]:
    rect = g.find("s:rect", NS)
    assert rect is not None
    match = re.fullmatch(r"rgb\((\d+),(\d+),(\d+)\)", rect.get("fill", ""))
    assert match, rect.get("fill")
    return tuple(int(v) for v in match.groups())


def width(g: ET.Element) -> float:
    rect = g.find("s:rect", NS)
    assert rect is not None
    return float(rect.get("width", "nan"))


def test_svg_parses_and_has_one_rect_per_frame_with_proportional_widths() -> None:
    t = tree()
    svg = render_svg(t, "title")
    groups = frames(svg)
    assert len(groups) == sum(1 for _ in walk(t)) == 7
    assert all(len(g.findall("s:rect", NS)) == 1 for g in groups)
    named = by_name(svg)
    for _, node in walk(t):
        g = named[node.name]
        assert abs(width(g) - INNER_WIDTH * node.value / t.value) < 0.01
        assert f"{node.value:,} samples" in (g.findtext("s:title", "", NS))
    assert width(named["all"]) == INNER_WIDTH
    assert abs(width(named[READ_ITEM.label()]) / width(named[LOAD.label()]) - 50 / 20) < 1e-3
    tip = named[READ_ITEM.label()].findtext("s:title", "", NS)
    assert "50 samples, 50.00% of all (self 30, 30.00%)" in tip


def test_children_sit_side_by_side_above_their_parent() -> None:
    named = by_name(render_svg(tree()))

    def rect(label: str) -> ET.Element:
        r = named[label].find("s:rect", NS)
        assert r is not None
        return r

    root, run = rect("all"), rect(RUN.label())
    assert float(root.get("x", "")) == PAD_X
    # "_worker" sorts before "run": run starts after the worker's 10% of the width
    assert float(run.get("x", "")) == PAD_X + INNER_WIDTH * 0.1
    assert float(run.get("y", "")) < float(root.get("y", ""))  # callees above callers
    select, item = rect(SELECT.label()), rect(READ_ITEM.label())
    assert abs(float(select.get("x", "")) + float(select.get("width", ""))
               - float(item.get("x", ""))) < 0.02


def test_script_zooms_searches_and_resets() -> None:
    svg = render_svg(tree())
    script = ET.fromstring(svg.encode()).find("s:script", NS)
    assert script is not None and script.text
    for needed in ("function zoom", "function search", "new RegExp", "function resetZoom",
                   "Matched: ", "addEventListener(\"click\""):
        assert needed in script.text
    root = ET.fromstring(svg.encode())
    assert root.find(".//s:text[@class='control search']", NS) is not None


def test_colours_tell_app_library_and_stdlib_apart() -> None:
    named = by_name(render_svg(tree()))
    r, g, b = rgb(named[READ_ITEM.label()])  # app: warm
    assert r > 200 and r > g > b - 60
    r, g, b = rgb(named[RUN.label()])  # site-packages: aqua
    assert g > r + 40 and b > r + 40
    r, g, b = rgb(named[SELECT.label()])  # stdlib: yellowish grey
    assert r == g and b < r


def test_names_are_escaped() -> None:
    evil = Frame("<script>alert('x')</script> & \x01", "/a/<b>&\"c\".py", 3)
    svg = render_svg(build_tree([StackSample(1, 1, "", (evil,), 5)]), "<&>")
    assert "<script>alert" not in svg
    root = ET.fromstring(svg.encode())  # parses: the text is escaped, control chars replaced
    names = [g.get("data-n") for g in root.findall(".//s:g[@class='frame']", NS)]
    assert names[1] == "<script>alert('x')</script> & ? (/a/<b>&\"c\".py:3)"
    assert root.findtext(".//s:text[@class='title']", "", NS) == "<&>"


def test_boxes_narrower_than_a_tenth_of_a_pixel_are_left_out() -> None:
    tiny, small = Frame("tiny", "t.py", 1), Frame("small", "s.py", 1)
    t = build_tree([StackSample(1, 1, "", (RUN,), 100_000),
                    StackSample(1, 1, "", (RUN, tiny), 1),  # 0.012 px
                    StackSample(1, 1, "", (RUN, small), 10)])  # 0.118 px
    named = by_name(render_svg(t))
    assert small.label() in named and tiny.label() not in named


def test_long_labels_are_cut_to_fit() -> None:
    named = by_name(render_svg(tree()))
    item_text = named[LOAD.label()].findtext("s:text", "", NS)
    assert item_text == "" or LOAD.label().startswith(item_text.removesuffix(".."))
    assert named["all"].findtext("s:text", "", NS) == "all"


def test_renderer_uses_profile_title() -> None:
    svg = SvgRenderer().render(Profile([StackSample(1, 1, "", ITEMS_STACK, 1)], title="my t"))
    assert ET.fromstring(svg.encode()).findtext(".//s:text[@class='title']", "", NS) == "my t"


def test_diff_svg_colours_growth_red_and_shrinkage_blue() -> None:
    base = build_tree([StackSample(1, 1, "", ITEMS_STACK, 50),
                       StackSample(1, 1, "", IDLE_STACK, 50)])
    new = build_tree([StackSample(1, 1, "", ITEMS_STACK, 300),
                      StackSample(1, 1, "", IDLE_STACK, 100)])
    svg = render_diff_svg(base, new)
    named = by_name(svg)
    r, g, b = rgb(named[READ_ITEM.label()])
    assert r == 255 and g == b < 100  # grew 25 points: the largest change, saturated
    r, g, b = rgb(named[SELECT.label()])
    assert b == 255 and r == g < 100
    assert rgb(named[RUN.label()]) == (250, 250, 250)  # 100% on both sides
    assert "base 50.00% (50 samples) -> new 75.00% (300 samples), +25.00 points" in \
        named[READ_ITEM.label()].findtext("s:title", "", NS)
    assert abs(width(named[READ_ITEM.label()]) - INNER_WIDTH * 0.625) < 0.01


def test_diff_svg_shows_frames_of_one_side_only() -> None:
    base = build_tree([StackSample(1, 1, "", ITEMS_STACK, 10)])
    new = build_tree([StackSample(1, 1, "", IDLE_STACK, 10)])
    named = by_name(render_diff_svg(base, new))
    assert width(named[READ_ITEM.label()]) == width(named[SELECT.label()]) == INNER_WIDTH / 2
