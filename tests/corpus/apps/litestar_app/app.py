"""Notes API: sync handlers on the thread pool, async ones on the loop (CORPUS_PLANTED adds three
report handlers with planted bottlenecks)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import aiosqlite
from litestar import Controller, Litestar, Router, get, post
from litestar.exceptions import NotFoundException

from .store import connect, database_path


@dataclass
class NoteIn:
    notebook_id: int
    title: str
    body: str


class NoteController(Controller):
    path = "/notes"

    @get("/", sync_to_thread=True)
    def list_notes(self, notebook_id: int = 1, limit: int = 20,
                   offset: int = 0) -> list[dict[str, Any]]:
        with connect() as conn:
            rows = conn.execute("SELECT id, title FROM note WHERE notebook_id = ? ORDER BY id"
                                " LIMIT ? OFFSET ?", (notebook_id, limit, offset)).fetchall()
        return [dict(row) for row in rows]

    @get("/{note_id:int}")
    async def get_note(self, note_id: int) -> dict[str, Any]:
        async with aiosqlite.connect(database_path()) as conn:
            conn.row_factory = aiosqlite.Row
            async with conn.execute("SELECT * FROM note WHERE id = ?", (note_id,)) as cursor:
                row = await cursor.fetchone()
        if row is None:
            raise NotFoundException(f"no note {note_id}")
        return dict(row)

    @post("/", sync_to_thread=True)
    def create_note(self, data: NoteIn) -> dict[str, Any]:
        with connect() as conn:
            cursor = conn.execute("INSERT INTO note (notebook_id, title, body) VALUES (?, ?, ?)",
                                  (data.notebook_id, data.title, data.body))
        return {"id": cursor.lastrowid, "title": data.title}


@get("/notebooks/{notebook_id:int}/stats", sync_to_thread=True)
def notebook_stats(notebook_id: int) -> dict[str, Any]:
    with connect() as conn:
        count, newest = conn.execute("SELECT count(*), max(created) FROM note"
                                     " WHERE notebook_id = ?", (notebook_id,)).fetchone()
    return {"notebook_id": notebook_id, "notes": count, "newest": newest}


@get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


AUDIT_CALL_SECONDS = 0.03


@get("/audit")
async def audit() -> dict[str, str]:
    time.sleep(AUDIT_CALL_SECONDS)  # planted: event_loop_blocked wait
    return {"status": "recorded"}


# 4,000 rounds: about 20 ms of CPU on the loop per request. (400 rounds, 2 ms, is an async
# handler's ordinary work, not a bottleneck: nothing should flag it.)
@get("/wordcount/{notebook_id:int}")
async def word_count(notebook_id: int, rounds: int = 4000) -> dict[str, int]:
    text = f"notebook {notebook_id} holds words and more words " * 20
    words = 0
    for _ in range(rounds):
        words += len([w for w in text.split() if w.isalpha()])  # planted: event_loop_blocked cpu
    return {"notebook_id": notebook_id, "words": words}


@get("/export/{notebook_id:int}", sync_to_thread=True)
def export_notebook(notebook_id: int) -> dict[str, Any]:
    with connect() as conn:
        rows = conn.execute("SELECT title, created FROM note WHERE notebook_id = ? ORDER BY id",
                            (notebook_id,)).fetchall()
    # An empty notebook has no newest note: IndexError, which Litestar answers 500 for itself.
    newest = rows[-1]["created"]  # planted: error_rate error
    return {"notebook_id": notebook_id, "notes": [row["title"] for row in rows],
            "newest": newest}


handlers: list[Any] = [NoteController, notebook_stats, health]
if os.environ.get("CORPUS_PLANTED", "").lower() in {"1", "true", "yes"}:
    handlers.append(Router(path="/reports", route_handlers=[audit, word_count,
                                                            export_notebook]))
app = Litestar(route_handlers=handlers)
