"""Engines: the pool is as big as the service asks, on PostgreSQL and on an SQLite file."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.pool import QueuePool, StaticPool

from libs.db import Database
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
