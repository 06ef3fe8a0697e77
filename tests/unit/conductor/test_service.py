"""The conductor process: it joins the ring at start, beats, and leaves it at stop."""

from __future__ import annotations

from sqlmodel import select

from libs.db import Conductor, as_utc
from services.conductor.rpcapi import live_conductors
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


def test_stop_finishes_running_work_and_leaves_the_ring(cloud: Cloud):
    service = cloud.start_conductor()
    node_id = cloud.make_node(state="manageable")
    cloud.api.do_provisioning_action(cloud.ctxt, node_id, "provide")
    wait_for(lambda: cloud.node(node_id).provision_state == "clean wait", what="clean wait")

    service.stop(timeout=5.0)
    cloud.services.remove(service)

    assert conductor_row(cloud).online is False
    assert live_conductors(cloud.db, 5.0) == []
    node = cloud.node(node_id)
    assert node.reservation is None  # no lock left behind
