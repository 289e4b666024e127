"""The compact profile tree the agent ships: a profile's records merged, folded and capped.

The shipped tree (see `compact_tree`) is `{"function", "file", "line", "time_ms", "await_ms",
"children"}` per node: `line` is the line executing in that frame, `time_ms` the node's
inclusive wall time and `await_ms` the time the request was suspended with this frame as the
innermost awaiting one. The root is a synthetic node (`file` "") named after the request.
It stays plain dicts and lists: it goes to the collector as standard-library JSON.
"""

from __future__ import annotations

from typing import Any

from .profiler import ANCHOR, AWAIT, ProfilingOptions, Records, below_anchor


class _Node:
    __slots__ = ("function", "file", "line", "time", "awaited", "children")

    def __init__(self, function: str, file: str, line: int) -> None:
        self.function, self.file, self.line = function, file, line
        self.time = 0.0
        self.awaited = 0.0  # own await time
        self.children: dict[tuple[str, str, int], _Node] = {}

    def child(self, key: tuple[str, str, int]) -> _Node:
        node = self.children.get(key)
        if node is None:
            node = self.children[key] = _Node(*key)
        return node


def parse_frame(info: str) -> tuple[str, str, int]:
    """(function, file, executing line) of one pyinstrument frame-info string."""
    identifier, *attributes = info.split("\x01")
    parts = identifier.split("\x00")
    function = parts[0]
    file = parts[1] if len(parts) > 1 else ""
    line = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 0
    for attribute in attributes:
        if attribute.startswith("l") and attribute[1:].isdigit():
            line = int(attribute[1:])
        elif attribute.startswith("c") and attribute[1:] not in ("", "NoneType"):
            function = f"{attribute[1:]}.{parts[0]}"
    return function, file, line


def build_tree(records: Records, name: str,
               anchor: tuple[str, str, int] = ANCHOR) -> _Node:
    """The full call tree below the anchor frame, merged by (function, file, executing line)."""
    root = _Node(name, "", 0)
    parsed: dict[str, tuple[str, str, int]] = {}
    for stack, seconds in records:
        frames = below_anchor(stack, anchor)
        awaiting = bool(frames) and frames[-1] == AWAIT
        node = root
        node.time += seconds
        for info in frames[:-1] if awaiting else frames:
            key = parsed.get(info)
            if key is None:
                key = parsed[info] = parse_frame(info)
            node = node.child(key)
            node.time += seconds
        if awaiting:
            node.awaited += seconds
    return root


def compact_tree(records: Records, name: str, duration_ms: float,
                 options: ProfilingOptions | None = None,
                 anchor: tuple[str, str, int] = ANCHOR) -> dict[str, Any]:
    """The shipped tree: nodes below max(`min_node_ms`, `min_node_share` of the request) are
    folded into their parent (their await time stays await time), then only the `max_nodes`
    largest nodes are kept. Times are milliseconds."""
    options = options or ProfilingOptions()
    root = build_tree(records, name, anchor)
    floor = max(options.min_node_ms, options.min_node_share * max(duration_ms, root.time * 1e3))
    keep = _largest(root, floor / 1e3, options.max_nodes)
    return _export(root, keep)


def _largest(root: _Node, floor: float, limit: int) -> set[int]:
    """ids of the nodes to keep: at most `limit`, each at least `floor` seconds, ancestors of
    kept nodes kept (a child never outweighs its parent, so largest-first keeps them closed)."""
    candidates: list[tuple[float, int, _Node, _Node]] = []
    stack: list[tuple[_Node, int]] = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        for child in node.children.values():
            if child.time >= floor:
                candidates.append((child.time, depth, child, node))
                stack.append((child, depth + 1))
    candidates.sort(key=lambda c: (-c[0], c[1]))
    keep = {id(root)}
    for _, _, child, parent in candidates:
        if len(keep) > limit:
            break
        if id(parent) in keep:
            keep.add(id(child))
    return keep


def _export(node: _Node, keep: set[int]) -> dict[str, Any]:
    children, folded = [], 0.0
    for child in sorted(node.children.values(), key=lambda c: -c.time):
        if id(child) in keep:
            children.append(_export(child, keep))
        else:
            folded += _subtree_await(child)
    return {"function": node.function, "file": node.file, "line": node.line,
            "time_ms": round(node.time * 1e3, 3),
            "await_ms": round((node.awaited + folded) * 1e3, 3), "children": children}


def _subtree_await(node: _Node) -> float:
    return node.awaited + sum(_subtree_await(c) for c in node.children.values())


__all__ = ["build_tree", "compact_tree", "parse_frame"]
