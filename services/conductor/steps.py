"""The hardware and network steps that deploy and cleaning are made of, how both resume
on the ramdisk's callback and fail, and how a failed step is described in
``Node.last_error`` (the one writer of that column: :func:`set_last_error`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from libs import redact
from libs.db import PowerState
from libs.errors import TetsuError
from libs.rpc import RPCError
from services.netctl.rpcapi import NetworkAPI

from . import callback_tokens
from .drivers import BootDevice
from .states import Event
from .task_manager import Task

LOG = logging.getLogger(__name__)

LAST_ERROR_LENGTH = 4000  # Node.last_error's column


def reason_of(exc: BaseException) -> str:
    """The human reason of a failure (our errors carry one, RPC errors mask URLs). It may
    quote what a BMC or a library said, credentials included: scrub it (:func:`libs.redact.scrub`)
    before it leaves the conductor."""
    if isinstance(exc, TetsuError):
        return exc.reason
    if isinstance(exc, RPCError):
        return f"{type(exc).__name__}: {exc}"
    return f"unexpected {type(exc).__name__}: {exc}"


def set_last_error(task: Task, error: str | None) -> str | None:
    """Set the node's last_error (not saved yet) to ``error`` with the node's credentials
    masked: a driver's error text may quote them, and last_error is shown to operators.
    Returns what was set, for the log."""
    node = task.node
    if error is not None:
        error = redact.scrub(error, node.driver_info)
        if len(error) > LAST_ERROR_LENGTH:  # the column's size: a longer one fails the save
            error = error[: LAST_ERROR_LENGTH - 1] + "…"
    node.last_error = error
    return error


def validate_interfaces(task: Task) -> None:
    """Every interface's ``validate()`` (no I/O): BadRequest with the first reason."""
    driver = task.driver
    for interface in (driver.power, driver.management, driver.boot, driver.deploy):
        interface.validate(task)


def set_power(task: Task, state: PowerState) -> None:
    """Power the node on or off and record it."""
    task.driver.power.set_power_state(task, state)
    task.node.power_state = state
    task.node.target_power_state = None


def reboot(task: Task) -> None:
    task.driver.power.reboot(task)
    task.node.power_state = PowerState.ON
    task.node.target_power_state = None


def boot_ramdisk_next(task: Task) -> None:
    """Make the node network-boot the ramdisk with a fresh callback token (saved first, so
    the ramdisk's callback can be checked however early it comes)."""
    task.callback_token = callback_tokens.issue(task.node)
    task.save()
    if task.driver.deploy.needs_ramdisk:
        task.driver.management.set_boot_device(task, BootDevice.PXE)
        task.driver.boot.prepare_ramdisk(task)


def power_on_ramdisk(task: Task) -> None:
    """Power on into the ramdisk; a deploy interface that needs none (a VM's disk written
    by the conductor) works with the node off, and its report comes without a boot."""
    if task.driver.deploy.needs_ramdisk:
        set_power(task, PowerState.ON)


def resume_after_ramdisk(
    task: Task,
    success: bool,
    message: str | None,
    *,
    work: str,
    finish: Callable[[Task], None],
    fail: Callable[[Task, str], None],
) -> None:
    """The ramdisk reported on its ``work`` (deploy, cleaning): its callback token is spent,
    then ``finish`` runs on a worker, or ``fail`` with the ramdisk's reason."""
    callback_tokens.revoke(task.node)
    task.process_event(Event.RESUME)
    if success:
        task.spawn_after(finish)
    else:
        task.spawn_after(fail, f"the {work} ramdisk failed: {message or 'no reason given'}")


def fail_node(task: Task, network: NetworkAPI, reason: str) -> str | None:
    """Fail the task's node with ``reason`` as its last_error: its callback token spent,
    its instance let go of, the node quiesced and saved. The instance it held, if any."""
    node = task.node
    instance_id = node.instance_id
    callback_tokens.revoke(node)
    set_last_error(task, reason)
    node.instance_id = None
    task.process_event(Event.FAIL)
    quiesce(task, network)
    task.save()
    return instance_id


def ports_to_provisioning(task: Task, network: NetworkAPI) -> None:
    for port in task.ports:
        network.provision_port(task.context, port.id)


def ports_to_tenant(task: Task, network: NetworkAPI, network_ids: list[str]) -> None:
    """Port i joins ``network_ids[i]``; ports beyond the list are isolated."""
    for index, port in enumerate(task.ports):
        if index < len(network_ids):
            network.bind_port(task.context, port.id, network_ids[index])
        else:
            network.unbind_port(task.context, port.id)


def unbind_ports(task: Task, network: NetworkAPI) -> None:
    for port in task.ports:
        network.unbind_port(task.context, port.id)


def quiesce(task: Task, network: NetworkAPI) -> None:
    """After a failure, leave the node harmless as far as possible: powered off, without
    ramdisk boot files, cut off from every network. Each step's failure is only logged:
    last_error already holds the reason that matters."""
    node = task.node
    try:
        set_power(task, PowerState.OFF)
    except Exception as exc:
        LOG.warning(
            "node %s: power off after a failure failed: %s",
            node.id,
            redact.scrub(reason_of(exc), node.driver_info),
        )
    try:
        task.driver.boot.clean_up_ramdisk(task)
    except Exception as exc:
        LOG.warning(
            "node %s: ramdisk clean-up after a failure failed: %s",
            node.id,
            redact.scrub(reason_of(exc), node.driver_info),
        )
    for port in task.ports:
        try:
            network.unbind_port(task.context, port.id)
        except Exception as exc:
            LOG.warning(
                "node %s: unbinding port %s failed: %s",
                node.id,
                port.id,
                redact.scrub(reason_of(exc), node.driver_info),
            )
