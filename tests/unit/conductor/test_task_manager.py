"""Node locks and tasks: exclusive acquire, release on every exit, work handed to workers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from sqlmodel import col, update

from libs.db import Node
from libs.errors import InvalidStateTransition, NodeLocked, NotFound
from libs.rpc import RequestContext, current_context
from services.conductor import task_manager
from services.conductor.drivers import DriverEnv, DriverFactory
from services.conductor.states import Event
from services.conductor.task_manager import CONDUCTOR_KEY, Task, TaskManager
from tests.unit.conductor.conftest import HOST, Cloud, make_settings, wait_for


@pytest.fixture
def tasks(cloud: Cloud) -> Iterator[TaskManager]:
    settings = make_settings()
    factory = DriverFactory(settings, DriverEnv(settings, lambda *args: None))
    manager = TaskManager(cloud.db, HOST, factory, workers=2, lock_wait=0.2)
    yield manager
    manager.shutdown(5.0)


def test_a_second_exclusive_acquire_gets_node_locked(cloud: Cloud, tasks: TaskManager):
    node_id = cloud.make_node()
    ctxt = RequestContext.admin()

    with tasks.acquire(ctxt, node_id, "first") as task:
        assert task.node.id == node_id
        assert [p.node_id for p in task.ports] == [node_id, node_id]
        assert cloud.node(node_id).reservation == HOST
        with (
            pytest.raises(NodeLocked, match=f"locked by conductor {HOST}"),
            tasks.acquire(ctxt, node_id, "second", wait=0),
        ):
            pass
        # A shared task only reads: it does not need the lock.
        with tasks.acquire(ctxt, node_id, "look", shared=True) as shared:
            assert shared.node.id == node_id

    assert cloud.node(node_id).reservation is None


def test_the_lock_is_released_when_the_block_raises(cloud: Cloud, tasks: TaskManager):
    node_id = cloud.make_node()

    with pytest.raises(RuntimeError), tasks.acquire(RequestContext.admin(), node_id, "x"):
        raise RuntimeError("boom")

    assert cloud.node(node_id).reservation is None


def test_the_lock_statement_hands_back_the_node_as_stored(cloud: Cloud, tasks: TaskManager):
    node_id = cloud.make_node()
    stored = cloud.node(node_id)

    with tasks.acquire(RequestContext.admin(), node_id, "x") as task:
        for name in ("name", "provision_state", "driver_info", "created_at", "power_state"):
            assert getattr(task.node, name) == getattr(stored, name), name
        assert task.node.reservation == HOST


def test_acquire_waits_for_a_short_lock(cloud: Cloud, tasks: TaskManager):
    node_id = cloud.make_node(reservation="other")
    threading.Timer(0.05, lambda: _set_reservation(cloud, node_id, None)).start()

    with tasks.acquire(RequestContext.admin(), node_id, "patient", wait=5.0) as task:
        assert task.node.reservation == HOST


def test_a_lock_this_conductor_holds_is_taken_as_soon_as_it_is_released(
    cloud: Cloud, tasks: TaskManager, monkeypatch: pytest.MonkeyPatch
):
    """Waiting for a lock held by this same conductor (a ramdisk's report racing the task
    that started it) ends at the release, not at the next look at the database."""
    monkeypatch.setattr(task_manager, "LOCK_RETRY_INTERVAL", 30.0)
    node_id = cloud.make_node()
    ctxt = RequestContext.admin()
    holding, waited = threading.Event(), []

    def second() -> None:
        holding.wait(5)
        started = time.monotonic()
        with tasks.acquire(ctxt, node_id, "second", wait=60.0):
            waited.append(time.monotonic() - started)

    waiter = threading.Thread(target=second)
    waiter.start()
    with tasks.acquire(ctxt, node_id, "first"):
        holding.set()
        time.sleep(0.3)  # the second one is waiting by now
    waiter.join(20)
    assert not waiter.is_alive()
    assert waited and waited[0] < 10.0  # not the 30 s retry interval


def test_a_wait_for_this_conductors_lock_asks_the_database_only_once_it_is_released(
    cloud: Cloud, tasks: TaskManager, monkeypatch: pytest.MonkeyPatch
):
    """This conductor knows the nodes it holds: a reservation of one of them (the ramdisk's
    report racing the task that started the ramdisk) waits for its release without a
    futile attempt in the database, and releases of other nodes do not wake it."""
    monkeypatch.setattr(task_manager, "LOCK_RETRY_INTERVAL", 30.0)
    wanted, other = cloud.make_node(), cloud.make_node()
    attempts: list[str] = []

    def count(
        _conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool
    ) -> None:
        if "reservation" in statement and wanted in str(parameters):
            attempts.append(statement)

    sa_event.listen(cloud.db.engine, "before_cursor_execute", count)
    ctxt = RequestContext.admin()
    holding, taken = threading.Event(), threading.Event()

    def second() -> None:
        holding.wait(5)
        with tasks.acquire(ctxt, wanted, "second", wait=60.0):
            taken.set()

    waiter = threading.Thread(target=second)
    waiter.start()
    try:
        with tasks.acquire(ctxt, wanted, "first"):
            holding.set()
            time.sleep(0.2)
            for _ in range(5):
                with tasks.acquire(ctxt, other, "busy elsewhere"):
                    pass
            time.sleep(0.2)
            assert len(attempts) == 1  # the first one's take only
            assert not taken.is_set()
        waiter.join(20)
    finally:
        sa_event.remove(cloud.db.engine, "before_cursor_execute", count)
    assert taken.is_set()
    # Then: the first one's release, the second one's take and release.
    assert len(attempts) == 4


def test_acquire_of_a_missing_node_is_not_found(tasks: TaskManager):
    with pytest.raises(NotFound), tasks.acquire(RequestContext.admin(), "no-such-node", "x"):
        pass


def test_spawned_work_keeps_the_lock_until_it_ends(cloud: Cloud, tasks: TaskManager):
    node_id = cloud.make_node()
    ctxt = RequestContext.admin(request_id="req-trace-me")
    release = threading.Event()
    seen: list[str | None] = []

    def work(task: Task, note: str) -> None:
        context = current_context.get()
        seen.append(context.request_id if context else None)
        seen.append(note)
        release.wait(5)

    token = current_context.set(ctxt)
    try:
        with tasks.acquire(ctxt, node_id, "background") as task:
            task.spawn_after(work, "hello")
    finally:
        current_context.reset(token)

    wait_for(lambda: seen, what="the work to start")
    assert seen == ["req-trace-me", "hello"]  # the request id travels with the work
    assert cloud.node(node_id).reservation == HOST
    release.set()
    wait_for(lambda: cloud.node(node_id).reservation is None, what="the lock released")


def test_failing_spawned_work_still_releases_the_lock(cloud: Cloud, tasks: TaskManager):
    node_id = cloud.make_node()

    def work(task: Task) -> None:
        raise ValueError("bug")

    with tasks.acquire(RequestContext.admin(), node_id, "doomed") as task:
        task.spawn_after(work)

    wait_for(lambda: cloud.node(node_id).reservation is None, what="the lock released")


def test_work_is_not_spawned_when_the_block_raises(cloud: Cloud, tasks: TaskManager):
    node_id = cloud.make_node()
    ran = threading.Event()

    with pytest.raises(RuntimeError), tasks.acquire(RequestContext.admin(), node_id, "x") as task:
        task.spawn_after(lambda task: ran.set())
        raise RuntimeError("changed my mind")

    assert cloud.node(node_id).reservation is None
    assert not ran.wait(0.1)


def test_process_event_moves_and_saves_the_node(cloud: Cloud, tasks: TaskManager):
    node_id = cloud.make_node(state="available")

    with tasks.acquire(RequestContext.admin(), node_id, "deploy") as task:
        task.process_event(Event.DEPLOY)
        with pytest.raises(InvalidStateTransition, match="cannot provide"):
            task.process_event(Event.PROVIDE)

    node = cloud.node(node_id)
    assert node.provision_state == "deploying"
    assert node.target_provision_state == "active"
    assert node.provision_updated_at is not None
    assert node.driver_internal_info[CONDUCTOR_KEY] == HOST


def test_a_change_saved_along_with_the_node_is_in_its_transaction(cloud: Cloud, tasks: TaskManager):
    node_id = cloud.make_node(state="available")
    seen: list[str] = []

    def also_fails(session: Any) -> None:
        seen.append(session.get(Node, node_id).provision_state)  # the UPDATE is in it
        raise RuntimeError("the instance's change failed")

    with tasks.acquire(RequestContext.admin(), node_id, "deploy") as task:
        with pytest.raises(RuntimeError, match="instance's change"):
            task.process_event(Event.DEPLOY, also=also_fails)
        assert seen == ["deploying"]

    # Neither is written.
    assert cloud.node(node_id).provision_state == "available"


def test_save_writes_only_what_the_task_changed(cloud: Cloud, tasks: TaskManager):
    node_id = cloud.make_node(state="available")
    instance_id = cloud.make_instance()

    with tasks.acquire(RequestContext.admin(), node_id, "power sync") as task:
        # The scheduler claims the node meanwhile (it does not take the lock).
        with cloud.db.session() as session:
            session.exec(
                update(Node).where(col(Node.id) == node_id).values(instance_id=instance_id)
            )
        task.node.last_error = "something"
        task.save()

    node = cloud.node(node_id)
    assert node.last_error == "something"
    assert node.instance_id == instance_id


def test_a_task_that_lost_its_lock_cannot_save(cloud: Cloud, tasks: TaskManager):
    node_id = cloud.make_node()

    with tasks.acquire(RequestContext.admin(), node_id, "slow") as task:
        _set_reservation(cloud, node_id, "thief")
        task.node.last_error = "late"
        with pytest.raises(NodeLocked, match="no longer locked"):
            task.save()

    assert cloud.node(node_id).reservation == "thief"  # not ours to release


def test_a_shared_task_cannot_change_the_node(cloud: Cloud, tasks: TaskManager):
    node_id = cloud.make_node()

    with (
        tasks.acquire(RequestContext.admin(), node_id, "look", shared=True) as task,
        pytest.raises(RuntimeError, match="shared"),
    ):
        task.process_event(Event.MANAGE)


def _set_reservation(cloud: Cloud, node_id: str, holder: str | None) -> None:
    with cloud.db.session() as session:
        session.exec(update(Node).where(col(Node.id) == node_id).values(reservation=holder))
