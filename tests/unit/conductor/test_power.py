"""Power: the operator's power actions, and the periodic power-state sync."""

from __future__ import annotations

import logging

import pytest

from libs.db import Node, PowerState
from libs.errors import BadRequest, InvalidStateTransition, NodeLocked
from services.conductor.drivers.fake import POWER_KEY
from tests.unit.conductor.conftest import Cloud, wait_for


def test_power_on_and_off(cloud: Cloud):
    cloud.start_conductor()
    node_id = cloud.make_node(state="manageable")

    cloud.api.set_power_state(cloud.ctxt, node_id, "power on")
    wait_for(lambda: cloud.node(node_id).power_state == PowerState.ON, what="power on")
    assert cloud.node(node_id).driver_internal_info[POWER_KEY] == "power on"

    cloud.api.set_power_state(cloud.ctxt, node_id, "power off")
    wait_for(lambda: cloud.node(node_id).power_state == PowerState.OFF, what="power off")
    assert cloud.node(node_id).target_power_state is None


def test_reboot_leaves_the_node_on(cloud: Cloud):
    cloud.start_conductor()
    node_id = cloud.make_node(state="active")

    cloud.api.set_power_state(cloud.ctxt, node_id, "reboot")

    wait_for(lambda: cloud.node(node_id).power_state == PowerState.ON, what="power on")


def test_a_failing_power_action_reports_the_drivers_reason(cloud: Cloud):
    cloud.start_conductor()
    node_id = cloud.make_node(
        state="manageable", driver_info={"fake_power_error": "IPMI session refused"}
    )

    cloud.api.set_power_state(cloud.ctxt, node_id, "power on")

    node = wait_for(lambda: (n := cloud.node(node_id)).last_error and n, what="last_error")
    assert node.last_error == "power on failed: IPMI session refused"
    assert node.power_state == PowerState.UNKNOWN
    assert node.target_power_state is None


def test_bad_power_requests_are_refused(cloud: Cloud):
    cloud.start_conductor()
    node_id = cloud.make_node(state="manageable")
    waiting = cloud.make_node(state="wait call-back")

    with pytest.raises(BadRequest, match="unknown power target 'sleep'"):
        cloud.api.set_power_state(cloud.ctxt, node_id, "sleep")
    with pytest.raises(InvalidStateTransition):
        cloud.api.set_power_state(cloud.ctxt, waiting, "power off")


def test_a_locked_node_refuses_power_requests(cloud: Cloud):
    cloud.start_conductor()
    node_id = cloud.make_node(state="manageable", reservation="c9")

    with pytest.raises(NodeLocked, match="c9"):
        cloud.api.set_power_state(cloud.ctxt, node_id, "power on")


def test_power_sync_records_the_power_state_and_read_failures(cloud: Cloud):
    on = cloud.make_node(state="available", driver_internal_info={POWER_KEY: "power on"})
    broken = cloud.make_node(
        state="available", driver_info={"fake_power_error": "BMC does not answer"}
    )
    enrolled = cloud.make_node(state="enroll", driver_internal_info={POWER_KEY: "power on"})

    cloud.start_conductor(power_sync_interval=0.1)

    wait_for(lambda: cloud.node(on).power_state == PowerState.ON, what="power on synced")
    node = wait_for(lambda: (n := cloud.node(broken)).last_error and n, what="last_error")
    assert node.last_error == (
        "power state sync: reading the power state failed: BMC does not answer"
    )
    # Nodes not yet under management are left alone.
    assert cloud.node(enrolled).power_state == PowerState.UNKNOWN


def test_power_sync_clears_its_error_once_the_bmc_answers(cloud: Cloud):
    node_id = cloud.make_node(
        state="available", driver_info={"fake_power_error": "BMC does not answer"}
    )
    cloud.start_conductor(power_sync_interval=0.1)
    wait_for(lambda: cloud.node(node_id).last_error, what="last_error")

    with cloud.db.session() as session:  # the operator fixes the BMC
        node = session.get(type(cloud.node(node_id)), node_id)
        assert node is not None
        node.driver_info = {"fake_delay": 0.05}
        session.add(node)

    wait_for(lambda: cloud.node(node_id).last_error is None, what="last_error cleared")
    assert cloud.node(node_id).power_state == PowerState.OFF


def test_power_sync_keeps_the_reason_a_deploy_failed(
    cloud: Cloud, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="services.conductor.power")
    node_id = cloud.make_node(
        state="deploy failed",
        last_error="the deploy ramdisk failed: no disk",
        driver_info={"fake_power_error": "BMC does not answer"},
    )
    cloud.start_conductor(power_sync_interval=0.1)
    wait_for(lambda: any(node_id in r.getMessage() for r in caplog.records), what="a failed sync")
    # The failed read does not overwrite the deploy's reason...
    assert cloud.node(node_id).last_error == "the deploy ramdisk failed: no disk"

    with cloud.db.session() as session:  # the operator fixes the BMC
        node = session.get(Node, node_id)
        assert node is not None
        node.driver_info = {"fake_delay": 0.05}
        session.add(node)

    # ...and the next read that works does not clear it.
    wait_for(lambda: cloud.node(node_id).power_state == PowerState.OFF, what="a working sync")
    assert cloud.node(node_id).last_error == "the deploy ramdisk failed: no disk"


def test_power_errors_never_show_the_bmc_password(cloud: Cloud, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    password = "Sup3r-s3cret"
    leaky = f"IPMI login admin/{password} refused"
    driver_info = {"ipmi_password": password, "fake_power_error": leaky}
    action = cloud.make_node(state="manageable", driver_info=driver_info)
    synced = cloud.make_node(state="manageable", driver_info=driver_info)
    cloud.start_conductor(power_sync_interval=0.1)

    cloud.api.set_power_state(cloud.ctxt, action, "power on")

    node = wait_for(lambda: (n := cloud.node(action)).last_error and n, what="last_error")
    assert node.last_error == "power on failed: IPMI login admin/*** refused"
    node = wait_for(lambda: (n := cloud.node(synced)).last_error and n, what="a failed sync")
    assert node.last_error == (
        "power state sync: reading the power state failed: IPMI login admin/*** refused"
    )
    assert password not in caplog.text
