"""A flag: one bottleneck the analysis found, as typed data.

The rules build flags; the report, the diff, the session file, `/metrics`, the dashboard and
the CLI read them. Every one of those layers reads the same fields by name, so a flag is a
frozen dataclass rather than a dict, and it sits at the bottom of the layers (beside
`apiscope.model`) because the store, which imports nothing above the model, reads stored
flags back as `Flag`s.

The report's JSON shape of a flag is a public format: it is written by `Flag.to_json` and
read by `Flag.from_json`, and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# A figure of a flag's `metric`: a number, a word (a cause, a source, an exception type), None
# when unknown, or counts by name (the error rate's statuses).
MetricValue = float | int | str | None | Mapping[str, int]
Metric = Mapping[str, MetricValue]


@dataclass(frozen=True, slots=True)
class Location:
    """Where a flag points: a line of a file as the target process sees it.

    `line` and `function` may be unknown (None), the file never is: a flag without a file has
    no location at all.
    """

    file: str
    line: int | None
    function: str | None

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "function": self.function}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Location:
        return cls(data["file"], data.get("line"), data.get("function"))


@dataclass(frozen=True, slots=True)
class Flag:
    """One flagged bottleneck, with the figures that raised it and what to do about it.

    `metric` is a mapping (so not hashable): the flag's measured figures, by name.
    """

    kind: str
    severity: str  # "low", "medium" or "high"
    route: str | None  # None: no route explains it (a whole process, or no route table)
    location: Location | None
    evidence: str
    metric: Metric
    suggestion: str

    def to_json(self) -> dict[str, Any]:
        """The report's shape of the flag, keys in the report's order."""
        return {"kind": self.kind, "severity": self.severity, "route": self.route,
                "location": None if self.location is None else self.location.to_json(),
                "evidence": self.evidence, "metric": metric_to_json(self.metric),
                "suggestion": self.suggestion}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Flag:
        """A flag from the report's shape of it (`to_json`'s inverse)."""
        where = data.get("location")
        return cls(data["kind"], data["severity"], data.get("route"),
                   Location.from_json(where) if where else None, data.get("evidence", ""),
                   dict(data.get("metric") or {}), data.get("suggestion", ""))


def metric_to_json(metric: Metric) -> dict[str, Any]:
    """A flag's figures as plain JSON objects, in their order."""
    return {name: dict(value) if isinstance(value, Mapping) else value
            for name, value in metric.items()}
