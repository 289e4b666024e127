"""The aggregated call tree every flamegraph format is drawn from.

A `FlameNode` is one frame in one calling context: `value` counts the samples whose stack passes
through it, `self_value` those whose stack ends in it. Children are keyed by the frame's label as
py-spy writes it (`function (file:line)`), so two stacks share a node exactly when py-spy would
print the same prefix.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from apiscope.model import Frame, StackSample

ROOT_NAME = "all"
OTHER_NAME = "other"


def frame_label(frame: Frame) -> str:
    """py-spy's label; synthetic frames (a thread or process root) carry no location."""
    if not frame.file and frame.line == 0:
        return frame.function
    return f"{frame.function} ({frame.file}:{frame.line})"


@dataclass(slots=True)
class FlameNode:
    """One frame in one calling context, with its inclusive and exclusive sample counts."""

    name: str
    function: str
    file: str = ""
    line: int = 0
    value: int = 0
    self_value: int = 0
    children: dict[str, FlameNode] = field(default_factory=dict)

    @property
    def frame(self) -> Frame:
        return Frame(self.function, self.file, self.line)

    def child(self, frame: Frame, name: str) -> FlameNode:
        node = self.children.get(name)
        if node is None:
            node = self.children[name] = FlameNode(name, frame.function, frame.file, frame.line)
        return node

    def sorted_children(self) -> list[FlameNode]:
        """Children in label order: the deterministic left-to-right order of every format."""
        return [self.children[key] for key in sorted(self.children)]


def new_root() -> FlameNode:
    return FlameNode(ROOT_NAME, ROOT_NAME)


def aggregate_stacks(samples: Iterable[StackSample]) -> dict[tuple[Frame, ...], int]:
    """Total count per distinct stack.

    The session reader hands out one shared tuple per distinct stack, so the first pass keys on
    the tuple's identity (cheap) and only the distinct tuples are then hashed by content; a
    reader that builds fresh tuples still gets the right answer, just more slowly.
    """
    frames_by_id: dict[int, tuple[Frame, ...]] = {}
    counts_by_id: dict[int, int] = {}
    for sample in samples:
        key = id(sample.frames)
        if key in counts_by_id:
            counts_by_id[key] += sample.count
        else:
            # Holding the tuple keeps its id from being reused while we aggregate.
            frames_by_id[key] = sample.frames
            counts_by_id[key] = sample.count
    totals: dict[tuple[Frame, ...], int] = {}
    for key, frames in frames_by_id.items():
        totals[frames] = totals.get(frames, 0) + counts_by_id[key]
    return totals


def tree_from_stacks(stacks: dict[tuple[Frame, ...], int]) -> FlameNode:
    """The call tree of distinct stacks with their counts (frames root first)."""
    root = new_root()
    labels: dict[Frame, str] = {}
    for frames, count in stacks.items():
        if count <= 0:
            continue
        node = root
        node.value += count
        for frame in frames:
            name = labels.get(frame)
            if name is None:
                name = labels[frame] = frame_label(frame)
            node = node.child(frame, name)
            node.value += count
        node.self_value += count
    return root


def build_tree(samples: Iterable[StackSample]) -> FlameNode:
    """The call tree of the samples, rooted at a node named "all"."""
    return tree_from_stacks(aggregate_stacks(samples))


def prune(tree: FlameNode, min_share: float) -> FlameNode:
    """A copy of the tree where, under each node, the children holding less than `min_share`
    of the root's samples are merged into one "other" leaf (keeps a browser view light)."""
    threshold = tree.value * min_share
    return _pruned(tree, threshold)


def _pruned(node: FlameNode, threshold: float) -> FlameNode:
    copy = FlameNode(node.name, node.function, node.file, node.line, node.value,
                     node.self_value)
    small = [c for c in node.sorted_children() if c.value < threshold]
    for child in node.sorted_children():
        if child.value >= threshold:
            copy.children[child.name] = _pruned(child, threshold)
    if small:
        other = copy.children.setdefault(OTHER_NAME, FlameNode(OTHER_NAME, OTHER_NAME))
        total = sum(c.value for c in small)
        other.value += total
        other.self_value += total
    return copy


def walk(tree: FlameNode) -> Iterable[tuple[int, FlameNode]]:
    """(depth, node) for every node, depth-first in label order; the root has depth 0."""
    stack = [(0, tree)]
    while stack:
        depth, node = stack.pop()
        yield depth, node
        stack.extend((depth + 1, c) for c in reversed(node.sorted_children()))


# -- differential trees -------------------------------------------------------------------------


@dataclass(slots=True)
class DiffNode:
    """One frame of two profiles: shares are fractions of each profile's own total samples."""

    name: str
    function: str
    file: str = ""
    line: int = 0
    base: float = 0.0
    new: float = 0.0
    base_self: float = 0.0
    new_self: float = 0.0
    base_count: int = 0
    new_count: int = 0
    children: dict[str, DiffNode] = field(default_factory=dict)

    @property
    def delta(self) -> float:
        """Change of the inclusive share, new minus base (positive: grew)."""
        return self.new - self.base

    @property
    def width(self) -> float:
        """The mean of both shares: additive down the tree, so vanished and new frames both
        stay visible and children never outgrow their parent."""
        return (self.base + self.new) / 2

    def sorted_children(self) -> list[DiffNode]:
        return [self.children[key] for key in sorted(self.children)]


def diff_trees(base: FlameNode, new: FlameNode) -> DiffNode:
    """Merge two call trees into one with each side normalized by its own total."""
    root = DiffNode(ROOT_NAME, ROOT_NAME)
    _merge_side(root, base, max(base.value, 1), is_new=False)
    _merge_side(root, new, max(new.value, 1), is_new=True)
    return root


def _merge_side(target: DiffNode, source: FlameNode, total: int, *, is_new: bool) -> None:
    pending = [(target, source)]
    while pending:
        dst, src = pending.pop()
        if is_new:
            dst.new, dst.new_self, dst.new_count = (src.value / total,
                                                    src.self_value / total, src.value)
        else:
            dst.base, dst.base_self, dst.base_count = (src.value / total,
                                                       src.self_value / total, src.value)
        for name, child in src.children.items():
            node = dst.children.get(name)
            if node is None:
                node = dst.children[name] = DiffNode(name, child.function, child.file, child.line)
            pending.append((node, child))


def build_diff_tree(base_samples: Iterable[StackSample],
                    new_samples: Iterable[StackSample]) -> DiffNode:
    """The differential tree of two sample sets (each normalized by its own total)."""
    return diff_trees(build_tree(base_samples), build_tree(new_samples))
