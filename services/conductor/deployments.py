"""Deploying an instance on a claimed node, in two halves around the ramdisk's callback.

``available -deploy-> deploying``: validate, power off, network-boot the ramdisk, ports to
the provisioning network, power on, start the ramdisk's work -> ``wait call-back`` (lock
released). The callback resumes it: boot from disk, ports to the instance's networks,
reboot -> ``active`` and the instance ACTIVE. Any failure: ``deploy failed`` with the
reason in last_error, the claim released and the instance handed back to the scheduler.
"""

from __future__ import annotations

import logging

from sqlmodel import Session, col, update

from libs import redact
from libs.db import Database, InstanceStatus, Node, PowerState, utcnow
from libs.errors import BadRequest
from libs.notify import Notifier
from libs.rpc import RequestContext
from services.netctl.rpcapi import NetworkAPI
from services.scheduler.rpcapi import SchedulerAPI

from . import instances, steps
from .cleaning import Cleaning
from .drivers import BootDevice
from .states import Event, ProvisionState
from .task_manager import Task

LOG = logging.getLogger(__name__)

S = ProvisionState


class Deployments:
    def __init__(
        self,
        db: Database,
        network: NetworkAPI,
        scheduler: SchedulerAPI,
        cleaning: Cleaning,
        notifier: Notifier | None = None,
    ) -> None:
        self.db = db
        self.notifier = notifier or Notifier(service="conductor")
        self.network = network
        self.scheduler = scheduler
        self.cleaning = cleaning

    def start(self, task: Task, instance_id: str) -> None:
        """Begin deploying ``instance_id`` on the task's node (the scheduler claimed it).

        A repeated request for a deploy already under way or done is ignored: casts can
        arrive twice.
        """
        node = task.node
        if node.instance_id != instance_id:
            LOG.warning(
                "node %s is claimed for %s, not instance %s: not deploying",
                node.id,
                node.instance_id,
                instance_id,
            )
            return
        if node.provision_state in (S.DEPLOYING, S.DEPLOYWAIT, S.ACTIVE):
            LOG.info(
                "node %s is already %s for instance %s", node.id, node.provision_state, instance_id
            )
            return
        status, network_ids = instances.status_and_networks(self.db, instance_id)
        if status == InstanceStatus.DELETING:
            LOG.info("instance %s is being deleted: not deploying it", instance_id)
            return  # its tear-down releases the claim
        if status != InstanceStatus.BUILD:
            LOG.info("instance %s is %s: releasing node %s", instance_id, status, node.id)
            node.instance_id = None
            task.save()
            return
        if node.provision_state != S.AVAILABLE or node.maintenance:
            why = "in maintenance" if node.maintenance else f"in state {node.provision_state}"
            node.instance_id = None
            task.save()
            self._hand_back(
                task.context, node.id, instance_id, f"node {node.id} cannot deploy: it is {why}"
            )
            return
        task.process_event(Event.DEPLOY)
        task.spawn_after(self._deploy, network_ids)

    def rebuild(self, task: Task, instance_id: str) -> None:
        """Write the instance's image (it may be a new one) again on the node it is active
        on: ``active -rebuild-> deploying``, then the deploy's own steps. A repeated request
        (casts can arrive twice) or one for an instance no longer REBUILD is ignored."""
        node = task.node
        status, network_ids = instances.status_and_networks(self.db, instance_id)
        if node.instance_id != instance_id or status != InstanceStatus.REBUILD:
            LOG.info(
                "not rebuilding node %s: it holds %s, instance %s is %s",
                node.id,
                node.instance_id,
                instance_id,
                status,
            )
            return
        if node.provision_state != S.ACTIVE:
            if node.provision_state in (S.DEPLOYING, S.DEPLOYWAIT):
                return  # under way already
            reason = f"node {node.id} cannot rebuild: it is {node.provision_state}"
            instances.mark_error(
                self.db, instance_id, "rebuild_failed", reason, self.notifier, action="rebuild"
            )
            return
        task.process_event(Event.REBUILD)
        task.spawn_after(self._deploy, network_ids)

    def resume(self, task: Task, success: bool, message: str | None) -> None:
        """The ramdisk reported on its deploy: finish it (on a worker) or fail it."""
        steps.resume_after_ramdisk(
            task, success, message, work="deploy", finish=self._finish, fail=self.fail
        )

    def fail(self, task: Task, reason: str) -> None:
        """Deploy failed: node ``deploy failed`` with ``reason``, quiesced, its claim
        released, and the instance back to the scheduler (unless deleted meanwhile)."""
        node = task.node
        # The reason also goes to the log, the scheduler and the instance's fault.
        reason = redact.scrub(reason, node.driver_info)
        LOG.error("deploy on node %s failed: %s", node.id, reason)
        instance_id = steps.fail_node(task, self.network, reason)
        if instance_id is not None:
            self._hand_back(task.context, node.id, instance_id, reason)

    def give_up_locked(
        self, ctxt: RequestContext, node_id: str, instance_id: str, reason: str
    ) -> None:
        """The node stayed locked, so the deploy cannot start: release the claim (if the
        node is still an untouched ``available`` one) and let the scheduler try again."""
        with self.db.session() as session:
            released = session.exec(
                update(Node)
                .where(
                    col(Node.id) == node_id,
                    col(Node.instance_id) == instance_id,
                    col(Node.provision_state) == S.AVAILABLE,
                )
                .values(instance_id=None, updated_at=utcnow())
            ).rowcount
        if released:
            self._hand_back(ctxt, node_id, instance_id, reason)
        else:
            LOG.info("node %s is busy with instance %s already: %s", node_id, instance_id, reason)

    def _hand_back(self, ctxt: RequestContext, node_id: str, instance_id: str, reason: str) -> None:
        outcome = instances.detach_failed_node(
            self.db, instance_id, node_id, self.notifier, reason=reason
        )
        if outcome is not instances.FailedDeploy.RESCHEDULE:
            return
        try:
            self.scheduler.reschedule_instance(ctxt, instance_id, node_id, reason)
        except Exception:
            LOG.exception("could not ask the scheduler to reschedule instance %s", instance_id)

    def _deploy(self, task: Task, network_ids: list[str]) -> None:
        """The deploy's steps up to the ramdisk's boot; ``network_ids``: the networks of
        the instance (read with its status as the deploy began)."""
        step = "validation"
        try:
            self._validate(task, network_ids)
            step = "power off"
            steps.set_power(task, PowerState.OFF)
            step = "preparing the deploy"
            task.driver.deploy.prepare(task)
            step = "ramdisk boot set-up"
            steps.boot_ramdisk_next(task)
            step = "moving ports to the provisioning network"
            steps.ports_to_provisioning(task, self.network)
            step = "power on"
            steps.power_on_ramdisk(task)
            step = "starting the deploy"
            task.driver.deploy.deploy(task)
            step = "waiting for the ramdisk"
            task.process_event(Event.WAIT)
        except Exception as exc:
            self.fail(task, f"{step} failed: {steps.reason_of(exc)}")

    def _validate(self, task: Task, network_ids: list[str]) -> None:
        steps.validate_interfaces(task)
        wanted = len(network_ids)
        if wanted > len(task.ports):
            raise BadRequest(
                f"the instance asks for {wanted} network(s) but node {task.node.id} "
                f"has {len(task.ports)} port(s)"
            )

    def _finish(self, task: Task) -> None:
        node = task.node
        instance_id = node.instance_id
        activated = False

        def activate(session: Session) -> None:
            # In the node's own save: both active, or neither.
            nonlocal activated
            if instance_id is not None:
                activated = instances.activate(session, instance_id, self.notifier)

        step = "setting boot from disk"
        try:
            task.driver.management.set_boot_device(task, BootDevice.DISK)
            step = "ramdisk clean-up"
            task.driver.boot.clean_up_ramdisk(task)
            step = "moving ports to the instance's networks"
            network_ids = instances.network_ids_of(self.db, node.instance_id or "")
            steps.ports_to_tenant(task, self.network, network_ids)
            step = "reboot"
            steps.reboot(task)
            step = "finishing"
            steps.set_last_error(task, None)
            task.process_event(Event.DONE, also=activate)
        except Exception as exc:
            self.fail(task, f"{step} failed: {steps.reason_of(exc)}")
            return
        if instance_id is None or activated:
            return
        if instances.status_of(self.db, instance_id) == InstanceStatus.DELETING:
            # Deleted while it was being deployed: its tear-down found the node locked or
            # waiting, so it is done here, with the lock this task already holds.
            LOG.info("instance %s was deleted during its deploy: tearing down", instance_id)
            self.cleaning.delete_now(task)
