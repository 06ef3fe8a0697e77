"""Evacuation: an instance whose node has died (BMC unreachable, or put in maintenance by
an operator) is provisioned again on another node, keeping its id, name, image and
networks. The old node is fenced first, so two copies never run at once: powered off
when its BMC answers, and in every case cut off from every network on the switch; it is
left in maintenance in provision state ``error`` until an operator takes it back
(``manage``, then ``provide`` cleans it).
"""

from __future__ import annotations

import logging

from sqlmodel import col, select

from libs import redact
from libs.db import Database, Instance, InstanceStatus, PowerState, TaskState, utcnow
from libs.notify import Notifier, Phase
from services.netctl.rpcapi import NetworkAPI
from services.scheduler.rpcapi import SchedulerAPI

from . import steps
from .states import Event
from .task_manager import Task

LOG = logging.getLogger(__name__)

#: Where an instance may be evacuated from: it runs there, or failed there.
EVACUABLE = (InstanceStatus.ACTIVE, InstanceStatus.ERROR)


class Evacuations:
    def __init__(
        self, db: Database, network: NetworkAPI, scheduler: SchedulerAPI, notifier: Notifier
    ) -> None:
        self.db = db
        self.network = network
        self.scheduler = scheduler
        self.notifier = notifier

    def evacuate(self, task: Task, instance_id: str, why: str) -> bool:
        """Fence the task's node and hand ``instance_id`` to the scheduler for another node.
        Returns whether it did (False: the instance is not on this node any more, or the
        node could be neither powered off nor cut off, so it is left as it is)."""
        node = task.node
        if node.instance_id != instance_id:
            LOG.info("not evacuating %s: node %s holds %s", instance_id, node.id, node.instance_id)
            self._settle(instance_id)
            return False
        fenced = self._fence(task)
        if fenced is None:
            reason = (
                f"evacuation of instance {instance_id} refused: node {node.id} could be "
                "neither powered off nor cut off from the network"
            )
            LOG.error("%s", reason)
            steps.set_last_error(task, reason)
            task.save()
            self._settle(instance_id)
            return False
        node.instance_id = None
        node.maintenance = True
        node.maintenance_reason = f"fenced: instance {instance_id} evacuated ({why}); {fenced}"
        steps.set_last_error(task, node.maintenance_reason)
        task.process_event(Event.FENCE)
        task.save()
        LOG.warning("node %s: %s", node.id, node.maintenance_reason)
        if self._detach(instance_id, node.id, why):
            try:
                self.scheduler.reschedule_instance(
                    task.context, instance_id, node.id, f"evacuated from node {node.id}: {why}"
                )
            except Exception:
                LOG.exception("could not ask the scheduler to place instance %s", instance_id)
        return True

    def _fence(self, task: Task) -> str | None:
        """Power off and cut off the node as far as it goes; what was done, or None when
        nothing could be."""
        node = task.node
        done = []
        try:
            steps.set_power(task, PowerState.OFF)
            done.append("powered off")
        except Exception as exc:
            reason = redact.scrub(steps.reason_of(exc), node.driver_info)
            done.append(f"not powered off ({reason})")
        try:
            steps.unbind_ports(task, self.network)
            done.append("ports cut off")
        except Exception as exc:
            done.append(f"ports not cut off ({steps.reason_of(exc)})")
        if done[0] != "powered off" and done[1] != "ports cut off":
            return None
        return ", ".join(done)

    def _detach(self, instance_id: str, node_id: str, why: str) -> bool:
        """The instance waits for a new node: BUILD, scheduling, the old node excluded, its
        attempts counted afresh. False if it is gone meanwhile (deleted)."""
        now = utcnow()
        with self.db.session() as session:
            instance = session.exec(
                select(Instance).where(col(Instance.id) == instance_id).with_for_update()
            ).first()
            if instance is None or instance.status not in EVACUABLE:
                return False
            instance.status = InstanceStatus.BUILD
            instance.task_state = TaskState.SCHEDULING
            instance.node_id = None
            instance.fault = None
            instance.attempts = 0
            instance.failed_node_ids = [*instance.failed_node_ids, node_id]
            instance.updated_at = now
            session.add(instance)
            self.notifier.instance(
                session, instance, "evacuate", Phase.END, evacuated_from=node_id, reason=why
            )
            return True

    def _settle(self, instance_id: str) -> None:
        """An evacuation that does not happen leaves the instance as it was."""
        with self.db.session() as session:
            instance = session.get(Instance, instance_id)
            if instance is not None and instance.task_state == TaskState.EVACUATING:
                instance.task_state = None
                instance.updated_at = utcnow()
                session.add(instance)
