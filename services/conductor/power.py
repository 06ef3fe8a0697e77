"""Power work outside deploys: an operator's power requests, the check that ``manage``
makes before taking a node under management, and the periodic power-state sync.
"""

from __future__ import annotations

import logging
import time

from libs import redact
from libs.db import Node, PowerState
from libs.errors import BadRequest, InvalidStateTransition

from . import steps
from .states import Event, ProvisionState, next_state
from .task_manager import Task

LOG = logging.getLogger(__name__)

REBOOT = "reboot"
POWER_TARGETS = (PowerState.ON.value, PowerState.OFF.value, REBOOT)

#: How every last_error of the power-state sync begins: the sync clears only an error it
#: wrote itself, and overwrites none but its own (a deploy's failure reason must stay).
SYNC_ERROR_PREFIX = "power state sync: "

S = ProvisionState


def request_power(task: Task, target: str) -> None:
    """Check and start an operator's power action; it runs on a worker and reports a
    failure in last_error."""
    if target not in POWER_TARGETS:
        raise BadRequest(f"unknown power target {target!r} (allowed: {', '.join(POWER_TARGETS)})")
    node = task.node
    if node.provision_state in (S.DEPLOYWAIT, S.CLEANWAIT):
        raise InvalidStateTransition(
            f"cannot change the power of node {node.id} while its ramdisk works "
            f"(provision state {node.provision_state!r})"
        )
    task.driver.power.validate(task)
    node.target_power_state = PowerState.ON if target == REBOOT else PowerState(target)
    task.save()
    task.spawn_after(_apply_power, target)


def _apply_power(task: Task, target: str) -> None:
    node = task.node
    try:
        if target == REBOOT:
            steps.reboot(task)
        else:
            steps.set_power(task, PowerState(target))
        steps.set_last_error(task, None)
    except Exception as exc:
        error = steps.set_last_error(task, f"{target} failed: {steps.reason_of(exc)}")
        node.target_power_state = None
        task.report_error("power", error or target)
        LOG.error("node %s: %s", node.id, error)
    task.save()


def request_manage(task: Task) -> None:
    """Check an operator's ``manage`` and start it: the node becomes manageable once its
    power state can be read (credentials work); otherwise last_error says why not."""
    next_state(task.node.provision_state, Event.MANAGE)  # refuse at once if not allowed
    task.driver.power.validate(task)
    task.driver.management.validate(task)
    task.spawn_after(_manage)


def _manage(task: Task) -> None:
    node = task.node
    try:
        node.power_state = task.driver.power.get_power_state(task)
    except Exception as exc:
        reason = steps.reason_of(exc)
        error = steps.set_last_error(
            task, f"cannot manage the node: reading its power state failed: {reason}"
        )
        task.report_error("manage", error or "manage failed")
        LOG.error("node %s: %s", node.id, error)
        task.save()
        return
    steps.set_last_error(task, None)
    task.process_event(Event.MANAGE)


#: driver_internal_info key: since when (epoch seconds) the power state could not be read.
UNREACHABLE_SINCE_KEY = "power_unreachable_since"


def unreachable_since(node: Node) -> float | None:
    since = (node.driver_internal_info or {}).get(UNREACHABLE_SINCE_KEY)
    return float(since) if isinstance(since, int | float) else None


def sync_power_state(task: Task) -> None:
    """Record the power state the hardware reports. A failure to read it goes to
    last_error unless that holds another error (which says more, e.g. why a deploy failed);
    the sync's own error is cleared once a read works again."""
    node = task.node
    own_error = node.last_error is None or node.last_error.startswith(SYNC_ERROR_PREFIX)
    try:
        state = task.driver.power.get_power_state(task)
    except Exception as exc:
        error = redact.scrub(
            f"{SYNC_ERROR_PREFIX}reading the power state failed: {steps.reason_of(exc)}",
            node.driver_info,
        )
        if node.last_error != error:
            LOG.warning("node %s: %s", node.id, error)
        if own_error:
            if node.last_error != error:
                task.report_error("power_sync", error)
            steps.set_last_error(task, error)
        if unreachable_since(node) is None:
            node.driver_internal_info[UNREACHABLE_SINCE_KEY] = time.time()
        task.save()
        return
    node.driver_internal_info.pop(UNREACHABLE_SINCE_KEY, None)
    if state != node.power_state:
        LOG.info("node %s: power state %s -> %s (sync)", node.id, node.power_state, state.value)
        node.power_state = state
    if own_error:
        steps.set_last_error(task, None)
    task.save()
