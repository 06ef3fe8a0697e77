"""VM nodes made on demand: an instance of a hypervisor's resource class gets a VM node
carved out of that hypervisor's room, pinned to its conductor, and never more VMs than
the room holds; on the memory transport and SQLite (tests/integration/
test_scheduler_claim.py races schedulers for the last room on PostgreSQL)."""

from __future__ import annotations

import random
import threading
from datetime import timedelta

import pytest
from sqlmodel import col, select

from libs import rpc
from libs.db import (
    Conductor,
    Database,
    Hypervisor,
    InstanceStatus,
    Node,
    Port,
    TaskState,
    utcnow,
)
from libs.db.models import Event
from libs.notify import Notifier
from services.scheduler.claims import ClaimOutcome, claim_node, release_claim
from services.scheduler.hypervisors import claim_on_hypervisor, tap_name
from services.scheduler.manager import SchedulerManager
from services.scheduler.request import RequestSpec
from services.scheduler.settings import SchedulerSettings
from tests.unit.scheduler.estate import Estate, running_conductor, wait_for

CTXT = rpc.RequestContext(request_id="req-test")


@pytest.fixture
def estate(db: Database) -> Estate:
    return Estate(db)


@pytest.fixture
def manager(db, memory_transport) -> SchedulerManager:
    settings = SchedulerSettings(hostname="sched-1", max_attempts=3, workers=2)
    return SchedulerManager(settings, db, memory_transport, rng=random.Random(7))


def hypervisor(
    db: Database,
    name: str = "hv-1",
    *,
    conductor: str = "cond-hv",
    vcpus: int = 4,
    memory_mb: int = 2048,
    disk_gb: int = 20,
) -> Hypervisor:
    row = Hypervisor(
        name=name,
        conductor=conductor,
        resource_class="vm",
        vcpus=vcpus,
        memory_mb=memory_mb,
        disk_gb=disk_gb,
        bridge="br-vm",
        switch_id="00000000000000aa",
    )
    with db.session() as session:
        session.add(row)
    return row


def vm_nodes(db: Database, hypervisor_id: str) -> list[Node]:
    with db.session() as session:
        return list(
            session.exec(select(Node).where(col(Node.hypervisor_id) == hypervisor_id)).all()
        )


def test_an_instance_of_a_vm_flavor_gets_a_vm_node_made_on_the_hypervisor(
    estate, manager, memory_transport, db
):
    hv = hypervisor(db)
    network = estate.network(101)
    flavor = estate.flavor("vm.small", resource_class="vm", cpus=2, memory_mb=512, disk_gb=4)
    instance = estate.instance(flavor, network_ids=[network.id])
    estate.node("bm-1")  # bare metal: another class, never chosen for it

    with running_conductor(memory_transport, estate, hostname="cond-hv") as conductor:
        manager.schedule_instance(CTXT, instance.id)
        wait_for(lambda: len(conductor.deploys) == 1)

    [node] = vm_nodes(db, hv.id)
    assert conductor.deploys == [(node.id, instance.id)]
    assert (node.cpus, node.memory_mb, node.disk_gb) == (2, 512, 4)
    assert (node.resource_class, node.provision_state) == ("vm", "available")
    assert (node.instance_id, node.pinned_conductor) == (instance.id, "cond-hv")
    assert node.name == f"hv-1-{node.id[:8]}"
    assert (node.power_interface, node.boot_interface, node.deploy_interface) == (
        "libvirt",
        "virtual",
        "image",
    )
    assert node.driver_info == {"libvirt_bridge": "br-vm", "libvirt_uri": "qemu:///system"}
    with db.session() as session:
        ports = session.exec(select(Port).where(col(Port.node_id) == node.id)).all()
        created = session.exec(
            select(Event.event_type).where(col(Event.object_id) == node.id)
        ).all()
    assert [(p.switch_id, p.switch_port) for p in ports] == [
        ("00000000000000aa", tap_name(node.id, 0))
    ]
    assert len(tap_name(node.id, 0)) <= 15  # a Linux interface name
    assert ports[0].address.startswith("52:54:00:")
    assert created == ["tetsu.node.create.end"]
    scheduled = estate.get_instance(instance.id)
    assert (scheduled.node_id, scheduled.task_state, scheduled.attempts) == (
        node.id,
        TaskState.DEPLOYING,
        1,
    )


def test_a_free_enrolled_node_of_the_class_comes_before_a_new_vm(
    estate, manager, memory_transport, db
):
    hv = hypervisor(db)
    flavor = estate.flavor("vm.small", resource_class="vm", cpus=1, memory_mb=256, disk_gb=1)
    enrolled = estate.node("vm-enrolled", resource_class="vm")
    instance = estate.instance(flavor)

    with running_conductor(memory_transport, estate) as conductor:
        manager.schedule_instance(CTXT, instance.id)
        wait_for(lambda: conductor.deploys == [(enrolled.id, instance.id)])
    assert vm_nodes(db, hv.id) == []


def test_vms_are_made_until_the_room_is_used_up_then_no_valid_host_says_so(
    estate, manager, memory_transport, db
):
    hv = hypervisor(db, vcpus=4, memory_mb=4096, disk_gb=100)
    flavor = estate.flavor("vm.medium", resource_class="vm", cpus=2, memory_mb=1024, disk_gb=10)
    instances = [estate.instance(flavor, name=f"web-{i}") for i in range(3)]

    with running_conductor(memory_transport, estate, hostname="cond-hv") as conductor:
        for instance in instances:
            manager.schedule_instance(CTXT, instance.id)
        wait_for(lambda: len(conductor.deploys) == 2)

    assert len(vm_nodes(db, hv.id)) == 2  # 4 vCPUs hold two of 2
    failed = estate.get_instance(instances[2].id)
    assert failed.status == InstanceStatus.ERROR
    assert failed.fault is not None and failed.fault["code"] == "no_valid_host"
    assert failed.fault["message"].endswith(
        "no room for a VM of 2 vCPU(s), 1024 MiB, 10 GiB on 1 hypervisor(s) of that class "
        "with a live conductor"
    )


def test_vms_spread_over_hypervisors_by_free_memory(estate, manager, memory_transport, db):
    small = hypervisor(db, "hv-small", memory_mb=2048)
    big = hypervisor(db, "hv-big", memory_mb=4096)
    flavor = estate.flavor("vm.small", resource_class="vm", cpus=1, memory_mb=1024, disk_gb=1)

    with running_conductor(memory_transport, estate, hostname="cond-hv") as conductor:
        for i in range(4):
            manager.schedule_instance(CTXT, estate.instance(flavor, name=f"web-{i}").id)
        wait_for(lambda: len(conductor.deploys) == 4)

    # big (4096) takes the first two; then both have 2048 free and take one each.
    assert (len(vm_nodes(db, big.id)), len(vm_nodes(db, small.id))) == (3, 1)


def test_a_hypervisor_whose_conductor_is_not_alive_gets_no_vm(estate, manager, db):
    hypervisor(db, conductor="cond-gone")
    with db.session() as session:  # it stopped heartbeating an hour ago
        session.add(
            Conductor(hostname="cond-gone", online=True, updated_at=utcnow() - timedelta(hours=1))
        )
    flavor = estate.flavor("vm.small", resource_class="vm", cpus=1, memory_mb=256, disk_gb=1)
    instance = estate.instance(flavor)

    manager.schedule_instance(CTXT, instance.id)

    failed = estate.get_instance(instance.id)
    assert failed.status == InstanceStatus.ERROR
    assert failed.fault is not None and "no room for a VM" in failed.fault["message"]


def test_racing_claims_never_hand_out_more_room_than_there_is(estate, db):
    hv = hypervisor(db, vcpus=3, memory_mb=100_000, disk_gb=100)
    flavor = estate.flavor("vm.small", resource_class="vm", cpus=1, memory_mb=256, disk_gb=1)
    specs = [
        RequestSpec.for_instance(estate.instance(flavor, name=f"web-{i}"), flavor) for i in range(8)
    ]
    outcomes: list[ClaimOutcome] = []
    lock = threading.Lock()
    start = threading.Barrier(len(specs))

    def claim(spec: RequestSpec) -> None:
        start.wait()
        outcome, _ = claim_on_hypervisor(db, spec, hv.id, Notifier(service="test"))
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=claim, args=(spec,)) for spec in specs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert outcomes.count(ClaimOutcome.CLAIMED) == 3
    assert outcomes.count(ClaimOutcome.NODE_TAKEN) == 5
    assert len(vm_nodes(db, hv.id)) == 3


def test_a_vm_node_whose_deploy_never_started_is_removed_with_the_claim(estate, db):
    hv = hypervisor(db)
    flavor = estate.flavor("vm.small", resource_class="vm", cpus=1, memory_mb=256, disk_gb=1)
    instance = estate.instance(flavor)
    spec = RequestSpec.for_instance(instance, flavor)
    outcome, node_id = claim_on_hypervisor(db, spec, hv.id, Notifier(service="test"))
    assert outcome is ClaimOutcome.CLAIMED and node_id is not None
    enrolled = estate.node("bm-1")
    other = estate.instance(estate.flavor("bm"))
    assert claim_node(db, other.id, enrolled.id) is ClaimOutcome.CLAIMED

    fault = {"code": "service_unavailable", "message": "no conductor"}
    assert release_claim(db, instance.id, node_id, fault)
    assert release_claim(db, other.id, enrolled.id, fault)

    assert vm_nodes(db, hv.id) == []  # the room is free again
    with db.session() as session:
        assert session.exec(select(Port).where(col(Port.node_id) == node_id)).all() == []
    assert estate.get_node(enrolled.id).instance_id is None  # an enrolled node stays


def test_an_instance_deleted_before_its_vm_is_made_gets_none(estate, db):
    hv = hypervisor(db)
    flavor = estate.flavor("vm.small", resource_class="vm", cpus=1, memory_mb=256, disk_gb=1)
    instance = estate.instance(flavor, status=InstanceStatus.DELETED)
    spec = RequestSpec.for_instance(instance, flavor)

    assert claim_on_hypervisor(db, spec, hv.id, Notifier(service="test")) == (
        ClaimOutcome.INSTANCE_GONE,
        None,
    )
    assert vm_nodes(db, hv.id) == []
