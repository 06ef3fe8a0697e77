"""Deploy and tear-down through the conductor's RPC API, with the fake drivers."""

from __future__ import annotations

import logging

import pytest

from libs.db import Instance, InstanceStatus, PortBinding, PowerState
from libs.errors import InvalidStateTransition
from services.conductor import manager as manager_module
from services.conductor.callback_tokens import TOKEN_HASH_KEY
from tests.unit.conductor.conftest import Cloud, wait_for


def test_deploy_makes_the_instance_active_on_its_networks(cloud: Cloud):
    cloud.start_conductor()
    node_id = cloud.make_node(ports=3)
    instance_id = cloud.make_instance(node_id, networks=2)

    cloud.api.deploy_node(cloud.ctxt, node_id, instance_id)

    wait_for(lambda: cloud.instance(instance_id).status == InstanceStatus.ACTIVE, what="ACTIVE")
    node = cloud.settled(node_id, "active")
    assert node.target_provision_state is None
    assert node.power_state == PowerState.ON
    assert node.instance_id == instance_id
    assert node.last_error is None
    assert TOKEN_HASH_KEY not in node.driver_internal_info  # used up by the callback
    instance = cloud.instance(instance_id)
    assert instance.task_state is None
    ports = cloud.ports(node_id)
    assert [(p.binding, p.network_id) for p in ports] == [
        (PortBinding.TENANT, instance.network_ids[0]),
        (PortBinding.TENANT, instance.network_ids[1]),
        (PortBinding.NONE, None),  # more ports than networks: the extra one is isolated
    ]
    # The ramdisk ran on the provisioning network first.
    provisioned = {port_id for call, port_id, _ in cloud.netctl.calls if call == "provision_port"}
    assert provisioned == {p.id for p in ports}


def test_deploy_waits_for_the_ramdisk_with_the_lock_released(cloud: Cloud):
    cloud.start_conductor()
    node_id = cloud.make_node(driver_info={"fake_delay": 1.0})
    instance_id = cloud.make_instance(node_id)

    cloud.api.deploy_node(cloud.ctxt, node_id, instance_id)

    node = cloud.settled(node_id, "wait call-back")  # waiting with no lock held
    assert node.target_provision_state == "active"
    assert len(node.driver_internal_info[TOKEN_HASH_KEY]) == 64  # only the sha256 is kept
    assert cloud.instance(instance_id).status == InstanceStatus.BUILD
    wait_for(lambda: cloud.node(node_id).provision_state == "active", what="active")


def test_failed_deploy_releases_the_node_and_reschedules(cloud: Cloud):
    cloud.start_conductor()
    node_id = cloud.make_node(driver_info={"fake_fail_deploy": "disk /dev/sda not found"})
    instance_id = cloud.make_instance(node_id)

    cloud.api.deploy_node(cloud.ctxt, node_id, instance_id)

    wait_for(lambda: cloud.scheduler.reschedules, what="a reschedule")
    node = cloud.settled(node_id, "deploy failed")
    assert "disk /dev/sda not found" in (node.last_error or "")
    assert node.instance_id is None
    assert node.power_state == PowerState.OFF
    assert all(p.binding == PortBinding.NONE for p in cloud.ports(node_id))
    [request] = cloud.scheduler.reschedules
    assert request["instance_id"] == instance_id
    assert request["failed_node_id"] == node_id
    assert "disk /dev/sda not found" in request["reason"]
    instance = cloud.instance(instance_id)
    assert instance.node_id is None
    assert instance.failed_node_ids == [node_id]
    assert instance.status == InstanceStatus.BUILD


def test_deploy_on_a_node_with_a_broken_driver_fails_with_the_reason(cloud: Cloud):
    cloud.start_conductor()
    node_id = cloud.make_node(driver_info={"fake_power_error": "BMC 10.0.0.9 unreachable"})
    instance_id = cloud.make_instance(node_id)

    cloud.api.deploy_node(cloud.ctxt, node_id, instance_id)

    wait_for(lambda: cloud.scheduler.reschedules, what="a reschedule")
    node = cloud.settled(node_id, "deploy failed")
    assert node.last_error == "power off failed: BMC 10.0.0.9 unreachable"


def test_a_failed_deploy_never_shows_the_bmc_password(
    cloud: Cloud, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    password = "Sup3r-s3cret"
    cloud.start_conductor()
    node_id = cloud.make_node(
        driver_info={
            "ipmi_username": "admin",
            "ipmi_password": password,
            "fake_power_error": f"ipmitool -U admin -P {password}: session refused",
        }
    )
    instance_id = cloud.make_instance(node_id)

    cloud.api.deploy_node(cloud.ctxt, node_id, instance_id)

    wait_for(lambda: cloud.scheduler.reschedules, what="a reschedule")
    node = cloud.settled(node_id, "deploy failed")
    assert node.last_error == "power off failed: ipmitool -U admin -P ***: session refused"
    # Nor does the reason the scheduler gets (it may end up in the instance's fault).
    assert cloud.scheduler.reschedules[0]["reason"] == node.last_error
    assert password not in caplog.text


def test_a_repeated_deploy_request_is_ignored(cloud: Cloud):
    service = cloud.start_conductor()
    node_id = cloud.make_node()
    instance_id = cloud.make_instance(node_id)

    service.manager.deploy_node(cloud.ctxt, node_id=node_id, instance_id=instance_id)
    service.manager.deploy_node(cloud.ctxt, node_id=node_id, instance_id=instance_id)

    wait_for(lambda: cloud.instance(instance_id).status == InstanceStatus.ACTIVE, what="ACTIVE")
    cloud.settled(node_id, "active")
    assert cloud.scheduler.reschedules == []


def test_tear_down_cleans_the_node_and_deletes_the_instance(cloud: Cloud):
    cloud.start_conductor()
    node_id = cloud.make_node()
    instance_id = cloud.make_instance(node_id)
    cloud.api.deploy_node(cloud.ctxt, node_id, instance_id)
    wait_for(lambda: cloud.instance(instance_id).status == InstanceStatus.ACTIVE, what="ACTIVE")
    cloud.netctl.calls.clear()

    cloud.delete_instance(instance_id)

    wait_for(lambda: cloud.instance(instance_id).status == InstanceStatus.DELETED, what="DELETED")
    node = cloud.settled(node_id, "available")
    assert node.instance_id is None
    assert node.power_state == PowerState.OFF
    assert cloud.instance(instance_id).deleted_at is not None
    assert all(p.binding == PortBinding.NONE for p in cloud.ports(node_id))
    # The disks were wiped from the provisioning network before the ports were cut off.
    calls = [call for call, _, _ in cloud.netctl.calls]
    assert calls.index("provision_port") < calls.index("unbind_port")


def test_deleting_an_instance_waiting_for_its_ramdisk_abandons_the_deploy(cloud: Cloud):
    cloud.start_conductor()
    node_id = cloud.make_node(driver_info={"fake_delay": 30})
    instance_id = cloud.make_instance(node_id)
    cloud.api.deploy_node(cloud.ctxt, node_id, instance_id)
    wait_for(lambda: cloud.node(node_id).provision_state == "wait call-back", what="waiting")

    cloud.delete_instance(instance_id)

    # Cleaning waits for the (slow) fake ramdisk too: the node is on its way to available.
    wait_for(lambda: cloud.node(node_id).provision_state == "clean wait", what="clean wait")
    assert cloud.scheduler.reschedules == []


def test_failed_cleaning_after_tear_down_leaves_the_node_clean_failed(cloud: Cloud):
    cloud.start_conductor()
    node_id = cloud.make_node(driver_info={"fake_fail_clean": "secure erase refused"})
    instance_id = cloud.make_instance(node_id)
    cloud.api.deploy_node(cloud.ctxt, node_id, instance_id)
    wait_for(lambda: cloud.instance(instance_id).status == InstanceStatus.ACTIVE, what="ACTIVE")

    cloud.delete_instance(instance_id)

    node = cloud.settled(node_id, "clean failed")
    assert "secure erase refused" in (node.last_error or "")
    assert node.instance_id is None
    # The user asked for the instance to go; the node now waits for an operator.
    assert cloud.instance(instance_id).status == InstanceStatus.DELETED


def test_callback_timeout_fails_the_deploy(cloud: Cloud):
    cloud.start_conductor(callback_timeout=0.3)
    node_id = cloud.make_node(driver_info={"fake_delay": 30})
    instance_id = cloud.make_instance(node_id)

    cloud.api.deploy_node(cloud.ctxt, node_id, instance_id)

    wait_for(lambda: cloud.scheduler.reschedules, what="a reschedule")
    node = cloud.settled(node_id, "deploy failed")
    assert "timed out" in (node.last_error or "")
    assert node.instance_id is None
    assert cloud.scheduler.reschedules[0]["failed_node_id"] == node_id


def test_a_deploy_that_cannot_get_the_node_hands_the_instance_back(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(manager_module, "SERVICE_LOCK_WAIT", 0.1)
    cloud.start_conductor()
    node_id = cloud.make_node(reservation="c9")  # stuck with another conductor
    instance_id = cloud.make_instance(node_id)

    cloud.api.deploy_node(cloud.ctxt, node_id, instance_id)

    wait_for(lambda: cloud.scheduler.reschedules, what="a reschedule")
    assert "locked by conductor c9" in cloud.scheduler.reschedules[0]["reason"]
    node = cloud.node(node_id)
    assert node.instance_id is None
    assert node.provision_state == "available"
    assert cloud.instance(instance_id).failed_node_ids == [node_id]


def test_a_callback_for_a_node_not_waiting_is_refused(cloud: Cloud):
    cloud.start_conductor()
    node_id = cloud.make_node(state="active")

    with pytest.raises(InvalidStateTransition, match="not waiting"):
        cloud.api.ramdisk_callback(cloud.ctxt, node_id, True)
    assert cloud.node(node_id).provision_state == "active"


@pytest.mark.parametrize(
    ("state", "status"),
    [("active", InstanceStatus.ACTIVE), ("available", InstanceStatus.BUILD)],
)
def test_a_late_tear_down_leaves_the_nodes_next_instance_alone(
    cloud: Cloud, state: str, status: InstanceStatus
):
    # A tear-down of an earlier instance arrives (late, or again) after the node was
    # claimed by, or even deployed for, another instance nobody asked to delete.
    service = cloud.start_conductor()
    node_id = cloud.make_node(state=state)
    instance_id = cloud.make_instance(node_id)
    with cloud.db.session() as session:
        instance = session.get(Instance, instance_id)
        assert instance is not None
        instance.status = status
        session.add(instance)

    service.manager.tear_down_node(cloud.ctxt, node_id=node_id)

    node = cloud.settled(node_id, state)
    assert node.instance_id == instance_id
    assert cloud.instance(instance_id).status == status


def test_a_ramdisk_callback_that_fails_unexpectedly_is_logged(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    service = cloud.start_conductor()
    node_id = cloud.make_node()
    instance_id = cloud.make_instance(node_id)

    def database_gone(*args: object, **kwargs: object) -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr(service.manager, "_resume", database_gone)
    cloud.api.deploy_node(cloud.ctxt, node_id, instance_id)

    record = wait_for(
        lambda: next((r for r in caplog.records if "callback failed" in r.getMessage()), None),
        what="the failure logged",
    )
    assert record.getMessage() == f"node {node_id}: ramdisk callback failed"
    assert record.exc_info is not None and "database went away" in str(record.exc_info[1])


def test_an_active_instance_forgets_the_nodes_its_build_failed_on(cloud: Cloud):
    """A node an earlier attempt failed on (or an evacuation left) may serve the
    instance again in a later build, e.g. after it was repaired."""
    cloud.start_conductor()
    node_id = cloud.make_node()
    instance_id = cloud.make_instance(node_id)
    with cloud.db.session() as session:
        instance = session.get(Instance, instance_id)
        assert instance is not None
        instance.failed_node_ids = ["a-node-that-failed-before"]
        session.add(instance)

    cloud.api.deploy_node(cloud.ctxt, node_id, instance_id)

    wait_for(lambda: cloud.instance(instance_id).status == InstanceStatus.ACTIVE, what="ACTIVE")
    assert cloud.instance(instance_id).failed_node_ids == []
