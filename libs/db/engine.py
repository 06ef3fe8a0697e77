"""Engines and sessions: one place that knows how PostgreSQL and SQLite differ."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool
from sqlmodel import Session, create_engine

from .availability import OutageLog
from .prepared import NEVER_BY_ITSELF, prepare_pinned_statements

#: Connections a pool keeps open; a service with many threads asks for more.
DEFAULT_POOL_SIZE = 10

#: Connections a pool may open beyond its size when every kept one is in use. Small: a
#: stack of the API, the scheduler, netctl and two conductors must stay inside
#: PostgreSQL's default of 100 connections (threads beyond wait for a free one).
MAX_OVERFLOW = 4

#: Seconds a new PostgreSQL connection may take: an unreachable server then fails a
#: request quickly (the API answers 503) instead of holding it for the TCP timeout.
CONNECT_TIMEOUT = 5


def make_engine(url: str, *, echo: bool = False, pool_size: int = DEFAULT_POOL_SIZE) -> Engine:
    """An engine for ``url`` (``postgresql+psycopg://...`` or ``sqlite:///path``) whose
    pool keeps ``pool_size`` connections: as many as the threads that use it at once, or
    they wait for one.

    SQLite is the embedded default: several threads share it (check_same_thread off), it
    runs in WAL mode so readers do not block the writer, and a writer waits for a lock
    instead of failing at once. ``sqlite://`` (in memory) keeps one connection for all:
    for tests only, no service default uses it.

    Statement parameters are never put in error messages: they hold BMC passwords and
    password hashes, and a database error is logged.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        options: dict[str, Any] = {
            "connect_args": {"check_same_thread": False, "timeout": 30},
            "hide_parameters": True,
        }
        if parsed.database in (None, "", ":memory:"):
            options["poolclass"] = StaticPool
        else:
            options.update(pool_size=pool_size, max_overflow=MAX_OVERFLOW)
        engine = create_engine(url, echo=echo, **options)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(
        url,
        echo=echo,
        # psycopg prepares no statement by itself (after five runs it would prepare
        # any, and PostgreSQL may then plan one once for any parameters: the scheduler's
        # candidate query took twice as long with such a generic plan); prepared.py
        # tells it which to prepare (with None here, psycopg would prepare none at all).
        connect_args={"connect_timeout": CONNECT_TIMEOUT, "prepare_threshold": NEVER_BY_ITSELF},
        pool_size=pool_size,
        max_overflow=MAX_OVERFLOW,
        hide_parameters=True,
    )
    _ping_when_idle(engine)
    prepare_pinned_statements(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """Ping a connection at checkout when it sat unused for ``PING_AFTER_IDLE`` seconds
    or more: one that died with a database restart is then replaced before a request
    uses it, so the first request after the restart already succeeds.

    SQLAlchemy's ``pool_pre_ping`` pings at every checkout: a round trip per session
    that cost 13-20% of a busy service's CPU. A connection in steady use needs none: if
    the server went away meanwhile, the statement fails as a disconnect, SQLAlchemy
    drops the whole pool, and the work is retried as after any outage.
    """
    dialect = engine.dialect

    @event.listens_for(engine.pool, "checkin")
    def _checked_in(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_LAST_USED] = time.monotonic()

    @event.listens_for(engine.pool, "checkout")
    def _checked_out(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        last_used = record.info.get(_LAST_USED)
        if last_used is None or time.monotonic() - last_used < PING_AFTER_IDLE:
            return  # just opened, or in use a moment ago
        try:
            alive = dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"connection lost while idle: {exc}") from exc
        if not alive:
            raise DisconnectionError("connection lost while idle")


#: Where a pooled connection records when it was last given back.
_LAST_USED = "tetsu_last_used"

#: Seconds unused after which a connection is pinged before it is handed out again.
PING_AFTER_IDLE = 2.0


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


@contextmanager
def _session_on(engine: Engine) -> Iterator[Session]:
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


class SchemaMissing(RuntimeError):
    """The database is reachable but its tables were never created."""


class Database:
    """An engine plus short-lived sessions: ``with db.session() as s: ...`` commits on exit."""

    def __init__(self, url: str, *, echo: bool = False, pool_size: int = DEFAULT_POOL_SIZE) -> None:
        self.url = url
        self.engine = make_engine(url, echo=echo, pool_size=pool_size)
        #: Where this process's work reports the database unavailable or back.
        self.outage = OutageLog()
        # The same pool, each statement committed on its own (PostgreSQL only: on SQLite,
        # Python's driver commits an open transaction when a connection is switched to
        # autocommit, and the in-memory database shares one connection between threads).
        self._reads = (
            self.engine.execution_options(isolation_level="AUTOCOMMIT")
            if self.engine.dialect.name == "postgresql"
            else self.engine
        )

    def session(self) -> AbstractContextManager[Session]:
        """A transaction: committed when the block ends, rolled back if it raises."""
        return _session_on(self.engine)

    def reader(self) -> AbstractContextManager[Session]:
        """A session for reads: on PostgreSQL each statement runs on its own, without the
        BEGIN and COMMIT round trips of a transaction (three round trips for one SELECT
        become one). Under PostgreSQL's READ COMMITTED each statement of a transaction
        sees its own snapshot anyway, so reads see what they would have seen; a write
        made in it is committed at once, alone."""
        return _session_on(self._reads)

    def autocommit(self) -> AbstractContextManager[Connection]:
        """A Core connection for statements that stand alone (a node lock's UPDATE): on
        PostgreSQL each is committed on its own, one round trip where a session takes
        three, and no ORM session is built; on SQLite, a transaction committed when the
        block ends."""
        if self._reads is self.engine:
            return self.engine.begin()
        return self._reads.connect()

    def check(self) -> None:
        """Fail early and clearly when the database is unreachable or not migrated:
        raises OperationalError, or SchemaMissing naming the command that fixes it."""
        with self.engine.connect() as connection:
            if not inspect(connection).has_table("alembic_version"):
                raise SchemaMissing(
                    "the database has no tetsu schema yet: run `tetsu db upgrade` "
                    "(or start the service with --migrate)"
                )

    def dispose(self) -> None:
        self.engine.dispose()
