"""The notes store: one SQLite file (NOTES_DB), opened per request as small services do."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

SCHEMA = """
CREATE TABLE IF NOT EXISTS notebook (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS note (
    id INTEGER PRIMARY KEY,
    notebook_id INTEGER NOT NULL REFERENCES notebook(id),
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    created REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
);
CREATE INDEX IF NOT EXISTS note_notebook ON note(notebook_id);
"""


def database_path() -> str:
    return os.environ.get("NOTES_DB", "notes.sqlite3")


@contextmanager
def connect() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(database_path(), timeout=5)
    conn.row_factory = sqlite3.Row
    try:
        with conn:  # commits on success, rolls back on error
            yield conn
    finally:
        conn.close()


def create_schema(notebooks: int = 20, notes: int = 2000) -> None:
    with connect() as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)
        if conn.execute("SELECT count(*) FROM note").fetchone()[0]:
            return
        conn.executemany("INSERT INTO notebook (id, name) VALUES (?, ?)",
                         [(n, f"Notebook {n}") for n in range(1, notebooks + 1)])
        conn.executemany("INSERT INTO note (notebook_id, title, body) VALUES (?, ?, ?)",
                         [(1 + n % notebooks, f"Note {n}", f"Body of note {n}. " * 8)
                          for n in range(1, notes + 1)])


if __name__ == "__main__":
    create_schema()
