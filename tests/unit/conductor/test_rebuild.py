"""Rebuild: an ACTIVE instance's node written again in place (same node, same networks),
with the image the instance names now."""

from __future__ import annotations

from sqlmodel import col, update

from libs.db import Instance, InstanceStatus, PortBinding, TaskState
from tests.unit.conductor.conftest import Cloud, wait_for


def active_instance(cloud: Cloud, **driver_info: object) -> tuple[str, str]:
    node_id = cloud.make_node(ports=1, driver_info=dict(driver_info))
    instance_id = cloud.make_instance(node_id)
    cloud.api.deploy_node(cloud.ctxt, node_id, instance_id)
    wait_for(lambda: cloud.instance(instance_id).status == InstanceStatus.ACTIVE, what="ACTIVE")
    cloud.settled(node_id, "active")
    return node_id, instance_id


def ask_rebuild(cloud: Cloud, instance_id: str) -> None:
    """What the API does: REBUILD / rebuilding, then the cast to the node's owner."""
    with cloud.db.session() as session:
        session.exec(
            update(Instance)
            .where(col(Instance.id) == instance_id)
            .values(status=InstanceStatus.REBUILD, task_state=TaskState.REBUILDING)
        )


def test_a_rebuild_writes_the_image_again_on_the_same_node(cloud: Cloud):
    cloud.start_conductor()
    node_id, instance_id = active_instance(cloud)
    ask_rebuild(cloud, instance_id)

    cloud.api.rebuild_node(cloud.ctxt, node_id, instance_id)

    wait_for(lambda: cloud.instance(instance_id).status == InstanceStatus.ACTIVE, what="ACTIVE")
    node = cloud.settled(node_id, "active")
    assert node.instance_id == instance_id
    runs = node.driver_internal_info["fake_ramdisk_runs"]
    assert runs[-2:] == [f"deploy {instance_id}", f"deploy {instance_id}"]
    instance = cloud.instance(instance_id)
    assert (instance.node_id, instance.task_state) == (node_id, None)
    [port] = cloud.ports(node_id)
    assert (port.binding, port.network_id) == (PortBinding.TENANT, instance.network_ids[0])
    assert not cloud.scheduler.reschedules


def test_a_failed_rebuild_is_an_error_on_the_instance_not_a_reschedule(cloud: Cloud):
    cloud.start_conductor()
    node_id, instance_id = active_instance(cloud)
    with cloud.db.session() as session:
        node = cloud.node(node_id)
        node.driver_info = {**node.driver_info, "fake_fail_deploy": "no disk left"}
        session.add(node)
    ask_rebuild(cloud, instance_id)

    cloud.api.rebuild_node(cloud.ctxt, node_id, instance_id)

    wait_for(lambda: cloud.instance(instance_id).status == InstanceStatus.ERROR, what="ERROR")
    instance = cloud.instance(instance_id)
    assert instance.fault is not None
    assert instance.fault["code"] == "rebuild_failed"
    assert "no disk left" in instance.fault["message"]
    node = cloud.settled(node_id, "deploy failed")
    assert node.instance_id is None
    assert not cloud.scheduler.reschedules
