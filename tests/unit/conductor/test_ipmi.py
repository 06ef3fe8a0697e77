"""The ipmi interfaces as a conductor offers them: registered, enabled by settings, and
validating a node's driver_info without talking to its BMC. Their work against a real
BMC is in tests/integration/test_ipmi_bmc.py."""

from __future__ import annotations

import time
from typing import Any

import pytest

from libs.db import PowerState
from libs.errors import BadRequest
from libs.rpc import RequestContext
from services.conductor.drivers import DriverEnv, DriverFactory, InterfaceKind
from services.conductor.drivers.ipmi import IPMIManagement, IPMIPower
from services.conductor.task_manager import TaskManager
from tests.unit.conductor.conftest import HOST, Cloud, make_settings

SECRET = "Hunter2-Secret"
# TEST-NET-1: nothing answers there, so a validate() that talked to the BMC would hang.
GOOD = {
    "ipmi_address": "192.0.2.10",
    "ipmi_username": "admin",
    "ipmi_password": SECRET,
}
IPMI = {
    "enabled_power_interfaces": ["fake", "ipmi"],
    "enabled_management_interfaces": ["fake", "ipmi"],
}


def ipmi_node(cloud: Cloud, driver_info: dict[str, Any]) -> str:
    return cloud.make_node(
        driver_info=driver_info, power_interface="ipmi", management_interface="ipmi"
    )


def validate(cloud: Cloud, node_id: str) -> dict[str, Any]:
    return cloud.api.validate_node(cloud.ctxt, node_id)


def test_ipmi_is_a_power_and_management_interface_once_enabled():
    settings = make_settings(**IPMI)
    factory = DriverFactory(settings, DriverEnv(settings, lambda *args: None))
    assert isinstance(factory.get(InterfaceKind.POWER, "ipmi"), IPMIPower)
    assert isinstance(factory.get(InterfaceKind.MANAGEMENT, "ipmi"), IPMIManagement)

    default = make_settings()
    with pytest.raises(BadRequest, match=r"unknown power interface 'ipmi' \(enabled: fake\)"):
        DriverFactory(default, DriverEnv(default, lambda *args: None)).get(
            InterfaceKind.POWER, "ipmi"
        )


def test_a_complete_driver_info_validates_without_talking_to_the_bmc(cloud: Cloud):
    cloud.start_conductor(**IPMI)
    node_id = ipmi_node(cloud, {**GOOD, "ipmi_port": 6230, "ipmi_timeout": 2.5, "ipmi_retries": 1})
    started = time.monotonic()
    result = validate(cloud, node_id)
    assert time.monotonic() - started < 1.0
    assert result["power"] == {"result": True, "reason": None}
    assert result["management"] == {"result": True, "reason": None}


def test_missing_keys_are_named_and_no_value_is_shown(cloud: Cloud):
    cloud.start_conductor(**IPMI)
    node_id = ipmi_node(cloud, {"ipmi_password": SECRET, "ipmi_port": 623})
    result = validate(cloud, node_id)
    assert result["power"] == {
        "result": False,
        "reason": "ipmi power: driver_info is missing ipmi_address, ipmi_username",
    }
    assert result["management"]["reason"] == (
        "ipmi management: driver_info is missing ipmi_address, ipmi_username"
    )

    node_id = ipmi_node(cloud, {"ipmi_address": "192.0.2.10", "ipmi_username": "admin"})
    assert validate(cloud, node_id)["power"]["reason"] == (
        "ipmi power: driver_info is missing ipmi_password"
    )


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"ipmi_port": "623"}, "ipmi power: driver_info ipmi_port must be a UDP port (1-65535)"),
        ({"ipmi_port": 70000}, "ipmi power: driver_info ipmi_port must be a UDP port (1-65535)"),
        ({"ipmi_port": 623.5}, "ipmi power: driver_info ipmi_port must be a UDP port (1-65535)"),
        ({"ipmi_timeout": 0}, "ipmi power: driver_info ipmi_timeout must be more than 0 s"),
        ({"ipmi_retries": 0}, "ipmi power: driver_info ipmi_retries must be a whole number >= 1"),
        ({"ipmi_retries": 1.5}, "ipmi power: driver_info ipmi_retries must be a whole number >= 1"),
        ({"ipmi_address": 10}, "ipmi power: driver_info ipmi_address must be a string"),
        ({"ipmi_username": ["admin"]}, "ipmi power: driver_info ipmi_username must be a string"),
        ({"ipmi_password": True}, "ipmi power: driver_info ipmi_password must be a string"),
    ],
)
def test_unusable_values_are_refused_by_key(cloud: Cloud, extra: dict[str, Any], reason: str):
    cloud.start_conductor(**IPMI)
    node_id = ipmi_node(cloud, {**GOOD, **extra})
    assert validate(cloud, node_id)["power"] == {"result": False, "reason": reason}


def test_an_all_digit_password_from_the_cli_is_accepted(cloud: Cloud):
    """`--driver-info ipmi_password=12345678` arrives as a JSON number."""
    cloud.start_conductor(**IPMI)
    node_id = ipmi_node(cloud, {**GOOD, "ipmi_password": 12345678})
    assert validate(cloud, node_id)["power"] == {"result": True, "reason": None}


def test_only_on_and_off_can_be_set(cloud: Cloud):
    settings = make_settings(**IPMI)
    factory = DriverFactory(settings, DriverEnv(settings, lambda *args: None))
    tasks = TaskManager(cloud.db, HOST, factory, workers=1)
    node_id = ipmi_node(cloud, GOOD)
    try:
        with (
            tasks.acquire(RequestContext.admin(), node_id, "test") as task,
            pytest.raises(BadRequest, match="cannot set power state"),
        ):
            task.driver.power.set_power_state(task, PowerState.UNKNOWN)
    finally:
        tasks.shutdown(5.0)
