"""The conductor's node lock on PostgreSQL: one UPDATE ... RETURNING takes the lock and
reads the node, committed on its own (no transaction around it), so a failure after it
must let go of the lock itself."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from libs.db import Database, Node, Port, upgrade
from libs.rpc import RequestContext
from services.conductor import task_manager
from services.conductor.drivers import DriverEnv, DriverFactory
from services.conductor.task_manager import TaskManager
from tests.unit.conductor.conftest import make_settings

pytestmark = pytest.mark.integration

HOST = "conductor-pg"


@pytest.fixture
def db(pg_url: str) -> Iterator[Database]:
    upgrade(pg_url)
    database = Database(pg_url, pool_size=2)
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def tasks(db: Database) -> Iterator[TaskManager]:
    settings = make_settings()
    factory = DriverFactory(settings, DriverEnv(settings, lambda *args: None))
    manager = TaskManager(db, HOST, factory, workers=1, lock_wait=0.2)
    yield manager
    manager.shutdown(5.0)


def _node(db: Database) -> str:
    with db.session() as session:
        node = Node(name="n1", resource_class="baremetal", driver_info={"fake_delay": 0})
        session.add(node)
        session.flush()
        session.add_all(
            [
                Port(address="52:54:00:00:00:02", node_id=node.id),
                Port(address="52:54:00:00:00:01", node_id=node.id),
            ]
        )
        return node.id


def _reservation(db: Database, node_id: str) -> str | None:
    with db.engine.connect() as connection:
        holder: str | None = connection.execute(
            text("SELECT reservation FROM node WHERE id = :id"), {"id": node_id}
        ).scalar_one()
    return holder


def test_the_lock_is_committed_at_once_and_the_task_gets_the_stored_node(
    db: Database, tasks: TaskManager
):
    node_id = _node(db)

    with tasks.acquire(RequestContext.admin(), node_id, "x") as task:
        assert _reservation(db, node_id) == HOST  # seen from another connection
        assert task.node.reservation == HOST
        assert task.node.driver_info == {"fake_delay": 0}
        assert task.node.created_at.tzinfo is not None
        assert [port.address for port in task.ports] == [
            "52:54:00:00:00:02",  # created first
            "52:54:00:00:00:01",
        ]

    assert _reservation(db, node_id) is None


def test_a_lock_whose_ports_cannot_be_read_is_let_go_of(
    db: Database, tasks: TaskManager, monkeypatch: pytest.MonkeyPatch
):
    node_id = _node(db)

    def unreadable(**_row: Any) -> None:
        raise RuntimeError("port row unreadable")

    monkeypatch.setattr(task_manager, "Port", unreadable)
    with (
        pytest.raises(RuntimeError, match="unreadable"),
        tasks.acquire(RequestContext.admin(), node_id, "x"),
    ):
        pass

    assert _reservation(db, node_id) is None
