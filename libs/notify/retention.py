"""Keeping events for a bounded time: the periodic sweep deletes the old ones in batches,
so one sweep never holds a long transaction (or a lock) on a table that grew large."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import col, delete, select

from libs.db import Database, utcnow
from libs.db.models import Event

#: Rows deleted per transaction, and transactions per sweep: what is left goes next time.
BATCH = 1000
MAX_BATCHES = 20


def sweep_events(
    db: Database, retention_hours: float, *, batch: int = BATCH, max_batches: int = MAX_BATCHES
) -> int:
    """Delete events older than ``retention_hours``; returns how many it deleted."""
    cutoff = utcnow() - timedelta(hours=retention_hours)
    deleted = 0
    for _ in range(max_batches):
        with db.session() as session:
            ids = list(
                session.exec(
                    select(Event.id).where(col(Event.created_at) < cutoff).limit(batch)
                ).all()
            )
            if ids:
                session.exec(delete(Event).where(col(Event.id).in_(ids)))
        deleted += len(ids)
        if len(ids) < batch:
            break
    return deleted
