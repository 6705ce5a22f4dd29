"""One JSON error envelope for every failure: ServiceError, FastAPI validation errors, HTTP
errors (unknown route, wrong method), oversized bodies and unexpected exceptions."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from keel.types.errors import ErrorBody, ErrorCode
from keel_server.services.errors import ServiceError, is_database_blip

log = logging.getLogger(__name__)

# The generic code of an HTTP error raised by the framework (unknown route, wrong method, ...).
_CODE_OF_STATUS: dict[int, ErrorCode] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    422: "validation_error",
    429: "rate_limited",
}


_DESCRIPTION = {
    400: "The body could not be read.",
    401: "Missing, unknown or revoked key.",
    403: "This kind of key may not do this (e.g. a reward token).",
    404: "No such resource in the caller's project.",
    409: "The resource's state forbids it; `state` says which.",
    413: "The body is over this route's limit.",
    422: "A field, parameter or header is invalid; `errors` lists each.",
    429: "A project quota; retry after `Retry-After` seconds.",
    503: "The broker refused the job; it is stored as failed.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` documenting the envelope for these statuses."""
    return {s: {"model": ErrorBody, "description": _DESCRIPTION[s]} for s in statuses}


# What a request that met a database blip tells the client to wait before sending it again.
DB_RETRY_AFTER_S = 1

# What any authenticated route may answer besides its success.
ROUTE_ERRORS = error_responses(400, 401, 403, 404, 409, 413, 422, 429)


def envelope(
    status: int,
    code: ErrorCode,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = ErrorBody(code=code, detail=detail, **extra).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service(_: Request, exc: ServiceError) -> JSONResponse:
        retry = exc.retry_after_s
        headers = {"Retry-After": str(max(1, math.ceil(retry)))} if retry is not None else None
        return envelope(
            exc.status, exc.code, exc.detail, headers=headers, errors=exc.errors, state=exc.state
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [_field_error(e) for e in exc.errors()]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return envelope(422, "validation_error", f"{where}: {first['msg']}", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODE_OF_STATUS.get(exc.status_code, "bad_request")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return envelope(exc.status_code, code, str(exc.detail), headers=headers or None)

    @app.exception_handler(DBAPIError)
    async def _database(request: Request, exc: DBAPIError) -> JSONResponse:
        if not is_database_blip(exc):
            return await _unexpected(request, exc)
        # A restart or failover dropped the connection (the pool's pre-ping replaces it at the
        # next checkout) or the database does not answer yet: the request's transaction was
        # rolled back, so the client may send it again (the SDK retries a 503).
        log.warning("database unavailable: %s", exc.orig)
        return envelope(
            503,
            "unavailable",
            "the database is unavailable (a restart or failover?); retry shortly",
            headers={"Retry-After": str(DB_RETRY_AFTER_S)},
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        # Starlette re-raises the exception after this response and the server then drops the
        # connection: say so, or a keep-alive client would send its next request into it.
        return envelope(
            500,
            "internal_error",
            f"internal error ({type(exc).__name__})",
            headers={"Connection": "close"},
        )


def method_table(
    includes: Sequence[tuple[APIRouter, str]],
) -> list[tuple[re.Pattern, frozenset[str]]]:
    """(path regex, methods) of every route the app includes, for the `Allow` of a 405 (RFC
    9110: it names every method the path takes; Starlette's names only the first route's, and
    GET and POST of one path are two routes)."""
    return [
        (compile_path(prefix + route.path)[0], frozenset(getattr(route, "methods", None) or ()))
        for router, prefix in includes
        for route in router.routes
    ]


def _allowed_methods(request: Request) -> list[str]:
    table = getattr(request.app.state, "method_table", [])
    path = request.scope.get("path", "")
    return sorted({m for regex, methods in table if regex.match(path) for m in methods})


def _field_error(err: dict) -> dict:
    # pydantic's messages already list the valid choices of a Literal or a discriminator.
    msg = err.get("msg", "invalid")
    return {"loc": list(err.get("loc", [])), "msg": msg, "type": err.get("type", "value_error")}
