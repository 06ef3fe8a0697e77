"""Instances: a user's machine. Creating one asks the scheduler for a node; deleting one
with a node asks the node's conductor to tear it down (see docs/architecture.md).
"""

from __future__ import annotations

from typing import Annotated, Any, NamedTuple

from fastapi import APIRouter, Query, Response, status
from sqlalchemy import (
    ColumnElement,
    Executable,
    Select,
    String,
    Update,
    bindparam,
    insert,
    literal,
    null,
    union_all,
)
from sqlalchemy import cast as sa_cast
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select, update

from libs import rpc
from libs.db import (
    ImageStatus,
    Instance,
    InstanceStatus,
    Network,
    Node,
    PowerState,
    TaskState,
    utcnow,
)
from libs.db.prepared import PREPARE
from libs.errors import (
    Forbidden,
    InvalidStateTransition,
    NoLiveConductor,
    NotFound,
    ServiceUnavailable,
)
from libs.notify import Phase, event_params, with_events
from libs.rpc import RequestContext
from services.conductor.power import SYNC_ERROR_PREFIX

from ..deps import (
    AdminDep,
    ConductorAPIDep,
    ContextDep,
    SchedulerAPIDep,
    SessionDep,
    SettingsDep,
    listed_project,
    may_see,
    notifier_of,
    one_hop,
    statements_commit_alone,
)
from ..errors import InvalidInput
from ..queries import PageDep, paginate
from ..schemas import InstanceCreate, InstanceList, InstancePublic, InstanceRebuild
from .flavors import FLAVOR_IDS, choose_flavor_id
from .images import (
    ANY_IMAGES_BY_REF,
    VISIBLE_IMAGES_BY_REF,
    ImageChoice,
    choose_image,
    find_image,
)

router = APIRouter(prefix="/v1/instances", tags=["instances"])

#: Errors of the message bus itself: the request did not reach (or not surely reach) a service.
BUS_ERRORS = (rpc.Timeout, rpc.NoConsumer, rpc.TransportError)


# The statements of the routes a burst hits, built once: built per request (and the ORM's
# session.get), they cost the API more CPU than the queries themselves.
_INSTANCE = Instance.metadata.tables["instance"]
_INSERT_INSTANCE = insert(_INSTANCE)
# The instance and its creation's event in one statement (PostgreSQL): parameters
# ``r_<column>`` and those of notify.event_params.
_INSERT_INSTANCE_WITH_EVENT = with_events(
    insert(_INSTANCE).values({c.key: bindparam(f"r_{c.key}", type_=c.type) for c in _INSTANCE.c}),
    _INSTANCE.c.id,
    1,
)
_SELECT_INSTANCE = sa_select(_INSTANCE).where(_INSTANCE.c.id == bindparam("b_id"))
_NETWORK = Network.metadata.tables["network"]
_SELECT_NETWORKS = sa_select(_NETWORK.c.id, _NETWORK.c.project_id).where(
    _NETWORK.c.id.in_(bindparam("b_ids", expanding=True))
)


def _tagged(kind: str, statement: Select[Any]) -> Select[Any]:
    """``statement``'s rows as (kind, id, status, project_id), for :data:`_REFERENCES`."""
    rows = statement.subquery()

    def column(name: str) -> ColumnElement[Any]:
        return rows.c[name] if name in rows.c else sa_cast(null(), String)

    return sa_select(
        literal(kind, String).label("kind"),
        column("id").label("id"),
        column("status").label("status"),
        column("project_id").label("project_id"),
    )


#: What a creation names, read in one query (a round trip each cost the API more CPU than
#: the queries): the flavor's ids, the images, and the networks; for admins and members.
#: Prepared (libs.db.prepared): each part finds its rows by a key or a unique name, and
#: PostgreSQL planned it anew at every creation (0.26 ms a time, more than it ran).
_REFERENCES = {
    admin: union_all(
        _tagged("flavor", FLAVOR_IDS),
        _tagged("image", images),
        _tagged("network", _SELECT_NETWORKS),
    ).execution_options(**{PREPARE: True})
    for admin, images in ((True, ANY_IMAGES_BY_REF), (False, VISIBLE_IMAGES_BY_REF))
}
_GONE = (InstanceStatus.DELETING.value, InstanceStatus.DELETED.value)


class _Change(NamedTuple):
    """A conditional UPDATE of one instance, alone and with the INSERT of its event in one
    statement (for a session whose statements commit alone, see statements_commit_alone)."""

    alone: Update
    with_event: Executable

    @classmethod
    def of(cls, statement: Update) -> _Change:
        return cls(statement, with_events(statement, _INSTANCE.c.id, 1))


# Conditional: the scheduler may be claiming a node for it right now.
_DELETE_UNPLACED = _Change.of(
    update(_INSTANCE)
    .where(
        _INSTANCE.c.id == bindparam("b_id"),
        _INSTANCE.c.node_id.is_(None),
        _INSTANCE.c.status.not_in(_GONE),
    )
    .values(
        status=InstanceStatus.DELETED.value,
        task_state=None,
        deleted_at=bindparam("b_now"),
        updated_at=bindparam("b_now"),
    )
)
_START_DELETING = _Change.of(
    update(_INSTANCE)
    .where(
        _INSTANCE.c.id == bindparam("b_id"),
        _INSTANCE.c.node_id == bindparam("b_node"),
        _INSTANCE.c.status == bindparam("b_status"),
    )
    .values(
        status=InstanceStatus.DELETING.value,
        task_state=TaskState.DELETING.value,
        updated_at=bindparam("b_now"),
    )
)


def get_instance(session: Session, instance_id: str, ctxt: RequestContext) -> Instance:
    """An instance of the caller's project (any for an admin); others' are not found. Read
    as it is in the database now, and not kept in the session: change it with statements
    and read it again with this."""
    row = session.connection().execute(_SELECT_INSTANCE, {"b_id": instance_id}).first()
    if row is None or not may_see(ctxt, row.project_id):
        raise NotFound(f"instance {instance_id!r} not found")
    return Instance(**row._mapping)


def public(instance: Instance, ctxt: RequestContext) -> InstancePublic:
    return InstancePublic.from_row(instance, show_node=ctxt.is_admin)


def _references(
    session: Session, body: InstanceCreate, ctxt: RequestContext
) -> tuple[str, ImageChoice]:
    """The flavor's id and the image that ``body`` names, and a check that its networks
    exist and are the caller's; InvalidInput naming the first that is not found."""
    params = {
        "flavor_ref": body.flavor,
        "image_ref": body.image,
        "project_id": ctxt.project_id,
        "b_ids": body.networks,
    }
    rows = session.connection().execute(_REFERENCES[ctxt.is_admin], params).all()
    flavor_id = choose_flavor_id((row.id for row in rows if row.kind == "flavor"), body.flavor)
    if flavor_id is None:
        raise InvalidInput(f"flavor {body.flavor!r} not found")
    images = [ImageChoice(row.id, ImageStatus(row.status)) for row in rows if row.kind == "image"]
    image = choose_image(images, body.image)
    networks = {row.id for row in rows if row.kind == "network" and may_see(ctxt, row.project_id)}
    for network_id in body.networks:
        if network_id not in networks:
            raise InvalidInput(f"network {network_id!r} not found")
    return flavor_id, image


def create_instance(
    body: InstanceCreate,
    response: Response,
    session: SessionDep,
    ctxt: ContextDep,
    settings: SettingsDep,
    scheduler: SchedulerAPIDep,
) -> InstancePublic:
    """Start building an instance; poll it until ACTIVE (or ERROR, with a fault)."""
    # Two round trips to PostgreSQL where a transaction took seven: the read of what it
    # names, then the instance and its event in one statement.
    alone = statements_commit_alone(session)
    flavor_id, image = _references(session, body, ctxt)
    if image.status != ImageStatus.ACTIVE:
        raise InvalidInput(f"image {body.image!r} is not active yet (it is {image.status})")
    if ctxt.project_id is None:
        raise Forbidden("the caller has no project to create the instance in")
    instance = Instance(
        name=body.name,
        project_id=ctxt.project_id,
        user_id=ctxt.user_id,
        flavor_id=flavor_id,
        image_id=image.id,
        network_ids=list(body.networks),
        status=InstanceStatus.BUILD,
        task_state=TaskState.SCHEDULING,
    )
    values = _columns_of(instance)
    notifier = notifier_of(session)
    message = notifier.instance_message(instance, "create", Phase.START)
    # Committed before the cast: the scheduler reads the row.
    if alone:
        params = {f"r_{key}": value for key, value in values.items()}
        session.connection().execute(_INSERT_INSTANCE_WITH_EVENT, params | event_params([message]))
        notifier.publish([message])
    else:
        # A Core INSERT: the ORM's flush of the one new row cost more CPU than the statement.
        session.connection().execute(_INSERT_INSTANCE, values)
        notifier.record(session, message)
        session.commit()
    try:
        scheduler.schedule_instance(ctxt, instance.id)
    except BUS_ERRORS as exc:
        fail_unscheduled(session, instance, "the scheduler could not be reached")
        raise ServiceUnavailable(
            f"the scheduler could not be reached; instance {instance.id} is in ERROR"
        ) from exc
    base = (settings.public_url or "").rstrip("/")
    response.headers["Location"] = f"{base}/v1/instances/{instance.id}"
    return public(instance, ctxt)


# The routes a burst hits run in one hop to a pool thread (see one_hop); the dashboard
# calls the plain functions.
router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    responses={503: {"description": "The scheduler could not be reached; instance in ERROR"}},
)(one_hop(create_instance))


def fail_unscheduled(session: Session, instance: Instance, message: str) -> None:
    """Put an instance the scheduler never got into ERROR (unless it got it after all), and
    its event, in one transaction (a session whose statements committed alone gets a
    transaction again after a commit)."""
    session.commit()
    result = session.exec(
        update(Instance)
        .where(
            col(Instance.id) == instance.id,
            col(Instance.status) == InstanceStatus.BUILD,
            col(Instance.node_id).is_(None),
        )
        .values(
            status=InstanceStatus.ERROR,
            task_state=None,
            fault={"code": ServiceUnavailable.code, "message": message},
            updated_at=utcnow(),
        )
    )
    if result.rowcount == 1:
        notifier_of(session).instance_by_id(session, instance.id, "create", Phase.ERROR)
    session.commit()


@router.get("")
def list_instances(
    session: SessionDep,
    ctxt: ContextDep,
    page: PageDep,
    status_filter: Annotated[
        InstanceStatus | None,
        Query(alias="status", description="DELETED instances are listed only when asked for"),
    ] = None,
    project_id: Annotated[str | None, Query(max_length=36, description="Admins only")] = None,
) -> InstanceList:
    statement = select(Instance)
    project_id = listed_project(ctxt, project_id, "instances")
    if project_id is not None:
        statement = statement.where(col(Instance.project_id) == project_id)
    if status_filter is None:
        statement = statement.where(col(Instance.status) != InstanceStatus.DELETED)
    else:
        statement = statement.where(col(Instance.status) == status_filter)
    rows, next_marker = paginate(session, statement, col(Instance.id), page)
    return InstanceList(instances=[public(r, ctxt) for r in rows], next_marker=next_marker)


def show_instance(instance_id: str, session: SessionDep, ctxt: ContextDep) -> InstancePublic:
    """An instance; a deleted one is still shown (status DELETED) so clients see the end."""
    return public(get_instance(session, instance_id, ctxt), ctxt)


router.get("/{instance_id}")(one_hop(show_instance))


def _changed(
    session: Session,
    alone: bool,
    change: _Change,
    params: dict[str, Any],
    after: Instance,
    phase: Phase,
) -> bool:
    """Make ``change`` with ``params`` and write its delete event, ``after`` being the
    instance as the change leaves it: both or neither. Whether the change matched."""
    notifier = notifier_of(session)
    message = notifier.instance_message(after, "delete", phase)
    if alone:
        result = session.connection().execute(change.with_event, params | event_params([message]))
        if result.rowcount != 1:
            return False
        notifier.publish([message])
        return True
    result = session.connection().execute(change.alone, params)
    if result.rowcount == 1:
        notifier.record(session, message)
    session.commit()
    return result.rowcount == 1


def _columns_of(instance: Instance) -> dict[str, Any]:
    return {column.key: getattr(instance, column.key) for column in _INSTANCE.c}


def _with(instance: Instance, **changes: Any) -> Instance:
    """A copy of ``instance`` (read by get_instance) with ``changes``."""
    return Instance(**(_columns_of(instance) | changes))


def _refuse_if_gone(instance: Instance) -> None:
    if instance.status == InstanceStatus.DELETED:
        raise NotFound(f"instance {instance.id!r} is already deleted")
    if instance.status == InstanceStatus.DELETING:
        raise InvalidStateTransition(f"instance {instance.id!r} is already being deleted")


def delete_instance(
    instance_id: str, session: SessionDep, ctxt: ContextDep, conductor: ConductorAPIDep
) -> InstancePublic:
    """Delete an instance: at once if it has no node, else by tearing its node down
    (DELETING until the node is clean)."""
    # Two round trips to PostgreSQL where a transaction took five: the read, then the
    # change and its event in one statement.
    alone = statements_commit_alone(session)
    instance = get_instance(session, instance_id, ctxt)
    _refuse_if_gone(instance)
    now = utcnow()
    if instance.node_id is None:
        deleted = _with(
            instance, status=InstanceStatus.DELETED, task_state=None, deleted_at=now, updated_at=now
        )
        params = {"b_id": instance.id, "b_now": now}
        if _changed(session, alone, _DELETE_UNPLACED, params, deleted, Phase.END):
            return public(deleted, ctxt)
        instance = get_instance(session, instance.id, ctxt)
        _refuse_if_gone(instance)
    node_id = instance.node_id
    if node_id is None:
        raise InvalidStateTransition(f"instance {instance.id!r} changed meanwhile; try again")
    before = (instance.status, instance.task_state)
    deleting = _with(
        instance, status=InstanceStatus.DELETING, task_state=TaskState.DELETING, updated_at=now
    )
    params = {
        "b_id": instance.id,
        "b_node": node_id,
        "b_status": InstanceStatus(instance.status).value,
        "b_now": now,
    }
    if not _changed(session, alone, _START_DELETING, params, deleting, Phase.START):
        raise InvalidStateTransition(f"instance {instance.id!r} changed meanwhile; try again")
    try:
        conductor.tear_down_node(ctxt, node_id)
    except (NoLiveConductor, *BUS_ERRORS) as exc:
        # Nothing will tear it down: put it back so the user can simply retry (in one
        # transaction: a session whose statements committed alone gets one after a commit).
        session.commit()
        notifier = notifier_of(session)
        restored = session.exec(
            update(Instance)
            .where(col(Instance.id) == instance.id, col(Instance.status) == InstanceStatus.DELETING)
            .values(status=before[0], task_state=before[1], updated_at=utcnow())
        )
        if restored.rowcount == 1:
            reason = exc.reason if isinstance(exc, NoLiveConductor) else type(exc).__name__
            notifier.instance_by_id(
                session, instance.id, "delete", Phase.ERROR, reason=f"tear-down not sent: {reason}"
            )
        session.commit()
        raise
    return public(deleting, ctxt)


router.delete("/{instance_id}", status_code=status.HTTP_202_ACCEPTED)(one_hop(delete_instance))


@router.post("/{instance_id}/rebuild", status_code=status.HTTP_202_ACCEPTED)
def rebuild_instance(
    instance_id: str,
    body: InstanceRebuild,
    session: SessionDep,
    ctxt: ContextDep,
    conductor: ConductorAPIDep,
) -> InstancePublic:
    """Re-image an ACTIVE instance in place: the same node, name and networks, with its
    image or ``image`` (REBUILD until ACTIVE again, or ERROR with a fault)."""
    instance = get_instance(session, instance_id, ctxt)
    _refuse_if_gone(instance)
    if instance.status != InstanceStatus.ACTIVE or instance.node_id is None:
        raise InvalidStateTransition(
            f"instance {instance.id!r} is {instance.status}: only an ACTIVE instance can be rebuilt"
        )
    image = find_image(session, body.image, ctxt) if body.image else None
    if image is not None and image.status != ImageStatus.ACTIVE:
        raise InvalidInput(f"image {body.image!r} is not active yet (it is {image.status})")
    node_id = instance.node_id
    before = instance.image_id
    result = session.exec(
        update(Instance)
        .where(
            col(Instance.id) == instance.id,
            col(Instance.node_id) == node_id,
            col(Instance.status) == InstanceStatus.ACTIVE,
        )
        .values(
            status=InstanceStatus.REBUILD,
            task_state=TaskState.REBUILDING,
            image_id=image.id if image is not None else before,
            fault=None,
            updated_at=utcnow(),
        )
    )
    if result.rowcount != 1:
        session.rollback()
        raise InvalidStateTransition(f"instance {instance.id!r} changed meanwhile; try again")
    notifier = notifier_of(session)
    notifier.instance_by_id(session, instance.id, "rebuild", Phase.START)
    session.commit()
    try:
        conductor.rebuild_node(ctxt, node_id, instance.id)
    except (NoLiveConductor, *BUS_ERRORS):
        # Nothing will rebuild it: back to ACTIVE as it was, so the user can retry.
        session.exec(
            update(Instance)
            .where(col(Instance.id) == instance.id, col(Instance.status) == InstanceStatus.REBUILD)
            .values(
                status=InstanceStatus.ACTIVE, task_state=None, image_id=before, updated_at=utcnow()
            )
        )
        session.commit()
        raise
    return public(get_instance(session, instance.id, ctxt), ctxt)


def _node_looks_dead(node: Node) -> bool:
    """An operator marked it failed (maintenance), or its BMC stopped answering."""
    unreadable = (node.last_error or "").startswith(SYNC_ERROR_PREFIX)
    return node.maintenance or unreadable or node.power_state == PowerState.ERROR


@router.post("/{instance_id}/evacuate", status_code=status.HTTP_202_ACCEPTED)
def evacuate_instance(
    instance_id: str, session: SessionDep, ctxt: AdminDep, conductor: ConductorAPIDep
) -> InstancePublic:
    """Admins: bring an instance whose node died back on another node, with the same id,
    name, image and networks. The old node must be in maintenance or have stopped answering
    its power reads; it is fenced (powered off if it answers, cut off from the network)
    and left in maintenance."""
    instance = get_instance(session, instance_id, ctxt)
    _refuse_if_gone(instance)
    if instance.status not in (InstanceStatus.ACTIVE, InstanceStatus.ERROR) or (
        instance.node_id is None
    ):
        raise InvalidStateTransition(
            f"instance {instance.id!r} is {instance.status} on no node: nothing to evacuate"
        )
    if instance.task_state is not None:
        raise InvalidStateTransition(f"instance {instance.id!r} is busy ({instance.task_state})")
    node = session.get(Node, instance.node_id)
    if node is not None and not _node_looks_dead(node):
        raise InvalidStateTransition(
            f"node {node.name!r} looks alive ({node.power_state}, not in maintenance): put it "
            "in maintenance first if it has failed"
        )
    node_id = instance.node_id
    result = session.exec(
        update(Instance)
        .where(
            col(Instance.id) == instance.id,
            col(Instance.node_id) == node_id,
            col(Instance.task_state).is_(None),
        )
        .values(task_state=TaskState.EVACUATING, updated_at=utcnow())
    )
    if result.rowcount != 1:
        session.rollback()
        raise InvalidStateTransition(f"instance {instance.id!r} changed meanwhile; try again")
    notifier_of(session).instance_by_id(session, instance.id, "evacuate", Phase.START)
    session.commit()
    try:
        conductor.evacuate_node(ctxt, node_id, instance.id)
    except (NoLiveConductor, *BUS_ERRORS):
        session.exec(
            update(Instance)
            .where(
                col(Instance.id) == instance.id,
                col(Instance.task_state) == TaskState.EVACUATING,
            )
            .values(task_state=None, updated_at=utcnow())
        )
        session.commit()
        raise
    return public(get_instance(session, instance.id, ctxt), ctxt)
