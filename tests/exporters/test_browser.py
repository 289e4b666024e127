"""The flamegraph in a real headless Chromium: it renders, a click zooms, search highlights."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apiscope.exporters.diff import render_diff_svg
from apiscope.exporters.html import render_page
from apiscope.exporters.svg import INNER_WIDTH, render_svg
from apiscope.exporters.tree import FlameNode, build_tree
from apiscope.model import StackSample
from tests.exporters.sessions import (
    IDLE_STACK,
    ITEMS_LOAD_STACK,
    ITEMS_STACK,
    LOAD,
    READ_ITEM,
    SELECT,
    WORKER_STACK,
)
from tests.support import require_program, wait_until

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--window-size=1300,900")


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    chromium = require_program("chromium")
    chromedriver = require_program("chromedriver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    browser = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    try:
        yield browser
    finally:
        browser.quit()


def tree() -> FlameNode:
    return build_tree([StackSample(1, 1, "", ITEMS_STACK, 30),
                       StackSample(1, 1, "", ITEMS_LOAD_STACK, 20),
                       StackSample(1, 1, "", IDLE_STACK, 40),
                       StackSample(1, 2, "", WORKER_STACK, 10)])


def png_colours(png: bytes) -> dict[tuple[int, ...], int]:
    """Pixel count per colour of an 8-bit RGB/RGBA, non-interlaced PNG (what Chromium writes)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, data, header = 8, b"", b""
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        kind, body = png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]
        header = body if kind == b"IHDR" else header
        data += body if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour_type in (2, 6) and interlace == 0
    bpp = 4 if colour_type == 6 else 3
    raw, stride = zlib.decompress(data), width * bpp
    previous, counts = bytearray(stride), dict[tuple[int, ...], int]()
    for y in range(height):
        row = y * (stride + 1)
        filt, line = raw[row], bytearray(raw[row + 1:row + 1 + stride])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, corner = previous[i], previous[i - bpp] if i >= bpp else 0
            if filt == 1:
                line[i] = (line[i] + left) & 255
            elif filt == 2:
                line[i] = (line[i] + up) & 255
            elif filt == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif filt == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else
                                      corner)) & 255
        for x in range(0, stride, bpp * 4):  # every fourth pixel is plenty
            colour = tuple(line[x:x + 3])
            counts[colour] = counts.get(colour, 0) + 1
        previous = line
    return counts


def frame(driver: Any, name: str) -> Any:
    from selenium.webdriver.common.by import By

    for g in driver.find_elements(By.CSS_SELECTOR, "g.frame"):
        if g.get_attribute("data-n") == name:
            return g
    raise AssertionError(f"no frame {name!r}")


def rect_width(g: Any) -> float:
    return float(g.find_element("css selector", "rect").get_attribute("width"))


def test_svg_renders_zooms_and_searches(driver: Any, tmp_path: Path) -> None:
    path = tmp_path / "flame.svg"
    path.write_text(render_svg(tree(), "browser test"), encoding="utf-8")
    driver.get(path.as_uri())
    wait_until(lambda: driver.execute_script(
        "return !!document.documentElement.flamegraph"), timeout=20, what="the graph's script")

    colours = png_colours(driver.get_screenshot_as_png())
    background = max(colours, key=lambda c: colours[c])
    drawn = sum(n for c, n in colours.items() if c != background)
    assert len(colours) > 10 and drawn > 0.02 * sum(colours.values())

    item, select = frame(driver, READ_ITEM.label()), frame(driver, SELECT.label())
    assert abs(rect_width(item) - INNER_WIDTH * 0.5) < 0.01
    item.find_element("css selector", "rect").click()
    wait_until(lambda: abs(rect_width(item) - INNER_WIDTH) < 0.01, timeout=10,
               what="the clicked frame to fill the width")
    assert abs(rect_width(frame(driver, LOAD.label())) - INNER_WIDTH * 0.4) < 0.01
    assert not select.is_displayed()
    assert "hidden" not in (driver.find_element("css selector", ".reset").get_attribute("class"))

    driver.find_element("css selector", ".reset").click()
    wait_until(lambda: abs(rect_width(item) - INNER_WIDTH * 0.5) < 0.01, timeout=10,
               what="reset zoom")
    assert select.is_displayed()

    driver.find_element("css selector", ".search").click()
    alert = wait_until(lambda: _alert(driver), timeout=10, what="the search prompt")
    alert.send_keys("read_item|EpollSelector")
    alert.accept()
    matched = driver.find_element("css selector", ".matched")
    wait_until(lambda: matched.text.startswith("Matched: 90.0%"), timeout=10,
               what="the matched share")
    fills = {g.get_attribute("data-n"): g.find_element("css selector", "rect").get_attribute(
        "fill") for g in driver.find_elements("css selector", "g.frame.match")}
    assert fills == {READ_ITEM.label(): "rgb(230,0,230)", SELECT.label(): "rgb(230,0,230)"}


def _alert(driver: Any) -> Any:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        alert = driver.switch_to.alert
        _ = alert.text
        return alert
    except NoAlertPresentException:
        return None


def test_html_page_search_box_and_zoom(driver: Any, tmp_path: Path) -> None:
    path = tmp_path / "page.html"
    path.write_text(render_page(tree(), None, "page test"), encoding="utf-8")
    driver.get(path.as_uri())
    wait_until(lambda: driver.execute_script(
        "return !!document.querySelector('.graph svg').flamegraph"), timeout=20,
        what="the graph's script")
    box = driver.find_element("id", "flame-search")
    box.send_keys("main\\.py")  # read_item and load, nested: counted once
    box.submit()
    matched = driver.find_element("css selector", ".matched")
    wait_until(lambda: matched.text.startswith("Matched: 50.0%"), timeout=10,
               what="the matched share")
    assert len(driver.find_elements("css selector", "g.frame.match")) == 2

    item = frame(driver, READ_ITEM.label())
    item.find_element("css selector", "rect").click()
    wait_until(lambda: abs(rect_width(item) - INNER_WIDTH) < 0.01, timeout=10,
               what="the clicked frame to fill the width")


def test_diff_svg_zooms(driver: Any, tmp_path: Path) -> None:
    base = build_tree([StackSample(1, 1, "", ITEMS_STACK, 50),
                       StackSample(1, 1, "", IDLE_STACK, 50)])
    path = tmp_path / "diff.svg"
    path.write_text(render_diff_svg(base, tree()), encoding="utf-8")
    driver.get(path.as_uri())
    wait_until(lambda: driver.execute_script(
        "return !!document.documentElement.flamegraph"), timeout=20, what="the graph's script")
    item = frame(driver, READ_ITEM.label())
    item.find_element("css selector", "rect").click()
    wait_until(lambda: abs(rect_width(item) - INNER_WIDTH) < 0.01, timeout=10,
               what="the clicked frame to fill the width")
    assert not frame(driver, SELECT.label()).is_displayed()
