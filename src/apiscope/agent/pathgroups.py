"""Route templates inferred from raw paths, for apps whose framework names no route.

Ids are what make one endpoint's paths differ, so a segment that looks like an id becomes a
placeholder: all digits `{int}`, a UUID `{uuid}`, a long hex string (hashes, object ids)
`{hex}`. `/items/42` and `/items/43` group as `/items/{int}`; `/about` stays `/about`.
"""

from __future__ import annotations

import re

_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
                   r"[0-9a-fA-F]{12}")
_HEX = re.compile(r"[0-9a-fA-F]{16,}")
MIN_HEX = 16  # shorter hex-looking words ("cafe", "added") are names, not ids


def segment_group(segment: str) -> str:
    """The placeholder for one path segment, or the segment itself."""
    if segment.isdigit():
        return "{int}"
    if len(segment) >= MIN_HEX:
        if _UUID.fullmatch(segment):
            return "{uuid}"
        if _HEX.fullmatch(segment):
            return "{hex}"
    return segment


def normalise_path(path: str) -> str:
    """`path` with its id-like segments replaced by placeholders."""
    return "/".join([segment_group(s) for s in path.split("/")])


class PathGrouper:
    """`normalise_path` with a bounded cache: most requests repeat a path seen before."""

    def __init__(self, limit: int = 4096) -> None:
        self._cache: dict[str, str] = {}
        self._limit = limit

    def __call__(self, path: str) -> str:
        found = self._cache.get(path)
        if found is None:
            found = normalise_path(path)
            if len(self._cache) >= self._limit:  # ids make raw paths unbounded
                self._cache.clear()
            self._cache[path] = found
        return found
