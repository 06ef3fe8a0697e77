"""Sessions on PostgreSQL: a reader's statements run without a transaction (no BEGIN and
COMMIT round trips), and the connection it used is transactional again afterwards; what
pins rows by a key is prepared on the connection that runs it (so it runs without
planning), what filters on other columns is not (so its plan still follows its
parameters)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection, func, select, text, update
from sqlmodel import Session, col

from libs.db import Database, Node, Project
from libs.db.prepared import PREPARE

pytestmark = pytest.mark.integration


@pytest.fixture
def db(pg_database: Callable[[int], Database]) -> Database:
    return pg_database(1)  # one connection: each session reuses it


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


def prepared_statements(connection: Connection) -> list[str]:
    """The statements this connection keeps prepared, as PostgreSQL reports them."""
    rows = connection.execute(text("SELECT statement FROM pg_prepared_statements")).scalars()
    return [" ".join(statement.split()) for statement in rows]


def test_statements_pinning_rows_by_a_key_are_prepared_the_others_not(db: Database) -> None:
    node = Node(name="node-0", resource_class="baremetal", provision_state="available")
    with db.session() as session:
        session.add(node)
    db.engine.dispose()  # a new connection: none of the INSERT's statements prepared
    with db.engine.connect() as connection:
        by_id = select(col(Node.name)).where(col(Node.id) == node.id)
        by_unique_name = select(col(Project.id)).where(col(Project.name) == "nobody")
        by_state = select(func.count()).where(col(Node.provision_state) == "available")
        lock = (
            update(Node)
            .where(col(Node.id) == node.id, col(Node.reservation).is_(None))
            .values(reservation="me")
        )
        refused = by_id.where(col(Node.name) != "x").execution_options(**{PREPARE: False})
        for _ in range(3):
            assert connection.execute(by_id).scalar_one() == "node-0"
            assert connection.execute(by_unique_name).first() is None
            assert connection.execute(by_state).scalar_one() == 1
            assert connection.execute(refused).scalar_one() == "node-0"
        connection.execute(lock)
        # Read before the block's ROLLBACK: psycopg forgets its prepared statements then.
        prepared = prepared_statements(connection)
    assert len(prepared) == 3, prepared
    assert any("FROM node WHERE node.id = $1" in s and "node.name !=" not in s for s in prepared)
    assert any("FROM project WHERE project.name = $1" in s for s in prepared)
    assert any(s.startswith("UPDATE node SET reservation=$1") for s in prepared)
    assert not any("count(" in s for s in prepared)


def test_an_orm_get_and_an_insert_are_prepared(db: Database) -> None:
    with db.session() as session:
        project = Project(name="p-1")
        session.add(project)
        session.flush()
        for _ in range(3):
            assert session.get(Project, project.id, populate_existing=True) is not None
        prepared = prepared_statements(session.connection())
    assert len([s for s in prepared if s.startswith("INSERT INTO project")]) == 1, prepared
    assert len([s for s in prepared if "FROM project WHERE project.id = $1" in s]) == 1, prepared
