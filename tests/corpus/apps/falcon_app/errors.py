"""Domain errors and the error handlers registered on the app."""

from __future__ import annotations

import logging
from typing import Any

import falcon
import falcon.asgi
from falcon.asgi import Request, Response
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger("falcon_app.errors")


class ServiceError(Exception):
    status = falcon.HTTP_400
    code = "bad_request"

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(ServiceError):
    status = falcon.HTTP_404
    code = "not_found"


class Unprocessable(ServiceError):
    status = falcon.HTTP_422
    code = "unprocessable"


def _body(req: Request, code: str, message: str, **extra: object) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra},
            "request_id": getattr(req.context, "request_id", None)}


async def handle_service_error(req: Request, resp: Response, ex: ServiceError,
                               params: dict[str, Any]) -> None:
    resp.status = ex.status
    resp.media = _body(req, ex.code, ex.message, **ex.details)


async def handle_validation_error(req: Request, resp: Response, ex: ValidationError,
                                  params: dict[str, Any]) -> None:
    resp.status = falcon.HTTP_422
    resp.media = _body(req, "invalid_body", "request body failed validation",
                       fields=[{"loc": list(e["loc"]), "msg": e["msg"]} for e in ex.errors()])


async def handle_db_error(req: Request, resp: Response, ex: SQLAlchemyError,
                          params: dict[str, Any]) -> None:
    log.exception("database error on %s %s", req.method, req.path)
    resp.status = falcon.HTTP_503
    resp.media = _body(req, "db_unavailable", "database error, retry later")


def register(app: falcon.asgi.App[Request, Response]) -> None:
    app.add_error_handler(ServiceError, handle_service_error)
    app.add_error_handler(ValidationError, handle_validation_error)
    app.add_error_handler(SQLAlchemyError, handle_db_error)
