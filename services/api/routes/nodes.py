"""Bare-metal nodes (admin only), their state changes through the owning conductor, and the
deploy ramdisk's callback (authenticated by the node's one-time callback token).
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, delete, select, update

from libs import redact
from libs.db import Node, Port, PowerState, utcnow
from libs.errors import InvalidStateTransition, NodeLocked, NotFound, Unauthorized
from libs.notify import Phase
from libs.rpc import RequestContext
from services.conductor.states import ProvisionState

from ..auth import token_digest
from ..deps import NO_TOKEN, AdminDep, ConductorAPIDep, SessionDep, notifier_of
from ..errors import Duplicate, request_id_of
from ..queries import PageDep, commit_unique, paginate
from ..schemas import (
    CallbackRequest,
    InterfaceValidation,
    NodeCreate,
    NodeList,
    NodePublic,
    NodeUpdate,
    PowerRequest,
    ProvisionRequest,
)

router = APIRouter(prefix="/v1/nodes", tags=["nodes"])

#: States in which a node holds no work and no instance, so it may be deleted.
DELETABLE_STATES = (ProvisionState.ENROLL, ProvisionState.MANAGEABLE, ProvisionState.AVAILABLE)
#: States in which the ramdisk is expected to call back.
CALLBACK_STATES = (ProvisionState.DEPLOYWAIT, ProvisionState.CLEANWAIT)


def get_node(session: Session, ref: str) -> Node:
    """The node whose id, or else whose name, is ``ref``."""
    node = session.get(Node, ref) or session.exec(select(Node).where(col(Node.name) == ref)).first()
    if node is None:
        raise NotFound(f"node {ref!r} not found")
    return node


def merge_driver_info(current: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``current`` updated with ``changes``: None removes a key, and a masked credential sent
    back unchanged (a client echoing what GET showed) keeps the stored one."""
    merged = dict(current)
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        elif value == redact.FIELD_MASK and redact.is_secret_key(key):
            continue
        else:
            merged[key] = value
    return merged


@router.post("", status_code=status.HTTP_201_CREATED)
def create_node(body: NodeCreate, session: SessionDep, _: AdminDep) -> NodePublic:
    node = Node(
        name=body.name,
        resource_class=body.resource_class,
        cpus=body.properties.cpus,
        memory_mb=body.properties.memory_mb,
        disk_gb=body.properties.disk_gb,
        power_interface=body.power_interface,
        boot_interface=body.boot_interface,
        deploy_interface=body.deploy_interface,
        management_interface=body.management_interface,
        driver_info=body.driver_info,
        provision_state=ProvisionState.ENROLL,
        power_state=PowerState.UNKNOWN,
    )
    session.add(node)
    notifier_of(session).node(session, node, "create", Phase.END)
    commit_unique(session, f"a node named {body.name!r} exists")
    return NodePublic.from_row(node)


@router.get("")
def list_nodes(
    session: SessionDep,
    _: AdminDep,
    page: PageDep,
    provision_state: Annotated[str | None, Query(max_length=40)] = None,
    resource_class: Annotated[str | None, Query(max_length=80)] = None,
    maintenance: bool | None = None,
    instance_id: Annotated[str | None, Query(max_length=36)] = None,
) -> NodeList:
    statement = select(Node)
    if provision_state is not None:
        statement = statement.where(col(Node.provision_state) == provision_state)
    if resource_class is not None:
        statement = statement.where(col(Node.resource_class) == resource_class)
    if maintenance is not None:
        statement = statement.where(col(Node.maintenance).is_(maintenance))
    if instance_id is not None:
        statement = statement.where(col(Node.instance_id) == instance_id)
    rows, next_marker = paginate(session, statement, col(Node.id), page)
    return NodeList(nodes=[NodePublic.from_row(r) for r in rows], next_marker=next_marker)


@router.get("/{node_ref}")
def show_node(node_ref: str, session: SessionDep, _: AdminDep) -> NodePublic:
    """A node by id or name."""
    return NodePublic.from_row(get_node(session, node_ref))


@router.patch("/{node_ref}")
def update_node(node_ref: str, body: NodeUpdate, session: SessionDep, _: AdminDep) -> NodePublic:
    node = get_node(session, node_ref)
    was_in_maintenance = node.maintenance
    given = body.model_fields_set
    values: dict[str, Any] = {}
    if body.name is not None:
        values["name"] = body.name
    if body.resource_class is not None:
        values["resource_class"] = body.resource_class
    if body.properties is not None:
        values.update(body.properties.model_dump(exclude_none=True))
    if body.driver_info is not None:
        values["driver_info"] = merge_driver_info(node.driver_info or {}, body.driver_info)
    if body.maintenance is not None:
        values["maintenance"] = body.maintenance
        if not body.maintenance and "maintenance_reason" not in given:
            values["maintenance_reason"] = None
    if "maintenance_reason" in given:
        values["maintenance_reason"] = body.maintenance_reason
    values["updated_at"] = utcnow()
    # Only while no conductor holds the node: it may be reading driver_info mid-deploy.
    try:
        result = session.exec(
            update(Node)
            .where(col(Node.id) == node.id, col(Node.reservation).is_(None))
            .values(**values)
        )
        if result.rowcount != 1:
            raise NodeLocked(f"node {node.name!r} is locked by a conductor; try again shortly")
        if body.maintenance is not None and body.maintenance != was_in_maintenance:
            session.refresh(node)
            action = "maintenance_set" if node.maintenance else "maintenance_unset"
            notifier_of(session).node(session, node, action, Phase.END)
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Duplicate(f"a node named {body.name!r} exists") from None
    session.refresh(node)
    return NodePublic.from_row(node)


@router.delete("/{node_ref}", status_code=status.HTTP_204_NO_CONTENT)
def delete_node(node_ref: str, session: SessionDep, _: AdminDep) -> None:
    node = get_node(session, node_ref)
    if node.provision_state not in DELETABLE_STATES or node.instance_id is not None:
        allowed = ", ".join(DELETABLE_STATES)
        raise InvalidStateTransition(
            f"node {node.name!r} is {node.provision_state!r}"
            f"{' with an instance' if node.instance_id else ''}; only nodes in {allowed} "
            "without an instance can be deleted"
        )
    if node.reservation is not None:
        raise NodeLocked(f"node {node.name!r} is locked by {node.reservation}")
    session.exec(delete(Port).where(col(Port.node_id) == node.id))
    # Conditional: a scheduler claim or a conductor lock may have come in since the read.
    result = session.exec(
        delete(Node).where(
            col(Node.id) == node.id,
            col(Node.provision_state).in_(DELETABLE_STATES),
            col(Node.instance_id).is_(None),
            col(Node.reservation).is_(None),
        )
    )
    if result.rowcount != 1:
        session.rollback()
        raise NodeLocked(f"node {node.name!r} changed while being deleted; try again")
    notifier_of(session).node(session, node, "delete", Phase.END)
    session.commit()


@router.put("/{node_ref}/states/provision", status_code=status.HTTP_202_ACCEPTED)
def set_provision_state(
    node_ref: str,
    body: ProvisionRequest,
    session: SessionDep,
    ctxt: AdminDep,
    conductor: ConductorAPIDep,
) -> NodePublic:
    """Ask the node's conductor to manage, provide or delete it."""
    node = get_node(session, node_ref)
    session.commit()  # no transaction held open while the conductor works
    conductor.do_provisioning_action(ctxt, node.id, body.target)
    session.refresh(node)
    return NodePublic.from_row(node)


@router.put("/{node_ref}/states/power", status_code=status.HTTP_202_ACCEPTED)
def set_power_state(
    node_ref: str,
    body: PowerRequest,
    session: SessionDep,
    ctxt: AdminDep,
    conductor: ConductorAPIDep,
) -> NodePublic:
    """Ask the node's conductor to power it on, off, or reboot it."""
    node = get_node(session, node_ref)
    session.commit()
    conductor.set_power_state(ctxt, node.id, body.target)
    session.refresh(node)
    return NodePublic.from_row(node)


@router.get("/{node_ref}/validate")
def validate_node(
    node_ref: str, session: SessionDep, ctxt: AdminDep, conductor: ConductorAPIDep
) -> dict[str, InterfaceValidation]:
    """Each hardware interface's check of the node's configuration (no hardware access)."""
    node = get_node(session, node_ref)
    session.commit()
    results = conductor.validate_node(ctxt, node.id)
    return {name: InterfaceValidation.model_validate(r) for name, r in results.items()}


@router.post(
    "/{node_id}/callback",
    status_code=status.HTTP_202_ACCEPTED,
    response_class=Response,
    responses={401: {"description": "Wrong token"}, 409: {"description": "Not waiting"}},
    openapi_extra=NO_TOKEN,  # the ramdisk's own token, in the body
)
def ramdisk_callback(
    node_id: str,
    body: CallbackRequest,
    request: Request,
    session: SessionDep,
    conductor: ConductorAPIDep,
) -> Response:
    """The deploy ramdisk reports that its step finished (no bearer token: the node's
    one-time callback token proves it is the ramdisk the conductor booted)."""
    node = session.get(Node, node_id)
    if node is None:
        raise NotFound(f"node {node_id!r} not found")
    expected = (node.driver_internal_info or {}).get("callback_token_sha256")
    if not isinstance(expected, str) or not hmac.compare_digest(
        token_digest(body.token).encode(), expected.encode()
    ):
        raise Unauthorized("wrong callback token")
    if node.provision_state not in CALLBACK_STATES:
        raise InvalidStateTransition(
            f"node {node.name!r} is {node.provision_state!r}, not waiting for a callback"
        )
    session.commit()
    # The ramdisk is no user: the context only carries the request id for tracing.
    ctxt = RequestContext(request_id=request_id_of(request))
    conductor.ramdisk_callback(ctxt, node.id, body.success, body.message)
    return Response(status_code=status.HTTP_202_ACCEPTED)
