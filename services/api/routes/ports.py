"""Ports (admin only): a node's NICs, by MAC address, and where each is cabled."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status
from sqlmodel import Session, col, select

from libs.db import Node, Port, PortBinding
from libs.errors import NotFound

from ..deps import AdminDep, SessionDep
from ..errors import InUse, InvalidInput
from ..queries import PageDep, commit_unique, paginate
from ..schemas import PortCreate, PortList, PortPublic, PortUpdate, normalise_mac

router = APIRouter(prefix="/v1/ports", tags=["ports"])


def get_port(session: Session, port_id: str) -> Port:
    port = session.get(Port, port_id)
    if port is None:
        raise NotFound(f"port {port_id!r} not found")
    return port


def check_node(session: Session, node_id: str) -> None:
    if session.get(Node, node_id) is None:
        raise InvalidInput(f"node {node_id!r} not found")


def refuse_if_bound(port: Port) -> None:
    # Its switch port is configured for a network now; netctl must unbind it first.
    if port.binding != PortBinding.NONE:
        raise InUse(f"port {port.address} is bound ({port.binding}); tear its node down first")


@router.post("", status_code=status.HTTP_201_CREATED)
def create_port(body: PortCreate, session: SessionDep, _: AdminDep) -> PortPublic:
    check_node(session, body.node_id)
    port = Port(
        address=body.address,
        node_id=body.node_id,
        switch_id=body.switch_id,
        switch_port=body.switch_port,
    )
    session.add(port)
    commit_unique(session, f"a port with address {body.address} exists")
    return PortPublic.from_row(port)


@router.get("")
def list_ports(
    session: SessionDep,
    _: AdminDep,
    page: PageDep,
    node_id: Annotated[str | None, Query(max_length=36)] = None,
    address: Annotated[str | None, Query(max_length=32)] = None,
) -> PortList:
    statement = select(Port)
    if node_id is not None:
        statement = statement.where(col(Port.node_id) == node_id)
    if address is not None:
        try:
            mac = normalise_mac(address)
        except ValueError as exc:
            raise InvalidInput(f"address: {exc}") from None
        statement = statement.where(col(Port.address) == mac)
    rows, next_marker = paginate(session, statement, col(Port.id), page)
    return PortList(ports=[PortPublic.from_row(r) for r in rows], next_marker=next_marker)


@router.get("/{port_id}")
def show_port(port_id: str, session: SessionDep, _: AdminDep) -> PortPublic:
    return PortPublic.from_row(get_port(session, port_id))


@router.patch("/{port_id}")
def update_port(port_id: str, body: PortUpdate, session: SessionDep, _: AdminDep) -> PortPublic:
    port = get_port(session, port_id)
    changes = body.model_dump(exclude_unset=True)
    # address and node_id cannot be cleared; null for them means "leave as is".
    for required in ("address", "node_id"):
        if changes.get(required, "") is None:
            del changes[required]
    if not changes:
        return PortPublic.from_row(port)
    refuse_if_bound(port)
    if "node_id" in changes:
        check_node(session, changes["node_id"])
    for field, value in changes.items():
        setattr(port, field, value)
    session.add(port)
    commit_unique(session, f"a port with address {changes.get('address')} exists")
    return PortPublic.from_row(port)


@router.delete("/{port_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_port(port_id: str, session: SessionDep, _: AdminDep) -> None:
    port = get_port(session, port_id)
    refuse_if_bound(port)
    session.delete(port)
    session.commit()
