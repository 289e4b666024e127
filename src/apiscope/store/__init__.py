"""The session file: one SQLite database per session (WAL, schema version in user_version)."""

from __future__ import annotations

from apiscope.store.reader import SessionReader
from apiscope.store.schema import SCHEMA_VERSION
from apiscope.store.writer import SessionWriter

__all__ = ["SCHEMA_VERSION", "SessionReader", "SessionWriter"]
