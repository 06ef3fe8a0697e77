"""The conductor's node lock on PostgreSQL: one UPDATE ... RETURNING takes the lock and
reads the node, committed on its own (no transaction around it), so a failure after it
must let go of the lock itself."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import text

from libs.db import Database, Node, Port, PowerState
from libs.errors import NodeLocked
from libs.notify import MemoryNotificationBus, Notifier
from libs.rpc import RequestContext
from services.conductor import task_manager
from services.conductor.drivers import DriverEnv, DriverFactory
from services.conductor.task_manager import TaskManager
from tests.unit.conductor.conftest import make_settings

pytestmark = pytest.mark.integration

HOST = "conductor-pg"


@pytest.fixture
def db(pg_database: Callable[[int], Database]) -> Database:
    return pg_database(2)


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


def _events(db: Database, node_id: str) -> list[str]:
    with db.engine.connect() as connection:
        return list(
            connection.execute(
                text("SELECT event_type FROM event WHERE object_id = :id ORDER BY created_at"),
                {"id": node_id},
            ).scalars()
        )


def test_a_save_writes_the_change_and_its_events_together_and_publishes_them(db: Database):
    """On PostgreSQL a save is one statement: the node's UPDATE and its events' INSERT."""
    bus = MemoryNotificationBus()
    published: list[bytes] = []
    bus.subscribe(published.append)
    settings = make_settings()
    factory = DriverFactory(settings, DriverEnv(settings, lambda *args: None))
    tasks = TaskManager(db, HOST, factory, workers=1, notifier=Notifier(bus))
    node_id = _node(db)
    try:
        with tasks.acquire(RequestContext.admin(), node_id, "x") as task:
            task.node.power_state = PowerState.ON
            task.report_error("power", "the BMC said no")
            task.save()
            assert len(published) == 2
            task.node.driver_internal_info["step"] = "one"  # a change without an event
            task.save()
    finally:
        tasks.shutdown(5.0)

    assert _events(db, node_id) == ["tetsu.node.power.end", "tetsu.node.power.error"]
    assert [json.loads(body)["event_type"] for body in published] == _events(db, node_id)
    with db.engine.connect() as connection:
        row = connection.execute(
            text("SELECT power_state, driver_internal_info FROM node WHERE id = :id"),
            {"id": node_id},
        ).one()
    assert row.power_state == PowerState.ON.value
    assert row.driver_internal_info == {"step": "one"}


def test_a_save_after_the_lock_was_lost_writes_neither_the_node_nor_its_events(
    db: Database, tasks: TaskManager
):
    node_id = _node(db)
    with tasks.acquire(RequestContext.admin(), node_id, "x") as task:
        with db.engine.begin() as connection:  # another conductor took the node over
            connection.execute(
                text("UPDATE node SET reservation = 'other' WHERE id = :id"), {"id": node_id}
            )
        task.node.power_state = PowerState.ON
        with pytest.raises(NodeLocked):
            task.save()
        task.node.power_state = PowerState.OFF
        task.node.driver_internal_info["step"] = "two"
        with pytest.raises(NodeLocked):
            task.save()  # without an event too

    assert _events(db, node_id) == []
    with db.engine.connect() as connection:
        row = connection.execute(
            text("SELECT power_state, reservation FROM node WHERE id = :id"), {"id": node_id}
        ).one()
    assert row.power_state != PowerState.ON.value
    assert row.reservation == "other"
