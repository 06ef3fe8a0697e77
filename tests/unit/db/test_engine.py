"""Engines: the pool is as big as the service asks, on PostgreSQL and on an SQLite file."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import QueuePool, StaticPool
from sqlmodel import SQLModel

from libs.db import Database, Node
from libs.db.engine import DEFAULT_POOL_SIZE


def test_the_pool_keeps_as_many_connections_as_asked(tmp_path: Path) -> None:
    for url in (f"sqlite:///{tmp_path / 'tetsu.db'}", "postgresql+psycopg://u:p@db.invalid/t"):
        default, sized = Database(url), Database(url, pool_size=36)
        try:
            assert isinstance(default.engine.pool, QueuePool)
            assert isinstance(sized.engine.pool, QueuePool)
            assert default.engine.pool.size() == DEFAULT_POOL_SIZE
            assert sized.engine.pool.size() == 36
        finally:
            default.dispose()
            sized.dispose()


def test_an_in_memory_sqlite_database_shares_one_connection() -> None:
    db = Database("sqlite://", pool_size=36)
    assert isinstance(db.engine.pool, StaticPool)
    db.dispose()


def test_a_database_error_never_quotes_the_statement_parameters(tmp_path: Path) -> None:

    db = Database(f"sqlite:///{tmp_path / 'tetsu.db'}")
    SQLModel.metadata.create_all(db.engine)
    with db.session() as session:
        session.add(Node(name="n1", resource_class="bm"))
    try:
        with db.session() as session:
            session.add(
                Node(name="n1", resource_class="bm", driver_info={"ipmi_password": "hunter2-bmc"})
            )
    except IntegrityError as exc:
        assert "hunter2-bmc" not in str(exc)
        assert "UNIQUE" in str(exc)
    else:
        raise AssertionError("a duplicate name was stored")
    finally:
        db.dispose()
