"""The conductor's events: every node and instance change it makes is stored with its
project and published on the bus; failures are error events with their reason; deploy
and clean durations reach their histograms."""

from __future__ import annotations

import json
import threading

from prometheus_client import Histogram
from sqlmodel import col, select

from libs import metrics
from libs.db import InstanceStatus
from libs.db.models import Event
from libs.notify import bus_for
from tests.unit.conductor.conftest import Cloud, wait_for


def stored(cloud: Cloud, object_id: str) -> list[Event]:
    with cloud.db.session() as session:
        return list(
            session.exec(
                select(Event)
                .where(col(Event.object_id) == object_id)
                .order_by(col(Event.created_at), col(Event.id))
            ).all()
        )


def types(events: list[Event]) -> list[str]:
    return [event.event_type for event in events]


class Published:
    """What the conductor published on the memory bus, in order."""

    def __init__(self, cloud: Cloud) -> None:
        self.lock = threading.Lock()
        self.bodies: list[dict[str, object]] = []
        self.subscription = bus_for(cloud.transport).subscribe(self._add)

    def _add(self, body: bytes) -> None:
        with self.lock:
            self.bodies.append(json.loads(body))

    def ids(self) -> set[object]:
        with self.lock:
            return {body["id"] for body in self.bodies}


def histogram_count(histogram: Histogram, outcome: str) -> float:
    for family in histogram.collect():
        for sample in family.samples:
            if sample.name.endswith("_count") and sample.labels.get("outcome") == outcome:
                return float(sample.value)
    return 0.0


def test_a_deploy_and_its_tear_down_are_told_step_by_step(cloud: Cloud):
    published = Published(cloud)
    cloud.start_conductor()
    node_id = cloud.make_node()
    instance_id = cloud.make_instance(node_id)
    deploys = histogram_count(metrics.DEPLOY_SECONDS, "success")
    cleanings = histogram_count(metrics.CLEAN_SECONDS, "success")

    cloud.api.deploy_node(cloud.ctxt, node_id, instance_id)
    wait_for(lambda: cloud.instance(instance_id).status == InstanceStatus.ACTIVE, what="ACTIVE")
    cloud.settled(node_id, "active")

    node_events = stored(cloud, node_id)
    provision = [t for t in types(node_events) if ".power." not in t]
    assert provision == [
        "tetsu.node.deploy.start",
        "tetsu.node.deploy_ramdisk.start",
        "tetsu.node.deploy_ramdisk.end",
        "tetsu.node.deploy.end",
    ]
    assert "tetsu.node.power.end" in types(node_events)
    # Node events are admins' only, whoever's instance is on the node.
    assert {event.project_id for event in node_events} == {None}
    end = node_events[-1]
    assert end.payload["provision_state"] == "active"
    assert end.payload["instance_id"] == instance_id
    assert end.payload["payload_version"] == "1.0"
    assert types(stored(cloud, instance_id)) == ["tetsu.instance.create.end"]
    assert stored(cloud, instance_id)[0].payload["status"] == "ACTIVE"
    assert histogram_count(metrics.DEPLOY_SECONDS, "success") == deploys + 1

    cloud.delete_instance(instance_id)
    cloud.settled(node_id, "available")
    wait_for(lambda: cloud.instance(instance_id).status == InstanceStatus.DELETED, what="DELETED")
    after = [t for t in types(stored(cloud, node_id)) if ".power." not in t][4:]
    assert after == [
        "tetsu.node.tear_down.start",
        "tetsu.node.clean.start",
        "tetsu.node.clean_ramdisk.start",
        "tetsu.node.clean_ramdisk.end",
        "tetsu.node.clean.end",
    ]
    assert types(stored(cloud, instance_id))[-1] == "tetsu.instance.delete.end"
    assert histogram_count(metrics.CLEAN_SECONDS, "success") == cleanings + 1

    # Every stored event was published once committed.
    everything = {e.id for e in stored(cloud, node_id) + stored(cloud, instance_id)}
    wait_for(lambda: everything <= published.ids(), what="the events on the bus")
    published.subscription.close()


def test_a_failed_deploy_is_an_error_event_with_its_reason(cloud: Cloud):
    cloud.start_conductor()
    node_id = cloud.make_node(driver_info={"fake_fail_deploy": "disk /dev/sda not found"})
    instance_id = cloud.make_instance(node_id)
    failures = histogram_count(metrics.DEPLOY_SECONDS, "failure")

    cloud.api.deploy_node(cloud.ctxt, node_id, instance_id)
    cloud.settled(node_id, "deploy failed")

    errors = [e for e in stored(cloud, node_id) if e.severity == "error"]
    assert types(errors) == ["tetsu.node.deploy.error"]
    assert "disk /dev/sda not found" in errors[0].payload["last_error"]
    # The node let go of the instance in that very change: the event names it.
    assert errors[0].payload["instance_id"] is None
    assert errors[0].payload["released_instance_id"] == instance_id
    assert errors[0].project_id is None
    rescheduled = stored(cloud, instance_id)
    assert types(rescheduled) == ["tetsu.instance.schedule.start"]
    assert rescheduled[0].payload["failed_node_id"] == node_id
    assert histogram_count(metrics.DEPLOY_SECONDS, "failure") == failures + 1


def test_a_power_failure_is_told_without_the_bmc_password(cloud: Cloud):
    password = "s3cret-bmc-pass"
    cloud.start_conductor()
    node_id = cloud.make_node(
        state="manageable",
        driver_info={"password": password, "fake_power_error": f"login -P {password} refused"},
    )

    cloud.api.set_power_state(cloud.ctxt, node_id, "power on")
    wait_for(lambda: cloud.node(node_id).last_error is not None, what="the power failure")
    cloud.settled(node_id, "manageable")

    events = wait_for(
        lambda: (found := stored(cloud, node_id)) and len(found) >= 2 and found,
        what="the power events",
    )
    assert types(events) == ["tetsu.node.power.start", "tetsu.node.power.error"]
    error = events[1]
    assert error.severity == "error"
    assert "refused" in error.payload["reason"]
    assert error.project_id is None  # no instance on the node: admins only
    assert password not in json.dumps([e.payload for e in events])
