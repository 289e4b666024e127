"""The portal's articles and comments: one SQLite file (APP_DB), a connection per call."""

from __future__ import annotations

import os
import random
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS article (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    author TEXT NOT NULL,
    body TEXT NOT NULL,
    tags TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS comment (
    id INTEGER PRIMARY KEY,
    article_id INTEGER NOT NULL REFERENCES article(id),
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS comment_article ON comment(article_id);
"""
WORDS = ("async", "python", "server", "latency", "queue", "thread", "cache", "index", "query",
         "profile", "request", "worker", "socket", "kernel", "memory", "buffer")


def database_path() -> str:
    return os.environ.get("APP_DB", "portal.sqlite3")


@contextmanager
def connect() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(database_path(), timeout=5)
    conn.row_factory = sqlite3.Row
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def latest(limit: int) -> list[dict[str, Any]]:
    with connect() as conn:
        rows = conn.execute("SELECT id, title, author, tags FROM article ORDER BY id DESC"
                            " LIMIT ?", (limit,)).fetchall()
    return [dict(row) for row in rows]


def article(article_id: int) -> dict[str, Any] | None:
    with connect() as conn:
        row = conn.execute("SELECT * FROM article WHERE id = ?", (article_id,)).fetchone()
        if row is None:
            return None
        comments = conn.execute("SELECT body FROM comment WHERE article_id = ? LIMIT 20",
                                (article_id,)).fetchall()
    return {**dict(row), "comments": [c["body"] for c in comments]}


def search(term: str, limit: int) -> list[dict[str, Any]]:
    with connect() as conn:
        rows = conn.execute("SELECT id, title FROM article WHERE title LIKE ? ORDER BY id"
                            " LIMIT ?", (f"%{term}%", limit)).fetchall()
    return [dict(row) for row in rows]


def bodies(limit: int) -> list[str]:
    with connect() as conn:
        rows = conn.execute("SELECT body FROM article ORDER BY id LIMIT ?", (limit,)).fetchall()
    return [row["body"] for row in rows]


def add_comment(article_id: int, body: str) -> None:
    with connect() as conn:
        conn.execute("INSERT INTO comment (article_id, body) VALUES (?, ?)", (article_id, body))


def create(articles: int = 1500) -> None:
    rnd = random.Random(7)
    with connect() as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)
        if conn.execute("SELECT count(*) FROM article").fetchone()[0]:
            return
        conn.executemany(
            "INSERT INTO article (title, author, body, tags) VALUES (?, ?, ?, ?)",
            [(" ".join(rnd.choices(WORDS, k=5)).capitalize(), f"author{rnd.randint(1, 40)}",
              " ".join(rnd.choices(WORDS, k=300)), ",".join(rnd.sample(WORDS, 3)))
             for _ in range(articles)])


if __name__ == "__main__":
    create()
