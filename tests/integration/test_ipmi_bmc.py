"""The ipmi power and management interfaces against a real IPMI peer: pyghmi's BMC server
(the code virtualbmc runs) in its own process, in front of an imaginary machine that
prints every change it sees. ipmitool, when installed, cross-checks the result."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest

from libs.db import Node, PowerState
from services.conductor.drivers import BootDevice, DriverEnv, DriverError, ipmi
from services.conductor.drivers.ipmi import IPMIManagement, IPMIPower
from services.conductor.settings import ConductorSettings
from services.conductor.task_manager import Task

USERNAME = "admin"
PASSWORD = "s3cret-Passw0rd"
POWER_DELAY = 0.3  # seconds the test machine takes to change its power state


class BMCProcess:
    """``python -m tests.integration.ipmi_bmc``: its port and the changes it reports."""

    def __init__(self, password: str = PASSWORD) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.ipmi_bmc", USERNAME, password],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        ready = self.process.stdout.readline().split()
        assert ready[:1] == ["ready"], f"the BMC did not start: {ready}"
        self.port = int(ready[1])
        self.events: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.events.append(line.strip())

    def wait_for_events(self, count: int, timeout: float = 3.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.events) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.events)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture
def bmc() -> Iterator[BMCProcess]:
    process = BMCProcess()
    yield process
    process.stop()


@pytest.fixture
def settings() -> ConductorSettings:
    return ConductorSettings(hostname="c1", ipmi_timeout=5.0, ipmi_retries=3)


@pytest.fixture
def power(settings: ConductorSettings) -> IPMIPower:
    return IPMIPower(DriverEnv(settings, lambda *args: None))


@pytest.fixture
def management(settings: ConductorSettings) -> IPMIManagement:
    return IPMIManagement(DriverEnv(settings, lambda *args: None))


class StandInTask:
    """What the ipmi interfaces use of a task: its node."""

    def __init__(self, node: Node) -> None:
        self.node = node


def node_task(port: int, **driver_info: Any) -> Task:
    info = {
        "ipmi_address": "127.0.0.1",
        "ipmi_port": port,
        "ipmi_username": USERNAME,
        "ipmi_password": PASSWORD,
        **driver_info,
    }
    node = Node(name=f"node-{port}", resource_class="baremetal", driver_info=info)
    return cast(Task, StandInTask(node))


def closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ipmitool_power_status(port: int) -> str:
    login = ["-I", "lanplus", "-H", "127.0.0.1", "-p", str(port), "-U", USERNAME, "-E"]
    result = subprocess.run(
        ["ipmitool", *login, "power", "status"],
        env={**os.environ, "IPMI_PASSWORD": PASSWORD},
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    return result.stdout.strip()


def test_power_on_and_off_return_once_the_bmc_reports_the_new_state(
    bmc: BMCProcess, power: IPMIPower
):
    task = node_task(bmc.port)
    assert power.get_power_state(task) == PowerState.OFF

    power.set_power_state(task, PowerState.ON)
    # The machine takes POWER_DELAY to change: a driver that did not wait would see off.
    assert power.get_power_state(task) == PowerState.ON
    if shutil.which("ipmitool"):
        assert ipmitool_power_status(bmc.port) == "Chassis Power is on"

    power.set_power_state(task, PowerState.OFF)
    assert power.get_power_state(task) == PowerState.OFF
    assert bmc.wait_for_events(2) == ["power on", "power off"]


def test_setting_the_state_the_machine_is_in_changes_nothing(bmc: BMCProcess, power: IPMIPower):
    task = node_task(bmc.port)
    power.set_power_state(task, PowerState.OFF)
    power.set_power_state(task, PowerState.ON)
    power.set_power_state(task, PowerState.ON)
    time.sleep(POWER_DELAY + 0.1)
    assert bmc.events == ["power on"]


def test_reboot_of_a_machine_that_is_off_powers_it_on(bmc: BMCProcess, power: IPMIPower):
    task = node_task(bmc.port)
    power.reboot(task)
    assert power.get_power_state(task) == PowerState.ON
    assert bmc.wait_for_events(1) == ["power on"]


def test_reboot_of_a_machine_that_is_on_is_a_hard_cycle_ending_on(
    bmc: BMCProcess, power: IPMIPower
):
    task = node_task(bmc.port)
    power.set_power_state(task, PowerState.ON)
    power.reboot(task)
    assert power.get_power_state(task) == PowerState.ON
    assert bmc.wait_for_events(3) == ["power on", "power off", "power on"]


def test_boot_device_round_trip_is_persistent(bmc: BMCProcess, management: IPMIManagement):
    task = node_task(bmc.port)
    management.set_boot_device(task, BootDevice.PXE)
    assert management.get_boot_device(task) == BootDevice.PXE
    management.set_boot_device(task, BootDevice.DISK)
    assert management.get_boot_device(task) == BootDevice.DISK
    assert bmc.wait_for_events(2) == ["bootdev network persistent", "bootdev hd persistent"]


def test_a_boot_device_left_to_the_firmware_is_reported_as_such(
    bmc: BMCProcess, management: IPMIManagement
):
    with pytest.raises(DriverError) as caught:
        management.get_boot_device(node_task(bmc.port))
    assert caught.value.reason == (
        f"IPMI: BMC 127.0.0.1:{bmc.port} reports boot device no override, neither pxe nor disk"
    )


def test_a_wrong_password_fails_at_once_without_showing_it(
    bmc: BMCProcess, power: IPMIPower, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    wrong = "Wrong-Passw0rd-123"
    started = time.monotonic()
    with pytest.raises(DriverError) as caught:
        power.set_power_state(node_task(bmc.port, ipmi_password=wrong), PowerState.ON)
    elapsed = time.monotonic() - started

    assert caught.value.reason == f"IPMI: BMC 127.0.0.1:{bmc.port} refused the credentials"
    assert elapsed < 1.0  # no retries, no backoff (3 attempts and 5 s timeouts are allowed)
    assert "attempt" not in caplog.text
    for secret in (wrong, PASSWORD):
        assert secret not in str(caught.value)
        assert secret not in caplog.text
    time.sleep(POWER_DELAY + 0.1)
    assert bmc.events == []  # and nothing was done


def test_an_all_digit_password_from_the_cli_logs_in(power: IPMIPower):
    """`--driver-info ipmi_password=12345678` arrives as a JSON number."""
    bmc = BMCProcess(password="12345678")
    try:
        task = node_task(bmc.port, ipmi_password=12345678)
        assert power.get_power_state(task) == PowerState.OFF
    finally:
        bmc.stop()


def test_an_unreachable_bmc_fails_after_its_attempts_in_bounded_time(
    power: IPMIPower, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    port = closed_udp_port()
    # driver_info overrides the settings' 5 s and 3 attempts.
    task = node_task(port, ipmi_timeout=0.4, ipmi_retries=2)
    started = time.monotonic()
    with pytest.raises(DriverError) as caught:
        power.get_power_state(task)
    elapsed = time.monotonic() - started

    assert (
        caught.value.reason
        == f"IPMI: BMC 127.0.0.1:{port} did not answer within 0.4 s (2 attempts)"
    )
    # Two attempts of 0.4 s (plus the grace for a last read) and a backoff of 0.5 s.
    assert 1.3 <= elapsed < 2.5
    assert "attempt 1 of 2: did not answer within 0.4 s; again in 0.5 s" in caplog.text
    assert PASSWORD not in caplog.text


def test_a_bmc_that_went_silent_is_usable_again_once_it_answers(bmc: BMCProcess, power: IPMIPower):
    task = node_task(bmc.port)
    assert power.get_power_state(task) == PowerState.OFF
    bmc.process.send_signal(signal.SIGUSR1)
    time.sleep(0.1)
    impatient = node_task(bmc.port, ipmi_timeout=0.5, ipmi_retries=1)
    with pytest.raises(DriverError, match=r"did not answer within 0\.5 s \(1 attempt\)"):
        power.set_power_state(impatient, PowerState.ON)
    bmc.process.send_signal(signal.SIGUSR2)
    time.sleep(0.1)
    # The given-up session is not reused and does not disturb the next one.
    power.set_power_state(task, PowerState.ON)
    assert power.get_power_state(task) == PowerState.ON


def test_an_attempt_given_up_before_its_login_does_not_hold_up_the_next(
    bmc: BMCProcess, power: IPMIPower, settings: ConductorSettings
):
    """An attempt the caller gave up on before its session sent anything (a helper thread
    that started late) must leave nothing behind in pyghmi's tables: the next operation
    on that BMC waited a whole ipmi_timeout for the login that never came."""
    task = node_task(bmc.port)
    target = ipmi._target(task, settings, "ipmi power")
    late = ipmi._Attempt(target, ipmi._read_power)
    late.abandon()  # the caller's deadline passed before the helper thread ran
    late.run()
    assert isinstance(late.error, ipmi._Failure)

    started = time.monotonic()
    assert power.get_power_state(task) == PowerState.OFF
    assert time.monotonic() - started < 1.0  # not the 5 s ipmi_timeout, then a retry


def test_sessions_one_after_another_to_the_same_bmc_each_work(bmc: BMCProcess, power: IPMIPower):
    """pyghmi hung on the second session to a BMC when given str credentials."""
    task = node_task(bmc.port, ipmi_retries=1)
    started = time.monotonic()
    states = [power.get_power_state(task) for _ in range(5)]
    assert states == [PowerState.OFF] * 5
    assert time.monotonic() - started < 4.0


def test_a_bmc_answering_cipher_suite_3_to_a_suite_17_offer_is_understood(
    bmc: BMCProcess, power: IPMIPower
):
    """pyghmi's BMC server (and virtualbmc) picks suite 3 whatever the client offers;
    pyghmi's client took it for suite 17 and failed every login on a hash length."""
    task = node_task(bmc.port, ipmi_retries=1)
    assert power.get_power_state(task) == PowerState.OFF


def test_answers_are_taken_as_they_come_not_at_pyghmis_resend_timer(
    bmc: BMCProcess, power: IPMIPower
):
    """pyghmi slept 0.5-1 s on an answer that came in before it began to wait (1 command
    in 20 against a BMC on the same host)."""
    task = node_task(bmc.port, ipmi_retries=1)
    durations = []
    for _ in range(200):
        started = time.monotonic()
        power.get_power_state(task)
        durations.append(time.monotonic() - started)
    # pyghmi's first resend comes 0.5 s or more after the command: with the bug about 10 of
    # 200 wait for it; a loaded machine may stall one or two on its own.
    slow = [round(d, 2) for d in durations if d >= 0.45]
    assert len(slow) <= 2, slow


def test_concurrent_operations_on_one_bmc_and_on_several(
    bmc: BMCProcess, power: IPMIPower, management: IPMIManagement
):
    other = BMCProcess()
    try:
        task, other_task = node_task(bmc.port), node_task(other.port)

        def work(index: int) -> Any:
            target = task if index % 2 else other_task
            if index in (0, 1):
                return power.set_power_state(target, PowerState.ON)
            if index in (2, 3):
                return management.set_boot_device(target, BootDevice.PXE)
            return power.get_power_state(target)

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=10) as pool:
            results = list(pool.map(work, range(10)))
        elapsed = time.monotonic() - started

        assert all(result in (None, PowerState.ON, PowerState.OFF) for result in results)
        assert elapsed < 5.0
        for each in (task, other_task):
            assert power.get_power_state(each) == PowerState.ON
            assert management.get_boot_device(each) == BootDevice.PXE
        assert sorted(bmc.wait_for_events(2)) == ["bootdev network persistent", "power on"]
        assert sorted(other.wait_for_events(2)) == ["bootdev network persistent", "power on"]
    finally:
        other.stop()
