"""Re-driving stranded work: deploys and tear-downs whose messages never came, and work
that ended leaving its node in a working state with nobody holding the lock."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from sqlalchemy.exc import OperationalError
from sqlmodel import col, update

from libs.db import Instance, InstanceStatus, Node, PowerState, TaskState, utcnow
from services.conductor.task_manager import Task
from tests.unit.conductor.conftest import HOST, Cloud, wait_for

LONG_AGO = timedelta(hours=1)


def age(cloud: Cloud, node_id: str, instance_id: str) -> None:
    """Make the node's and the instance's last change an hour old."""
    then = utcnow() - LONG_AGO
    with cloud.db.session() as session:
        session.exec(update(Node).where(col(Node.id) == node_id).values(updated_at=then))
        session.exec(
            update(Instance).where(col(Instance.id) == instance_id).values(updated_at=then)
        )


def mark_deleting(cloud: Cloud, instance_id: str) -> None:
    """What the API does on DELETE, without the tear_down_node message (it was lost)."""
    with cloud.db.session() as session:
        session.exec(
            update(Instance)
            .where(col(Instance.id) == instance_id)
            .values(status=InstanceStatus.DELETING, task_state=TaskState.DELETING)
        )


def test_a_claimed_node_whose_deploy_message_was_lost_is_deployed(
    cloud: Cloud, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="services.conductor.redrive")
    node_id = cloud.make_node()
    instance_id = cloud.make_instance(node_id)  # claimed; its deploy_node never arrives
    age(cloud, node_id, instance_id)

    cloud.start_conductor()

    wait_for(lambda: cloud.instance(instance_id).status == InstanceStatus.ACTIVE, what="ACTIVE")
    assert cloud.settled(node_id, "active").instance_id == instance_id
    [record] = [r for r in caplog.records if r.name == "services.conductor.redrive"]
    assert record.levelno == logging.WARNING
    assert node_id in record.getMessage() and instance_id in record.getMessage()


def test_a_fresh_claim_is_left_to_its_deploy_message(cloud: Cloud):
    service = cloud.start_conductor(check_interval=3600.0, redrive_after=60.0)
    node_id = cloud.make_node()
    instance_id = cloud.make_instance(node_id)

    assert service.manager.periodic.redrive_stranded_work() == 0

    node = cloud.node(node_id)
    assert node.provision_state == "available"
    assert node.instance_id == instance_id


def test_a_claim_on_a_node_another_conductor_owns_is_left_to_it(cloud: Cloud):
    cloud.add_conductor("c2")
    node_id = cloud.make_node(owner="c2", ring=(HOST, "c2"))
    instance_id = cloud.make_instance(node_id)
    age(cloud, node_id, instance_id)
    service = cloud.start_conductor(check_interval=3600.0)

    assert service.manager.periodic.redrive_stranded_work() == 0

    assert cloud.node(node_id).provision_state == "available"


def test_an_instance_whose_tear_down_message_was_lost_is_torn_down(
    cloud: Cloud, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="services.conductor.redrive")
    node_id = cloud.make_node(state="active", power_state=PowerState.ON)
    instance_id = cloud.make_instance(node_id)
    mark_deleting(cloud, instance_id)
    age(cloud, node_id, instance_id)

    cloud.start_conductor()

    wait_for(lambda: cloud.instance(instance_id).status == InstanceStatus.DELETED, what="DELETED")
    node = cloud.settled(node_id, "available")
    assert node.instance_id is None
    assert node.power_state == PowerState.OFF
    [record] = [r for r in caplog.records if r.name == "services.conductor.redrive"]
    assert record.levelno == logging.WARNING
    assert node_id in record.getMessage() and instance_id in record.getMessage()


def test_a_tear_down_that_gave_up_on_a_locked_node_is_done_later(cloud: Cloud):
    # deploy failed, its instance deleted meanwhile: the tear_down_node message found the
    # node locked for longer than it waits, so nobody tore the node down.
    node_id = cloud.make_node(state="deploy failed", last_error="the deploy ramdisk failed")
    instance_id = cloud.make_instance(node_id)
    mark_deleting(cloud, instance_id)
    age(cloud, node_id, instance_id)
    service = cloud.start_conductor(check_interval=3600.0)

    assert service.manager.periodic.redrive_stranded_work() == 1

    wait_for(lambda: cloud.instance(instance_id).status == InstanceStatus.DELETED, what="DELETED")
    assert cloud.settled(node_id, "available").instance_id is None


def test_a_recent_delete_is_left_to_its_tear_down_message(cloud: Cloud):
    node_id = cloud.make_node(state="active")
    instance_id = cloud.make_instance(node_id)
    mark_deleting(cloud, instance_id)  # just now
    service = cloud.start_conductor(check_interval=3600.0, redrive_after=60.0)

    assert service.manager.periodic.redrive_stranded_work() == 0

    assert cloud.node(node_id).provision_state == "active"
    assert cloud.instance(instance_id).status == InstanceStatus.DELETING


def test_a_deploy_whose_failure_handling_raised_is_failed_and_rescheduled(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
):
    service = cloud.start_conductor()
    deployments = service.manager.deployments
    real_fail = deployments.fail
    calls: list[str] = []

    def database_hiccup_once(task: Task, reason: str) -> None:
        calls.append(reason)
        if len(calls) == 1:
            raise OperationalError("UPDATE node ...", {}, Exception("connection reset"))
        real_fail(task, reason)

    monkeypatch.setattr(deployments, "fail", database_hiccup_once)
    node_id = cloud.make_node(driver_info={"fake_power_error": "BMC does not answer"})
    instance_id = cloud.make_instance(node_id)

    cloud.api.deploy_node(cloud.ctxt, node_id, instance_id)

    # The deploy's own failure handling raised: the node was left deploying, unlocked...
    node = cloud.settled(node_id, "deploy failed", timeout=10.0)
    # ...until the re-drive failed it as a take-over does.
    assert node.last_error is not None
    assert node.last_error.startswith("work abandoned during deploying")
    assert node.instance_id is None
    wait_for(lambda: cloud.scheduler.reschedules, what="a reschedule")
    assert cloud.scheduler.reschedules[0]["instance_id"] == instance_id
    assert cloud.instance(instance_id).failed_node_ids == [node_id]
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("state", "failed", "instance_status"),
    [
        ("deleting", "error", InstanceStatus.ERROR),
        ("cleaning", "clean failed", InstanceStatus.DELETED),
    ],
)
def test_abandoned_tear_down_work_fails_the_node(
    cloud: Cloud, state: str, failed: str, instance_status: InstanceStatus
):
    cloud.start_conductor()  # alive: a take-over would leave its own nodes alone
    node_id = cloud.make_node(state=state, driver_internal_info={"conductor": HOST})
    instance_id = cloud.make_instance(node_id)
    mark_deleting(cloud, instance_id)

    node = cloud.settled(node_id, failed)

    assert node.last_error == (
        f"work abandoned during {state}: it ended on conductor {HOST} without finishing "
        "or failing the node"
    )
    wait_for(lambda: cloud.instance(instance_id).status == instance_status, what="instance")


def test_locked_work_and_work_seen_unlocked_only_briefly_are_not_abandoned(cloud: Cloud):
    cloud.add_conductor("c2")
    service = cloud.start_conductor(check_interval=3600.0)
    working = cloud.make_node(state="deploying", ring=(HOST, "c2"), reservation="c2")
    # Unlocked, but seen so only once: a take-over may just have cleared a dead lock.
    unlocked = cloud.make_node(state="cleaning", ring=(HOST, "c2"))
    redrive = service.manager.periodic.redrive_stranded_work

    assert redrive() == 0
    assert redrive() == 0

    assert cloud.node(working).provision_state == "deploying"
    assert cloud.node(working).reservation == "c2"
    assert cloud.node(unlocked).provision_state == "cleaning"
