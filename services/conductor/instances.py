"""The conductor's changes to Instance rows (see "Who changes what" in docs/architecture.md).

Each change is conditional on the status it expects, so a late or repeated message never
undoes what the API or the scheduler decided in the meantime (a delete during a deploy).
"""

from __future__ import annotations

import enum
import logging

from sqlalchemy import bindparam
from sqlmodel import Session, col, select, update

from libs.db import Database, Instance, InstanceStatus, TaskState, utcnow
from libs.notify import Notifier, Phase

LOG = logging.getLogger(__name__)

_INSTANCE = Instance.metadata.tables["instance"]

# The statements of every deploy and tear-down, built once and run on a Core connection
# (through the ORM, the bookkeeping cost more CPU than the statements).
_STATUS_AND_NETWORKS = select(_INSTANCE.c.status, _INSTANCE.c.network_ids).where(
    _INSTANCE.c.id == bindparam("b_id")
)
#: BUILD or REBUILD (``b_status``) -> ACTIVE, the row read back for its event.
_ACTIVATE = (
    update(_INSTANCE)
    .where(_INSTANCE.c.id == bindparam("b_id"), _INSTANCE.c.status == bindparam("b_status"))
    .values(
        status=InstanceStatus.ACTIVE.value,
        task_state=None,
        failed_node_ids=bindparam("b_failed", type_=_INSTANCE.c.failed_node_ids.type),
        updated_at=bindparam("b_now"),
    )
    .returning(*_INSTANCE.c)
)
_MARK_DELETED = (
    update(_INSTANCE)
    .where(
        _INSTANCE.c.id == bindparam("b_id"),
        _INSTANCE.c.status != InstanceStatus.DELETED.value,
    )
    .values(
        status=InstanceStatus.DELETED.value,
        task_state=None,
        deleted_at=bindparam("b_now"),
        updated_at=bindparam("b_now"),
    )
    .returning(*_INSTANCE.c)
)


class FailedDeploy(enum.Enum):
    """What became of an instance whose deploy failed."""

    RESCHEDULE = "reschedule"  # still wanted: the scheduler should try another node
    DELETED = "deleted"  # deleted by its user meanwhile: nothing more to do
    GONE = "gone"  # no such instance, or it is in no state to reschedule


def status_and_networks(db: Database, instance_id: str) -> tuple[InstanceStatus | None, list[str]]:
    """The instance's status (None if there is no such instance) and the networks its
    ports go to, in port order, in one read."""
    with db.autocommit() as connection:
        row = connection.execute(_STATUS_AND_NETWORKS, {"b_id": instance_id}).first()
    if row is None:
        return None, []
    return InstanceStatus(row.status), list(row.network_ids or [])


def status_of(db: Database, instance_id: str) -> InstanceStatus | None:
    """The instance's status, or None if there is no such instance."""
    return status_and_networks(db, instance_id)[0]


def network_ids_of(db: Database, instance_id: str) -> list[str]:
    """The networks the instance's ports go to, in port order (empty if no instance)."""
    return status_and_networks(db, instance_id)[1]


def deleting_on(db: Database, node_id: str) -> str | None:
    """The id of an instance being deleted that still names ``node_id``, if any."""
    with db.reader() as session:
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


def activate(session: Session, instance_id: str, notifier: Notifier = _RECORD_ONLY) -> bool:
    """The deploy (or rebuild) is done: BUILD or REBUILD -> ACTIVE, the failed nodes of
    this build forgotten, in the caller's transaction (the node's own move to active).
    Returns False if it was neither any more (deleted meanwhile)."""
    connection = session.connection()
    for status, action in _DEPLOYED_ACTIONS.items():
        # The nodes this build failed on (or was evacuated from) may serve it again in a
        # later one, e.g. a repaired node taking its instance back.
        params = {"b_id": instance_id, "b_status": status.value, "b_now": utcnow()}
        row = connection.execute(_ACTIVATE, {**params, "b_failed": []}).first()
        if row is not None:
            notifier.instance(session, Instance(**row._mapping), action, Phase.END)
            return True
    return False


def mark_deleted(db: Database, instance_id: str, notifier: Notifier = _RECORD_ONLY) -> None:
    """The instance's node is torn down: DELETED, with the time."""
    with db.session() as session:
        delete_in(session, instance_id, notifier)


def delete_in(session: Session, instance_id: str, notifier: Notifier = _RECORD_ONLY) -> None:
    """:func:`mark_deleted` in the caller's transaction (the node's own cleaning's end)."""
    params = {"b_id": instance_id, "b_now": utcnow()}
    row = session.connection().execute(_MARK_DELETED, params).first()
    if row is not None:
        notifier.instance(session, Instance(**row._mapping), "delete", Phase.END)


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
