"""Evacuation: the instance of a dead node comes back on another node; the dead node is
fenced (powered off when it answers, its ports cut off) and left in maintenance."""

from __future__ import annotations

import time

import pytest
from sqlmodel import col, update

from libs.db import Instance, InstanceStatus, Node, Port, PortBinding, PowerState, TaskState
from services.conductor.power import UNREACHABLE_SINCE_KEY
from tests.unit.conductor.conftest import Cloud, wait_for


def active_instance(cloud: Cloud) -> tuple[str, str]:
    node_id = cloud.make_node(ports=1)
    instance_id = cloud.make_instance(node_id)
    cloud.api.deploy_node(cloud.ctxt, node_id, instance_id)
    wait_for(lambda: cloud.instance(instance_id).status == InstanceStatus.ACTIVE, what="ACTIVE")
    cloud.settled(node_id, "active")
    return node_id, instance_id


def set_node(cloud: Cloud, node_id: str, **values: object) -> None:
    with cloud.db.session() as session:
        session.exec(update(Node).where(col(Node.id) == node_id).values(**values))


def set_instance(cloud: Cloud, instance_id: str, **values: object) -> None:
    with cloud.db.session() as session:
        session.exec(update(Instance).where(col(Instance.id) == instance_id).values(**values))


def test_an_evacuated_instance_is_rescheduled_and_its_node_fenced(cloud: Cloud):
    cloud.start_conductor()
    node_id, instance_id = active_instance(cloud)
    set_node(cloud, node_id, maintenance=True, maintenance_reason="rack 7 lost power")
    set_instance(cloud, instance_id, task_state=TaskState.EVACUATING)  # what the API does

    cloud.api.evacuate_node(cloud.ctxt, node_id, instance_id)

    wait_for(lambda: cloud.scheduler.reschedules, what="the instance handed to the scheduler")
    [request] = cloud.scheduler.reschedules
    assert (request["instance_id"], request["failed_node_id"]) == (instance_id, node_id)
    node = cloud.settled(node_id, "error")
    assert node.instance_id is None
    assert node.maintenance
    assert node.power_state == PowerState.OFF
    assert "powered off, ports cut off" in (node.maintenance_reason or "")
    assert all(p.binding == PortBinding.NONE for p in cloud.ports(node_id))
    instance = cloud.instance(instance_id)
    assert (instance.status, instance.task_state) == (InstanceStatus.BUILD, TaskState.SCHEDULING)
    assert instance.node_id is None
    assert instance.failed_node_ids == [node_id]
    assert instance.attempts == 0


def test_a_node_whose_bmc_is_gone_is_still_fenced_on_the_switch(cloud: Cloud):
    cloud.start_conductor()
    node_id, instance_id = active_instance(cloud)
    node = cloud.node(node_id)
    set_node(cloud, node_id, driver_info={**node.driver_info, "fake_power_error": "BMC silent"})
    set_instance(cloud, instance_id, task_state=TaskState.EVACUATING)

    cloud.api.evacuate_node(cloud.ctxt, node_id, instance_id)

    node = cloud.settled(node_id, "error")
    assert "not powered off (" in (node.maintenance_reason or "")
    assert "BMC silent" in (node.maintenance_reason or "")
    assert "ports cut off" in (node.maintenance_reason or "")
    assert all(p.binding == PortBinding.NONE for p in cloud.ports(node_id))
    wait_for(lambda: cloud.scheduler.reschedules, what="the reschedule")


def test_an_unreadable_node_is_evacuated_automatically_after_the_set_time(cloud: Cloud):
    service = cloud.start_conductor(evacuate_after=0.5)
    node_id, instance_id = active_instance(cloud)
    node = cloud.node(node_id)
    set_node(cloud, node_id, driver_info={**node.driver_info, "fake_power_error": "no answer"})
    periodic = service.manager.periodic

    periodic.sync_power_states()  # the first failed read: only remembered
    since = cloud.node(node_id).driver_internal_info[UNREACHABLE_SINCE_KEY]
    assert cloud.instance(instance_id).status == InstanceStatus.ACTIVE
    time.sleep(0.6)
    periodic.sync_power_states()

    node = cloud.settled(node_id, "error")
    assert node.maintenance
    assert "could not be read for" in (node.maintenance_reason or "")
    assert cloud.instance(instance_id).status == InstanceStatus.BUILD
    assert since <= time.time()
    wait_for(lambda: cloud.scheduler.reschedules, what="the reschedule")


def test_without_the_policy_an_unreadable_node_keeps_its_instance(cloud: Cloud):
    service = cloud.start_conductor()  # evacuate_after 0: never automatically
    node_id, instance_id = active_instance(cloud)
    node = cloud.node(node_id)
    set_node(cloud, node_id, driver_info={**node.driver_info, "fake_power_error": "no answer"})
    for _ in range(2):
        service.manager.periodic.sync_power_states()
    node = cloud.settled(node_id, "active")
    assert node.instance_id == instance_id
    assert cloud.instance(instance_id).status == InstanceStatus.ACTIVE


def test_a_fenced_node_is_taken_back_by_managing_it(cloud: Cloud):
    cloud.start_conductor()
    node_id, instance_id = active_instance(cloud)
    set_node(cloud, node_id, maintenance=True)
    set_instance(cloud, instance_id, task_state=TaskState.EVACUATING)
    cloud.api.evacuate_node(cloud.ctxt, node_id, instance_id)
    cloud.settled(node_id, "error")

    cloud.api.do_provisioning_action(cloud.ctxt, node_id, "manage")

    cloud.settled(node_id, "manageable")


def test_the_power_sync_takes_no_lock_on_a_node_whose_power_is_as_recorded(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
):
    service = cloud.start_conductor()
    node_id, _ = active_instance(cloud)
    before = cloud.node(node_id)
    taken: list[str] = []
    tasks = service.manager.tasks
    reserve = tasks._reserve

    def spying(node: str, purpose: str, wait: float) -> tuple[Node, list[Port]]:
        taken.append(purpose)
        return reserve(node, purpose, wait)

    monkeypatch.setattr(tasks, "_reserve", spying)
    service.manager.periodic.sync_power_states()
    assert taken == []  # power on, recorded as on: read without the lock, nothing written
    assert cloud.node(node_id).updated_at == before.updated_at

    # The machine was switched off behind tetsu's back: that is recorded, under the lock.
    info = {**before.driver_internal_info, "fake_power_state": "power off"}
    set_node(cloud, node_id, driver_internal_info=info)
    service.manager.periodic.sync_power_states()
    assert taken == ["power sync"]
    assert cloud.node(node_id).power_state == PowerState.OFF
