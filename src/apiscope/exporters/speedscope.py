"""The speedscope file format (https://www.speedscope.app/file-format-schema.json).

One `sampled` profile per process and thread, sharing one frame table. The session holds sample
counts per sampling window, not a timeline of single samples, so each profile lists every
distinct stack once (in stack order) with its count as the weight and `unit: "none"`:
speedscope's "Left Heavy" and "Sandwich" views are exact, and "Time Order" shows the stacks
grouped rather than in the order they ran.
"""

from __future__ import annotations

import json
from typing import Any

from apiscope import __version__
from apiscope.exporters.base import Profile
from apiscope.model import Frame, StackSample

SCHEMA_URL = "https://www.speedscope.app/file-format-schema.json"


def _thread_name(sample: StackSample) -> str:
    name = f" {sample.thread_name}" if sample.thread_name else ""
    return f"pid {sample.pid} thread {sample.tid:#x}{name}"


def speedscope_document(profile: Profile) -> dict[str, Any]:
    frame_index: dict[Frame, int] = {}
    frames: list[dict[str, Any]] = []
    threads: dict[tuple[int, int], dict[tuple[int, ...], int]] = {}
    names: dict[tuple[int, int], str] = {}
    for s in profile.samples:
        if s.count <= 0:
            continue
        indices = []
        for frame in s.frames:
            index = frame_index.get(frame)
            if index is None:
                index = frame_index[frame] = len(frames)
                frames.append({"name": frame.function, "file": frame.file, "line": frame.line})
            indices.append(index)
        stacks = threads.setdefault((s.pid, s.tid), {})
        stacks[tuple(indices)] = stacks.get(tuple(indices), 0) + s.count
        names.setdefault((s.pid, s.tid), _thread_name(s))
    profiles = [_sampled_profile(names[key], threads[key]) for key in sorted(threads)]
    return {
        "$schema": SCHEMA_URL,
        "shared": {"frames": frames},
        "profiles": profiles,
        "name": profile.title,
        "activeProfileIndex": 0,
        "exporter": f"apiscope {__version__}",
    }


def _sampled_profile(name: str, stacks: dict[tuple[int, ...], int]) -> dict[str, Any]:
    ordered = sorted(stacks)
    weights = [stacks[key] for key in ordered]
    return {
        "type": "sampled",
        "name": name,
        "unit": "none",
        "startValue": 0,
        "endValue": sum(weights),
        "samples": [list(key) for key in ordered],
        "weights": weights,
    }


def render_speedscope(profile: Profile) -> str:
    return json.dumps(speedscope_document(profile), separators=(",", ":"))


class SpeedscopeRenderer:
    name = "speedscope"
    suffix = ".speedscope.json"

    def render(self, profile: Profile) -> str:
        return render_speedscope(profile)
