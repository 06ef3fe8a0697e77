"""The conductor process: it joins the ring at start, beats, and leaves it at stop."""

from __future__ import annotations

import threading

import pytest
from sqlmodel import select

from libs.db import Conductor, PowerState, as_utc
from libs.errors import NoLiveConductor
from services.conductor import drivers
from services.conductor.drivers import InterfaceKind
from services.conductor.drivers.fake import FakePower
from services.conductor.rpcapi import live_conductors
from services.conductor.task_manager import Task
from tests.unit.conductor.conftest import HOST, Cloud, wait_for


def conductor_row(cloud: Cloud) -> Conductor:
    with cloud.db.session() as session:
        row = session.exec(select(Conductor).where(Conductor.hostname == HOST)).one()
    return row


def test_a_started_conductor_heartbeats_and_owns_nodes(cloud: Cloud):
    cloud.start_conductor(heartbeat_interval=0.05)

    first = as_utc(conductor_row(cloud).updated_at)
    assert live_conductors(cloud.db, 5.0) == [HOST]
    assert cloud.api.owner_of("any-node") == HOST
    wait_for(lambda: as_utc(conductor_row(cloud).updated_at) > first, what="a second beat")


def test_a_pin_the_caller_read_already_is_used_without_a_query(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
):
    cloud.start_conductor(heartbeat_interval=0.05)
    cloud.api.remember_pin("read-with-its-claim", None)
    cloud.api.remember_pin("pinned-elsewhere", "cond-gone")
    cloud.api.ring()  # read once, as the casts would

    def no_query() -> None:
        raise AssertionError("the pin was read from the database again")

    monkeypatch.setattr(cloud.api.db, "reader", no_query)
    assert cloud.api.owner_of("read-with-its-claim") == HOST
    with pytest.raises(NoLiveConductor, match="cond-gone only"):
        cloud.api.owner_of("pinned-elsewhere")


class BlockingPower(FakePower):
    """Fake power whose power-off waits for the test: a step that holds the node's lock."""

    entered = threading.Event()
    release = threading.Event()

    def set_power_state(self, task: Task, state: PowerState) -> None:
        if state == PowerState.OFF:
            type(self).entered.set()
            if not type(self).release.wait(10.0):
                raise AssertionError("the test never released the power-off")
        super().set_power_state(task, state)


def test_stop_finishes_running_work_and_leaves_the_ring(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setitem(drivers._registry, InterfaceKind.POWER, {"fake": FakePower})
    drivers.register(InterfaceKind.POWER, "blocking", BlockingPower)
    monkeypatch.setattr(BlockingPower, "entered", threading.Event())
    monkeypatch.setattr(BlockingPower, "release", threading.Event())
    service = cloud.start_conductor(enabled_power_interfaces=["fake", "blocking"])
    node_id = cloud.make_node(state="manageable", power_interface="blocking")
    cloud.api.do_provisioning_action(cloud.ctxt, node_id, "provide")
    assert BlockingPower.entered.wait(5.0), "cleaning never reached its power-off"
    assert cloud.node(node_id).reservation == HOST  # the step holds the lock

    stopper = threading.Thread(target=service.stop, kwargs={"timeout": 5.0})
    stopper.start()
    stopper.join(0.3)
    assert stopper.is_alive(), "stop returned while a step was still running"
    BlockingPower.release.set()
    stopper.join(5.0)
    assert not stopper.is_alive()
    cloud.services.remove(service)

    assert conductor_row(cloud).online is False
    assert live_conductors(cloud.db, 5.0) == []
    node = cloud.node(node_id)
    # The step went on to the end of its work: the ramdisk was started and waited for.
    assert node.provision_state == "clean wait"
    assert node.power_state == PowerState.ON
    assert node.reservation is None  # no lock left behind
