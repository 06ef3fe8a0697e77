"""The atomic claim on PostgreSQL: schedulers racing in many threads over two engines (as
two processes would) never hand one node to two instances."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator

import pytest
from sqlmodel import select

from libs import rpc
from libs.db import Database, Hypervisor, Instance, InstanceStatus, Node
from services.scheduler.claims import ClaimOutcome, claim_node
from services.scheduler.manager import SchedulerManager
from services.scheduler.settings import SchedulerSettings
from tests.unit.scheduler.estate import Estate, running_conductor, wait_for

pytestmark = pytest.mark.integration

CTXT = rpc.RequestContext(request_id="req-claim-test")


@pytest.fixture
def databases(pg_url: str) -> Iterator[tuple[Database, Database]]:
    """Two engines on one database: each has its own connections, like two processes."""
    first, second = Database(pg_url), Database(pg_url)
    yield first, second
    first.dispose()
    second.dispose()


def run_together(tasks: list[Callable[[], None]]) -> None:
    """Start every task at the same moment, each in its own thread, and wait for all."""
    barrier = threading.Barrier(len(tasks))
    errors: list[BaseException] = []

    def run(task: Callable[[], None]) -> None:
        barrier.wait()
        try:
            task()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(task,)) for task in tasks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors


def claimed_pairs(db: Database) -> tuple[dict[str, str], dict[str, str]]:
    """(node id -> instance id, instance id -> node id) as stored."""
    with db.session() as session:
        nodes = session.exec(select(Node.id, Node.instance_id)).all()
        instances = session.exec(select(Instance.id, Instance.node_id)).all()
    return (
        {node: instance for node, instance in nodes if instance},
        {instance: node for instance, node in instances if node},
    )


def test_racing_claims_for_one_node_have_exactly_one_winner(databases):
    estate = Estate(databases[0])
    flavor = estate.flavor()
    nodes = [estate.node(f"n{i}").id for i in range(5)]
    instances = [estate.instance(flavor, name=f"vm{i}").id for i in range(16)]
    outcomes: list[tuple[str, str, ClaimOutcome]] = []
    lock = threading.Lock()

    def contender(db: Database, instance_id: str) -> Callable[[], None]:
        def claim_every_node() -> None:
            for node_id in nodes:
                outcome = claim_node(db, instance_id, node_id)
                with lock:
                    outcomes.append((node_id, instance_id, outcome))
                if outcome is ClaimOutcome.CLAIMED:
                    return

        return claim_every_node

    run_together([contender(databases[i % 2], inst) for i, inst in enumerate(instances)])

    winners = [(n, i) for n, i, outcome in outcomes if outcome is ClaimOutcome.CLAIMED]
    assert sorted(n for n, _ in winners) == sorted(nodes)
    by_node, by_instance = claimed_pairs(databases[0])
    assert by_node == dict(winners)
    assert by_instance == {i: n for n, i in winners}


def test_n_instances_scheduled_at_once_get_n_distinct_nodes(databases):
    db, other_db = databases
    estate = Estate(db)
    flavor = estate.flavor()
    nodes = {estate.node(f"n{i}", cpus=4 + i % 3).id for i in range(24)}
    instances = [estate.instance(flavor, name=f"vm{i}").id for i in range(24)]
    transport = rpc.MemoryTransport()
    settings = SchedulerSettings(hostname="sched", max_attempts=3)
    managers = [
        SchedulerManager(settings, db, transport),
        SchedulerManager(settings, other_db, transport),
    ]

    with running_conductor(transport, estate) as conductor:
        run_together(
            [
                functools.partial(managers[i % 2].schedule_instance, CTXT, instance_id)
                for i, instance_id in enumerate(instances)
            ]
        )
        wait_for(lambda: len(conductor.deploys) == len(instances), timeout=30)

    assert {node for node, _ in conductor.deploys} == nodes
    by_node, by_instance = claimed_pairs(db)
    assert set(by_instance) == set(instances)
    assert set(by_node) == nodes
    assert all(by_node[node] == instance for instance, node in by_instance.items())
    with db.session() as session:
        statuses = session.exec(select(Instance.status, Instance.attempts)).all()
    assert set(statuses) == {(InstanceStatus.BUILD, 1)}


def test_schedulers_racing_for_a_hypervisors_room_never_overcommit_it(databases):
    """Two hypervisors with room for 3 and 2 VMs, 12 instances scheduled at once by two
    schedulers on two engines: exactly 5 VM nodes are made, none beyond a room, and the
    other instances say there is no room."""
    db, other_db = databases
    estate = Estate(db)
    flavor = estate.flavor("vm.small", resource_class="vm", cpus=2, memory_mb=1024, disk_gb=5)
    rooms = {}
    with db.session() as session:
        for name, vcpus in (("hv-a", 6), ("hv-b", 4)):
            row = Hypervisor(
                name=name,
                conductor="cond-1",
                resource_class="vm",
                vcpus=vcpus,
                memory_mb=64_000,
                disk_gb=500,
                bridge="br-vm",
            )
            session.add(row)
            rooms[row.id] = vcpus // 2
    instances = [estate.instance(flavor, name=f"vm{i}").id for i in range(12)]
    transport = rpc.MemoryTransport()
    settings = SchedulerSettings(hostname="sched", max_attempts=1)
    managers = [
        SchedulerManager(settings, db, transport),
        SchedulerManager(settings, other_db, transport),
    ]

    with running_conductor(transport, estate) as conductor:
        run_together(
            [
                functools.partial(managers[i % 2].schedule_instance, CTXT, instance_id)
                for i, instance_id in enumerate(instances)
            ]
        )
        wait_for(lambda: len(conductor.deploys) == 5, timeout=30)

    with db.session() as session:
        made = session.exec(select(Node.hypervisor_id, Node.instance_id)).all()
        statuses = session.exec(select(Instance.status, Instance.fault)).all()
    assert {hv: sum(1 for h, _ in made if h == hv) for hv in rooms} == rooms
    assert {instance for _, instance in made} == {i for _, i in conductor.deploys}
    refused = [fault for status, fault in statuses if status == InstanceStatus.ERROR]
    assert len(refused) == 7
    assert all("no room for a VM of 2 vCPU(s)" in fault["message"] for fault in refused)
