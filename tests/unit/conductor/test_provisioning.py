"""The operator's provisioning actions (manage, provide, delete) and node validation."""

from __future__ import annotations

import pytest

from libs.db import PortBinding, PowerState
from libs.errors import BadRequest, InvalidStateTransition
from services.conductor.drivers.fake import POWER_KEY
from tests.unit.conductor.conftest import Cloud


def test_manage_reads_the_power_state_and_makes_the_node_manageable(cloud: Cloud):
    cloud.start_conductor()
    node_id = cloud.make_node(state="enroll", driver_internal_info={POWER_KEY: "power on"})

    cloud.api.do_provisioning_action(cloud.ctxt, node_id, "manage")

    node = cloud.settled(node_id, "manageable")
    assert node.power_state == PowerState.ON
    assert node.last_error is None


def test_manage_with_a_bmc_that_fails_keeps_the_node_enrolled(cloud: Cloud):
    cloud.start_conductor()
    node_id = cloud.make_node(state="enroll", driver_info={"fake_power_error": "bad password"})

    cloud.api.do_provisioning_action(cloud.ctxt, node_id, "manage")

    # The call returns once the work has the lock: settled means the work is over.
    node = cloud.settled(node_id, "enroll")
    assert node.last_error == (
        "cannot manage the node: reading its power state failed: bad password"
    )


def test_provide_cleans_the_node_and_makes_it_available(cloud: Cloud):
    cloud.start_conductor()
    node_id = cloud.make_node(state="manageable")

    cloud.api.do_provisioning_action(cloud.ctxt, node_id, "provide")

    node = cloud.settled(node_id, "available")
    assert node.power_state == PowerState.OFF
    assert node.last_error is None
    assert all(port.binding == PortBinding.NONE for port in cloud.ports(node_id))
    assert {call for call, _, _ in cloud.netctl.calls} == {"provision_port", "unbind_port"}


def test_delete_cleans_a_failed_node(cloud: Cloud):
    cloud.start_conductor()
    node_id = cloud.make_node(state="deploy failed", last_error="earlier failure")

    cloud.api.do_provisioning_action(cloud.ctxt, node_id, "delete")

    node = cloud.settled(node_id, "available")
    assert node.last_error is None


def test_actions_refused_in_the_wrong_state_or_unknown(cloud: Cloud):
    cloud.start_conductor()
    node_id = cloud.make_node(state="enroll")

    with pytest.raises(InvalidStateTransition, match="cannot provide"):
        cloud.api.do_provisioning_action(cloud.ctxt, node_id, "provide")
    with pytest.raises(BadRequest, match="unknown provisioning action 'deploy'"):
        cloud.api.do_provisioning_action(cloud.ctxt, node_id, "deploy")
    assert cloud.node(node_id).provision_state == "enroll"
    assert cloud.node(node_id).reservation is None


def test_provide_refuses_a_node_whose_driver_info_is_wrong(cloud: Cloud):
    cloud.start_conductor()
    node_id = cloud.make_node(state="manageable", driver_info={"fake_delay": "soon"})

    with pytest.raises(BadRequest, match="fake_delay must be a number"):
        cloud.api.do_provisioning_action(cloud.ctxt, node_id, "provide")
    assert cloud.node(node_id).provision_state == "manageable"


def test_validate_node_reports_each_interface(cloud: Cloud):
    cloud.start_conductor()
    good = cloud.make_node()
    bad = cloud.make_node(power_interface="ipmi", driver_info={"fake_fail_deploy": 3})

    assert cloud.api.validate_node(cloud.ctxt, good) == {
        "power": {"result": True, "reason": None},
        "boot": {"result": True, "reason": None},
        "deploy": {"result": True, "reason": None},
        "management": {"result": True, "reason": None},
    }
    result = cloud.api.validate_node(cloud.ctxt, bad)
    assert result["power"] == {
        "result": False,
        "reason": "unknown power interface 'ipmi' (enabled: fake)",
    }
    assert result["deploy"] == {
        "result": False,
        "reason": "fake deploy: driver_info fake_fail_deploy must be a string",
    }
    assert result["boot"]["result"] is True
