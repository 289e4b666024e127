"""The pprof export: its protobuf read back by hand, and by the real `go tool pprof`."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from apiscope.cli.main import main
from apiscope.exporters.base import Profile
from apiscope.exporters.pprof import render_pprof
from apiscope.model import Frame, SampleState, StackSample
from tests.exporters.sessions import ITEMS_LOAD_STACK, ITEMS_STACK, write_session

Message = dict[int, list[int | bytes]]


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def decode(data: bytes) -> Message:
    """Fields of one protobuf message: varints as ints, length-delimited ones as bytes."""
    fields: Message = {}
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        if key & 7 == 0:
            value, pos = _varint(data, pos)
            fields.setdefault(key >> 3, []).append(value)
        else:
            assert key & 7 == 2, f"unexpected wire type {key & 7}"
            size, pos = _varint(data, pos)
            fields.setdefault(key >> 3, []).append(data[pos:pos + size])
            pos += size
    return fields


def packed(data: int | bytes) -> list[int]:
    assert isinstance(data, bytes)
    out, pos = [], 0
    while pos < len(data):
        value, pos = _varint(data, pos)
        out.append(value)
    return out


def as_bytes(value: int | bytes) -> bytes:
    assert isinstance(value, bytes)
    return value


Decoded = tuple[list[str], list[int], dict[str, str]]


def read_profile(blob: bytes) -> tuple[list[str], list[Decoded]]:
    """The sample type names and each sample as (function names leaf first, values, labels)."""
    msg = decode(gzip.decompress(blob))
    strings = [as_bytes(s).decode() for s in msg[6]]
    types = [strings[decode(as_bytes(t))[1][0]] for t in msg[1]]  # type: ignore[index]
    functions = {}
    for raw in msg[5]:
        fn = decode(as_bytes(raw))
        functions[fn[1][0]] = strings[fn[2][0]]  # type: ignore[index]
    locations = {}
    for raw in msg[4]:
        loc = decode(as_bytes(raw))
        line = decode(as_bytes(loc[4][0]))
        locations[loc[1][0]] = functions[line[1][0]]
    samples = []
    for raw in msg[2]:
        sample = decode(as_bytes(raw))
        labels = {}
        for label in sample.get(3, []):
            fields = decode(as_bytes(label))
            labels[strings[fields[1][0]]] = strings[fields[2][0]]  # type: ignore[index]
        samples.append(([locations[i] for i in packed(sample[1][0])], packed(sample[2][0]),
                        labels))
    return types, samples


def test_sample_types_values_and_leaf_first_stacks() -> None:
    samples = [StackSample(1, 7, "MainThread", ITEMS_LOAD_STACK, 20),
               StackSample(1, 7, "MainThread", ITEMS_STACK, 5, SampleState.BLOCKED)]
    types, decoded = read_profile(render_pprof(Profile(samples, rate_hz=50)))
    assert types == ["samples", "cpu", "wall"]
    by_leaf = {names[0]: (names, values, labels) for names, values, labels in decoded}
    names, values, labels = by_leaf["load <rows> & co"]
    assert names == ["load <rows> & co", "read_item", "BaseEventLoop._run_once", "run"]
    assert values == [20, 20 * 20_000_000, 20 * 20_000_000]  # 50 Hz: 20 ms a sample
    assert labels == {"pid": "1", "thread": "7", "thread_name": "MainThread"}
    assert by_leaf["read_item"][1] == [5, 0, 5 * 20_000_000]  # blocked: wall time, no CPU


def test_route_label_and_empty_stack() -> None:
    samples = [StackSample(1, 7, "", ITEMS_STACK, 3), StackSample(1, 8, "", (), 4)]
    routes = {ITEMS_STACK: "GET /items/{item_id}"}
    _, decoded = read_profile(render_pprof(Profile(samples, endpoint_of=lambda f: routes.get(
        tuple(f)))))
    assert sorted((n[0], v[0], lab.get("route", "")) for n, v, lab in decoded) == [
        ("[no Python frames]", 4, ""), ("read_item", 3, "GET /items/{item_id}")]


def test_same_slice_same_bytes() -> None:
    samples = [StackSample(1, 7, "", (Frame("f", "a.py", 1),), 2)]
    assert render_pprof(Profile(samples)) == render_pprof(Profile(samples))


# -- the real go tool pprof -------------------------------------------------------------------

def go_binary() -> str:
    found = shutil.which("go")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("go is missing in CI: scripts/install-system-deps.sh installs golang-go")
        pytest.skip("go is not installed (Debian: apt-get install golang-go)")
    return found


def pprof_top(go: str, path: Path, *options: str) -> tuple[int, Counter[str]]:
    """`go tool pprof -top` of the samples: the total and each function's flat count."""
    out = subprocess.run([go, "tool", "pprof", "-top", "-sample_index=samples",
                          "-nodecount=1000", "-nodefraction=0", *options, str(path)],
                         capture_output=True, text=True, timeout=120, check=True,
                         env={**os.environ, "HOME": str(path.parent)}).stdout
    lines = out.splitlines()
    total = int(next(line for line in lines if "Total samples" in line).split("=")[1].split()[0])
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["flat"]) + 1
    flat: Counter[str] = Counter()
    for line in lines[start:]:
        parts = line.split(None, 5)
        if int(parts[0]):
            flat[parts[5]] += int(parts[0])
    return total, flat


def folded_leaves(text: str) -> tuple[int, Counter[str]]:
    """The folded export's total and its samples per leaf function."""
    leaves: Counter[str] = Counter()
    for line in text.splitlines():
        stack, count = line.rsplit(" ", 1)
        leaves[stack.split(";")[-1].rsplit(" (", 1)[0]] += int(count)
    return sum(leaves.values()), leaves


@pytest.mark.parametrize("slice_options, tagfocus", [
    ((), ()),
    (("--route", "GET /items/{item_id}"), ("-tagfocus", r"route=^GET /items/\{item_id\}$")),
    (("--pid", "200"), ("-tagfocus", "pid=^200$")),
])
def test_go_tool_pprof_reads_the_same_figures_as_folded(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], slice_options: tuple[str, ...],
        tagfocus: tuple[str, ...]) -> None:
    go = go_binary()
    session = write_session(tmp_path / "shop.sqlite")
    assert main(["export", str(session), "--format", "folded", *slice_options]) == 0
    total, leaves = folded_leaves(capsys.readouterr().out)
    exported = tmp_path / "all.pb.gz"
    assert main(["export", str(session), "--format", "pprof", "-o", str(exported)]) == 0
    # the whole session's file, narrowed in pprof by its labels, equals apiscope's own slice
    seen_total, flat = pprof_top(go, exported, *tagfocus)
    shown = sum(flat.values())
    assert (shown, flat) == (total, leaves) or (shown, flat) == (total, _pprof_names(leaves))
    assert seen_total == 171
    sliced = tmp_path / "slice.pb.gz"
    assert main(["export", str(session), "--format", "pprof", "-o", str(sliced),
                 *slice_options]) == 0
    assert pprof_top(go, sliced)[0] == total


def _pprof_names(leaves: Counter[str]) -> Counter[str]:
    # pprof shortens names for display as if they were C++ (drops `<...>` template arguments)
    return Counter({re.sub(r"<[^>]*>", "", k): v for k, v in leaves.items()})
