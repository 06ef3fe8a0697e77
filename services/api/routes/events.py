"""Events: every state change of a node or an instance and every failure, newest first
(``GET /v1/events``) or live as server-sent events (``GET /v1/events/stream``). A member
sees their project's events, an admin all (see docs/events.md).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlalchemy import and_, or_
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar
from starlette.concurrency import run_in_threadpool

from libs.db import Database
from libs.db.models import Event, EventSeverity
from libs.notify import EventMessage, Notifier, ObjectType
from libs.notify.stream import EventHub
from libs.rpc import RequestContext

from ..deps import ContextDep, DatabaseDep, SessionDep, SettingsDep
from ..errors import InvalidInput
from ..queries import MAX_LIMIT, PageDep

router = APIRouter(prefix="/v1/events", tags=["events"])


class EventList(BaseModel):
    events: list[EventMessage]
    next_marker: str | None


#: Payload fields only admins are shown: members are not shown nodes (an instance's
#: node_id is hidden from them in GET /v1/instances as well).
ADMIN_ONLY_FIELDS = frozenset({"node_id", "failed_node_id", "evacuated_from"})


def shown_to(ctxt: RequestContext, event: EventMessage) -> EventMessage:
    """The event as ``ctxt`` may see it."""
    if ctxt.is_admin or not ADMIN_ONLY_FIELDS & event.payload.keys():
        return event
    payload = {k: v for k, v in event.payload.items() if k not in ADMIN_ONLY_FIELDS}
    return event.model_copy(update={"payload": payload})


class EventFilters(BaseModel):
    """The query every event route takes (besides paging)."""

    object_type: ObjectType | None = None
    object_id: str | None = None
    event_type: str | None = None
    severity: EventSeverity | None = None
    since: datetime | None = None

    def matches(self, ctxt: RequestContext, event: EventMessage) -> bool:
        """Whether a live ``event`` passes the caller's scope and these filters."""
        return (
            (
                ctxt.is_admin
                or (event.project_id is not None and event.project_id == ctxt.project_id)
            )
            and (self.object_type is None or event.object_type == self.object_type.value)
            and (self.object_id is None or event.object_id == self.object_id)
            and (self.event_type is None or event.event_type == self.event_type)
            and (self.severity is None or event.severity == self.severity)
            and (self.since is None or event.created_at >= self.since)
        )

    def where(
        self, statement: SelectOfScalar[Event], ctxt: RequestContext
    ) -> SelectOfScalar[Event]:
        """``statement`` limited to the caller's scope and these filters."""
        if not ctxt.is_admin:
            statement = statement.where(col(Event.project_id) == ctxt.project_id)
        if self.object_type is not None:
            statement = statement.where(col(Event.object_type) == self.object_type.value)
        if self.object_id is not None:
            statement = statement.where(col(Event.object_id) == self.object_id)
        if self.event_type is not None:
            statement = statement.where(col(Event.event_type) == self.event_type)
        if self.severity is not None:
            statement = statement.where(col(Event.severity) == self.severity.value)
        if self.since is not None:
            statement = statement.where(col(Event.created_at) >= self.since)
        return statement


async def event_filters(
    object_type: Annotated[ObjectType | None, Query(description="node or instance")] = None,
    object_id: Annotated[str | None, Query(max_length=36)] = None,
    event_type: Annotated[
        str | None, Query(max_length=255, description="e.g. tetsu.instance.create.end")
    ] = None,
    severity: EventSeverity | None = None,
    since: Annotated[
        datetime | None, Query(description="Only events at or after this time (ISO 8601)")
    ] = None,
) -> EventFilters:
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)  # a time without a zone is UTC, as tetsu stores
    return EventFilters(
        object_type=object_type,
        object_id=object_id,
        event_type=event_type,
        severity=severity,
        since=since,
    )


FiltersDep = Annotated[EventFilters, Depends(event_filters)]


def get_event_hub(request: Request) -> EventHub:
    hub: EventHub = request.app.state.event_hub
    return hub


@asynccontextmanager
async def events_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The app's life: the event hub serves streams (listening to the bus while any
    is open) while the app serves."""
    hub: EventHub = app.state.event_hub
    await hub.start()
    try:
        yield
    finally:
        await hub.stop()
        notifier: Notifier = app.state.notifier
        if notifier.bus is not None:
            await asyncio.to_thread(notifier.bus.close)


def _visible(session: Session, event_id: str, ctxt: RequestContext) -> Event | None:
    """The event ``event_id`` if the caller may see it."""
    row = session.get(Event, event_id)
    if row is None or not (ctxt.is_admin or row.project_id == ctxt.project_id):
        return None
    return row


@router.get("")
def list_events(
    session: SessionDep, ctxt: ContextDep, page: PageDep, filters: FiltersDep
) -> EventList:
    """Events, newest first; ``marker`` is the id of the last one seen."""
    statement = filters.where(select(Event), ctxt)
    if page.marker is not None:
        last = _visible(session, page.marker, ctxt)
        if last is None:
            raise InvalidInput(f"marker: no event {page.marker!r} (it may have expired)")
        statement = statement.where(
            or_(
                col(Event.created_at) < last.created_at,
                and_(col(Event.created_at) == last.created_at, col(Event.id) < last.id),
            )
        )
    statement = statement.order_by(col(Event.created_at).desc(), col(Event.id).desc())
    rows = list(session.exec(statement.limit(page.limit + 1)).all())
    next_marker = None
    if len(rows) > page.limit:
        rows = rows[: page.limit]
        next_marker = rows[-1].id
    events = [shown_to(ctxt, EventMessage.from_row(r)) for r in rows]
    return EventList(events=events, next_marker=next_marker)


def _missed(
    db: Database, ctxt: RequestContext, filters: EventFilters, last_event_id: str | None
) -> list[EventMessage]:
    """The stored events a reconnecting stream missed (after ``last_event_id``, or since
    ``filters.since``), oldest first, at most MAX_LIMIT of them."""
    with db.session() as session:
        statement = filters.where(select(Event), ctxt)
        if last_event_id is not None:
            last = _visible(session, last_event_id, ctxt)
            if last is None:
                return []  # unknown or expired: nothing to resend (the list has the rest)
            statement = statement.where(
                or_(
                    col(Event.created_at) > last.created_at,
                    and_(col(Event.created_at) == last.created_at, col(Event.id) > last.id),
                )
            )
        elif filters.since is None:
            return []
        statement = statement.order_by(col(Event.created_at), col(Event.id)).limit(MAX_LIMIT)
        return [shown_to(ctxt, EventMessage.from_row(row)) for row in session.exec(statement).all()]


def _sse(event: EventMessage) -> str:
    data = json.dumps(event.model_dump(mode="json"), separators=(",", ":"))
    return f"id: {event.id}\nevent: {event.event_type}\ndata: {data}\n\n"


#: The stream is left out of the OpenAPI document: an endless text/event-stream cannot be
#: described there (nor called by a schema fuzzer). docs/events.md describes it.
@router.get("/stream", include_in_schema=False)
async def stream_events(
    request: Request,
    ctxt: ContextDep,
    filters: FiltersDep,
    db: DatabaseDep,
    settings: SettingsDep,
    last_event_id: Annotated[str | None, Header(max_length=255)] = None,
) -> StreamingResponse:
    """Server-sent events: the stored ones missed (``Last-Event-ID``, or ``since``), then
    each new event as it happens; a comment every ``event_stream_keepalive`` seconds."""
    hub = get_event_hub(request)

    async def events() -> AsyncIterator[str]:
        # Subscribed before the stored events are read, so none falls between the two.
        client = await hub.open(lambda event: filters.matches(ctxt, event))
        try:
            missed = await run_in_threadpool(_missed, db, ctxt, filters, last_event_id)
            sent = {event.id for event in missed}
            for event in missed:
                yield _sse(event)
            yield ": connected\n\n"
            while not client.dropped:
                live = await client.next(settings.event_stream_keepalive)
                if live is None:
                    yield ": keep-alive\n\n"
                elif live.id not in sent:
                    yield _sse(shown_to(ctxt, live))
        except asyncio.CancelledError:
            raise  # the client went away
        finally:
            hub.disconnect(client)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
