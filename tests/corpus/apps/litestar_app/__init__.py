"""A Litestar 2 notes service on SQLite: `uvicorn tests.corpus.apps.litestar_app.app:app`."""
