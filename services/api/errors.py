"""How the API turns exceptions into ``{"error": {"code", "reason", "request_id"}}`` answers.

The API's own error types (``InvalidInput``, ``Duplicate``, ``InUse``) live here; errors
raised by other services arrive as the ``libs.errors`` classes and keep their codes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from libs import rpc
from libs.db import UNAVAILABLE_ERRORS, is_unavailable
from libs.errors import BadRequest, Conflict, ServiceUnavailable, TetsuError

LOG = logging.getLogger(__name__)


class InvalidInput(BadRequest):
    """A malformed body or parameter, or a reference to something that does not exist."""

    code = "invalid_input"


class Duplicate(Conflict):
    """A name or address that must be unique is taken."""

    code = "duplicate"


class InUse(Conflict):
    """The resource cannot be deleted or changed while something uses it."""

    code = "in_use"


#: Codes of plain HTTP errors raised by the framework (unknown route, wrong method).
_HTTP_CODES = {
    400: "invalid_input",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    503: "service_unavailable",
}


#: Seconds a client should wait before trying again after a 503 (the database or a
#: backend service is down): what the ``Retry-After`` header of every 503 says.
RETRY_AFTER_SECONDS = 5


def _retry_after(status: int) -> dict[str, str] | None:
    return {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None


def request_id_of(request: Request) -> str:
    """The id the middleware gave this request (``-`` if it never ran, e.g. in a bare app)."""
    return str(getattr(request.state, "request_id", "-"))


def error_response(
    status: int,
    code: str,
    reason: str,
    request_id: str,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"code": code, "reason": reason, "request_id": request_id}}
    return JSONResponse(body, status_code=status, headers=headers)


def _field_name(loc: Sequence[Any]) -> str:
    # FastAPI prefixes where the value came from ("body", "query", "path"); users know
    # their field by its name alone, so keep the rest ("networks.0", "properties.cpus").
    parts = [str(part) for part in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def validation_reason(errors: Sequence[Any]) -> str:
    """One line naming each invalid field and what is wrong with it."""
    reasons = []
    for error in errors:
        loc = error.get("loc", ())
        field = _field_name(loc)
        message = str(error.get("msg", "is invalid"))
        if error.get("type") == "extra_forbidden":
            message = "unknown field"
        elif error.get("type") == "json_invalid":
            # The location is a character offset in the body, not a field.
            detail = (error.get("ctx") or {}).get("error", "")
            offset = loc[1] if len(loc) > 1 else 0
            field, message = "body", f"not valid JSON at character {offset} ({detail})"
        reasons.append(f"{field}: {message}")
    return "; ".join(reasons) or "invalid input"


async def _tetsu_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TetsuError)
    if exc.status >= 500:
        LOG.warning("%s: %s", exc.code, exc.reason)
    return error_response(
        exc.status, exc.code, exc.reason, request_id_of(request), _retry_after(exc.status)
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    reason = validation_reason(exc.errors())
    return error_response(400, InvalidInput.code, reason, request_id_of(request))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "error")
    return error_response(
        exc.status_code,
        code,
        str(exc.detail),
        request_id_of(request),
        headers=dict(exc.headers) if exc.headers else None,
    )


async def _integrity_error(request: Request, exc: Exception) -> JSONResponse:
    # Routes check references before writing, so what is left is a unique constraint
    # that a concurrent request won; the driver's message would leak SQL, so it is not sent.
    LOG.info("integrity error answered as duplicate: %s", type(exc.__cause__ or exc).__name__)
    return error_response(
        409, Duplicate.code, "a resource with that name or address exists", request_id_of(request)
    )


async def _bus_error(request: Request, exc: Exception) -> JSONResponse:
    LOG.warning("message bus unavailable: %s: %s", type(exc).__name__, exc)
    return error_response(
        503,
        ServiceUnavailable.code,
        "a backend service is unreachable; try again later",
        request_id_of(request),
        _retry_after(503),
    )


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    # The database is down or restarting: the same request succeeds once it is back.
    # Another database error is a bug: the last-resort handler logs it and answers 500.
    if not is_unavailable(exc):
        raise exc
    request.app.state.db.outage.failed(exc, f"answering {request.method} {request.url.path}")
    return error_response(
        503,
        ServiceUnavailable.code,
        "the database is unavailable; try again later",
        request_id_of(request),
        _retry_after(503),
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers; anything else is a 500 from the request-id middleware."""
    app.add_exception_handler(TetsuError, _tetsu_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(IntegrityError, _integrity_error)
    for bus_error in (rpc.Timeout, rpc.NoConsumer, rpc.TransportError):
        app.add_exception_handler(bus_error, _bus_error)
    for database_error in (*UNAVAILABLE_ERRORS, DBAPIError):
        app.add_exception_handler(database_error, _database_error)
