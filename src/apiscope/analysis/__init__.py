"""Analysis of a session: attribution, statistics, rules, the report and session diffs."""

from __future__ import annotations

from apiscope.analysis.attribution import RouteMatcher, is_app_frame, user_frame

__all__ = ["RouteMatcher", "is_app_frame", "user_frame"]
