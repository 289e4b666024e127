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
from apiscope.model import ProfileNode, StoredProfile

AWAIT_FRAME = "[await]"
INTERVAL = 0.001  # the agent's default sampling interval, for pyinstrument's header

Records = list[tuple[list[str], float]]


def frame_records(tree: ProfileNode) -> Records:
    """pyinstrument frame records (root-first identifiers, seconds) equivalent to `tree`."""
    records: Records = []
    stack: list[tuple[ProfileNode, list[str]]] = [(tree, [])]
    while stack:
        node, parent_path = stack.pop()
        path = [*parent_path, _identifier(node)]
        own = node.time_ms - node.await_ms - sum(c.time_ms for c in node.children)
        if own > 1e-9:
            records.append((path, own / 1e3))
        if node.await_ms > 0:
            records.append(([*path, AWAIT_FRAME], node.await_ms / 1e3))
        stack.extend((child, path) for child in reversed(node.children))
    return records


def _identifier(node: ProfileNode) -> str:
    # pyinstrument's frame info: function NUL file NUL line, then attributes after SOH
    # (`l` the executing line). The request's synthetic root gets a file pyinstrument shows.
    file = node.file or "<request>"
    return f"{node.function or '?'}\x00{file}\x00{node.line}\x01l{node.line}"


def library_prefixes(tree: ProfileNode) -> list[str]:
    """The installation directories of the files in `tree`, which pyinstrument treats as
    library code (the target's sys.prefix is not known here)."""
    return sorted({d for d in (install_dir(node.file) for node in tree.walk()) if d})


def pyinstrument_session(profile: StoredProfile) -> Any:
    """A pyinstrument `Session` rebuilt from a stored profile (one with a call tree)."""
    from pyinstrument.session import Session  # the collector side always has pyinstrument

    tree = profile.tree
    if tree is None:
        raise ValueError(f"the profile of {profile.endpoint} has no call tree")
    records = frame_records(tree)
    awaited = sum(seconds for path, seconds in records if path[-1] == AWAIT_FRAME)
    duration = (tree.time_ms or profile.duration_ms) / 1e3
    title = profile.endpoint
    if profile.pid:
        title += f" (pid {profile.pid})"
    return Session(frame_records=records, start_time=profile.start,
                   duration=duration, min_interval=INTERVAL, max_interval=INTERVAL,
                   sample_count=len(records), target_description=title,
                   # the request's root frame: pyinstrument trims the tree above it
                   start_call_stack=[_identifier(tree)],
                   cpu_time=max(0.0, duration - awaited), sys_path=[],
                   sys_prefixes=library_prefixes(tree))


def render_profile_html(profile: StoredProfile) -> str:
    """pyinstrument's standalone HTML page for one request."""
    from pyinstrument.renderers import HTMLRenderer

    return str(HTMLRenderer().render(pyinstrument_session(profile)))


def render_profile_speedscope(profile: StoredProfile) -> str:
    """The request as a speedscope file (pyinstrument's evented speedscope export)."""
    from pyinstrument.renderers import SpeedscopeRenderer

    return str(SpeedscopeRenderer().render(pyinstrument_session(profile)))


def profile_filename(profile: StoredProfile, suffix: str) -> str:
    """`GET-items-item_id-quote-1234-1764126000123.html`: a safe, distinct download name."""
    route = re.sub(r"[^A-Za-z0-9_]+", "-", profile.route).strip("-")
    stamp = int(profile.start * 1000)
    stem = f"{profile.method}-{route or 'root'}-{profile.pid}-{stamp}"
    return str(PurePath(stem).name) + suffix
