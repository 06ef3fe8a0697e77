"""The interface registry and the fake drivers."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from libs.db import PowerState
from libs.errors import BadRequest
from libs.rpc import RequestContext
from services.conductor import drivers
from services.conductor.drivers import (
    BootDevice,
    DriverEnv,
    DriverError,
    DriverFactory,
    InterfaceKind,
    PowerInterface,
)
from services.conductor.drivers.fake import RUNS_KEPT, RUNS_KEY, FakeDeploy, FakePower
from services.conductor.task_manager import TaskManager
from tests.unit.conductor.conftest import HOST, Cloud, make_settings


class Reports:
    """Collects what the fake ramdisk reports."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, bool, str | None]] = []
        self.arrived = threading.Event()

    def __call__(self, node_id: str, token: str, success: bool, message: str | None) -> None:
        self.items.append((node_id, token, success, message))
        self.arrived.set()


@pytest.fixture
def reports() -> Reports:
    return Reports()


@pytest.fixture
def tasks(cloud: Cloud, reports: Reports) -> Iterator[TaskManager]:
    settings = make_settings()
    factory = DriverFactory(settings, DriverEnv(settings, reports))
    manager = TaskManager(cloud.db, HOST, factory, workers=1)
    yield manager
    manager.shutdown(5.0)


class OtherPower(FakePower):
    pass


def test_the_factory_gives_enabled_interfaces_only():
    settings = make_settings()
    factory = DriverFactory(settings, DriverEnv(settings, lambda *args: None))

    power = factory.get(InterfaceKind.POWER, "fake")
    assert isinstance(power, PowerInterface)
    assert factory.get(InterfaceKind.POWER, "fake") is power  # loaded once, shared
    with pytest.raises(BadRequest, match=r"unknown boot interface 'pxe' \(enabled: fake\)"):
        factory.get(InterfaceKind.BOOT, "pxe")


def test_a_registered_interface_is_usable_once_enabled(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(drivers._registry, InterfaceKind.POWER, {"fake": FakePower})
    drivers.register(InterfaceKind.POWER, "other", OtherPower)
    assert drivers.registered(InterfaceKind.POWER) == ["fake", "other"]

    settings = make_settings(enabled_power_interfaces=["fake", "other"])
    factory = DriverFactory(settings, DriverEnv(settings, lambda *args: None))
    assert isinstance(factory.get(InterfaceKind.POWER, "other"), OtherPower)

    with pytest.raises(TypeError):
        drivers.register(InterfaceKind.BOOT, "other", OtherPower)  # not a boot interface
    with pytest.raises(ValueError, match="already"):
        drivers.register(InterfaceKind.POWER, "other", FakePower)


def test_enabling_an_unknown_interface_fails_at_start():
    settings = make_settings(enabled_deploy_interfaces=["fake", "ansible"])
    with pytest.raises(ValueError, match="ansible"):
        DriverFactory(settings, DriverEnv(settings, lambda *args: None))


def test_fake_power_keeps_its_state_on_the_node(cloud: Cloud, tasks: TaskManager):
    node_id = cloud.make_node()
    with tasks.acquire(RequestContext.admin(), node_id, "test") as task:
        power = task.driver.power
        assert power.get_power_state(task) == PowerState.OFF
        power.set_power_state(task, PowerState.ON)
        assert power.get_power_state(task) == PowerState.ON
        power.set_power_state(task, PowerState.OFF)
        power.reboot(task)
        assert power.get_power_state(task) == PowerState.ON
        task.driver.management.set_boot_device(task, BootDevice.PXE)
        assert task.driver.management.get_boot_device(task) == BootDevice.PXE
        task.save()
    with tasks.acquire(RequestContext.admin(), node_id, "test", shared=True) as task:
        assert task.driver.power.get_power_state(task) == PowerState.ON  # from the database
        assert task.driver.management.get_boot_device(task) == BootDevice.PXE


def test_fake_power_error_fails_every_power_action(cloud: Cloud, tasks: TaskManager):
    node_id = cloud.make_node(driver_info={"fake_power_error": "BMC on fire"})
    with tasks.acquire(RequestContext.admin(), node_id, "test") as task:
        power = task.driver.power
        for action in (
            lambda: power.get_power_state(task),
            lambda: power.set_power_state(task, PowerState.ON),
            lambda: power.reboot(task),
        ):
            with pytest.raises(DriverError) as caught:
                action()
            assert caught.value.reason == "BMC on fire"


def test_fake_ramdisk_reports_after_its_delay(cloud: Cloud, tasks: TaskManager, reports: Reports):
    node_id = cloud.make_node(driver_info={"fake_delay": 0.05, "fake_fail_clean": "no disk"})
    with tasks.acquire(RequestContext.admin(), node_id, "test") as task:
        task.callback_token = "secret-token"
        task.driver.deploy.deploy(task)
        assert reports.arrived.wait(5)
        reports.arrived.clear()
        task.driver.deploy.clean(task)
        assert reports.arrived.wait(5)

    assert reports.items == [
        (node_id, "secret-token", True, None),
        (node_id, "secret-token", False, "no disk"),
    ]


def test_fake_ramdisk_runs_are_recorded_on_the_node(cloud: Cloud, tasks: TaskManager):
    """The record tests read to prove no node was deployed twice without a cleaning."""
    node_id = cloud.make_node(driver_info={"fake_delay": 0.01})
    with tasks.acquire(RequestContext.admin(), node_id, "test") as task:
        task.callback_token = "token"
        task.node.instance_id = "instance-1"
        task.driver.deploy.deploy(task)
        task.driver.deploy.clean(task)
        task.save()
    assert cloud.node(node_id).driver_internal_info[RUNS_KEY] == ["deploy instance-1", "clean"]

    with tasks.acquire(RequestContext.admin(), node_id, "test") as task:
        task.callback_token = "token"
        for _ in range(RUNS_KEPT):
            task.driver.deploy.deploy(task)
        task.save()
    runs = cloud.node(node_id).driver_internal_info[RUNS_KEY]
    assert runs == ["deploy instance-1"] * RUNS_KEPT  # the oldest runs make way


def test_fake_ramdisk_needs_a_callback_token(cloud: Cloud, tasks: TaskManager):
    node_id = cloud.make_node()
    with (
        tasks.acquire(RequestContext.admin(), node_id, "test") as task,
        pytest.raises(DriverError, match="no callback token"),
    ):
        task.driver.deploy.deploy(task)


@pytest.mark.parametrize(
    ("driver_info", "reason"),
    [
        ({"fake_delay": -1}, "fake_delay must be a number >= 0"),
        ({"fake_delay": True}, "fake_delay must be a number >= 0"),
        ({"fake_fail_clean": ["x"]}, "fake_fail_clean must be a string"),
    ],
)
def test_fake_deploy_validate_names_the_bad_key(
    cloud: Cloud, tasks: TaskManager, driver_info: dict[str, object], reason: str
):
    node_id = cloud.make_node(driver_info=driver_info)
    with tasks.acquire(RequestContext.admin(), node_id, "test", shared=True) as task:
        assert isinstance(task.driver.deploy, FakeDeploy)
        with pytest.raises(BadRequest, match=reason):
            task.driver.deploy.validate(task)


def test_validate_does_not_reveal_values(cloud: Cloud, tasks: TaskManager):
    node_id = cloud.make_node(driver_info={"fake_power_error": {"password": "hunter2"}})
    with (
        tasks.acquire(RequestContext.admin(), node_id, "test", shared=True) as task,
        pytest.raises(BadRequest) as caught,
    ):
        task.driver.power.validate(task)
    assert "hunter2" not in caught.value.reason
