"""The speedscope output checked against the required fields of the published schema
(https://www.speedscope.app/file-format-schema.json), written out by hand."""

from __future__ import annotations

import json
from typing import Any

from apiscope.exporters.base import Profile
from apiscope.exporters.speedscope import SCHEMA_URL, render_speedscope
from apiscope.model import StackSample
from tests.exporters.sessions import IDLE_STACK, ITEMS_LOAD_STACK, ITEMS_STACK, WORKER_STACK

UNITS = {"none", "nanoseconds", "microseconds", "milliseconds", "seconds", "bytes"}


def check_speedscope_file(doc: dict[str, Any]) -> None:
    assert doc["$schema"] == SCHEMA_URL
    frames = doc["shared"]["frames"]
    assert isinstance(frames, list)
    for frame in frames:
        assert isinstance(frame["name"], str)
        assert isinstance(frame.get("file", ""), str)
        assert isinstance(frame.get("line", 0), int)
    assert isinstance(doc["profiles"], list)
    for profile in doc["profiles"]:
        assert profile["type"] == "sampled"
        assert isinstance(profile["name"], str)
        assert profile["unit"] in UNITS
        assert isinstance(profile["startValue"], (int, float))
        assert isinstance(profile["endValue"], (int, float))
        samples, weights = profile["samples"], profile["weights"]
        assert len(samples) == len(weights)
        for stack in samples:
            assert all(isinstance(i, int) and 0 <= i < len(frames) for i in stack)
        assert all(isinstance(w, (int, float)) and w >= 0 for w in weights)
        assert profile["endValue"] - profile["startValue"] == sum(weights)
    if "activeProfileIndex" in doc:
        assert 0 <= doc["activeProfileIndex"] < len(doc["profiles"])


def test_one_sampled_profile_per_thread_with_shared_frames() -> None:
    profile = Profile([StackSample(1, 7, "MainThread", ITEMS_STACK, 30),
                       StackSample(1, 7, "MainThread", ITEMS_LOAD_STACK, 20),
                       StackSample(1, 8, "worker", WORKER_STACK, 4),
                       StackSample(2, 7, "MainThread", IDLE_STACK, 6),
                       StackSample(2, 7, "MainThread", IDLE_STACK, 1)], title="t")
    doc = json.loads(render_speedscope(profile))
    check_speedscope_file(doc)
    assert doc["name"] == "t"
    names = [p["name"] for p in doc["profiles"]]
    assert names == ["pid 1 thread 0x7 MainThread", "pid 1 thread 0x8 worker",
                     "pid 2 thread 0x7 MainThread"]
    frames = doc["shared"]["frames"]
    assert len(frames) == len({*ITEMS_LOAD_STACK, *WORKER_STACK, *IDLE_STACK})

    def stacks(p: dict[str, Any]) -> dict[tuple[tuple[str, str, int], ...], int]:
        return {tuple((frames[i]["name"], frames[i]["file"], frames[i]["line"]) for i in s): w
                for s, w in zip(p["samples"], p["weights"], strict=True)}

    def key(stack: tuple[Any, ...]) -> tuple[tuple[str, str, int], ...]:
        return tuple((f.function, f.file, f.line) for f in stack)

    assert stacks(doc["profiles"][0]) == {key(ITEMS_STACK): 30, key(ITEMS_LOAD_STACK): 20}
    assert stacks(doc["profiles"][1]) == {key(WORKER_STACK): 4}
    assert stacks(doc["profiles"][2]) == {key(IDLE_STACK): 7}
    assert doc["profiles"][0]["endValue"] == 50


def test_output_is_deterministic() -> None:
    samples = [StackSample(1, 7, "", ITEMS_STACK, 3), StackSample(1, 7, "", IDLE_STACK, 2)]
    assert render_speedscope(Profile(samples)) == render_speedscope(Profile(samples))
