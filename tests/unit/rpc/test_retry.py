"""Casts whose handler met a transient failure (``retry_if``: the database is down) are
put back and handled again; other failures, and calls, are not retried."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from libs import rpc


class Unavailable(Exception):
    """Stands for "the database is down"."""


class Flaky:
    """Fails its first ``failures`` calls of ``store`` with ``error``, then records."""

    RPC_API_VERSION = "1.0"

    def __init__(self, failures: int, error: type[Exception] = Unavailable) -> None:
        self.failures = failures
        self.error = error
        self.attempts = 0
        self.stored: list[str] = []
        self.done = threading.Event()

    @rpc.expose
    def store(self, ctxt: rpc.RequestContext, value: str) -> str:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise self.error("not now")
        self.stored.append(value)
        self.done.set()
        return value


@pytest.fixture
def transport() -> Iterator[rpc.MemoryTransport]:
    transport = rpc.MemoryTransport()
    yield transport
    transport.close()


def serve(transport: rpc.Transport, endpoint: Flaky) -> rpc.RPCServer:
    return rpc.RPCServer(
        transport,
        rpc.Target("flaky", server="s1"),
        [endpoint],
        workers=2,
        retry_if=lambda exc: isinstance(exc, Unavailable),
        retry_delay=0.05,
    )


def test_a_cast_that_met_a_transient_failure_is_handled_again_until_it_succeeds(transport):
    endpoint = Flaky(failures=3)
    client = rpc.RPCClient(transport, rpc.Target("flaky"))
    with serve(transport, endpoint):
        client.cast(rpc.RequestContext.admin(), "store", value="kept")
        assert endpoint.done.wait(5)
    assert endpoint.stored == ["kept"]
    assert endpoint.attempts == 4
    assert list(transport.dead_letters) == []


def test_other_failures_of_a_cast_are_not_retried(transport):
    endpoint = Flaky(failures=1, error=ValueError)
    client = rpc.RPCClient(transport, rpc.Target("flaky"))
    with serve(transport, endpoint):
        client.cast(rpc.RequestContext.admin(), "store", value="lost")
        time.sleep(0.3)
    assert endpoint.attempts == 1
    assert endpoint.stored == []


def test_a_call_gets_the_transient_failure_at_once(transport):
    endpoint = Flaky(failures=1)
    client = rpc.RPCClient(transport, rpc.Target("flaky"), timeout=5)
    with serve(transport, endpoint):
        with pytest.raises(rpc.RemoteError):
            client.call(rpc.RequestContext.admin(), "store", value="x")
        assert client.call(rpc.RequestContext.admin(), "store", value="y") == "y"
    assert endpoint.attempts == 2


def test_a_stopping_server_puts_the_cast_back_for_its_next_run(transport):
    endpoint = Flaky(failures=1)
    client = rpc.RPCClient(transport, rpc.Target("flaky"))
    server = rpc.RPCServer(
        transport,
        rpc.Target("flaky", server="s1"),
        [endpoint],
        retry_if=lambda exc: isinstance(exc, Unavailable),
        retry_delay=60,
    )
    server.start()
    client.cast(rpc.RequestContext.admin(), "store", value="later")
    deadline = time.monotonic() + 5
    while endpoint.attempts == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    server.stop()  # does not wait out the 60 s retry delay
    assert time.monotonic() - started < 5
    assert endpoint.stored == []
    with serve(transport, endpoint):
        assert endpoint.done.wait(5)
    assert endpoint.stored == ["later"]
