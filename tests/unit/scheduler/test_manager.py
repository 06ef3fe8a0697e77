"""Scheduling flows: the scheduler claims the best node and asks its conductor to deploy,
or puts the instance in ERROR saying why; on the memory transport and SQLite."""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlmodel import col, select

from libs import rpc
from libs.db import Database, Instance, InstanceStatus, Node, TaskState, utcnow
from services.scheduler.filters import Candidate
from services.scheduler.manager import SchedulerManager
from services.scheduler.request import RequestSpec
from services.scheduler.rpcapi import SchedulerAPI
from services.scheduler.service import SchedulerService
from services.scheduler.settings import SchedulerSettings
from services.scheduler.weighers import BestFitWeigher, Weigher
from tests.unit.scheduler.estate import Estate, running_conductor, wait_for

CTXT = rpc.RequestContext(request_id="req-test")


@pytest.fixture
def settings() -> SchedulerSettings:
    return SchedulerSettings(hostname="sched-1", max_attempts=3, workers=2)


@pytest.fixture
def estate(db):
    return Estate(db)


@pytest.fixture
def conductor(memory_transport, estate):
    with running_conductor(memory_transport, estate) as conductor:
        yield conductor


@pytest.fixture
def manager(settings, db, memory_transport):
    return SchedulerManager(settings, db, memory_transport, rng=random.Random(7))


def test_the_best_fitting_node_is_claimed_and_deployed(estate, conductor, manager):
    flavor = estate.flavor(cpus=4, memory_mb=8192, disk_gb=100)
    estate.node("too-small", cpus=2)
    estate.node("huge", cpus=64, memory_mb=524288, disk_gb=4000)
    fit = estate.node("snug", cpus=6, memory_mb=8192, disk_gb=120)
    instance = estate.instance(flavor)

    manager.schedule_instance(CTXT, instance.id)

    wait_for(lambda: conductor.deploys == [(fit.id, instance.id)])
    scheduled = estate.get_instance(instance.id)
    assert (scheduled.status, scheduled.task_state) == (InstanceStatus.BUILD, TaskState.DEPLOYING)
    assert (scheduled.node_id, scheduled.attempts) == (fit.id, 1)
    assert estate.get_node(fit.id).instance_id == instance.id


def test_a_node_a_conductor_is_busy_with_for_a_moment_is_still_claimed(estate, conductor, manager):
    flavor = estate.flavor()
    node = estate.node("n1", reservation="cond-1")  # its power being synced right now
    instance = estate.instance(flavor)

    manager.schedule_instance(CTXT, instance.id)

    wait_for(lambda: conductor.deploys == [(node.id, instance.id)])
    assert estate.get_instance(instance.id).status == InstanceStatus.BUILD


def test_an_instance_gets_a_node_with_a_port_per_network(estate, conductor, manager):
    flavor = estate.flavor()
    estate.node("one-port", ports=1)
    two = estate.node("two-ports", ports=2, cpus=8)
    networks = [estate.network(101).id, estate.network(102).id]
    instance = estate.instance(flavor, network_ids=networks)

    manager.schedule_instance(CTXT, instance.id)

    wait_for(lambda: conductor.deploys == [(two.id, instance.id)])


def test_no_capacity_puts_the_instance_in_error_saying_why(estate, conductor, manager):
    flavor = estate.flavor(name="large", cpus=32)
    small = estate.node("small", cpus=8)
    instance = estate.instance(flavor)

    manager.schedule_instance(CTXT, instance.id)

    failed = estate.get_instance(instance.id)
    assert failed.status == InstanceStatus.ERROR
    assert failed.task_state is None
    assert failed.fault == {
        "code": "no_valid_host",
        "message": "no valid host for flavor 'large' (resource class 'baremetal'): "
        "1 node; 0 left after PropertiesFilter (1 removed)",
    }
    assert estate.get_node(small.id).instance_id is None
    assert conductor.deploys == []


def test_a_reschedule_avoids_the_nodes_that_failed(estate, conductor, manager):
    flavor = estate.flavor()
    failed_earlier = estate.node("failed-earlier")  # cleaned and available again
    just_failed = estate.node("just-failed")  # the conductor may not have recorded it yet
    other = estate.node("other", cpus=16)
    instance = estate.instance(
        flavor, attempts=1, task_state=TaskState.DEPLOYING, failed_node_ids=[failed_earlier.id]
    )

    manager.reschedule_instance(CTXT, instance.id, just_failed.id, "disk write error")

    wait_for(lambda: conductor.deploys == [(other.id, instance.id)])
    assert estate.get_instance(instance.id).attempts == 2


def test_a_reschedule_with_no_other_node_says_what_failed_before(estate, conductor, manager):
    flavor = estate.flavor()
    failed = estate.node("failed")
    instance = estate.instance(flavor, attempts=1, failed_node_ids=[failed.id])

    manager.reschedule_instance(CTXT, instance.id, failed.id, "disk write error")

    fault = estate.get_instance(instance.id).fault
    assert fault is not None
    assert fault["code"] == "no_valid_host"
    assert "0 left after ExcludeFailedFilter (1 removed)" in fault["message"]
    assert fault["message"].endswith("(deploy failed on 1 node(s); last: disk write error)")


def test_after_max_attempts_the_instance_fails_with_the_last_reason(estate, conductor, manager):
    flavor = estate.flavor()
    nodes = [estate.node(f"n{i}") for i in range(4)]
    instance = estate.instance(flavor, attempts=3, failed_node_ids=[nodes[0].id, nodes[1].id])

    manager.reschedule_instance(CTXT, instance.id, nodes[2].id, "power failure")

    failed = estate.get_instance(instance.id)
    assert failed.status == InstanceStatus.ERROR
    assert failed.fault == {
        "code": "deploy_failed",
        "message": "deploy failed on 3 node(s); last: power failure",
    }
    assert conductor.deploys == []
    assert estate.get_node(nodes[3].id).instance_id is None


class _DeleteDuringScheduling(Weigher):
    """The API deletes the instance after the scheduler read it, before it claims."""

    def __init__(self, db: Database, instance_id: str) -> None:
        self.db, self.instance_id = db, instance_id

    def weights(self, candidates: Sequence[Candidate], spec: RequestSpec) -> list[float]:
        with self.db.session() as session:
            session.exec(
                update(Instance)
                .where(col(Instance.id) == self.instance_id)
                .values(status=InstanceStatus.DELETED)
            )
        return [0.0] * len(candidates)


def test_an_instance_deleted_while_scheduling_leaves_the_node_free(
    settings, db, memory_transport, estate, conductor
):
    flavor = estate.flavor()
    node = estate.node("n1")
    instance = estate.instance(flavor)
    manager = SchedulerManager(
        settings, db, memory_transport, weighers=[_DeleteDuringScheduling(db, instance.id)]
    )

    manager.schedule_instance(CTXT, instance.id)

    assert estate.get_node(node.id).instance_id is None
    deleted = estate.get_instance(instance.id)
    assert (deleted.status, deleted.node_id, deleted.attempts) == (InstanceStatus.DELETED, None, 0)
    assert conductor.deploys == []


class _AnotherSchedulerWins(Weigher):
    """Another scheduler claims the best node between our query and our claim."""

    def __init__(self, db: Database, node_id: str) -> None:
        self.db, self.node_id = db, node_id

    def weights(self, candidates: Sequence[Candidate], spec: RequestSpec) -> list[float]:
        with self.db.session() as session:
            session.exec(
                update(Node).where(col(Node.id) == self.node_id).values(instance_id="rival")
            )
        return BestFitWeigher().weights(candidates, spec)


def test_a_lost_race_moves_on_to_the_next_best_node(
    settings, db, memory_transport, estate, conductor
):
    flavor = estate.flavor()
    best = estate.node("best")
    second = estate.node("second", cpus=8)
    instance = estate.instance(flavor)
    manager = SchedulerManager(
        settings, db, memory_transport, weighers=[_AnotherSchedulerWins(db, best.id)]
    )

    manager.schedule_instance(CTXT, instance.id)

    wait_for(lambda: conductor.deploys == [(second.id, instance.id)])
    assert estate.get_node(best.id).instance_id == "rival"


@pytest.mark.parametrize(
    "status", [InstanceStatus.ACTIVE, InstanceStatus.DELETING, InstanceStatus.ERROR]
)
def test_instances_not_in_build_are_left_alone(estate, conductor, manager, status):
    flavor = estate.flavor()
    node = estate.node("n1")
    instance = estate.instance(flavor, status=status)

    manager.schedule_instance(CTXT, instance.id)
    manager.reschedule_instance(CTXT, instance.id, node.id, "boom")
    manager.schedule_instance(CTXT, "no-such-instance")

    after = estate.get_instance(instance.id)
    assert (after.status, after.node_id, after.fault) == (status, None, None)
    assert estate.get_node(node.id).instance_id is None


def test_a_repeated_request_does_not_claim_a_second_node(estate, conductor, manager):
    flavor = estate.flavor()
    estate.node("n1")
    estate.node("n2")
    instance = estate.instance(flavor)

    manager.schedule_instance(CTXT, instance.id)
    manager.schedule_instance(CTXT, instance.id)

    wait_for(lambda: len(conductor.deploys) == 1)
    with estate.db.session() as session:
        claimed = session.exec(select(Node).where(col(Node.instance_id) == instance.id)).all()
    assert len(claimed) == 1
    assert estate.get_instance(instance.id).attempts == 1


def test_no_live_conductor_releases_the_node_and_fails_the_instance(estate, manager):
    flavor = estate.flavor()
    node = estate.node("n1")
    instance = estate.instance(flavor)

    manager.schedule_instance(CTXT, instance.id)

    failed = estate.get_instance(instance.id)
    assert (failed.status, failed.node_id) == (InstanceStatus.ERROR, None)
    assert failed.fault is not None
    assert failed.fault["code"] == "no_live_conductor"
    assert estate.get_node(node.id).instance_id is None


def test_an_unreachable_conductor_releases_the_node_and_fails_the_instance(estate, manager):
    flavor = estate.flavor()
    node = estate.node("n1")
    instance = estate.instance(flavor)
    estate.live_conductor("never-started")  # heartbeats, yet no server ever listened

    manager.schedule_instance(CTXT, instance.id)

    failed = estate.get_instance(instance.id)
    assert failed.status == InstanceStatus.ERROR
    assert failed.fault is not None
    assert failed.fault["code"] == "service_unavailable"
    assert estate.get_node(node.id).instance_id is None


def test_concurrent_schedulers_on_sqlite_never_share_a_node(
    settings, db, memory_transport, estate, conductor
):
    flavor = estate.flavor()
    nodes = {estate.node(f"n{i}").id for i in range(8)}
    instances = [estate.instance(flavor, name=f"vm{i}").id for i in range(12)]
    # Two engines on one file behave like two scheduler processes.
    other_db = Database(db.url)
    managers = [
        SchedulerManager(settings, db, memory_transport),
        SchedulerManager(settings, other_db, memory_transport),
    ]
    threads = [
        threading.Thread(target=managers[i % 2].schedule_instance, args=(CTXT, instance_id))
        for i, instance_id in enumerate(instances)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        other_db.dispose()

    wait_for(lambda: len(conductor.deploys) == 8)
    claimed = [node_id for node_id, _ in conductor.deploys]
    assert sorted(claimed) == sorted(nodes)
    states = [estate.get_instance(i) for i in instances]
    assert sum(i.status == InstanceStatus.ERROR for i in states) == 4
    assert {i.node_id for i in states if i.node_id} == nodes


def test_the_service_schedules_what_the_api_casts(
    settings, db, memory_transport, estate, conductor
):
    flavor = estate.flavor()
    node = estate.node("n1")
    instance = estate.instance(flavor)
    service = SchedulerService(settings, db, memory_transport)
    service.start()
    try:
        SchedulerAPI(memory_transport).schedule_instance(CTXT, instance.id)
        wait_for(lambda: conductor.deploys == [(node.id, instance.id)])
    finally:
        service.stop()


def _age(db: Database, instance_id: str, seconds: float) -> None:
    with db.session() as session:
        session.exec(
            update(Instance)
            .where(col(Instance.id) == instance_id)
            .values(updated_at=utcnow() - timedelta(seconds=seconds))
        )


def test_an_instance_whose_request_was_lost_is_scheduled_again(estate, conductor, manager, db):
    flavor = estate.flavor()
    node = estate.node("n1")
    lost = estate.instance(flavor, name="lost")
    fresh = estate.instance(flavor, name="fresh")  # its request may still be on its way
    _age(db, lost.id, manager.settings.stranded_after + 5)

    assert manager.schedule_stranded(CTXT) == 1

    wait_for(lambda: conductor.deploys == [(node.id, lost.id)])
    assert estate.get_instance(fresh.id).node_id is None


def test_a_stranded_instance_out_of_attempts_goes_to_error(estate, conductor, manager, db):
    flavor = estate.flavor()
    nodes = [estate.node(f"n{i}") for i in range(4)]
    instance = estate.instance(flavor, attempts=3, failed_node_ids=[n.id for n in nodes[:3]])
    _age(db, instance.id, manager.settings.stranded_after + 5)

    manager.schedule_stranded(CTXT)

    failed = estate.get_instance(instance.id)
    assert failed.status == InstanceStatus.ERROR
    assert failed.fault == {"code": "deploy_failed", "message": "deploy failed on 3 node(s)"}
    assert conductor.deploys == []


def test_the_service_looks_for_stranded_instances_on_its_own(
    estate, conductor, db, memory_transport
):
    flavor = estate.flavor()
    node = estate.node("n1")
    lost = estate.instance(flavor, name="lost")
    _age(db, lost.id, 60)
    settings = SchedulerSettings(
        hostname="sched-2", stranded_after=30, stranded_check_interval=0.1, workers=1
    )
    service = SchedulerService(settings, db, memory_transport)
    service.start()
    try:
        wait_for(lambda: conductor.deploys == [(node.id, lost.id)])
    finally:
        service.stop()
