"""Brendan Gregg's collapsed stacks: `root;...;leaf COUNT`, one line per distinct stack.

Frames are written as py-spy writes them (`function (file:line)`), root first, so the output
feeds flamegraph.pl, inferno and speedscope like py-spy's own `--format raw`. Stacks are kept as
sampled: no process or thread frame is added unless `Profile.threads` asks for one. Lines are
sorted, so exporting the same slice twice gives the same bytes.
"""

from __future__ import annotations

from apiscope.exporters.base import Profile
from apiscope.exporters.tree import frame_label
from apiscope.model import Frame

# A thread sampled with no Python frame (a native thread, or one between frames): every line
# must name a stack, so it gets this synthetic frame rather than an empty one.
NO_FRAMES = Frame("[no Python frames]", "", 0)


def _clean(label: str) -> str:
    # `;` separates frames and a newline ends the record: neither may appear inside a frame.
    return label.replace(";", ":").replace("\n", " ")


def render_folded(profile: Profile) -> str:
    labels: dict[Frame, str] = {}
    lines: dict[str, int] = {}
    for frames, count in profile.stacks().items():
        parts = []
        for frame in frames or (NO_FRAMES,):
            label = labels.get(frame)
            if label is None:
                label = labels[frame] = _clean(frame_label(frame))
            parts.append(label)
        key = ";".join(parts)
        lines[key] = lines.get(key, 0) + count
    return "".join(f"{key} {lines[key]}\n" for key in sorted(lines) if lines[key] > 0)


class FoldedRenderer:
    name = "folded"
    suffix = ".folded"

    def render(self, profile: Profile) -> str:
        return render_folded(profile)
