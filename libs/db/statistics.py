"""PostgreSQL's planner statistics of the tables that change in bulk, kept fresh.

Without statistics of a table the planner guesses that ``instance_id IS NULL`` or
``provision_state = 'available'`` matches a handful of rows, costs those columns'
indexes as cheaply as the primary key, and picks one of them for a statement that names
a row by its id. Right after 1,000 nodes were enrolled, a claim ``UPDATE node ... WHERE
id = ... AND instance_id IS NULL`` then walked every free node (up to 21 ms, where the
primary key reads one row), a conductor's lock of a node walked every unlocked one, and the
scheduler's candidate walk read every free node to keep ten. Autovacuum analyzes a table
only after its next round (a minute by default) and 10% of it changed, so a burst that
follows a bulk enrolment, or a burst of creations into an empty instance table, ran
whole on such plans. A conductor calls :func:`refresh_statistics` every few seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, text

from .engine import Database

LOG = logging.getLogger(__name__)

#: The tables whose rows come and go, or change state, by the thousand in minutes.
BULK_TABLES = ("node", "port", "instance")

#: A table analyzed less than this many row changes ago is left alone (as autovacuum's
#: own threshold), so small tables and quiet times cost one catalog read each time.
MIN_CHANGES = 50
#: ... and so is one whose changes since are fewer than this share of its rows.
STALE_SHARE = 0.2

#: The advisory lock that lets one conductor at a time analyze (the others skip a round).
LOCK_KEY = 0x7E75_0001

_ACTIVITY = text(
    "SELECT relname, n_live_tup, n_mod_since_analyze "
    "FROM pg_stat_user_tables "
    "WHERE schemaname = current_schema() AND relname IN :names"
).bindparams(bindparam("names", expanding=True))


@dataclass(frozen=True)
class TableActivity:
    """What PostgreSQL's statistics collector knows of a table's rows."""

    name: str
    live_rows: int
    changed_since_analyze: int


def stale(tables: Iterable[TableActivity]) -> list[str]:
    """The tables whose statistics no longer describe them: at least ``MIN_CHANGES`` row
    changes since the last ANALYZE (every row, for a table never analyzed) and at least
    ``STALE_SHARE`` of its rows."""
    return [
        table.name
        for table in tables
        if table.changed_since_analyze >= MIN_CHANGES
        and table.changed_since_analyze >= STALE_SHARE * table.live_rows
    ]


def refresh_statistics(db: Database, tables: Sequence[str] = BULK_TABLES) -> list[str]:
    """ANALYZE those of ``tables`` whose statistics are stale; returns their names. Does
    nothing on SQLite, or while another process holds the lock (it is analyzing)."""
    if db.engine.dialect.name != "postgresql" or not tables:
        return []
    with db.engine.connect() as connection:
        locked = connection.execute(
            text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": LOCK_KEY}
        ).scalar()
        if not locked:
            return []
        rows = connection.execute(_ACTIVITY, {"names": list(tables)}).all()
        names = stale(TableActivity(name, int(live), int(changed)) for name, live, changed in rows)
        for name in names:
            # The name is one of the rows just read, and quoted: no input reaches here.
            connection.exec_driver_sql(f'ANALYZE "{name}"')
        connection.commit()
    if names:
        LOG.info("planner statistics refreshed: %s", ", ".join(names))
    return names
