"""The FastAPI application: routes, error handlers and the request-id middleware, wired to
the database and the message bus given to :func:`create_app`.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from libs.db import Database
from libs.errors import ServiceUnavailable
from libs.notify import Notifier, bus_for
from libs.notify.stream import EventHub
from libs.rpc import Transport
from services.conductor.rpcapi import ConductorAPI
from services.scheduler.rpcapi import SchedulerAPI

from .auth import TokenCache
from .deps import NO_TOKEN, DatabaseDep, check_parameters, document_bearer_token
from .errors import install_error_handlers
from .metrics import install_metrics
from .middleware import RequestIDMiddleware
from .routes import ROUTERS
from .routes.events import events_lifespan
from .schemas import ErrorBody, Health
from .settings import APISettings
from .ui import install_dashboard

DESCRIPTION = """\
tetsu's REST API v1: bare-metal instances on physical nodes.

Authenticate with `Authorization: Bearer <token>` (from `POST /v1/tokens`, or the
bootstrap admin token). Errors are `{"error": {"code", "reason", "request_id"}}`; lists
take `limit` and `marker` and answer with `next_marker`.
"""

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Invalid input (the reason names the field)"},
    401: {"model": ErrorBody, "description": "Missing, wrong or expired token"},
    403: {"model": ErrorBody, "description": "The caller's role does not allow this"},
    404: {"model": ErrorBody, "description": "Not found (or another project's)"},
    409: {"model": ErrorBody, "description": "Conflicts with the resource's state"},
    503: {"model": ErrorBody, "description": "A backend service is unavailable"},
}


def create_app(settings: APISettings, db: Database, transport: Transport) -> FastAPI:
    """The API application; it sends RPCs over ``transport`` and reads and writes ``db``."""
    app = FastAPI(
        title="tetsu",
        version="1.0",
        description=DESCRIPTION,
        docs_url="/docs",
        openapi_url="/openapi.json",
        dependencies=[Depends(check_parameters)],
        lifespan=events_lifespan,
    )
    app.state.settings = settings
    app.state.db = db
    app.state.token_cache = TokenCache(settings.token_cache_seconds)
    app.state.scheduler_api = SchedulerAPI(transport)
    app.state.conductor_api = ConductorAPI(
        transport, db, heartbeat_timeout=settings.conductor_heartbeat_timeout
    )
    bus = bus_for(transport)
    app.state.notifier = Notifier(bus, service="api")
    app.state.event_hub = EventHub(bus, queue_size=settings.event_stream_queue)
    install_error_handlers(app)
    install_metrics(app, db)
    app.add_middleware(RequestIDMiddleware)
    for router in ROUTERS:
        app.include_router(router, responses=_ERRORS)
    install_dashboard(app)

    @app.get("/healthz", tags=["health"], responses={503: _ERRORS[503]}, openapi_extra=NO_TOKEN)
    def healthz(db: DatabaseDep) -> Health:
        """200 when the API can reach its database (for load balancers and compose)."""
        try:
            with db.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError:
            raise ServiceUnavailable("the database is unreachable") from None
        return Health(status="ok")

    _finish_schema(app)
    return app


def _finish_schema(app: FastAPI) -> None:
    """FastAPI documents a 422 on every route; this API answers bad input with 400 (see
    errors.py), so the published schema must not promise a 422. And it documents the
    bearer token, which FastAPI does not see (see deps.get_context)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            document_bearer_token(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
