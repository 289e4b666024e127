"""`uvicorn tests.corpus.apps.fastapi_pg.main:app` (DATABASE_URL, REDIS_URL, CORPUS_PLANTED)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.routing import APIRoute

from .api.main import api_router
from .core.config import settings


def custom_generate_unique_id(route: APIRoute) -> str:
    return f"{route.tags[0]}-{route.name}"


app = FastAPI(title=settings.PROJECT_NAME, openapi_url=f"{settings.API_V1_STR}/openapi.json",
              generate_unique_id_function=custom_generate_unique_id)
app.include_router(api_router, prefix=settings.API_V1_STR)
