"""Garbage on the bus never stops a service: bodies that are not JSON or not an envelope,
unknown and private methods, a newer version, wrong arguments, a foreign content type and
10 MB bodies, published straight onto the conductor's, scheduler's and netctl's queues
(casts and calls). Every service refuses each with one log line (a call gets its typed
error back), dead-letters the refused casts, drops the huge ones, keeps running with
bounded memory, and a real deploy through all of them works afterwards."""

from __future__ import annotations

import contextlib
import functools
import pickle
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import amqp
import httpx
import kombu
import pytest

from libs.rpc import serializer
from tests.integration.conftest import create_database, drop_database
from tests.integration.stack import Stack, running_stack, wait_for

pytestmark = pytest.mark.integration

EXCHANGE = "tetsu"
DEAD = f"{EXCHANGE}.dead"
REPLY_TO = "amq.rabbitmq.reply-to"
HUGE = 10 * 1024 * 1024
#: Rounds of the same garbage: memory must stop growing after the first few.
ROUNDS = 4


@dataclass(frozen=True)
class Service:
    topic: str
    hostname: str  # its server name on the bus (TETSU_HOSTNAME in running_stack)
    process: str  # its name in Stack.processes
    method: str  # a real method of it, called here with garbage
    private: str  # a real private method of it: never reachable


SERVICES = (
    Service("conductor", "conductor-1", "conductor-1", "validate_node", "_ramdisk_reported"),
    Service("scheduler", "scheduler-1", "scheduler", "schedule_instance", "_schedule"),
    Service("netctl", "netctl-1", "netctl", "unbind_port", "_lock_for"),
)


@dataclass(frozen=True)
class Garbage:
    name: str
    body: bytes
    refusal: str | None  # the typed error a call gets back; None: dropped unread (too big)
    properties: dict[str, Any]


@functools.cache
def garbage_for(service: Service) -> tuple[Garbage, ...]:
    def envelope(**fields: Any) -> bytes:
        return serializer.dumps({"rpc": 1, "msg_id": "garbage", **fields})

    real = service.method
    pickled = pickle.dumps({"method": real, "args": {}})
    foreign = {"content_type": "application/x-python-serialize", "content_encoding": "binary"}
    return (
        Garbage("not JSON", b"\xff\xfe\x00 not json {", "MalformedMessage", {}),
        Garbage("deep nesting", b"[" * 50_000, "MalformedMessage", {}),
        Garbage("JSON list", b'["not", "an", "envelope"]', "MalformedMessage", {}),
        Garbage("no method", envelope(args={}), "MalformedMessage", {}),
        Garbage("bad context", envelope(method=real, context="admin"), "MalformedMessage", {}),
        Garbage("unknown method", envelope(method="no_such_method"), "NoSuchMethod", {}),
        Garbage("private method", envelope(method=service.private), "NoSuchMethod", {}),
        Garbage("dunder", envelope(method="__init__"), "NoSuchMethod", {}),
        Garbage("newer minor", envelope(method=real, version="1.99"), "UnsupportedVersion", {}),
        Garbage("newer major", envelope(method=real, version="2.0"), "UnsupportedVersion", {}),
        Garbage("wrong args", envelope(method=real, args={"bogus": 1}), "InvalidArguments", {}),
        Garbage("pickle", pickled, "MalformedMessage", foreign),
        Garbage("content type", envelope(method="no_such_method"), "NoSuchMethod", foreign),
        Garbage(
            "10 MB envelope",
            envelope(method=real, args={"node_id": "x" * HUGE, "instance_id": "x" * HUGE}),
            None,
            {},
        ),
        Garbage("10 MB junk", b"\x00" * HUGE, None, {}),
    )


@pytest.fixture
def stack(amqp_url: str, tmp_path: Path) -> Iterator[Stack]:
    name, url = create_database()
    try:
        with running_stack(tmp_path, database_url=url, transport_url=amqp_url) as s:
            yield s
    finally:
        drop_database(name)


@pytest.fixture
def channel(amqp_url: str) -> Iterator[Any]:
    """A raw channel on the services' vhost, consuming direct replies (for the calls)."""
    connection = kombu.Connection(amqp_url)
    connection.connect()
    try:
        yield connection.channel()
    finally:
        connection.release()


def ok(response: httpx.Response, status: int | tuple[int, ...] = (200, 202)) -> dict[str, Any]:
    expected = (status,) if isinstance(status, int) else status
    assert response.status_code in expected, (response.status_code, response.text)
    return response.json() if response.content else {}


def rss_mib(stack: Stack, process: str) -> float:
    pid = stack.processes[process].popen.pid
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {process}")


def _has_logged(stack: Stack, service: Service, text: str, times: int) -> bool:
    log = stack.processes[service.process].log.read_text(errors="replace")
    return log.count(text) >= times


def depth(channel: Any, queue: str) -> int:
    return int(channel.queue_declare(queue, passive=True).message_count)


def publish_round(channel: Any, round_: int) -> list[str]:
    """Publish every piece of garbage to every service: as a cast on its topic queue and
    on its own server queue, and as a call. Returns the correlation ids of the calls."""
    calls = []
    for service in SERVICES:
        for n, garbage in enumerate(garbage_for(service)):
            for queue in (
                f"{EXCHANGE}.{service.topic}",
                f"{EXCHANGE}.{service.topic}@{service.hostname}",
            ):
                channel.basic_publish(
                    amqp.Message(garbage.body, delivery_mode=2, **garbage.properties),
                    exchange=EXCHANGE,
                    routing_key=queue,
                )
            correlation = f"{round_}/{service.topic}/{n}"
            channel.basic_publish(
                amqp.Message(
                    garbage.body,
                    reply_to=REPLY_TO,
                    correlation_id=correlation,
                    **garbage.properties,
                ),
                exchange=EXCHANGE,
                routing_key=f"{EXCHANGE}.{service.topic}:call",
                mandatory=True,
            )
            calls.append(correlation)
    return calls


def test_garbage_on_the_bus_never_stops_a_service(stack: Stack, channel: Any) -> None:
    try:
        publish_garbage_then_deploy(stack, channel)
    except BaseException:
        print(stack.logs())  # pytest does not hand the failure to the fixture
        raise


def publish_garbage_then_deploy(stack: Stack, channel: Any) -> None:
    replies: dict[str, dict[str, Any]] = {}

    def on_reply(message: amqp.Message) -> None:
        replies[message.properties["correlation_id"]] = serializer.loads(message.body)

    channel.basic_consume(REPLY_TO, no_ack=True, callback=on_reply)
    dead_before = depth(channel, DEAD)
    memory: list[dict[str, float]] = [{s.process: rss_mib(stack, s.process) for s in SERVICES}]
    started = time.monotonic()
    for round_ in range(ROUNDS):
        calls = publish_round(channel, round_)

        def answered(calls: list[str] = calls) -> bool:
            with contextlib.suppress(TimeoutError):
                channel.connection.drain_events(timeout=0.5)
            return all(c in replies for c in calls)

        wait_for(answered, timeout=120, interval=0, what="a reply to every garbage call")
        wait_for(
            lambda: all(
                depth(channel, f"{EXCHANGE}.{s.topic}") == 0
                and depth(channel, f"{EXCHANGE}.{s.topic}@{s.hostname}") == 0
                for s in SERVICES
            ),
            timeout=120,
            what="every garbage cast taken off the services' queues",
        )
        stack.check_alive()
        memory.append({s.process: rss_mib(stack, s.process) for s in SERVICES})
    print(f"garbage handled in {time.monotonic() - started:.1f} s; RSS (MiB) {memory}")

    # Each call got its typed refusal back (the huge ones a MalformedMessage, unread).
    for round_ in range(ROUNDS):
        for service in SERVICES:
            for n, garbage in enumerate(garbage_for(service)):
                failure = replies[f"{round_}/{service.topic}/{n}"]["failure"]
                assert failure["type"] == (garbage.refusal or "MalformedMessage"), (
                    service.topic,
                    garbage.name,
                    failure,
                )
                assert len(failure["message"]) < 500, (garbage.name, failure["message"][:200])

    # Refused casts are dead-lettered (2 queues per round and service); the huge ones
    # are dropped, not kept. A queue stops counting a message once it is delivered, before
    # its consumer rejects it into the dead-letter queue: that count may lag behind.
    refused = sum(1 for s in SERVICES for g in garbage_for(s) if g.refusal is not None)
    dead_lettered = wait_for(
        lambda: (n := depth(channel, DEAD) - dead_before) >= refused * 2 * ROUNDS and n,
        timeout=30,
        what=f"{refused * 2 * ROUNDS} refused casts dead-lettered",
    )
    assert dead_lettered == refused * 2 * ROUNDS

    # One short line per refusal, nothing worse: no traceback, no lost connection.
    for service in SERVICES:
        kinds = garbage_for(service)
        per_round = 3  # two casts and a call of each piece of garbage
        refusals = ROUNDS * per_round * sum(1 for g in kinds if g.refusal is not None)
        drops = ROUNDS * per_round * sum(1 for g in kinds if g.refusal is None)
        # A queue counts a message gone once it is delivered: the service may still be
        # reading the last ones.
        wait_for(
            functools.partial(_has_logged, stack, service, "dropped message", drops),
            timeout=30,
            what=f"{service.topic}'s {drops} huge bodies dropped",
        )
        log = stack.processes[service.process].log.read_text(errors="replace")
        assert log.count("refused message") == refusals, service.topic
        assert log.count("dropped message") == drops, service.topic
        for bad in ("Traceback", "unexpected error", "reconnecting", "escaped the server"):
            assert bad not in log, (service.topic, bad)
        assert max(len(line) for line in log.splitlines()) < 2000, service.topic

    # Memory stays bounded: each round brings every service 90 MB of huge bodies (two,
    # each as two casts and a call) and it is given back. (Before `tetsu service` tuned
    # glibc's malloc, the conductor grew by about 90 MB a round: 575 MB after six.)
    for service in SERVICES:
        growth = max(m[service.process] for m in memory) - memory[0][service.process]
        assert growth < 64, (service.process, memory)

    # And they all still serve: a real deploy goes through the scheduler, the conductor
    # and netctl.
    with stack.client() as admin:
        ok(
            admin.post(
                "/v1/flavors",
                json={
                    "name": "bm",
                    "resource_class": "bm",
                    "cpus": 1,
                    "memory_mb": 1,
                    "disk_gb": 1,
                },
            ),
            201,
        )
        ok(
            admin.post(
                "/v1/images",
                json={"name": "img", "source_url": "http://x/img", "sha256": "0" * 64, "size": 1},
            ),
            201,
        )
        network = ok(admin.post("/v1/networks", json={"name": "net"}), 201)
        node = ok(
            admin.post(
                "/v1/nodes",
                json={
                    "name": "n1",
                    "resource_class": "bm",
                    "properties": {"cpus": 1, "memory_mb": 1, "disk_gb": 1},
                },
            ),
            201,
        )
        ok(
            admin.post("/v1/ports", json={"address": "52:54:00:cc:00:01", "node_id": node["id"]}),
            201,
        )
        for target in ("manage", "provide"):
            ok(admin.put(f"/v1/nodes/{node['id']}/states/provision", json={"target": target}))
        wait_for(
            lambda: ok(admin.get(f"/v1/nodes/{node['id']}"))["provision_state"] == "available",
            what="the node available",
        )
        server = ok(
            admin.post(
                "/v1/instances",
                json={"name": "after", "flavor": "bm", "image": "img", "networks": [network["id"]]},
            ),
            202,
        )
        row = wait_for(
            lambda: (
                (r := ok(admin.get(f"/v1/instances/{server['id']}")))["status"] != "BUILD" and r
            ),
            timeout=60,
            what="the deploy after the garbage",
        )
        assert row["status"] == "ACTIVE", row
        port = ok(admin.get("/v1/ports", params={"node_id": node["id"]}))["ports"][0]
        assert port["network_id"] == network["id"], port
    stack.check_alive()
