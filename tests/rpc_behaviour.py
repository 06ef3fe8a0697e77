"""The behaviour every transport must show, run by the unit tests (memory transport) and the
integration tests (RabbitMQ). A module that imports these tests provides two fixtures:
``transport`` (a connected transport) and ``topic`` (a topic name unused so far).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from pydantic import BaseModel

from libs import rpc
from libs.rpc import serializer

CTX = rpc.RequestContext(request_id="req-test", project_id="p1", user_id="u1", roles=("member",))


class NodeBusy(Exception):
    """A domain error the tests allow through."""


class Reservation(BaseModel):
    node: str
    until: dt.datetime


class Recorder:
    """Collects what handlers saw, so tests can wait for casts."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.seen: list[tuple[str, object]] = []

    def add(self, item: tuple[str, object]) -> None:
        with self.cond:
            self.seen.append(item)
            self.cond.notify_all()

    def wait_for(
        self, predicate: Callable[[list[tuple[str, object]]], bool], timeout: float = 10.0
    ) -> list[tuple[str, object]]:
        with self.cond:
            assert self.cond.wait_for(lambda: predicate(self.seen), timeout), self.seen[-5:]
            return list(self.seen)


class Manager:
    RPC_API_VERSION = "1.3"

    def __init__(self, name: str, recorder: Recorder) -> None:
        self.name = name
        self.recorder = recorder

    @rpc.expose
    def echo(self, ctxt: rpc.RequestContext, value: object) -> object:
        return value

    @rpc.expose
    def whoami(self, ctxt: rpc.RequestContext) -> dict[str, object]:
        return {"server": self.name, "request_id": ctxt.request_id, "roles": list(ctxt.roles)}

    @rpc.expose
    def reserve(
        self, ctxt: rpc.RequestContext, reservation: Reservation, attempt: uuid.UUID
    ) -> dict[str, str]:
        assert isinstance(reservation.until, dt.datetime)
        return {
            "node": reservation.node,
            "until": reservation.until.isoformat(),
            "attempt": attempt.hex,
        }

    @rpc.expose
    def note(self, ctxt: rpc.RequestContext, value: int) -> None:
        self.recorder.add((self.name, value))

    @rpc.expose
    def fail_busy(self, ctxt: rpc.RequestContext, node: str) -> None:
        raise NodeBusy(f"node {node} is locked by another conductor")

    @rpc.expose
    def fail_other(self, ctxt: rpc.RequestContext) -> None:
        raise LookupError("something internal")

    @rpc.expose
    def slow(self, ctxt: rpc.RequestContext, seconds: float) -> str:
        time.sleep(seconds)
        self.recorder.add((self.name, f"slow-done-{seconds}"))
        return "done"

    @rpc.expose
    def request_seen_by_logging(self, ctxt: rpc.RequestContext) -> str | None:
        current = rpc.current_context.get()
        return current.request_id if current else None

    def not_exposed(self, ctxt: rpc.RequestContext) -> str:
        return "should never run"

    @rpc.expose
    def _private(self, ctxt: rpc.RequestContext) -> str:
        return "should never run"


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def serve(
    transport: rpc.Transport, topic: str, recorder: Recorder
) -> Iterator[Callable[..., rpc.RPCServer]]:
    servers: list[rpc.RPCServer] = []

    def start(name: str = "s1", workers: int = 4, debug: bool = False) -> rpc.RPCServer:
        server = rpc.RPCServer(
            transport,
            rpc.Target(topic, server=name),
            [Manager(name, recorder)],
            workers=workers,
            debug=debug,
        )
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def client(transport: rpc.Transport, topic: str) -> rpc.RPCClient:
    return rpc.RPCClient(
        transport, rpc.Target(topic, version="1.0"), timeout=10, allowed_errors=[NodeBusy]
    )


def test_call_returns_the_result_and_carries_the_context(serve, client):
    serve("s1")
    assert client.call(CTX, "echo", value={"a": [1, 2.5, None, "x"]}) == {"a": [1, 2.5, None, "x"]}
    assert client.call(CTX, "whoami") == {
        "server": "s1",
        "request_id": "req-test",
        "roles": ["member"],
    }


def test_the_handled_request_is_visible_to_code_far_from_the_handler(serve, client):
    serve("s1")
    assert client.call(CTX, "request_seen_by_logging") == "req-test"


def test_rich_arguments_are_serialised_and_typed_again(serve, client):
    serve("s1")
    until = dt.datetime(2026, 11, 27, 12, 30, tzinfo=dt.UTC)
    attempt = uuid.uuid4()
    result = client.call(
        CTX, "reserve", reservation=Reservation(node="n1", until=until), attempt=attempt
    )
    assert result == {"node": "n1", "until": until.isoformat(), "attempt": attempt.hex}


def test_cast_is_handled(serve, client, recorder):
    serve("s1")
    for value in range(20):
        client.cast(CTX, "note", value=value)
    seen = recorder.wait_for(lambda s: len(s) >= 20)
    assert sorted(v for _, v in seen) == list(range(20))


def test_cast_before_any_server_starts_is_kept(serve, client, recorder):
    client.cast(CTX, "note", value=42)
    serve("late")
    # promptly: a waiting message does not sit until some idle timer fires
    assert recorder.wait_for(lambda s: len(s) >= 1, timeout=3) == [("late", 42)]


def test_allowed_exception_is_raised_as_its_own_type(serve, client):
    serve("s1")
    with pytest.raises(NodeBusy, match="node n7 is locked"):
        client.call(CTX, "fail_busy", node="n7")


def test_other_exception_arrives_as_remote_error_without_traceback(serve, client):
    serve("s1")
    with pytest.raises(rpc.RemoteError) as info:
        client.call(CTX, "fail_other")
    assert info.value.exc_type == "builtins.LookupError"
    assert info.value.message == "something internal"
    assert info.value.remote_traceback is None


def test_debug_server_sends_the_remote_traceback(serve, client):
    serve("s1", debug=True)
    with pytest.raises(rpc.RemoteError) as info:
        client.call(CTX, "fail_other")
    assert "LookupError: something internal" in (info.value.remote_traceback or "")


def test_call_timeout_raises_typed_timeout(serve, client):
    serve("s1")
    started = time.monotonic()
    with pytest.raises(rpc.Timeout):
        client.call(CTX, "slow", seconds=1.5, timeout=0.3)
    assert time.monotonic() - started < 1.2
    # The server is not stuck: the next call is answered.
    assert client.call(CTX, "echo", value=1) == 1


def test_call_without_consumer_fails_fast(serve, client):
    started = time.monotonic()
    with pytest.raises(rpc.NoConsumer):
        client.call(CTX, "echo", value=1, timeout=30)
    assert time.monotonic() - started < 2


def test_call_to_a_server_that_is_gone_fails_fast(serve, client):
    server = serve("s1")
    server.stop()
    with pytest.raises(rpc.NoConsumer):
        client.prepare(server="s1").call(CTX, "echo", value=1, timeout=30)


def test_cast_to_a_server_that_never_existed_is_refused(serve, client):
    serve("s1")
    with pytest.raises(rpc.NoConsumer):
        client.prepare(server="ghost").cast(CTX, "note", value=1)


def test_server_targeted_call_reaches_that_server(serve, client):
    for name in ("s1", "s2", "s3"):
        serve(name)
    for name in ("s1", "s2", "s3", "s2"):
        assert client.prepare(server=name).call(CTX, "whoami")["server"] == name


def test_topic_calls_are_shared_between_servers(serve, client):
    for name in ("s1", "s2"):
        serve(name, workers=1)
    seen: Counter[str] = Counter()

    def caller() -> None:
        for _ in range(10):
            seen[client.call(CTX, "whoami")["server"]] += 1
            # a tiny pause lets the other server win some of the competition
            time.sleep(0.001)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(seen.values()) == 40
    assert set(seen) == {"s1", "s2"}


def test_fanout_reaches_every_server(serve, client, recorder):
    for name in ("s1", "s2", "s3"):
        serve(name)
    client.prepare(fanout=True).cast(CTX, "note", value=7)
    seen = recorder.wait_for(lambda s: len(s) >= 3)
    time.sleep(0.2)  # and only once each
    assert sorted(recorder.seen) == [("s1", 7), ("s2", 7), ("s3", 7)]
    assert len(seen) == 3


def test_newer_minor_version_is_refused(serve, client):
    serve("s1")
    assert client.prepare(version="1.3").call(CTX, "echo", value=1) == 1
    with pytest.raises(rpc.UnsupportedVersion):
        client.prepare(version="1.4").call(CTX, "echo", value=1)
    with pytest.raises(rpc.UnsupportedVersion):
        client.prepare(version="2.0").call(CTX, "echo", value=1)


@pytest.mark.parametrize(
    "method",
    ["_private", "not_exposed", "__init__", "__class__", "recorder", "name", "no_such_thing"],
)
def test_private_unexposed_and_unknown_names_are_refused(serve, client, method):
    serve("s1")
    with pytest.raises(rpc.NoSuchMethod):
        client.call(CTX, method)


def test_wrong_arguments_are_refused(serve, client):
    serve("s1")
    with pytest.raises(rpc.InvalidArguments, match="unexpected"):
        client.call(CTX, "echo", value=1, extra=2)
    with pytest.raises(rpc.InvalidArguments, match="missing"):
        client.call(CTX, "echo")
    with pytest.raises(rpc.InvalidArguments, match="seconds"):
        client.call(CTX, "slow", seconds="not a number")


def test_malformed_messages_are_rejected_and_the_server_keeps_running(
    serve, client, transport, topic, recorder
):
    serve("s1")
    target = rpc.Target(topic)
    for body in (
        b"not json at all",
        b"[1, 2]",
        b'{"args": {}}',
        b'{"method": "note", "args": 5}',
        b'{"method": "note", "args": {"value": 1}, "version": "one"}',
    ):
        transport.send(target, body, msg_id="bad-" + body[:4].decode())
    reply = serializer.loads(transport.request(target, b"\xff\xfe", msg_id="bad-call", timeout=5))
    assert reply["failure"]["type"] == "MalformedMessage"
    client.cast(CTX, "note", value=99)
    assert recorder.wait_for(lambda s: ("s1", 99) in s)
    assert client.call(CTX, "echo", value="still alive") == "still alive"
    assert [v for _, v in recorder.seen] == [99]


def test_stop_lets_in_flight_work_finish(serve, client, recorder):
    server = serve("s1")
    client.cast(CTX, "slow", seconds=0.5)
    recorder_before = len(recorder.seen)
    time.sleep(0.2)  # the handler is running now
    server.stop()
    assert ("s1", "slow-done-0.5") in recorder.seen[recorder_before:]


def test_concurrent_callers(serve, client):
    serve("s1", workers=8)
    results: list[int] = []
    lock = threading.Lock()

    def caller(base: int) -> None:
        for i in range(25):
            value = client.call(CTX, "echo", value=base + i)
            with lock:
                results.append(value)

    threads = [threading.Thread(target=caller, args=(n * 100,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == sorted(n * 100 + i for n in range(8) for i in range(25))


class Gauge:
    """Counts handlers running at once."""

    RPC_API_VERSION = "1.0"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.done = 0

    @rpc.expose
    def hold(self, ctxt: rpc.RequestContext, seconds: float) -> None:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(seconds)
        with self.lock:
            self.running -= 1
            self.done += 1


def test_no_more_than_workers_handlers_run_at_once(transport, topic):
    gauge = Gauge()
    server = rpc.RPCServer(transport, rpc.Target(topic, server="s1"), [gauge], workers=3)
    client = rpc.RPCClient(transport, rpc.Target(topic))
    with server:
        for _ in range(12):
            client.cast(CTX, "hold", seconds=0.05)
        deadline = time.monotonic() + 20
        while gauge.done < 12 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert gauge.done == 12
    assert gauge.peak == 3
