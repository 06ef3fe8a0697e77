"""Sessions on PostgreSQL: a reader's statements run without a transaction (no BEGIN and
COMMIT round trips), and the connection it used is transactional again afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlmodel import Session

from libs.db import Database

pytestmark = pytest.mark.integration


@pytest.fixture
def db(pg_url: str) -> Iterator[Database]:
    database = Database(pg_url, pool_size=1)
    try:
        yield database
    finally:
        database.dispose()


def _status(session: Session) -> psycopg.pq.TransactionStatus:
    dbapi: Any = session.connection().connection.dbapi_connection
    status: psycopg.pq.TransactionStatus = dbapi.info.transaction_status
    return status


def test_a_reader_runs_each_statement_on_its_own(db: Database):
    with db.reader() as session:
        session.connection().execute(text("SELECT 1"))
        assert _status(session) == psycopg.pq.TransactionStatus.IDLE
        session.connection().execute(text("CREATE TABLE seen (n int)"))
        session.connection().execute(text("INSERT INTO seen VALUES (1)"))
        # Committed at once: another connection sees it while the reader is still open.
        with db.engine.connect() as other:
            assert other.execute(text("SELECT count(*) FROM seen")).scalar_one() == 1


def test_a_session_after_a_reader_is_a_transaction_again(db: Database):
    with db.reader() as session:
        session.connection().execute(text("SELECT 1"))
    with db.session() as session:
        session.connection().execute(text("SELECT 1"))
        assert _status(session) == psycopg.pq.TransactionStatus.INTRANS
        session.connection().execute(text("CREATE TABLE undone (n int)"))
        session.rollback()
    with db.engine.connect() as other:
        assert other.execute(text("SELECT to_regclass('undone')")).scalar_one() is None
