"""The RabbitNode fixture really crashes and restarts a broker; vhosts isolate tests."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import amqp
import pytest
from kombu import Connection, Exchange, Producer, Queue

from tests.integration.rabbitnode import (
    RabbitNode,
    create_vhost,
    delete_vhost,
    rabbitmqctl,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RabbitNode]:
    with RabbitNode(tmp_path) as rabbit:
        yield rabbit
    assert rabbit.leftover_pids() == []


def _connects(url: str) -> bool:
    try:
        with Connection(url, connect_timeout=2) as conn:
            conn.connect()
    except (OSError, amqp.exceptions.AMQPError):
        return False
    return True


def _publish_confirmed(url: str, queue: Queue, bodies: list[str]) -> None:
    # confirm_publish: each publish waits for the broker's ack (the message is on disk).
    with Connection(url, transport_options={"confirm_publish": True}) as conn:
        producer = Producer(conn.channel())
        for body in bodies:
            producer.publish(
                body,
                exchange=queue.exchange,
                routing_key=queue.routing_key,
                delivery_mode=2,
                declare=[queue],
                retry=False,
            )


def _drain(url: str, queue: Queue, expected: int, timeout: float = 10) -> list[str]:
    got: list[str] = []
    with Connection(url) as conn:
        bound = queue(conn.channel())
        deadline = time.monotonic() + timeout
        while len(got) < expected and time.monotonic() < deadline:
            message = bound.get(no_ack=False)
            if message is None:
                time.sleep(0.05)
                continue
            got.append(message.payload)
            message.ack()
    return got


def test_durable_messages_survive_kill_9_and_restart(node: RabbitNode) -> None:
    exchange = Exchange("crash", type="direct", durable=True)
    queue = Queue("crash-q", exchange, routing_key="crash-q", durable=True)
    with Connection(node.url) as conn:
        queue(conn.channel()).declare()
    # A durable queue declared < ~2 s before a kill -9 was sometimes lost (LAB.md).
    time.sleep(3)
    bodies = [f"msg-{i}" for i in range(10)]
    _publish_confirmed(node.url, queue, bodies)

    old_pid = node.pid
    assert old_pid is not None
    node.kill()
    assert node.leftover_pids() == []
    assert not _connects(node.url)

    node.restart()
    assert node.is_running
    assert node.pid != old_pid
    assert sorted(_drain(node.url, queue, expected=10)) == sorted(bodies)
    assert _drain(node.url, queue, expected=1, timeout=0.5) == []


def test_stop_leaves_no_process(tmp_path: Path) -> None:
    rabbit = RabbitNode(tmp_path)
    rabbit.start()
    pid = rabbit.pid
    assert pid is not None
    assert pid in rabbit.leftover_pids()
    assert f"OS PID: {pid}" in rabbit.ctl("status").stdout  # rabbitmqctl reaches it
    rabbit.stop()
    assert not rabbit.is_running
    assert rabbit.leftover_pids() == []
    assert not _connects(rabbit.url)


def test_nodes_get_unique_names_and_ports(tmp_path: Path) -> None:
    a, b = RabbitNode(tmp_path), RabbitNode(tmp_path)
    assert a.node_name != b.node_name
    assert a.node_name.startswith("tetsu-") and a.node_name.endswith("@localhost")
    assert a.amqp_port != a.dist_port
    assert a.url == f"amqp://guest:guest@127.0.0.1:{a.amqp_port}//"
    assert 5672 not in {a.amqp_port, a.dist_port, b.amqp_port, b.dist_port}


def test_create_and_delete_vhost_on_main_broker() -> None:
    name = f"tetsu-test-{secrets.token_hex(4)}"
    url = create_vhost(name)
    try:
        assert url == f"amqp://guest:guest@127.0.0.1:5672/{name}"
        assert name in rabbitmqctl("-q", "list_vhosts", "name").stdout.split()
        queue = Queue("iso-q", Exchange("iso", durable=False), routing_key="iso-q")
        _publish_confirmed(url, queue, ["hello"])
        assert _drain(url, queue, expected=1) == ["hello"]
        # The queue lives in the new vhost only, not in the main broker's "/".
        assert "iso-q" not in rabbitmqctl("-q", "list_queues", "-p", "/", "name").stdout
    finally:
        delete_vhost(name)
    assert name not in rabbitmqctl("-q", "list_vhosts", "name").stdout.split()
    delete_vhost(name)  # deleting a missing vhost is not an error
    with pytest.raises(amqp.exceptions.NotAllowed), Connection(url) as conn:
        conn.connect()
