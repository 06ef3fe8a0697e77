"""The API's Prometheus side: a middleware counting and timing every request by route
template (and every error answer by its code), and ``GET /metrics`` (no auth: it holds
no secrets, only counts), which also shows the other services' metrics when they run in
this process (all-in-one).
"""

from __future__ import annotations

import json
import time

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs import metrics
from libs.db import Database

#: Error bodies are small JSON; a body beyond this is not read for its code.
MAX_ERROR_BODY = 64 * 1024


class MetricsMiddleware:
    """Pure ASGI, so streaming answers (the event stream) pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        body = bytearray()

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif (
                message["type"] == "http.response.body"
                and status >= 400
                and len(body) < MAX_ERROR_BODY
            ):
                body.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            metrics.API_REQUESTS.labels(method, route, str(status)).inc()
            metrics.API_SECONDS.labels(method, route).observe(time.perf_counter() - started)
            if status >= 400:
                metrics.ERRORS.labels("api", _error_code(bytes(body), status)).inc()


def _error_code(body: bytes, status: int) -> str:
    """The ``error.code`` of an API error body, else the status."""
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return str(status)
    return code if isinstance(code, str) and len(code) <= 40 else str(status)


def install_metrics(app: FastAPI, db: Database) -> None:
    """The middleware and ``GET /metrics`` (left out of the REST API's OpenAPI)."""
    registry = metrics.ServiceRegistry(db)
    app.add_middleware(MetricsMiddleware)

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
