"""Rendering the dashboard: the Jinja2 templates, the headers every page carries, and an
error of the REST routes turned into what a page shows (the API's reason, never a trace)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from libs import rpc
from libs.errors import ServiceUnavailable, TetsuError

from ..errors import InvalidInput, error_response, request_id_of, validation_reason
from ..queries import MAX_LIMIT, PageParams
from .session import CSRF_FIELD, Viewer

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
TEMPLATES = Jinja2Templates(directory=HERE / "templates")
TEMPLATES.env.globals["CSRF_FIELD"] = CSRF_FIELD

#: Scripts and styles come from /ui/static only, nothing inline: an injected tag runs nothing.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

#: The header the dashboard's script sends when it wants a table row back, not a page.
FRAGMENT_HEADER = "X-Tetsu-Fragment"


@dataclass(frozen=True)
class Failure:
    """What a page says when a request failed: the REST API's status, code and reason."""

    status: int
    code: str
    reason: str


#: Errors of the route functions a page shows to the user instead of an error page.
SHOWN_ERRORS = (TetsuError, ValidationError, rpc.Timeout, rpc.NoConsumer, rpc.TransportError)


def failure_of(exc: Exception) -> Failure:
    """The failure a page shows for one of :data:`SHOWN_ERRORS`, as the REST API answers it."""
    if isinstance(exc, TetsuError):
        return Failure(exc.status, exc.code, exc.reason)
    if isinstance(exc, ValidationError):
        return Failure(400, InvalidInput.code, validation_reason(exc.errors()))
    return Failure(
        503, ServiceUnavailable.code, "a backend service is unreachable; try again later"
    )


def render(
    request: Request,
    template: str,
    viewer: Viewer | None,
    *,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    response = TEMPLATES.TemplateResponse(
        request, template, {"viewer": viewer, **context}, status_code=status
    )
    response.headers.update(SECURITY_HEADERS)
    return response


def wants_fragment(request: Request) -> bool:
    return request.headers.get(FRAGMENT_HEADER) == "1"


def failure_response(request: Request, failure: Failure) -> JSONResponse:
    """A failed script request: the REST API's error body, for the script to show."""
    return error_response(failure.status, failure.code, failure.reason, request_id_of(request))


T = TypeVar("T")


def every_page(list_page: Callable[[PageParams], tuple[list[T], str | None]]) -> list[T]:
    """All the items of a paginated route: ``list_page`` gets each page's parameters and
    returns its items and next marker."""
    items: list[T] = []
    marker: str | None = None
    while True:
        page, marker = list_page(PageParams(limit=MAX_LIMIT, marker=marker))
        items.extend(page)
        if marker is None:
            return items
