"""Restarts under load, with the services as separate processes on the real RabbitMQ and
PostgreSQL: RabbitMQ killed (kill -9) while 200 instance creations are in flight, and the
API and the scheduler restarted (SIGTERM and kill -9) during a burst of creations.

What a user must see afterwards: every instance ends ACTIVE, or ERROR with a fault; none
stays in BUILD; no node is deployed twice; nothing is left locked or half-way.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select

from libs.db import Database, Node
from services.conductor.drivers.fake import RUNS_KEY
from tests.integration.conftest import create_database, drop_database
from tests.integration.rabbitnode import RabbitNode
from tests.integration.stack import Stack, running_stack, wait_for

pytestmark = pytest.mark.integration

#: Short recovery intervals (defaults: 120 s), so that work a crash stranded is picked
#: up within the test's patience: a BUILD instance without a node is scheduled again,
#: a claimed node whose deploy never started is deployed by its conductor.
FAST_RECOVERY = {
    "TETSU_STRANDED_AFTER": "10",
    "TETSU_STRANDED_CHECK_INTERVAL": "2",
    "TETSU_REDRIVE_AFTER": "10",
}

#: States a node may be left in once everything settled (no work half-way).
SETTLED_NODE_STATES = {"available", "active", "deploy failed"}


def ok(response: httpx.Response, status: int | tuple[int, ...] = (200, 202)) -> dict[str, Any]:
    expected = (status,) if isinstance(status, int) else status
    assert response.status_code in expected, (response.status_code, response.text)
    return response.json() if response.content else {}


def wide_client(stack: Stack, timeout: float) -> httpx.Client:
    """An admin client for hundreds of requests at once (httpx keeps 100 by default)."""
    return httpx.Client(
        base_url=stack.endpoint,
        headers={"Authorization": f"Bearer {stack.admin_token}"},
        timeout=timeout,
        limits=httpx.Limits(max_connections=300, max_keepalive_connections=300),
    )


# -- the evidence of a double deploy -------------------------------------------------


@dataclass(frozen=True)
class NodeRecord:
    id: str
    provision_state: str
    instance_id: str | None
    reservation: str | None
    last_error: str | None
    #: The fake ramdisk's runs on the node, oldest first: "clean" or "deploy <instance>".
    runs: tuple[str, ...]


def node_records(database_url: str) -> list[NodeRecord]:
    """Every node as the database has it, with the fake ramdisk's record of its runs
    (driver_internal_info never leaves the database through the API)."""
    db = Database(database_url)
    try:
        with db.session() as session:
            nodes = session.exec(select(Node)).all()
            return [
                NodeRecord(
                    node.id,
                    node.provision_state,
                    node.instance_id,
                    node.reservation,
                    node.last_error,
                    tuple((node.driver_internal_info or {}).get(RUNS_KEY, [])),
                )
                for node in nodes
            ]
    finally:
        db.dispose()


def double_deploys(nodes: Iterable[NodeRecord], instances: Iterable[dict[str, Any]]) -> list[str]:
    """What proves a deploy happened twice, as sentences (empty: none did).

    - a node whose ramdisk deployed twice with no cleaning in between (two deploys of the
      same or of two instances on one disk: a second deploy ran on a claimed node);
    - an instance deployed on two nodes that both became ``active`` for it;
    - an ACTIVE instance whose node's last ramdisk run was not its own deploy.
    """
    problems = []
    active_on: dict[str, list[str]] = {}
    last_deploy: dict[str, str] = {}
    for node in nodes:
        since_clean: list[str] = []
        for run in node.runs:
            since_clean = [] if run == "clean" else [*since_clean, run]
        if len(since_clean) > 1:
            problems.append(f"node {node.id} deployed {len(since_clean)} times: {since_clean}")
        if since_clean:
            last_deploy[node.id] = since_clean[-1]
        if node.provision_state == "active" and node.instance_id is not None:
            active_on.setdefault(node.instance_id, []).append(node.id)
    for instance_id, node_ids in active_on.items():
        if len(node_ids) > 1:
            problems.append(f"instance {instance_id} is active on nodes {sorted(node_ids)}")
    for row in instances:
        if row["status"] != "ACTIVE":
            continue
        node_id = row["node_id"]
        if active_on.get(row["id"]) != [node_id]:
            problems.append(f"ACTIVE instance {row['id']} is not active on its node {node_id}")
        elif last_deploy.get(node_id) != f"deploy {row['id']}":
            problems.append(
                f"ACTIVE instance {row['id']}: its node {node_id} last deployed "
                f"{last_deploy.get(node_id)!r}"
            )
    return problems


def test_the_double_deploy_detector_sees_each_kind_of_double_deploy() -> None:
    """The evidence used below can fail: each kind of double deploy is reported."""
    good = [NodeRecord("n1", "active", "i1", None, None, ("clean", "deploy i1"))]
    active = [{"id": "i1", "status": "ACTIVE", "node_id": "n1"}]
    assert double_deploys(good, active) == []
    redeployed = [NodeRecord("n1", "active", "i1", None, None, ("clean", "deploy i1", "deploy i1"))]
    assert "deployed 2 times" in double_deploys(redeployed, active)[0]
    cleaned_between = [
        NodeRecord("n1", "active", "i1", None, None, ("clean", "deploy i0", "clean", "deploy i1"))
    ]
    assert double_deploys(cleaned_between, active) == []
    two_nodes = [*good, NodeRecord("n2", "active", "i1", None, None, ("clean", "deploy i1"))]
    assert any("active on nodes" in p for p in double_deploys(two_nodes, active))
    other_disk = [NodeRecord("n1", "active", "i1", None, None, ("clean", "deploy i2"))]
    assert "last deployed 'deploy i2'" in double_deploys(other_disk, active)[0]


# -- building a cloud -----------------------------------------------------------------


def prepare_cloud(stack: Stack, nodes: int, *, delay: float) -> None:
    """A flavor ``bm``, an image ``img`` and ``nodes`` available fake nodes with a port each,
    whose ramdisk runs take ``delay`` seconds, enrolled over REST as an operator would."""
    with wide_client(stack, timeout=60) as admin:
        flavor = {"name": "bm", "resource_class": "bm", "cpus": 1, "memory_mb": 1, "disk_gb": 1}
        ok(admin.post("/v1/flavors", json=flavor), 201)
        image = {"name": "img", "source_url": "http://x/img", "sha256": "0" * 64, "size": 1}
        ok(admin.post("/v1/images", json=image), 201)

        def enroll(i: int) -> None:
            node = ok(
                admin.post(
                    "/v1/nodes",
                    json={
                        "name": f"n{i:03d}",
                        "resource_class": "bm",
                        "properties": {"cpus": 1, "memory_mb": 1, "disk_gb": 1},
                        "driver_info": {"fake_delay": delay},
                    },
                ),
                201,
            )
            mac = f"52:54:00:cc:{i // 256:02x}:{i % 256:02x}"
            ok(admin.post("/v1/ports", json={"address": mac, "node_id": node["id"]}), 201)
            for target in ("manage", "provide"):
                ok(admin.put(f"/v1/nodes/{node['id']}/states/provision", json={"target": target}))

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(enroll, range(nodes)))
        wait_for(
            lambda: count_nodes(admin, "available") == nodes,
            timeout=120,
            interval=1,
            what=f"{nodes} nodes available",
        )


def post_retrying_503(client: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    """POST /v1/instances as a well-behaved client: a 503 (a backend, such as the database,
    could not serve it now) is tried again after its Retry-After, a few times."""
    for _ in range(5):
        response = client.post("/v1/instances", json=body)
        if response.status_code != 503:
            return response
        time.sleep(float(response.headers.get("Retry-After", "1")))
    return response


def count_nodes(admin: httpx.Client, state: str) -> int:
    params: dict[str, str | int] = {"provision_state": state, "limit": 1000}
    return len(ok(admin.get("/v1/nodes", params=params), 200)["nodes"])


def all_instances(admin: httpx.Client) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    marker: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 1000, **({"marker": marker} if marker else {})}
        page = ok(admin.get("/v1/instances", params=params), 200)
        rows += page["instances"]
        marker = page["next_marker"]
        if marker is None:
            return rows


def settle(stack: Stack, admin: httpx.Client, *, timeout: float) -> list[dict[str, Any]]:
    """Wait until no instance is in BUILD any more; every instance."""

    def settled() -> list[dict[str, Any]] | None:
        stack.check_alive()
        rows = all_instances(admin)
        return rows if all(row["status"] != "BUILD" for row in rows) else None

    try:
        rows: list[dict[str, Any]] = wait_for(
            settled, timeout=timeout, interval=2, what="every instance out of BUILD"
        )
    except AssertionError:
        stuck = [row for row in all_instances(admin) if row["status"] == "BUILD"]
        raise AssertionError(f"{len(stuck)} instance(s) stayed in BUILD: {stuck[:5]}") from None
    return rows


def check_outcome(
    stack: Stack, database_url: str, rows: list[dict[str, Any]], accepted: Iterable[str]
) -> Counter[str]:
    """The end state a user and an operator expect; returns the instances' statuses."""
    by_id = {row["id"]: row for row in rows}
    lost = [i for i in accepted if i not in by_id]
    assert not lost, f"accepted instances missing from the list: {lost}"
    for row in rows:
        assert row["status"] in ("ACTIVE", "ERROR"), row
        if row["status"] == "ERROR":
            assert row["fault"] and row["fault"]["code"] and row["fault"]["message"], row
        else:
            assert row["fault"] is None and row["task_state"] is None, row
    nodes = node_records(database_url)
    assert double_deploys(nodes, rows) == []
    assert [n for n in nodes if n.reservation is not None] == [], "nodes left locked"
    assert [n for n in nodes if n.provision_state not in SETTLED_NODE_STATES] == []
    active = {row["node_id"] for row in rows if row["status"] == "ACTIVE"}
    assert {n.id for n in nodes if n.provision_state == "active"} == active
    stack.check_alive()
    return Counter(row["status"] for row in rows)


# -- 1. RabbitMQ killed with 200 creations in flight ----------------------------------

BROKER_INSTANCES = 200

#: A broker crash loses no message, so nothing here may need the safety nets; they wait
#: long enough (30 s) that a message merely queued behind 200 others is not taken for a
#: lost one, and the test checks that neither had to act.
BROKER_RECOVERY = {**FAST_RECOVERY, "TETSU_STRANDED_AFTER": "30", "TETSU_REDRIVE_AFTER": "30"}


@pytest.fixture
def broker_stack(tmp_path: Path) -> Iterator[tuple[Stack, RabbitNode, str]]:
    name, url = create_database()
    try:
        with (
            RabbitNode(tmp_path / "rabbit") as broker,
            running_stack(
                tmp_path, database_url=url, transport_url=broker.url, extra_env=BROKER_RECOVERY
            ) as stack,
        ):
            yield stack, broker, url
    finally:
        drop_database(name)


def test_a_broker_killed_with_200_creations_in_flight_loses_none_and_deploys_none_twice(
    broker_stack: tuple[Stack, RabbitNode, str],
) -> None:
    stack, broker, database_url = broker_stack
    started = time.monotonic()
    # Ramdisk runs of 2 s: deploys are waiting for their callback when the broker dies.
    prepare_cloud(stack, BROKER_INSTANCES, delay=2.0)
    enrolled = time.monotonic()

    accepted: list[str] = []
    answers: list[int] = []
    lock = threading.Lock()

    with wide_client(stack, timeout=180) as admin:

        def create(i: int) -> None:
            body = {"name": f"s{i}", "flavor": "bm", "image": "img"}
            response = post_retrying_503(admin, body)
            with lock:
                answers.append(response.status_code)
                if response.status_code == 202:
                    accepted.append(response.json()["id"])

        pool = ThreadPoolExecutor(BROKER_INSTANCES)
        futures = [pool.submit(create, i) for i in range(BROKER_INSTANCES)]
        # The crash comes once an eighth of the requests were answered: the rest are still
        # being handled by the API, or their instances queued for the scheduler or a
        # conductor, or being deployed.
        wait_for(
            lambda: len(answers) >= BROKER_INSTANCES // 8,
            timeout=120,
            interval=0.05,
            what="answers",
        )
        broker.kill()
        killed = time.monotonic()
        unanswered = BROKER_INSTANCES - len(answers)
        under_way = sum(
            node.provision_state in ("deploying", "wait call-back")
            for node in node_records(database_url)
        )
        time.sleep(2)
        broker.restart()
        restarted = time.monotonic()
        for future in futures:
            future.result()
        pool.shutdown()
        answered = time.monotonic()

        # A user sees each creation accepted: the API's casts waited for the broker.
        assert Counter(answers) == Counter({202: BROKER_INSTANCES}), Counter(answers)
        rows = settle(stack, admin, timeout=240)
        settled = time.monotonic()
        statuses = check_outcome(stack, database_url, rows, accepted)
        assert len(rows) == BROKER_INSTANCES
        faults = Counter(row["fault"]["code"] for row in rows if row["fault"])
        retried = sum(1 for row in rows if row["attempts"] > 1)
        # Calls to netctl lost with the broker are sent again: no deploy failed for it.
        bus_failures = [
            node.last_error
            for node in node_records(database_url)
            if node.last_error
            and ("TransportError" in node.last_error or "NoConsumer" in node.last_error)
        ]
        assert bus_failures == []
    retried_503 = stack.processes["api"].log.read_text().count("POST /v1/instances 503")

    print(
        f"\nenrolment {enrolled - started:.0f} s; crash with {unanswered} of "
        f"{BROKER_INSTANCES} creations unanswered and {under_way} deploys under way; broker "
        f"back after {restarted - killed:.1f} s; all answered {answered - restarted:.1f} s "
        f"later; settled {settled - restarted:.1f} s after the restart: {dict(statuses)}, "
        f"faults {dict(faults)}, {retried} rescheduled, {retried_503} 503s retried"
    )
    # The services noticed the broker go away and came back to it by themselves, and every
    # message reached its service: no instance was left for the scheduler's sweep, no
    # claimed node for its conductor's re-drive (a server that stopped consuming after
    # the crash was caught only by these).
    logs = {name: process.log.read_text() for name, process in stack.processes.items()}
    assert "listener on conductor reconnected" in logs["conductor-1"]
    assert "listener on scheduler reconnected" in logs["scheduler"]
    assert logs["scheduler"].count("scheduling it again") == 0
    assert logs["conductor-1"].count("has not started") == 0


# -- 3. the API and the scheduler restarted during a burst ----------------------------

BURST_INSTANCES = 100
BURST_NODES = 110  # a creation whose answer was lost and is retried may make a spare


@pytest.fixture
def burst_stack(amqp_url: str, tmp_path: Path) -> Iterator[tuple[Stack, str]]:
    name, url = create_database()
    try:
        with running_stack(
            tmp_path, database_url=url, transport_url=amqp_url, extra_env=FAST_RECOVERY
        ) as stack:
            yield stack, url
    finally:
        drop_database(name)


@dataclass
class Burst:
    """Creations sent a few at a time, each retried like a user would after a connection
    error; what came back."""

    stack: Stack
    accepted: list[str]
    retries: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.Lock()

    def answered(self, count: int) -> bool:
        return len(self.accepted) >= count

    def create(self, i: int) -> None:
        body = {"name": f"b{i}", "flavor": "bm", "image": "img"}
        deadline = time.monotonic() + 120
        while True:
            try:
                with self.stack.client() as client:
                    response = post_retrying_503(client, body)
            except httpx.TransportError:
                # Refused while the API restarts, or cut off by its kill: the instance may
                # exist or not; a user tries again.
                assert time.monotonic() < deadline, f"creation {i} never got an answer"
                with self.lock:
                    self.retries += 1
                time.sleep(0.5)
                continue
            instance_id = ok(response, 202)["id"]
            with self.lock:
                self.accepted.append(instance_id)
            return


def test_api_and_scheduler_restarts_during_a_burst_lose_no_instance(
    burst_stack: tuple[Stack, str],
) -> None:
    stack, database_url = burst_stack
    prepare_cloud(stack, BURST_NODES, delay=0.5)
    burst = Burst(stack, [])
    restarts: list[tuple[str, Callable[[], None]]] = [
        ("api (SIGTERM)", lambda: restart_api(stack, kill=False)),
        ("scheduler (SIGTERM)", lambda: stack.restart("scheduler")),
        ("api (kill -9)", lambda: restart_api(stack, kill=True)),
        ("scheduler (kill -9)", lambda: stack.restart("scheduler", kill=True)),
    ]
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(burst.create, i) for i in range(BURST_INSTANCES)]
        # Each restart once a further fifth of the burst was answered.
        for step, (what, restart) in enumerate(restarts, start=1):
            wait_for(
                partial(burst.answered, step * BURST_INSTANCES // 5),
                timeout=120,
                what=f"creations answered before restarting the {what}",
            )
            restart()
        for future in futures:
            future.result()
    answered = time.monotonic()
    assert len(burst.accepted) == BURST_INSTANCES

    with stack.client() as admin:
        rows = settle(stack, admin, timeout=150)
    settled = time.monotonic()
    statuses = check_outcome(stack, database_url, rows, burst.accepted)
    # A creation whose answer a kill cut off may have made an instance the user never
    # heard of: it must not stay in BUILD (checked above); there are no others.
    assert len(rows) <= BURST_INSTANCES + burst.retries
    print(
        f"\nburst of {BURST_INSTANCES} with 4 restarts answered in {answered - started:.0f} s "
        f"({burst.retries} retries, {len(rows) - BURST_INSTANCES} extra instances); settled "
        f"{settled - answered:.0f} s later: {dict(statuses)}"
    )


def restart_api(stack: Stack, *, kill: bool) -> None:
    stack.restart("api", kill=kill)
    stack.wait_api()
