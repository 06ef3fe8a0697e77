"""libs/rpc on the real RabbitMQ: the shared behaviour suite, dead letters, and a broker crash
in the middle of 1,000 casts."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import kombu
import pytest

from libs import rpc
from tests.integration.rabbitnode import RabbitNode
from tests.rpc_behaviour import *  # noqa: F403 - the shared behaviour tests
from tests.rpc_behaviour import CTX, Manager, Recorder

pytestmark = pytest.mark.integration

_topics = itertools.count()


@pytest.fixture
def exchange() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def transport(amqp_url: str, exchange: str) -> Iterator[rpc.AMQPTransport]:
    transport = rpc.AMQPTransport(amqp_url, exchange=exchange, publish_retry_timeout=10)
    yield transport
    transport.close()


@pytest.fixture
def topic() -> str:
    return f"topic{next(_topics)}"


def test_rejected_casts_go_to_the_dead_letter_queue(transport, topic, amqp_url, exchange):
    server = rpc.RPCServer(transport, rpc.Target(topic, server="s1"), [Manager("s1", Recorder())])
    with server:
        transport.send(rpc.Target(topic), b"garbage", msg_id="m-garbage")
        with kombu.Connection(amqp_url) as conn:
            channel = conn.channel()
            deadline = time.monotonic() + 10
            message = None
            while message is None and time.monotonic() < deadline:
                message = channel.basic_get(f"{exchange}.dead", no_ack=True)
                time.sleep(0.05)
            assert message is not None, "the rejected cast is not in the dead-letter queue"
            assert message.body == b"garbage"
            assert message.properties["message_id"] == "m-garbage"


def test_late_reply_of_a_timed_out_call_does_not_confuse_the_next_call(transport, topic):
    server = rpc.RPCServer(
        transport, rpc.Target(topic, server="s1"), [Manager("s1", Recorder())], workers=2
    )
    with server:
        client = rpc.RPCClient(transport, rpc.Target(topic), timeout=10)
        with pytest.raises(rpc.Timeout):
            client.call(CTX, "slow", seconds=0.5, timeout=0.1)
        time.sleep(0.6)  # the reply to the timed-out call arrives now
        assert client.call(CTX, "echo", value="fresh") == "fresh"


def test_broker_crash_during_1000_casts_loses_nothing(tmp_path):
    """kill -9 of RabbitMQ while casts flow: every cast is handled at least once."""
    total = 1000
    seen: Counter[int] = Counter()
    lock = threading.Condition()

    class Counting:
        RPC_API_VERSION = "1.0"

        @rpc.expose
        def note(self, ctxt: rpc.RequestContext, value: int) -> None:
            with lock:
                seen[value] += 1
                lock.notify_all()

    with RabbitNode(tmp_path / "rabbit") as node:
        server_transport = rpc.AMQPTransport(node.url, heartbeat=10, connect_timeout=2)
        client_transport = rpc.AMQPTransport(node.url, connect_timeout=2, publish_retry_timeout=120)
        server = rpc.RPCServer(
            server_transport, rpc.Target("crash", server="s1"), [Counting()], workers=4
        )
        server.start()
        time.sleep(3)  # let the broker store its new durable queues before the crash
        client = rpc.RPCClient(client_transport, rpc.Target("crash"))
        sent = 0
        failures: list[BaseException] = []

        def caster() -> None:
            nonlocal sent
            try:
                for value in range(total):
                    client.cast(CTX, "note", value=value)
                    sent += 1
            except BaseException as exc:
                failures.append(exc)

        thread = threading.Thread(target=caster)
        thread.start()
        while sent < 300 and thread.is_alive():
            time.sleep(0.005)
        node.kill()
        killed_at = sent
        node.restart()
        thread.join(timeout=180)
        assert not failures, failures
        assert sent == total
        with lock:
            assert lock.wait_for(lambda: len(seen) == total, timeout=120), (
                f"{total - len(seen)} casts lost; kill after {killed_at}"
            )
        server.stop()
        client_transport.close()
        server_transport.close()
    assert 300 <= killed_at < total, "the broker must die in the middle of the burst"
    assert set(seen) == set(range(total))
    duplicates = sum(count - 1 for count in seen.values())
    print(f"broker killed after {killed_at} casts; {duplicates} duplicate deliveries")


def test_a_server_whose_workers_were_all_busy_at_a_broker_crash_listens_again(tmp_path):
    """Every worker is inside a handler (casting, so waiting for the broker) when RabbitMQ
    dies: once it is back, the handlers' acknowledgements fail, and the server must notice
    and consume again rather than sit on an idle connection (the casts still queued would
    wait for ever)."""
    handled: Counter[int] = Counter()
    lock = threading.Condition()

    class Forwarding:
        RPC_API_VERSION = "1.0"

        def __init__(self, transport: rpc.Transport) -> None:
            self.onward = rpc.RPCClient(transport, rpc.Target("onward"))

        @rpc.expose
        def forward(self, ctxt: rpc.RequestContext, value: int) -> None:
            time.sleep(1.0)
            self.onward.cast(ctxt, "note", value=value)  # retried until the broker is back
            with lock:
                handled[value] += 1
                lock.notify_all()

    with RabbitNode(tmp_path / "rabbit") as node:
        transport = rpc.AMQPTransport(node.url, connect_timeout=2)
        server = rpc.RPCServer(
            transport, rpc.Target("busy", server="s1"), [Forwarding(transport)], workers=2
        )
        server.start()
        time.sleep(3)  # let the broker store its new durable queues before the crash
        client = rpc.RPCClient(transport, rpc.Target("busy"))
        for value in range(10):
            client.cast(CTX, "forward", value=value)
        with lock:
            assert lock.wait_for(lambda: len(handled) >= 2, timeout=30)
        time.sleep(0.5)  # both workers are in their next handler's sleep
        node.kill()
        time.sleep(2)
        node.restart()
        with lock:
            everything = lock.wait_for(lambda: len(handled) == 10, timeout=30)
        server.stop()
        transport.close()
    assert everything, f"handled {sorted(handled)} of 0..9: the server stopped listening"


def test_cast_in_flight_in_a_killed_server_is_redelivered(amqp_url, exchange, topic):
    """A server process dies (kill -9) inside a handler: another server runs the cast."""
    doomed = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.slow_server", amqp_url, exchange, topic],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert doomed.stdout is not None
        assert doomed.stdout.readline().strip() == "ready"
        transport = rpc.AMQPTransport(amqp_url, exchange=exchange)
        rpc.RPCClient(transport, rpc.Target(topic)).cast(CTX, "work", job="j1")
        assert doomed.stdout.readline().strip() == "started j1"
        doomed.kill()
        doomed.wait(timeout=30)

        done = threading.Event()
        redelivered: list[bool] = []

        class Survivor:
            RPC_API_VERSION = "1.0"

            @rpc.expose
            def work(self, ctxt: rpc.RequestContext, job: str) -> None:
                redelivered.append(job == "j1")
                done.set()

        with rpc.RPCServer(transport, rpc.Target(topic, server="survivor"), [Survivor()]):
            assert done.wait(30), "the cast died with the server that was running it"
        assert redelivered == [True]
        transport.close()
    finally:
        doomed.kill()


def test_credentials_never_appear_in_errors_or_logs(caplog):
    secret = "s3cret-pw"
    transport = rpc.AMQPTransport(
        f"amqp://admin:{secret}@127.0.0.1:1//", connect_timeout=0.5, publish_retry_timeout=1
    )
    client = rpc.RPCClient(transport, rpc.Target("anything"), timeout=1)
    with caplog.at_level("DEBUG"):
        with pytest.raises(rpc.TransportError) as call_error:
            client.call(CTX, "ping")
        with pytest.raises(rpc.TransportError) as cast_error:
            client.cast(CTX, "ping")
    for text in (
        str(call_error.value),
        str(cast_error.value),
        caplog.text,
        repr(call_error.value.__cause__),
    ):
        assert secret not in text
    assert "127.0.0.1:1" in str(call_error.value)
