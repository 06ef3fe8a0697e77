"""Planner statistics on the real PostgreSQL: a conductor analyzes a table whose rows came
since, and the plan of a claim then reads the node by its primary key."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from sqlalchemy import insert, text

from libs.db import Database, Node
from libs.db.statistics import LOCK_KEY, refresh_statistics

pytestmark = pytest.mark.integration

NODES = 400


@pytest.fixture
def db(pg_database: Callable[[int], Database]) -> Database:
    return pg_database(2)  # the lock test holds one connection while the job uses another


def enroll(db: Database, count: int) -> list[str]:
    """``count`` available nodes, inserted in one statement (the model's defaults for the
    rest of each row)."""
    rows = [
        Node(
            name=f"node-{i}",
            resource_class="baremetal",
            cpus=8,
            memory_mb=16384,
            disk_gb=200,
            provision_state="available",
        ).model_dump()
        for i in range(count)
    ]
    with db.engine.begin() as connection:
        connection.execute(insert(Node), rows)
        # The statistics collector learns of the inserts when this session reports them.
        connection.execute(text("SELECT pg_stat_force_next_flush()"))
    return [row["id"] for row in rows]


def refresh_when_counted(db: Database) -> list[str]:
    """refresh_statistics once the collector counts the inserts (a backend reports its
    counts at most once a second)."""
    deadline = time.monotonic() + 15
    while True:
        refreshed = refresh_statistics(db)
        if refreshed or time.monotonic() > deadline:
            return refreshed
        time.sleep(0.2)


def last_analyzed(db: Database, table: str) -> object:
    with db.engine.connect() as connection:
        return connection.execute(
            text("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = :t"), {"t": table}
        ).scalar_one()


def claim_plan(db: Database, node_id: str) -> str:
    with db.engine.connect() as connection:
        rows = connection.execute(
            text(
                "EXPLAIN UPDATE node SET instance_id = 'i' WHERE id = :id "
                "AND instance_id IS NULL AND provision_state = 'available' AND NOT maintenance"
            ),
            {"id": node_id},
        ).scalars()
        return "\n".join(rows)


def test_a_table_whose_rows_came_since_is_analyzed_once(db: Database):
    ids = enroll(db, NODES)
    assert last_analyzed(db, "node") is None

    assert refresh_when_counted(db) == ["node"]

    assert last_analyzed(db, "node") is not None
    assert "node_pkey" in claim_plan(db, ids[NODES // 2])
    # Nothing changed since: the next look analyzes nothing.
    assert refresh_statistics(db) == []


def test_a_conductor_skips_its_turn_while_another_analyzes(db: Database):
    enroll(db, NODES)
    with db.engine.connect() as other:
        other.execute(text("SELECT pg_advisory_lock(:key)"), {"key": LOCK_KEY})
        try:
            assert refresh_statistics(db) == []
        finally:
            other.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
            other.commit()
    assert refresh_when_counted(db) == ["node"]
