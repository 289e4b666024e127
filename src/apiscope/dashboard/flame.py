"""Flamegraph data for the browser: a pruned call tree and the top functions of a slice.

The tree itself is the exporters' (`apiscope.exporters.tree`) and each frame's kind is
`apiscope.frames`', so the dashboard draws exactly what an export writes, coloured as the report
judges its frames. Pruning happens here, on the server: a browser drawing more than a few
thousand boxes becomes sluggish, so small children are merged into "other" and the threshold is
raised until the tree fits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from apiscope.exporters.tree import FlameNode, prune, tree_from_stacks, walk
from apiscope.frames import Kind, frame_kind, is_app_frame
from apiscope.model import Frame, RouteInfo

MIN_SHARE = 0.002  # children under 0.2% of all samples are merged into "other"
MAX_NODES = 2500

FramesOf = Callable[[int], tuple[Frame, ...]]
# A box's kind: a frame's (`apiscope.frames.Kind`), or "other" for a box that is no code.
BoxKind = Kind | Literal["other"]


# The endpoint page starts its flamegraph at the handler: the forty-odd frames of the server,
# the event loop and the framework above it are the same for every endpoint. Stacks that never
# reach the app's code (routing, validation, serialisation) are folded into this one box.
FRAMEWORK = Frame("server and framework", "", 0)


def kind_of(frame: Frame, app_roots: Sequence[str]) -> BoxKind:
    """App code, an installed library or the standard library (`apiscope.frames`, as the
    report and the exports judge it); "other" for a frame with no location."""
    return frame_kind(frame, app_roots) or "other"


def from_handler(frames: tuple[Frame, ...], route: RouteInfo | None,
                 app_roots: Sequence[str]) -> tuple[Frame, ...]:
    """`frames` from the endpoint's handler down; from the first application frame when the
    handler is not in them (a dependency, a background task); `(FRAMEWORK,)` when no frame is
    the app's."""
    if route is not None:
        function = route.handler.rpartition(":")[2].rpartition(".")[2]
        for index, frame in enumerate(frames):
            if frame.function == function and frame.file == route.file:
                return frames[index:]
    for index, frame in enumerate(frames):
        if is_app_frame(frame, app_roots):
            return frames[index:]
    return (FRAMEWORK,)


def stacks_of(counts: Mapping[int, int], frames_of: FramesOf) -> dict[tuple[Frame, ...], int]:
    out: dict[tuple[Frame, ...], int] = {}
    for stack_id, count in counts.items():
        frames = frames_of(stack_id)
        out[frames] = out.get(frames, 0) + count
    return out


def pruned_tree(counts: Mapping[int, int], frames_of: FramesOf,
                max_nodes: int = MAX_NODES) -> FlameNode:
    """The call tree of the counted stacks, small enough for the browser."""
    tree = tree_from_stacks(stacks_of(counts, frames_of))
    share = MIN_SHARE
    pruned = prune(tree, share)
    while node_count(pruned) > max_nodes and share < 0.2:
        share *= 2
        pruned = prune(tree, share)
    return pruned


def node_count(tree: FlameNode) -> int:
    return sum(1 for _ in walk(tree))


@dataclass(frozen=True, slots=True)
class FunctionRow:
    function: str
    file: str
    kind: BoxKind
    self_count: int
    total_count: int


def top_functions(counts: Mapping[int, int], frames_of: FramesOf, app_roots: Sequence[str],
                  limit: int = 25) -> tuple[list[FunctionRow], int]:
    """The functions with the most samples of their own (self), with their inclusive totals,
    and the number of samples they were computed over."""
    self_counts: dict[tuple[str, str], int] = {}
    totals: dict[tuple[str, str], int] = {}
    all_samples = 0
    for stack_id, count in counts.items():
        frames = frames_of(stack_id)
        all_samples += count
        if not frames:
            continue
        leaf = (frames[-1].function, frames[-1].file)
        self_counts[leaf] = self_counts.get(leaf, 0) + count
        # A recursive function counts once per stack in its total.
        for key in {(f.function, f.file) for f in frames}:
            totals[key] = totals.get(key, 0) + count
    ranked = sorted(totals, key=lambda k: (-self_counts.get(k, 0), -totals[k], k))[:limit]
    rows = [FunctionRow(fn, file, kind_of(Frame(fn, file, 0), app_roots),
                        self_counts.get((fn, file), 0), totals[(fn, file)])
            for fn, file in ranked]
    return rows, all_samples
