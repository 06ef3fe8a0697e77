"""The transport-independent behaviour suite, on the in-memory transport."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest

from libs import rpc
from tests.rpc_behaviour import *  # noqa: F403 - the shared behaviour tests
from tests.rpc_behaviour import Manager, Recorder

_topics = itertools.count()


@pytest.fixture
def transport() -> Iterator[rpc.Transport]:
    transport = rpc.MemoryTransport()
    yield transport
    transport.close()


@pytest.fixture
def topic() -> str:
    return f"topic{next(_topics)}"


def test_rejected_messages_are_kept_as_dead_letters(transport, topic):
    server = rpc.RPCServer(transport, rpc.Target(topic, server="s1"), [Manager("s1", Recorder())])
    with server:
        transport.send(rpc.Target(topic), b"garbage", msg_id="m1")
        deadline = time.monotonic() + 5
        while not transport.dead_letters and time.monotonic() < deadline:
            time.sleep(0.01)
    assert list(transport.dead_letters) == [b"garbage"]
