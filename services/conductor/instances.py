"""The conductor's changes to Instance rows (see "Who changes what" in docs/architecture.md).

Each change is conditional on the status it expects, so a late or repeated message never
undoes what the API or the scheduler decided in the meantime (a delete during a deploy).
"""

from __future__ import annotations

import enum
import logging

from sqlmodel import col, select, update

from libs.db import Database, Instance, InstanceStatus, TaskState, utcnow
from libs.notify import Notifier, Phase

LOG = logging.getLogger(__name__)


class FailedDeploy(enum.Enum):
    """What became of an instance whose deploy failed."""

    RESCHEDULE = "reschedule"  # still wanted: the scheduler should try another node
    DELETED = "deleted"  # deleted by its user meanwhile: nothing more to do
    GONE = "gone"  # no such instance, or it is in no state to reschedule


def status_of(db: Database, instance_id: str) -> InstanceStatus | None:
    """The instance's status, or None if there is no such instance."""
    with db.session() as session:
        status = session.exec(
            select(Instance.status).where(col(Instance.id) == instance_id)
        ).first()
    return InstanceStatus(status) if status is not None else None


def network_ids_of(db: Database, instance_id: str) -> list[str]:
    """The networks the instance's ports go to, in port order (empty if no instance)."""
    with db.session() as session:
        network_ids = session.exec(
            select(Instance.network_ids).where(col(Instance.id) == instance_id)
        ).first()
    return list(network_ids or [])


def deleting_on(db: Database, node_id: str) -> str | None:
    """The id of an instance being deleted that still names ``node_id``, if any."""
    with db.session() as session:
        return session.exec(
            select(Instance.id).where(
                col(Instance.node_id) == node_id,
                col(Instance.status) == InstanceStatus.DELETING,
            )
        ).first()


#: Records the events of these changes when the caller names no notifier (tests).
_RECORD_ONLY = Notifier(service="conductor")


#: What a deploy's end finishes, by the instance's status then.
_DEPLOYED_ACTIONS = {InstanceStatus.BUILD: "create", InstanceStatus.REBUILD: "rebuild"}


def mark_active(db: Database, instance_id: str, notifier: Notifier = _RECORD_ONLY) -> bool:
    """The deploy (or rebuild) is done: BUILD or REBUILD -> ACTIVE, the failed nodes of
    this build forgotten. Returns False if it was neither any more (deleted meanwhile)."""
    with db.session() as session:
        instance = session.exec(
            select(Instance).where(col(Instance.id) == instance_id).with_for_update()
        ).first()
        if instance is None or instance.status not in _DEPLOYED_ACTIONS:
            return False
        action = _DEPLOYED_ACTIONS[instance.status]
        instance.status = InstanceStatus.ACTIVE
        instance.task_state = None
        # The nodes this build failed on (or was evacuated from) may serve it again in a
        # later one, e.g. a repaired node taking its instance back.
        instance.failed_node_ids = []
        instance.updated_at = utcnow()
        session.add(instance)
        notifier.instance(session, instance, action, Phase.END)
        return True


def mark_deleted(db: Database, instance_id: str, notifier: Notifier = _RECORD_ONLY) -> None:
    """The instance's node is torn down: DELETED, with the time."""
    now = utcnow()
    with db.session() as session:
        result = session.exec(
            update(Instance)
            .where(col(Instance.id) == instance_id, col(Instance.status) != InstanceStatus.DELETED)
            .values(status=InstanceStatus.DELETED, task_state=None, deleted_at=now, updated_at=now)
        )
        if result.rowcount:
            notifier.instance_by_id(session, instance_id, "delete", Phase.END)


def mark_error(
    db: Database,
    instance_id: str,
    code: str,
    message: str,
    notifier: Notifier = _RECORD_ONLY,
    action: str = "delete",
) -> None:
    """Something failed that the user should see on the instance: ERROR with a fault
    (``tetsu.instance.<action>.error``: a tear-down's, or a rebuild that could not start)."""
    with db.session() as session:
        result = session.exec(
            update(Instance)
            .where(col(Instance.id) == instance_id, col(Instance.status) != InstanceStatus.DELETED)
            .values(
                status=InstanceStatus.ERROR,
                task_state=None,
                fault={"code": code, "message": message},
                updated_at=utcnow(),
            )
        )
        if result.rowcount:
            notifier.instance_by_id(session, instance_id, action, Phase.ERROR)


def detach_failed_node(
    db: Database,
    instance_id: str,
    node_id: str,
    notifier: Notifier = _RECORD_ONLY,
    reason: str = "",
) -> FailedDeploy:
    """The deploy on ``node_id`` failed: forget the node and remember it failed, so the
    scheduler's next attempt avoids it; an instance deleted meanwhile becomes DELETED. A
    failed rebuild is not moved elsewhere: the instance goes to ERROR with ``reason``."""
    now = utcnow()
    with db.session() as session:
        instance = session.exec(
            select(Instance).where(col(Instance.id) == instance_id).with_for_update()
        ).first()
        if instance is None or instance.node_id not in (node_id, None):
            return FailedDeploy.GONE
        if instance.status == InstanceStatus.DELETING:
            instance.status = InstanceStatus.DELETED
            instance.task_state = None
            instance.deleted_at = now
            instance.updated_at = now
            session.add(instance)
            notifier.instance(session, instance, "delete", Phase.END)
            return FailedDeploy.DELETED
        if instance.status == InstanceStatus.REBUILD:
            instance.status = InstanceStatus.ERROR
            instance.task_state = None
            instance.node_id = None
            instance.fault = {"code": "rebuild_failed", "message": reason or "rebuild failed"}
            instance.updated_at = now
            session.add(instance)
            notifier.instance(session, instance, "rebuild", Phase.ERROR)
            return FailedDeploy.GONE
        if instance.status != InstanceStatus.BUILD:
            return FailedDeploy.GONE
        instance.node_id = None
        instance.task_state = TaskState.SCHEDULING
        # A new list, so the JSON column sees the change.
        instance.failed_node_ids = [*instance.failed_node_ids, node_id]
        instance.updated_at = now
        session.add(instance)
        # The node's tetsu.node.deploy.error says why; the scheduler tries another node.
        notifier.instance(session, instance, "schedule", Phase.START, failed_node_id=node_id)
        return FailedDeploy.RESCHEDULE
