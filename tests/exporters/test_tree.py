from __future__ import annotations

from apiscope.exporters.tree import (
    OTHER_NAME,
    FlameNode,
    build_diff_tree,
    build_tree,
    prune,
    walk,
)
from apiscope.model import Frame, StackSample
from tests.exporters.sessions import (
    HEALTH,
    IDLE_STACK,
    ITEMS_LOAD_STACK,
    ITEMS_STACK,
    LOAD,
    LOOP,
    READ_ITEM,
    RUN,
    SELECT,
)


def sample(stack: tuple[Frame, ...], count: int, tid: int = 1) -> StackSample:
    return StackSample(1, tid, "MainThread", stack, count)


def test_build_tree_counts_inclusive_and_self_samples() -> None:
    tree = build_tree([sample(ITEMS_STACK, 30), sample(ITEMS_LOAD_STACK, 20),
                       sample(ITEMS_LOAD_STACK, 5, tid=2), sample(IDLE_STACK, 40)])
    assert (tree.name, tree.value, tree.self_value) == ("all", 95, 0)
    run = tree.children[RUN.label()]
    assert (run.value, run.function, run.file, run.line) == (95, RUN.function, RUN.file, RUN.line)
    loop = run.children[LOOP.label()]
    item = loop.children[READ_ITEM.label()]
    assert (item.value, item.self_value) == (55, 30)
    assert item.children[LOAD.label()].value == 25
    assert loop.children[SELECT.label()].value == 40
    assert sum(n.self_value for _, n in walk(tree)) == 95


def test_walk_is_depth_first_in_label_order() -> None:
    tree = build_tree([sample(IDLE_STACK, 1), sample(ITEMS_STACK, 1)])
    names = [(d, n.function) for d, n in walk(tree)]
    assert names == [(0, "all"), (1, "run"), (2, LOOP.function), (3, SELECT.function),
                     (3, READ_ITEM.function)]


def test_prune_merges_small_children_into_other() -> None:
    tree = build_tree([sample(IDLE_STACK, 90), sample(ITEMS_STACK, 6),
                       sample((RUN, LOOP, HEALTH), 4)])
    pruned = prune(tree, 0.05)
    loop = pruned.children[RUN.label()].children[LOOP.label()]
    assert set(loop.children) == {SELECT.label(), READ_ITEM.label(), OTHER_NAME}
    assert (loop.children[OTHER_NAME].value, loop.children[OTHER_NAME].self_value) == (4, 4)
    assert loop.value == 100
    # the original tree is left as it was
    assert HEALTH.label() in tree.children[RUN.label()].children[LOOP.label()].children
    assert prune(tree, 0.0).children[RUN.label()].children[LOOP.label()].children.keys() == \
        tree.children[RUN.label()].children[LOOP.label()].children.keys()


def test_diff_tree_normalizes_each_side_by_its_total() -> None:
    base = [sample(ITEMS_STACK, 50), sample(IDLE_STACK, 50)]
    new = [sample(ITEMS_STACK, 300), sample(IDLE_STACK, 100)]
    diff = build_diff_tree(base, new)
    loop = diff.children[RUN.label()].children[LOOP.label()]
    item, idle = loop.children[READ_ITEM.label()], loop.children[SELECT.label()]
    assert (item.base, item.new, item.delta) == (0.5, 0.75, 0.25)
    assert (idle.base, idle.new, idle.delta) == (0.5, 0.25, -0.25)
    assert (item.base_count, item.new_count) == (50, 300)
    assert diff.base == diff.new == 1.0


def test_diff_tree_keeps_frames_present_on_one_side_only() -> None:
    diff = build_diff_tree([sample(ITEMS_STACK, 10)], [sample(IDLE_STACK, 10)])
    loop = diff.children[RUN.label()].children[LOOP.label()]
    assert (loop.children[READ_ITEM.label()].base, loop.children[READ_ITEM.label()].new) == (1, 0)
    assert (loop.children[SELECT.label()].base, loop.children[SELECT.label()].new) == (0, 1)
    assert sum(c.width for c in loop.children.values()) == loop.width == 1.0


def test_empty_tree() -> None:
    tree = build_tree([])
    assert tree == FlameNode("all", "all")
