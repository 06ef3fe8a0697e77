"""The emitter: the process that changes a node or an instance writes the event row in
the same transaction as the change, and publishes it on the bus once that commits.

So an event exists exactly when its change does, whatever the bus does: a publish that
cannot be made is dropped (see ``bus.py``), and live listeners catch up from the table.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Column, Executable, bindparam, insert, union_all
from sqlalchemy import event as sa_event
from sqlalchemy import select as sa_select
from sqlalchemy.sql.dml import Insert, Update
from sqlmodel import Session, col, select

from libs import metrics
from libs.db.models import Event, EventSeverity, Instance, Node, as_utc, new_id, utcnow
from libs.rpc import current_context

from .bus import NotificationBus
from .payloads import ObjectType, Phase, event_type, instance_payload, node_payload

LOG = logging.getLogger(__name__)


class EventMessage(BaseModel):
    """One event as the API lists it, the stream sends it and the bus carries it."""

    id: str
    created_at: datetime
    event_type: str
    object_type: str
    object_id: str
    project_id: str | None
    severity: EventSeverity
    payload: dict[str, Any]
    request_id: str | None

    @classmethod
    def from_row(cls, row: Event) -> EventMessage:
        return cls(
            id=row.id,
            created_at=as_utc(row.created_at),
            event_type=row.event_type,
            object_type=row.object_type,
            object_id=row.object_id,
            project_id=row.project_id,
            severity=EventSeverity(row.severity),
            payload=dict(row.payload or {}),
            request_id=row.request_id,
        )


class _Clock:
    """Creation times that strictly increase within a process, so events of one object
    made in the same microsecond still list in the order they happened."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = utcnow()

    def now(self) -> datetime:
        with self._lock:
            now = utcnow()
            if now <= self._last:
                now = self._last + timedelta(microseconds=1)
            self._last = now
            return now


_CLOCK = _Clock()

_EVENT = Event.metadata.tables["event"]
#: An event row's INSERT, built once: through the ORM (an Event added to the session and
#: flushed at commit) each event cost a conductor half again as much CPU.
_INSERT_EVENT = insert(_EVENT)


def with_events(change: Insert | Update, key: Column[Any], events: int) -> Executable:
    """``change``, a statement that writes one row, and the INSERT of ``events`` events
    for the row it wrote (parameters :func:`event_params`), as one statement: the change
    in a WITH clause (PostgreSQL), so that committed on its own it writes both or neither,
    in one round trip where a transaction takes four (BEGIN, the change, the INSERT,
    COMMIT). ``key`` is a column of the changed row; the row count is the events' (none
    when ``change`` matched no row). Build it once per kind of change."""
    changed = change.returning(key).cte("changed")
    rows = [
        sa_select(
            *(bindparam(f"e{index}_{c.key}", type_=c.type).label(c.key) for c in _EVENT.c)
        ).select_from(changed)
        for index in range(events)
    ]
    source = rows[0] if events == 1 else union_all(*rows)
    # The row count of an INSERT is kept only when asked for.
    return (
        insert(_EVENT)
        .from_select([c.key for c in _EVENT.c], source)
        .execution_options(preserve_rowcount=True)
    )


def event_params(events: list[EventMessage]) -> dict[str, Any]:
    """The parameters of the events of a :func:`with_events` statement."""
    return {
        f"e{index}_{key}": value
        for index, message in enumerate(events)
        for key, value in message.model_dump().items()
    }


class Notifier:
    """Writes events into the caller's session and publishes them after its commit.
    ``service`` names the emitting service in the error metric."""

    def __init__(self, bus: NotificationBus | None = None, *, service: str = "") -> None:
        self.bus = bus
        self.service = service

    def message(
        self,
        *,
        object_type: ObjectType,
        object_id: str,
        action: str,
        phase: Phase,
        payload: dict[str, Any],
        project_id: str | None,
        severity: EventSeverity | None = None,
    ) -> EventMessage:
        """An event, not written anywhere yet (:meth:`record` writes it in a session; a
        caller that writes it in a statement of its own then calls :meth:`publish`)."""
        if severity is None:
            severity = EventSeverity.ERROR if phase is Phase.ERROR else EventSeverity.INFO
        ctxt = current_context.get()
        return EventMessage(
            id=new_id(),
            created_at=_CLOCK.now(),
            event_type=event_type(object_type.value, action, phase),
            object_type=object_type.value,
            object_id=object_id,
            project_id=project_id,
            severity=severity,
            payload=payload,
            request_id=ctxt.request_id if ctxt is not None else None,
        )

    def record(self, session: Session, message: EventMessage) -> None:
        """Write ``message`` in ``session``'s transaction; published once that commits."""
        session.connection().execute(_INSERT_EVENT, message.model_dump())
        self._pending(session).append(message)

    def publish(self, messages: list[EventMessage]) -> None:
        """Publish events the caller wrote and committed itself."""
        for message in messages:
            self._published(message)

    def _pending(self, session: Session) -> list[EventMessage]:
        """The events of ``session``'s transaction, published when it commits and
        forgotten when it rolls back (a session may go on to commit other work)."""
        key = ("tetsu.notify", id(self))
        pending: list[EventMessage] | None = session.info.get(key)
        if pending is None:
            pending = session.info[key] = []

            def committed(_session: Session) -> None:
                messages = list(pending)
                pending.clear()
                for message in messages:
                    self._published(message)

            sa_event.listen(session, "after_commit", committed)
            sa_event.listen(session, "after_rollback", lambda _session: pending.clear())
        return pending

    def node(
        self,
        session: Session,
        node: Node,
        action: str,
        phase: Phase,
        *,
        instance_id: str | None = None,
        **extra: Any,
    ) -> EventMessage:
        """An event about ``node`` (see :meth:`node_message`), written in ``session``."""
        message = self.node_message(node, action, phase, instance_id=instance_id, **extra)
        self.record(session, message)
        return message

    def node_message(
        self,
        node: Node,
        action: str,
        phase: Phase,
        *,
        instance_id: str | None = None,
        **extra: Any,
    ) -> EventMessage:
        """An event about ``node`` (its fields as they are now), for admins only: members
        are not shown nodes (an instance's ``node_id`` is hidden from them too), so a node
        event belongs to no project. ``instance_id``: the instance the change let go of,
        named in the payload."""
        if instance_id is not None and node.instance_id is None:
            extra.setdefault("released_instance_id", instance_id)
        return self.message(
            object_type=ObjectType.NODE,
            object_id=node.id,
            action=action,
            phase=phase,
            payload=node_payload(node, **extra),
            project_id=None,
        )

    def instance(
        self, session: Session, instance: Instance, action: str, phase: Phase, **extra: Any
    ) -> EventMessage:
        """An event about ``instance`` (its fields as they are now), written in ``session``."""
        message = self.instance_message(instance, action, phase, **extra)
        self.record(session, message)
        return message

    def instance_message(
        self, instance: Instance, action: str, phase: Phase, **extra: Any
    ) -> EventMessage:
        """An event about ``instance`` (its fields as they are now), not written anywhere."""
        return self.message(
            object_type=ObjectType.INSTANCE,
            object_id=instance.id,
            action=action,
            phase=phase,
            payload=instance_payload(instance, **extra),
            project_id=instance.project_id,
        )

    def instance_by_id(
        self, session: Session, instance_id: str, action: str, phase: Phase, **extra: Any
    ) -> EventMessage | None:
        """As :meth:`instance`, reading the instance (after an UPDATE in ``session``)."""
        # populate_existing: an UPDATE statement may have changed it in this session.
        instance = session.exec(
            select(Instance)
            .where(col(Instance.id) == instance_id)
            .execution_options(populate_existing=True)
        ).first()
        if instance is None:
            return None
        return self.instance(session, instance, action, phase, **extra)

    def _published(self, message: EventMessage) -> None:
        if message.severity == EventSeverity.ERROR:
            metrics.ERRORS.labels(self.service or "unknown", message.event_type).inc()
        if self.bus is None:
            return
        try:
            self.bus.publish(message.event_type, message.model_dump_json().encode())
        except Exception:  # the bus promises not to raise; the change is done regardless
            LOG.exception("publishing event %s failed", message.id)


def project_of(session: Session, instance_id: str | None) -> str | None:
    if instance_id is None:
        return None
    project_id: str | None = session.exec(
        select(Instance.project_id).where(col(Instance.id) == instance_id)
    ).first()
    return project_id
