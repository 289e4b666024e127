from __future__ import annotations

from fastapi import APIRouter

from ...core.config import settings

router = APIRouter(prefix="/utils", tags=["utils"])


@router.get("/health-check/")
async def health_check() -> bool:
    return True


@router.get("/version")
async def version() -> dict[str, str]:
    return {"name": settings.PROJECT_NAME, "version": "1.4.2"}
