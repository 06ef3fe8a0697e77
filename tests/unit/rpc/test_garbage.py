"""Garbage on the bus: the server refuses it with a typed error and a short log line,
and keeps serving (memory transport; tests/integration/test_reliability_bus.py does the
same against the real services on RabbitMQ)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from libs import rpc
from libs.rpc import serializer

CTX = rpc.RequestContext(request_id="req-garbage")


class Echo:
    RPC_API_VERSION = "1.0"

    @rpc.expose
    def echo(self, ctxt: rpc.RequestContext, value: str) -> str:
        return value


@pytest.fixture
def transport() -> Iterator[rpc.MemoryTransport]:
    transport = rpc.MemoryTransport()
    server = rpc.RPCServer(
        transport, rpc.Target("garbage", server="s1"), [Echo()], workers=2, max_body_bytes=4096
    )
    server.start()
    yield transport
    server.stop()
    transport.close()


def failure_of(transport: rpc.MemoryTransport, body: bytes) -> dict[str, str]:
    reply = transport.request(rpc.Target("garbage"), body, msg_id="m1", timeout=5)
    failure: dict[str, str] = serializer.loads(reply)["failure"]
    return failure


def still_serves(transport: rpc.MemoryTransport) -> bool:
    client = rpc.RPCClient(transport, rpc.Target("garbage"), timeout=5)
    return bool(client.call(CTX, "echo", value="alive") == "alive")


def test_deeply_nested_json_is_refused_as_malformed(transport: rpc.MemoryTransport) -> None:
    failure = failure_of(transport, b"[" * 4000)
    assert failure["type"] == "MalformedMessage"
    assert "nests too deeply" in failure["message"]
    assert still_serves(transport)


def test_a_body_over_the_limit_is_refused_unread_and_dropped(
    transport: rpc.MemoryTransport, caplog: pytest.LogCaptureFixture
) -> None:
    huge = serializer.dumps({"method": "echo", "args": {"value": "x" * 10_000}})
    with caplog.at_level(logging.WARNING, logger="libs.rpc.server"):
        failure = failure_of(transport, huge)
        transport.send(rpc.Target("garbage"), huge, msg_id="cast-1")
        assert still_serves(transport)
    assert failure["type"] == "MalformedMessage"
    assert "over the server's limit of 4096 bytes" in failure["message"]
    assert [r.getMessage() for r in caplog.records if "dropped message cast-1" in r.getMessage()]
    # Dropped, not dead-lettered: huge garbage is kept nowhere.
    assert not transport.dead_letters


@pytest.mark.parametrize(
    ("body", "quoted"),
    [
        (b'{"method": "' + b"a" * 3000 + b'"}', "method name is longer than 255"),
        (b'{"method": "echo", "version": "1.' + b"9" * 3000 + b'"}', "version is not a string"),
        (b'{"method": "echo", "version": 1}', "version is not a string"),
    ],
)
def test_refusals_do_not_echo_long_garbage(
    transport: rpc.MemoryTransport, caplog: pytest.LogCaptureFixture, body: bytes, quoted: str
) -> None:
    with caplog.at_level(logging.WARNING, logger="libs.rpc.server"):
        failure = failure_of(transport, body)
    assert failure["type"] == "MalformedMessage"
    assert quoted in failure["message"]
    assert len(failure["message"]) < 300
    assert all(len(r.getMessage()) < 500 for r in caplog.records)
    assert still_serves(transport)
