"""Tearing an instance down and cleaning a node's disks, around the ramdisk's callback.

Tear-down (``active -delete-> deleting``): power off, ports to the provisioning network,
then ``cleaning``. Cleaning (also what ``provide`` does from ``manageable``): network-boot
the ramdisk, power on, start the wipe -> ``clean wait`` (lock released); its callback
resumes: power off, ports isolated -> ``available``, and a torn-down instance DELETED.
A failure while deleting ends in ``error``, one while cleaning in ``clean failed``.
"""

from __future__ import annotations

import logging

from sqlmodel import Session

from libs import redact
from libs.db import Database, InstanceStatus, PowerState
from libs.notify import Notifier
from services.netctl.rpcapi import NetworkAPI

from . import callback_tokens, instances, steps
from .states import Event, ProvisionState, next_state
from .task_manager import Task

LOG = logging.getLogger(__name__)

S = ProvisionState


class Cleaning:
    def __init__(self, db: Database, network: NetworkAPI, notifier: Notifier | None = None) -> None:
        self.db = db
        self.notifier = notifier or Notifier(service="conductor")
        self.network = network

    def tear_down_instance(self, task: Task) -> None:
        """The API deletes the node's instance: tear the node down from wherever it is.

        Repeats of a tear-down under way are ignored; a deploy waiting for its ramdisk is
        abandoned; a node never deployed only lets go of its claim. The message names no
        instance: only one the API marked DELETING is torn down, never a later instance
        the node was given meanwhile (a late or repeated message).
        """
        node = task.node
        if node.provision_state in (S.DELETING, S.CLEANING, S.CLEANWAIT):
            LOG.info("node %s is already being torn down (%s)", node.id, node.provision_state)
            return
        if (
            node.instance_id is None
            or instances.status_of(self.db, node.instance_id) != InstanceStatus.DELETING
        ):
            # The message is about an earlier instance (its claim released before the
            # message came, or its tear-down long over): at most that instance is left.
            instance_id = instances.deleting_on(self.db, node.id)
            if instance_id is not None:
                instances.mark_deleted(self.db, instance_id, self.notifier)
            return
        if node.provision_state == S.DEPLOYWAIT:
            callback_tokens.revoke(node)
            steps.set_last_error(task, "deploy aborted: the instance was deleted")
            task.process_event(Event.FAIL)
        if node.provision_state in (S.ACTIVE, S.DEPLOYFAIL, S.ERROR):
            task.process_event(Event.DELETE)
            task.spawn_after(self._tear_down)
            return
        if node.provision_state not in (S.AVAILABLE, S.MANAGEABLE, S.ENROLL, S.CLEANFAIL):
            LOG.warning("node %s cannot be torn down in state %s", node.id, node.provision_state)
            return
        # Claimed but never deployed: nothing of the instance is on the disk.
        instance_id = node.instance_id
        node.instance_id = None
        task.save()
        instances.mark_deleted(self.db, instance_id, self.notifier)
        if node.hypervisor_id is not None:
            task.retire()

    def delete(self, task: Task) -> None:
        """The operator's ``delete``: tear down and clean a failed (or active) node."""
        next_state(task.node.provision_state, Event.DELETE)  # a 409 before a 400
        steps.validate_interfaces(task)
        task.process_event(Event.DELETE)
        task.spawn_after(self._tear_down)

    def delete_now(self, task: Task) -> None:
        """As :meth:`delete`, on the worker that already holds the task."""
        task.process_event(Event.DELETE)
        self._tear_down(task)

    def provide(self, task: Task) -> None:
        """The operator's ``provide``: clean a manageable node, then offer it (available)."""
        next_state(task.node.provision_state, Event.PROVIDE)
        steps.validate_interfaces(task)
        task.process_event(Event.PROVIDE)
        task.spawn_after(self._start_cleaning, False)

    def resume(self, task: Task, success: bool, message: str | None) -> None:
        """The ramdisk reported on its cleaning: finish it (on a worker) or fail it."""
        steps.resume_after_ramdisk(
            task, success, message, work="cleaning", finish=self._finish, fail=self.fail
        )

    def fail(self, task: Task, reason: str) -> None:
        """Deleting failed -> ``error``; cleaning failed -> ``clean failed``. The node is
        quiesced and let go of its instance: an instance whose tear-down stopped while
        deleting shows ERROR, one whose disk could not be wiped is DELETED all the same
        (the user asked for it gone; the node now waits for an operator)."""
        node = task.node
        # The reason also goes to the log and the instance's fault.
        reason = redact.scrub(reason, node.driver_info)
        LOG.error("%s of node %s failed: %s", node.provision_state, node.id, reason)
        was_deleting = node.provision_state == S.DELETING
        instance_id = steps.fail_node(task, self.network, reason)
        if instance_id is None:
            return
        if was_deleting:
            instances.mark_error(self.db, instance_id, "delete_failed", reason, self.notifier)
        else:
            instances.mark_deleted(self.db, instance_id, self.notifier)

    def _tear_down(self, task: Task) -> None:
        step = "power off"
        try:
            steps.set_power(task, PowerState.OFF)
            step = "moving ports to the provisioning network"
            steps.ports_to_provisioning(task, self.network)
            step = "starting cleaning"
            task.process_event(Event.CLEAN)
        except Exception as exc:
            self.fail(task, f"{step} failed: {steps.reason_of(exc)}")
            return
        self._start_cleaning(task, True)

    def _start_cleaning(self, task: Task, torn_down: bool) -> None:
        """Boot the ramdisk to wipe the disks. ``torn_down``: the tear-down has already
        powered the node off and moved its ports to the provisioning network."""
        step = "validation"
        try:
            steps.validate_interfaces(task)
            if not torn_down:
                step = "power off"
                steps.set_power(task, PowerState.OFF)
            step = "ramdisk boot set-up"
            steps.boot_ramdisk_next(task)
            if not torn_down:
                step = "moving ports to the provisioning network"
                steps.ports_to_provisioning(task, self.network)
            step = "power on"
            steps.power_on_ramdisk(task)
            step = "starting the disk wipe"
            task.driver.deploy.clean(task)
            step = "waiting for the ramdisk"
            task.process_event(Event.WAIT)
        except Exception as exc:
            self.fail(task, f"{step} failed: {steps.reason_of(exc)}")

    def _finish(self, task: Task) -> None:
        node = task.node
        step = "ramdisk clean-up"
        try:
            task.driver.boot.clean_up_ramdisk(task)
            step = "power off"
            steps.set_power(task, PowerState.OFF)
            step = "isolating ports"
            steps.unbind_ports(task, self.network)
        except Exception as exc:
            self.fail(task, f"{step} failed: {steps.reason_of(exc)}")
            return
        instance_id = node.instance_id

        def deleted(session: Session) -> None:
            # In the node's own save: the instance is gone once its node is clean.
            if instance_id is not None:
                instances.delete_in(session, instance_id, self.notifier)

        node.instance_id = None
        steps.set_last_error(task, None)
        task.process_event(Event.DONE, also=deleted)
        if node.hypervisor_id is not None:
            task.retire()  # made for one instance: its room goes back to the hypervisor
