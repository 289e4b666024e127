from __future__ import annotations

from fastapi import APIRouter

from ..core.config import settings
from .routes import items, login, reports, users, utils

api_router = APIRouter()
api_router.include_router(login.router)
api_router.include_router(users.router)
api_router.include_router(items.router)
api_router.include_router(utils.router)
if settings.PLANTED:
    api_router.include_router(reports.router)
