"""One request's async profile as pyinstrument's own HTML page, or as a speedscope file.

The agent ships a compact call tree (see `apiscope.agent.profiletree`), not pyinstrument's raw
frame records. The tree holds what a pyinstrument `Session` needs: each node's self time becomes
one frame record on the node's path, and its own await time one record ending in pyinstrument's
`[await]` frame. pyinstrument's renderers then draw the request as pyinstrument would have
(library frames grouped, await time shown under the awaiting frame).
"""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Any

from apiscope.frames import install_dir

AWAIT_FRAME = "[await]"
INTERVAL = 0.001  # the agent's default sampling interval, for pyinstrument's header

Records = list[tuple[list[str], float]]


def frame_records(tree: dict[str, Any]) -> Records:
    """pyinstrument frame records (root-first identifiers, seconds) equivalent to `tree`."""
    records: Records = []
    stack: list[tuple[dict[str, Any], list[str]]] = [(tree, [])]
    while stack:
        node, parent_path = stack.pop()
        path = [*parent_path, _identifier(node)]
        children = [c for c in node.get("children") or () if isinstance(c, dict)]
        awaited = float(node.get("await_ms") or 0.0)
        own = float(node.get("time_ms") or 0.0) - awaited - sum(
            float(c.get("time_ms") or 0.0) for c in children)
        if own > 1e-9:
            records.append((path, own / 1e3))
        if awaited > 0:
            records.append(([*path, AWAIT_FRAME], awaited / 1e3))
        stack.extend((child, path) for child in reversed(children))
    return records


def _identifier(node: dict[str, Any]) -> str:
    # pyinstrument's frame info: function NUL file NUL line, then attributes after SOH
    # (`l` the executing line). The request's synthetic root gets a file pyinstrument shows.
    file = str(node.get("file") or "") or "<request>"
    line = int(node.get("line") or 0)
    return f"{node.get('function') or '?'}\x00{file}\x00{line}\x01l{line}"


def library_prefixes(tree: dict[str, Any]) -> list[str]:
    """The installation directories of the files in `tree`, which pyinstrument treats as
    library code (the target's sys.prefix is not known here)."""
    found: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        directory = install_dir(str(node.get("file") or ""))
        if directory:
            found.add(directory)
        stack.extend(c for c in node.get("children") or () if isinstance(c, dict))
    return sorted(found)


def pyinstrument_session(profile: dict[str, Any]) -> Any:
    """A pyinstrument `Session` rebuilt from a stored profile
    (`{"pid", "start", "method", "route", "duration_ms", "tree"}`)."""
    from pyinstrument.session import Session  # the collector side always has pyinstrument

    tree = profile["tree"]
    records = frame_records(tree)
    awaited = sum(seconds for path, seconds in records if path[-1] == AWAIT_FRAME)
    duration = float(tree.get("time_ms") or profile.get("duration_ms") or 0.0) / 1e3
    title = f"{profile['method']} {profile['route']}"
    if profile.get("pid"):
        title += f" (pid {profile['pid']})"
    return Session(frame_records=records, start_time=float(profile.get("start") or 0.0),
                   duration=duration, min_interval=INTERVAL, max_interval=INTERVAL,
                   sample_count=len(records), target_description=title,
                   # the request's root frame: pyinstrument trims the tree above it
                   start_call_stack=[_identifier(tree)],
                   cpu_time=max(0.0, duration - awaited), sys_path=[],
                   sys_prefixes=library_prefixes(tree))


def render_profile_html(profile: dict[str, Any]) -> str:
    """pyinstrument's standalone HTML page for one request."""
    from pyinstrument.renderers import HTMLRenderer

    return str(HTMLRenderer().render(pyinstrument_session(profile)))


def render_profile_speedscope(profile: dict[str, Any]) -> str:
    """The request as a speedscope file (pyinstrument's evented speedscope export)."""
    from pyinstrument.renderers import SpeedscopeRenderer

    return str(SpeedscopeRenderer().render(pyinstrument_session(profile)))


def profile_filename(profile: dict[str, Any], suffix: str) -> str:
    """`GET-items-item_id-quote-1234-1764126000123.html`: a safe, distinct download name."""
    route = re.sub(r"[^A-Za-z0-9_]+", "-", str(profile.get("route") or "")).strip("-")
    stamp = int(float(profile.get("start") or 0.0) * 1000)
    stem = f"{profile.get('method', 'GET')}-{route or 'root'}-{profile.get('pid', 0)}-{stamp}"
    return str(PurePath(stem).name) + suffix
