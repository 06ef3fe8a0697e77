"""Tenant networks: each is one segmentation (VLAN) id on the switches, owned by a project."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from libs.db import Instance, InstanceStatus, Network, Port, Project
from libs.errors import Conflict, Forbidden, NotFound
from libs.rpc import RequestContext

from ..deps import ContextDep, SessionDep, listed_project, may_see
from ..errors import Duplicate, InUse, InvalidInput
from ..queries import PageDep, paginate
from ..schemas import NetworkCreate, NetworkList, NetworkPublic

router = APIRouter(prefix="/v1/networks", tags=["networks"])

#: Segmentation ids handed out automatically (admins may pick any of 1..4094).
AUTO_SEGMENTS = range(100, 4000)
#: A concurrent request can take the id we picked; pick again this many times.
ALLOCATION_ATTEMPTS = 10


def get_network(session: Session, network_id: str, ctxt: RequestContext) -> Network:
    """A network of the caller's project (any network for an admin)."""
    network = session.get(Network, network_id)
    if network is None or not may_see(ctxt, network.project_id):
        raise NotFound(f"network {network_id!r} not found")
    return network


def lowest_free_segment(session: Session) -> int:
    used = set(
        session.exec(
            select(Network.segmentation_id).where(
                col(Network.segmentation_id) >= AUTO_SEGMENTS.start,
                col(Network.segmentation_id) < AUTO_SEGMENTS.stop,
            )
        ).all()
    )
    for candidate in AUTO_SEGMENTS:
        if candidate not in used:
            return candidate
    raise Conflict(f"no free segmentation id in {AUTO_SEGMENTS.start}..{AUTO_SEGMENTS.stop - 1}")


@router.post("", status_code=status.HTTP_201_CREATED)
def create_network(body: NetworkCreate, session: SessionDep, ctxt: ContextDep) -> NetworkPublic:
    if (body.segmentation_id is not None or body.project_id is not None) and not ctxt.is_admin:
        raise Forbidden("only an admin may choose segmentation_id or project_id")
    project_id = body.project_id or ctxt.project_id
    if project_id is None or session.get(Project, project_id) is None:
        raise InvalidInput(f"project {project_id!r} not found")
    for _attempt in range(ALLOCATION_ATTEMPTS):
        segment = body.segmentation_id or lowest_free_segment(session)
        network = Network(name=body.name, project_id=project_id, segmentation_id=segment)
        session.add(network)
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            if body.segmentation_id is not None:
                raise Duplicate(f"segmentation id {segment} is in use") from None
            continue  # another request took it between our read and our insert
        return NetworkPublic.from_row(network)
    raise Conflict("could not allocate a segmentation id; try again")


@router.get("")
def list_networks(
    session: SessionDep,
    ctxt: ContextDep,
    page: PageDep,
    name: Annotated[str | None, Query(max_length=255)] = None,
    project_id: Annotated[str | None, Query(max_length=36, description="Admins only")] = None,
) -> NetworkList:
    statement = select(Network)
    project_id = listed_project(ctxt, project_id, "networks")
    if project_id is not None:
        statement = statement.where(col(Network.project_id) == project_id)
    if name is not None:
        statement = statement.where(col(Network.name) == name)
    rows, next_marker = paginate(session, statement, col(Network.id), page)
    return NetworkList(networks=[NetworkPublic.from_row(r) for r in rows], next_marker=next_marker)


@router.get("/{network_id}")
def show_network(network_id: str, session: SessionDep, ctxt: ContextDep) -> NetworkPublic:
    return NetworkPublic.from_row(get_network(session, network_id, ctxt))


@router.delete("/{network_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_network(network_id: str, session: SessionDep, ctxt: ContextDep) -> None:
    network = get_network(session, network_id, ctxt)
    # network_ids is a JSON list, which SQLite and PostgreSQL query differently: read them.
    live = session.exec(
        select(Instance.id, Instance.network_ids).where(
            col(Instance.status) != InstanceStatus.DELETED
        )
    ).all()
    for instance_id, network_ids in live:
        if network.id in (network_ids or []):
            raise InUse(f"network {network.name!r} is used by instance {instance_id}")
    bound = session.exec(select(Port.id).where(col(Port.network_id) == network.id).limit(1))
    if bound.first() is not None:
        raise InUse(f"network {network.name!r} still has ports bound to it")
    session.delete(network)
    session.commit()
