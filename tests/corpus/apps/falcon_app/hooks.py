"""Falcon hooks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import falcon
from falcon.asgi import Request, Response
from pydantic import BaseModel

Hook = Callable[[Request, Response, Any, dict[str, Any]], Awaitable[None]]


def validate_body(model: type[BaseModel]) -> Hook:
    """`@falcon.before(validate_body(Model))`: parse the JSON body into `req.context.payload`.
    A pydantic ValidationError propagates to the app's 422 handler."""

    async def hook(req: Request, resp: Response, resource: Any, params: dict[str, Any]) -> None:
        if req.content_length in (None, 0):
            raise falcon.HTTPBadRequest(title="missing body",
                                        description="a JSON body is required")
        media = await req.get_media()
        req.context.payload = model.model_validate(media)

    return hook
