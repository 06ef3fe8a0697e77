"""Fake hardware: interfaces that keep their state in the node's driver_internal_info.

Tests and demos steer them per node through ``driver_info``:

- ``fake_delay``: seconds each simulated ramdisk run takes (default 0.2);
- ``fake_fail_deploy`` / ``fake_fail_clean``: the ramdisk reports this error instead of
  success;
- ``fake_power_error``: every power action fails with this reason.

Each ramdisk run is also recorded, oldest first, in ``driver_internal_info["fake_ramdisk_runs"]``
(``"clean"`` or ``"deploy <instance id>"``, the last :data:`RUNS_KEPT`), so tests can
prove that no node was deployed twice without a cleaning in between.

The fake ramdisk reports through :attr:`DriverEnv.ramdisk_report`, the same conductor
path the real ramdisk reaches through the API, so deploys really wait for a callback.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from libs.db import PowerState
from libs.errors import BadRequest

from .base import (
    BootDevice,
    BootInterface,
    DeployInterface,
    DriverError,
    ManagementInterface,
    PowerInterface,
    check_driver_info,
)

if TYPE_CHECKING:
    from services.conductor.task_manager import Task

LOG = logging.getLogger(__name__)

DEFAULT_DELAY = 0.2

# Keys in driver_internal_info.
POWER_KEY = "fake_power_state"
BOOT_DEVICE_KEY = "fake_boot_device"
RAMDISK_KEY = "fake_ramdisk_prepared"
RUNS_KEY = "fake_ramdisk_runs"

RUNS_KEPT = 20


class FakePower(PowerInterface):
    def validate(self, task: Task) -> None:
        check_driver_info(task, strings=["fake_power_error"], interface="fake power")

    def get_power_state(self, task: Task) -> PowerState:
        self._fail_if_asked(task)
        return PowerState(task.node.driver_internal_info.get(POWER_KEY, PowerState.OFF))

    def set_power_state(self, task: Task, state: PowerState) -> None:
        if state not in (PowerState.ON, PowerState.OFF):
            raise BadRequest(f"cannot set power state {state!r} (power on, power off)")
        self._fail_if_asked(task)
        task.node.driver_internal_info[POWER_KEY] = state.value

    def reboot(self, task: Task) -> None:
        self._fail_if_asked(task)
        task.node.driver_internal_info[POWER_KEY] = PowerState.ON.value

    @staticmethod
    def _fail_if_asked(task: Task) -> None:
        error = task.node.driver_info.get("fake_power_error")
        if error:
            raise DriverError(str(error))


class FakeManagement(ManagementInterface):
    def validate(self, task: Task) -> None:
        """Nothing to check: the fake BMC needs no credentials."""

    def set_boot_device(self, task: Task, device: BootDevice) -> None:
        task.node.driver_internal_info[BOOT_DEVICE_KEY] = BootDevice(device).value

    def get_boot_device(self, task: Task) -> BootDevice:
        return BootDevice(task.node.driver_internal_info.get(BOOT_DEVICE_KEY, BootDevice.DISK))


class FakeBoot(BootInterface):
    def validate(self, task: Task) -> None:
        """Nothing to check: there are no boot files to write."""

    def prepare_ramdisk(self, task: Task) -> None:
        task.node.driver_internal_info[RAMDISK_KEY] = True

    def clean_up_ramdisk(self, task: Task) -> None:
        task.node.driver_internal_info.pop(RAMDISK_KEY, None)


class FakeDeploy(DeployInterface):
    def validate(self, task: Task) -> None:
        check_driver_info(
            task,
            strings=["fake_fail_deploy", "fake_fail_clean"],
            numbers=["fake_delay"],
            interface="fake deploy",
        )

    def deploy(self, task: Task) -> None:
        self._run_ramdisk(task, "deploy", task.node.driver_info.get("fake_fail_deploy"))
        _record_run(task, f"deploy {task.node.instance_id}")

    def clean(self, task: Task) -> None:
        self._run_ramdisk(task, "clean", task.node.driver_info.get("fake_fail_clean"))
        _record_run(task, "clean")

    def _run_ramdisk(self, task: Task, work: str, error: object) -> None:
        token = task.callback_token
        if token is None:
            raise DriverError(f"no callback token for the ramdisk's {work}")
        delay = float(task.node.driver_info.get("fake_delay", DEFAULT_DELAY))
        success = not error
        message = None if success else str(error)
        node_id = task.node.id

        def report() -> None:
            LOG.debug("fake ramdisk on node %s: %s done, success=%s", node_id, work, success)
            self.env.ramdisk_report(node_id, token, success, message)

        # A timer thread, like a machine booting on its own: it outlives the task's lock.
        timer = threading.Timer(delay, report)
        timer.name = f"fake-ramdisk-{node_id[:8]}"
        timer.daemon = True
        timer.start()


def _record_run(task: Task, run: str) -> None:
    # Saved with the task's next save, like every fake state: the step that follows a
    # ramdisk start (wait call-back, or the failure) always saves.
    runs = [*task.node.driver_internal_info.get(RUNS_KEY, []), run]
    task.node.driver_internal_info[RUNS_KEY] = runs[-RUNS_KEPT:]
