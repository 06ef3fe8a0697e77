"""Engines and sessions: one place that knows how PostgreSQL and SQLite differ."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, create_engine

from .availability import OutageLog

#: Connections a pool keeps open; a service with many threads asks for more.
DEFAULT_POOL_SIZE = 10

#: Connections a pool may open beyond its size when every kept one is in use.
MAX_OVERFLOW = 20

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
    return create_engine(
        url,
        echo=echo,
        # Pre-ping: a connection that died with a database restart is replaced at
        # checkout, so the first request after the restart already succeeds.
        connect_args={"connect_timeout": CONNECT_TIMEOUT},
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=MAX_OVERFLOW,
        hide_parameters=True,
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class SchemaMissing(RuntimeError):
    """The database is reachable but its tables were never created."""


class Database:
    """An engine plus short-lived sessions: ``with db.session() as s: ...`` commits on exit."""

    def __init__(self, url: str, *, echo: bool = False, pool_size: int = DEFAULT_POOL_SIZE) -> None:
        self.url = url
        self.engine = make_engine(url, echo=echo, pool_size=pool_size)
        #: Where this process's work reports the database unavailable or back.
        self.outage = OutageLog()

    @contextmanager
    def session(self) -> Iterator[Session]:
        session = Session(self.engine, expire_on_commit=False)
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

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
