"""libs/notify without a service around it: an event is stored with its change and
published only once that commits; a broker that is down costs one warning and no row;
slow stream clients are dropped; the retention sweep deletes old events in batches."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from datetime import timedelta

import pytest
from sqlmodel import select

from libs.db import Database, Instance, Project, utcnow
from libs.db.models import Event, EventSeverity
from libs.notify import (
    AMQPNotificationBus,
    EventMessage,
    MemoryNotificationBus,
    Notifier,
    Phase,
    node_transition,
    sweep_events,
)
from libs.notify.stream import EventHub
from libs.rpc import AMQPTransport


def make_instance(db: Database) -> Instance:
    with db.session() as session:
        project = Project(name="p")
        session.add(project)
        session.flush()
        instance = Instance(name="vm", project_id=project.id, flavor_id="f", image_id="i")
        return instance


def rows(db: Database) -> list[Event]:
    with db.session() as session:
        return list(session.exec(select(Event)).all())


def test_an_event_is_published_after_its_commit_and_never_after_a_rollback(db: Database):
    bus = MemoryNotificationBus()
    bodies: list[bytes] = []
    bus.subscribe(bodies.append)
    notifier = Notifier(bus, service="test")
    instance = make_instance(db)

    with pytest.raises(RuntimeError), db.session() as session:
        notifier.instance(session, instance, "create", Phase.START)
        raise RuntimeError("the change failed")
    assert bodies == []
    assert rows(db) == []

    with db.session() as session:
        notifier.instance(session, instance, "create", Phase.START)
        assert bodies == []  # not before the commit
    assert len(bodies) == 1
    message = EventMessage.model_validate_json(bodies[0])
    assert message.event_type == "tetsu.instance.create.start"
    assert [row.id for row in rows(db)] == [message.id]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_broker_that_is_down_drops_publishes_with_one_warning(db: Database, caplog):
    transport = AMQPTransport(
        f"amqp://guest:guest@127.0.0.1:{closed_port()}//", connect_timeout=0.5
    )
    bus = AMQPNotificationBus(transport)
    notifier = Notifier(bus, service="test")
    instance = make_instance(db)
    caplog.set_level(logging.WARNING, logger="libs.notify.bus")

    for action in ("create", "schedule", "delete"):
        with db.session() as session:
            notifier.instance(session, instance, action, Phase.END)
    bus.close()  # waits (a while) for the publisher to go through its queue

    assert len(rows(db)) == 3  # stored all the same

    def dropped() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "dropped" in r.getMessage()]

    # kombu's connect waits between its attempts: the publisher may outlive close()'s wait.
    deadline = time.monotonic() + 15
    while not dropped() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # and no second warning follows the first
    warnings = dropped()
    assert len(warnings) == 1
    assert "guest:guest" not in warnings[0].getMessage()


def message(project_id: str | None, n: int = 0) -> EventMessage:
    return EventMessage(
        id=f"e{n}",
        created_at=utcnow(),
        event_type="tetsu.instance.create.start",
        object_type="instance",
        object_id="i",
        project_id=project_id,
        severity=EventSeverity.INFO,
        payload={},
        request_id=None,
    )


def test_the_hub_filters_per_client_and_drops_one_that_falls_behind():
    async def scenario() -> None:
        hub = EventHub(MemoryNotificationBus(), queue_size=2)
        await hub.start()
        slow = hub.connect(lambda event: True)
        other = hub.connect(lambda event: event.project_id == "p2")
        for n in range(3):
            hub.dispatch(message("p1", n))
        assert slow.dropped
        assert hub.clients == 1  # the slow one is gone; the other kept
        assert not other.dropped and other.queue.empty()
        hub.dispatch(message("p2", 9))
        received = await other.next(1.0)
        assert received is not None and received.id == "e9"
        hub.close_streams()
        await asyncio.sleep(0)
        assert hub.clients == 0
        assert other.queue.get_nowait() is None  # woken to end its stream
        await hub.stop()

    asyncio.run(scenario())


def test_the_hub_takes_events_from_the_bus():
    async def scenario() -> None:
        bus = MemoryNotificationBus()
        hub = EventHub(bus)
        await hub.start()
        client = await hub.open(lambda event: True)
        bus.publish("tetsu.instance.create.start", message("p1").model_dump_json().encode())
        bus.publish("garbage", b"not an event")  # logged and dropped
        received = await client.next(1.0)
        assert received is not None and received.project_id == "p1"
        assert await client.next(0.05) is None
        await hub.stop()

    asyncio.run(scenario())


def test_the_hub_listens_to_the_bus_only_while_someone_streams(monkeypatch):
    """With no stream open, the hub is not subscribed (a burst publishes thousands of
    events, each received in vain); the first stream subscribes, and the last one's
    leaving unsubscribes after the linger."""

    async def scenario() -> None:
        bus = MemoryNotificationBus()
        hub = EventHub(bus, linger=0.05)

        def subscribed() -> bool:
            return hub.subscribed

        await hub.start()
        parsed: list[bytes] = []
        real = EventMessage.model_validate_json

        def counting(body: bytes) -> EventMessage:
            parsed.append(body)
            return real(body)

        monkeypatch.setattr(EventMessage, "model_validate_json", counting)
        body = message("p1").model_dump_json().encode()
        bus.publish("tetsu.instance.create.start", body)
        assert parsed == [] and not subscribed()
        first = await hub.open(lambda event: True)
        second = await hub.open(lambda event: True)
        bus.publish("tetsu.instance.create.start", body)
        assert parsed == [body]
        received = await first.next(1.0)
        assert received is not None and received.project_id == "p1"
        hub.disconnect(first)
        await asyncio.sleep(0.1)
        assert subscribed()  # the second one still streams
        hub.disconnect(second)
        assert subscribed()  # lingers, for a stream that reconnects
        await asyncio.sleep(0.1)
        assert not subscribed()
        bus.publish("tetsu.instance.create.start", body)
        assert parsed == [body]
        again = await hub.open(lambda event: True)
        bus.publish("tetsu.instance.create.start", body)
        assert (await again.next(1.0)) is not None
        await hub.stop()

    asyncio.run(scenario())


def test_the_sweep_deletes_only_old_events_in_bounded_batches(db: Database):
    now = utcnow()
    with db.session() as session:
        for n in range(5):
            session.add(
                Event(
                    created_at=now - timedelta(hours=100),
                    event_type="tetsu.node.power.end",
                    object_type="node",
                    object_id=f"old-{n}",
                )
            )
        session.add(Event(event_type="tetsu.node.power.end", object_type="node", object_id="new"))

    assert sweep_events(db, 72, batch=2, max_batches=2) == 4  # bounded: the rest next time
    assert sweep_events(db, 72, batch=2, max_batches=2) == 1
    assert [row.object_id for row in rows(db)] == ["new"]


@pytest.mark.parametrize(
    ("previous", "new", "expected"),
    [
        ("available", "deploying", "deploy.start"),
        ("wait call-back", "deploy failed", "deploy.error"),
        ("deploying", "active", "deploy.end"),
        ("enroll", "manageable", "manage.end"),
        ("deleting", "error", "tear_down.error"),
        ("clean wait", "clean failed", "clean.error"),
    ],
)
def test_node_transitions_name_their_phase(previous, new, expected):
    action, phase = node_transition(previous, new)
    assert f"{action}.{phase.value}" == expected
