"""Taking over the nodes of conductors that died, at start and when the ring changes."""

from __future__ import annotations

import time
from collections.abc import Set
from datetime import timedelta

import pytest
from sqlalchemy.exc import OperationalError
from sqlmodel import col, update

from libs.db import Conductor, InstanceStatus, Node, utcnow
from services.conductor import states
from services.conductor.hashring import HashRing
from tests.unit.conductor.conftest import HOST, Cloud, wait_for

LONG_AGO = timedelta(hours=1)


def test_a_node_left_deploying_by_a_dead_conductor_fails_and_is_rescheduled(cloud: Cloud):
    cloud.add_conductor("dead", updated_at=utcnow() - LONG_AGO)
    node_id = cloud.make_node(
        state="deploying", reservation="dead", driver_internal_info={"conductor": "dead"}
    )
    instance_id = cloud.make_instance(node_id)

    cloud.start_conductor()

    node = cloud.settled(node_id, "deploy failed")
    assert node.last_error == "conductor dead died during deploying"
    assert node.instance_id is None
    wait_for(lambda: cloud.scheduler.reschedules, what="a reschedule")
    assert cloud.scheduler.reschedules[0]["instance_id"] == instance_id
    assert cloud.instance(instance_id).failed_node_ids == [node_id]


def test_work_of_this_hostname_before_a_restart_is_dead(cloud: Cloud):
    cleaning = cloud.make_node(state="clean wait", driver_internal_info={"conductor": HOST})
    deleting = cloud.make_node(state="deleting", reservation=HOST)
    stale_lock = cloud.make_node(state="available", reservation=HOST)

    cloud.start_conductor()

    for node_id, state in [(cleaning, "clean wait"), (deleting, "deleting")]:
        node = cloud.settled(node_id, states.FAIL_ON_TAKEOVER[states.ProvisionState(state)])
        assert node.last_error == f"conductor {HOST} died during {state}"
    node = cloud.node(stale_lock)
    assert node.reservation is None
    assert node.provision_state == "available"


def test_work_of_a_live_conductor_is_left_alone(cloud: Cloud):
    cloud.add_conductor("c2")
    node_id = cloud.make_node(
        state="wait call-back",
        ring=(HOST, "c2"),
        driver_internal_info={"conductor": "c2"},
    )

    service = cloud.start_conductor()

    assert service.manager.periodic.take_over() == 0
    node = cloud.node(node_id)
    assert node.provision_state == "wait call-back"
    assert node.last_error is None


def test_nodes_of_a_conductor_that_leaves_are_taken_over(cloud: Cloud):
    cloud.add_conductor("c2")
    node_id = cloud.make_node(
        state="wait call-back",
        ring=(HOST, "c2"),
        driver_internal_info={"conductor": "c2"},
    )
    instance_id = cloud.make_instance(node_id)
    cloud.start_conductor()
    assert cloud.node(node_id).provision_state == "wait call-back"

    with cloud.db.session() as session:  # c2 stops: it leaves the ring
        session.exec(update(Conductor).where(col(Conductor.hostname) == "c2").values(online=False))

    node = cloud.settled(node_id, "deploy failed")
    assert node.last_error == "conductor c2 died during wait call-back"
    wait_for(lambda: cloud.scheduler.reschedules, what="a reschedule")
    assert cloud.instance(instance_id).status == InstanceStatus.BUILD


def test_nodes_of_other_live_owners_are_not_touched(cloud: Cloud):
    cloud.add_conductor("c2")
    cloud.add_conductor("dead", updated_at=utcnow() - LONG_AGO)
    # c2 owns this node: failing it is c2's job, not ours.
    node_id = cloud.make_node(
        state="deploying",
        owner="c2",
        ring=(HOST, "c2"),
        reservation="dead",
        driver_internal_info={"conductor": "dead"},
    )

    cloud.start_conductor()

    node = cloud.node(node_id)
    assert node.provision_state == "deploying"
    assert node.reservation == "dead"


def test_a_lock_left_by_this_hostname_is_cleared_at_start_whoever_owns_the_node(cloud: Cloud):
    # The node moved to c2 on the ring while this conductor worked on it; it then crashed
    # and came back before c2 saw it gone, so c2 still takes the lock for live work.
    cloud.add_conductor("c2")
    node_id = cloud.make_node(
        state="deploying",
        owner="c2",
        ring=(HOST, "c2"),
        reservation=HOST,
        driver_internal_info={"conductor": HOST},
    )
    instance_id = cloud.make_instance(node_id)

    cloud.start_conductor()

    node = cloud.settled(node_id, "deploy failed")
    assert node.last_error == f"conductor {HOST} died during deploying"
    wait_for(lambda: cloud.scheduler.reschedules, what="a reschedule")
    assert cloud.scheduler.reschedules[0]["instance_id"] == instance_id


def test_a_take_over_that_failed_half_way_is_tried_again(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
):
    cloud.add_conductor("c2")
    node_id = cloud.make_node(
        state="wait call-back", ring=(HOST, "c2"), driver_internal_info={"conductor": "c2"}
    )
    takeover = cloud.start_conductor().manager.periodic.takeover
    real_run = takeover.run
    calls: list[int] = []

    def database_hiccup_once(ring: HashRing, alive: Set[str]) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("UPDATE node ...", {}, Exception("connection reset"))
        return real_run(ring, alive)

    monkeypatch.setattr(takeover, "run", database_hiccup_once)
    with cloud.db.session() as session:  # c2 stops: it leaves the ring
        session.exec(update(Conductor).where(col(Conductor.hostname) == "c2").values(online=False))

    node = cloud.settled(node_id, "deploy failed")
    assert node.last_error == "conductor c2 died during wait call-back"
    assert len(calls) >= 2


def test_a_dead_conductors_node_locked_for_a_moment_is_taken_over_at_a_later_check(
    cloud: Cloud,
):
    cloud.add_conductor("c2")
    cloud.add_conductor("c3")
    # c3 runs this deploy; when c3 dies, live c2 holds the node's lock for a moment (say
    # its power sync, from before the ring changed): nobody may fail it then, but the
    # node is this conductor's once c2 lets go, not a wait for the callback timeout.
    node_id = cloud.make_node(
        state="wait call-back",
        ring=(HOST, "c2"),
        reservation="c2",
        driver_internal_info={"conductor": "c3"},
    )
    instance_id = cloud.make_instance(node_id)
    cloud.start_conductor()

    with cloud.db.session() as session:  # c3 stops: it leaves the ring
        session.exec(update(Conductor).where(col(Conductor.hostname) == "c3").values(online=False))
    time.sleep(0.5)  # several checks: the ring change is seen while c2 holds the lock
    assert cloud.node(node_id).provision_state == "wait call-back"
    with cloud.db.session() as session:  # c2's power sync ends
        session.exec(update(Node).where(col(Node.id) == node_id).values(reservation=None))

    # Well before c2's heartbeat goes stale (5 s), which would change the ring again.
    node = cloud.settled(node_id, "deploy failed", timeout=2.0)
    assert node.last_error == "conductor c3 died during wait call-back"
    wait_for(lambda: cloud.scheduler.reschedules, what="a reschedule")
    assert cloud.scheduler.reschedules[0]["instance_id"] == instance_id
