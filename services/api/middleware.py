"""Per-request plumbing: the X-Request-ID, the access log line, the last-resort 500, and
``Connection: close`` from an API worker that answers more than its share (balance.py).

The request id becomes :data:`libs.rpc.current_context` for the whole request, so every
log line and every RPC message sent while answering it carry the same id.
"""

from __future__ import annotations

import logging
import re
import time
from urllib.parse import quote

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.rpc import RequestContext, current_context
from libs.rpc.context import new_request_id

from .balance import WorkerShares
from .errors import error_response

LOG = logging.getLogger("services.api.access")
ERROR_LOG = logging.getLogger(__name__)

HEADER = "X-Request-ID"
#: What a client-chosen id may look like: short, and safe to put in logs and headers.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id_from(scope: Scope) -> str:
    """The client's X-Request-ID if it is sane, else a new ``req-<uuid4>``."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if SANE_REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    return new_request_id()


def logged_path(scope: Scope) -> str:
    """The request's path as it can be logged: percent-encoded again, so a ``%0A`` in it
    cannot start a forged log line (and a NUL or an escape sequence reaches no terminal)."""
    return quote(scope["path"], safe="/:@!$&'()*+,;=")


class RequestIDMiddleware:
    """Pure ASGI middleware (not BaseHTTPMiddleware) so the context variable it sets is
    seen by the route handlers, including those run in the thread pool."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        token = current_context.set(RequestContext(request_id=request_id))
        started = time.perf_counter()
        status = 500
        response_started = False
        # Set on the app by an API worker process that shares the clients with others.
        state = getattr(scope.get("app"), "state", None)
        shares: WorkerShares | None = getattr(state, "worker_shares", None)
        if shares is not None:
            shares.started()

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers[HEADER] = request_id
                if shares is not None and shares.close_this_one():
                    headers["Connection"] = "close"  # see balance.py
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Nothing the handlers know: log the traceback here, never send it.
            ERROR_LOG.exception("unhandled error in %s %s", scope["method"], logged_path(scope))
            if response_started:
                raise
            response = error_response(
                500, "internal_error", "internal server error", request_id, {HEADER: request_id}
            )
            status = 500
            await response(scope, receive, send)
        finally:
            if shares is not None:
                shares.finished()
            millis = (time.perf_counter() - started) * 1000
            LOG.info("%s %s %d %.1fms", scope["method"], logged_path(scope), status, millis)
            current_context.reset(token)
