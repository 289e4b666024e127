"""`python -m tests.corpus.apps.fastapi_pg.prestart`: create the tables and the first rows."""

from __future__ import annotations

from sqlmodel import Session

from .core.db import engine, init_db


def main() -> None:
    with Session(engine) as session:
        init_db(session)


if __name__ == "__main__":
    main()
