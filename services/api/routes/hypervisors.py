"""Hypervisors (admin only): the hosts whose conductors run VM nodes made on demand,
with the capacity each reports, what its VM nodes hold, and what is free."""

from __future__ import annotations

from fastapi import APIRouter, status
from sqlalchemy import delete, func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from libs.db import Conductor, Hypervisor, Node, as_utc
from libs.errors import Conflict, NotFound
from services.conductor.rpcapi import alive

from ..deps import AdminDep, SessionDep, SettingsDep
from ..queries import PageDep, paginate
from ..schemas import HypervisorList, HypervisorPublic, HypervisorResources

router = APIRouter(prefix="/v1/hypervisors", tags=["hypervisors"])


def get_hypervisor(session: Session, ref: str) -> Hypervisor:
    """The hypervisor whose id, or else whose name, is ``ref``."""
    row = (
        session.get(Hypervisor, ref)
        or session.exec(select(Hypervisor).where(col(Hypervisor.name) == ref)).first()
    )
    if row is None:
        raise NotFound(f"hypervisor {ref!r} not found")
    return row


def _public(
    session: Session, rows: list[Hypervisor], heartbeat_timeout: float
) -> list[HypervisorPublic]:
    ids = [row.id for row in rows]
    held = {
        hypervisor_id: (int(cpus), int(memory_mb), int(disk_gb), int(count))
        for hypervisor_id, cpus, memory_mb, disk_gb, count in session.execute(
            sa_select(
                col(Node.hypervisor_id),
                func.sum(Node.cpus),
                func.sum(Node.memory_mb),
                func.sum(Node.disk_gb),
                func.count(col(Node.id)),
            )
            .where(col(Node.hypervisor_id).in_(ids))
            .group_by(col(Node.hypervisor_id))
        ).all()
        if hypervisor_id is not None
    }
    live = set(session.exec(select(Conductor.hostname).where(*alive(heartbeat_timeout))).all())
    result = []
    for row in rows:
        cpus, memory_mb, disk_gb, count = held.get(row.id, (0, 0, 0, 0))
        result.append(
            HypervisorPublic(
                id=row.id,
                name=row.name,
                conductor=row.conductor,
                alive=row.conductor in live,
                resource_class=row.resource_class,
                capacity=HypervisorResources(
                    vcpus=row.vcpus, memory_mb=row.memory_mb, disk_gb=row.disk_gb
                ),
                used=HypervisorResources(vcpus=cpus, memory_mb=memory_mb, disk_gb=disk_gb),
                free=HypervisorResources(
                    vcpus=row.vcpus - cpus,
                    memory_mb=row.memory_mb - memory_mb,
                    disk_gb=row.disk_gb - disk_gb,
                ),
                vm_nodes=count,
                bridge=row.bridge,
                switch_id=row.switch_id,
                updated_at=as_utc(row.updated_at),
                created_at=as_utc(row.created_at),
            )
        )
    return result


@router.get("")
def list_hypervisors(
    session: SessionDep, _: AdminDep, settings: SettingsDep, page: PageDep
) -> HypervisorList:
    """Every hypervisor that reported, by name, with its capacity, use and free room."""
    rows, next_marker = paginate(session, select(Hypervisor), col(Hypervisor.name), page)
    return HypervisorList(
        hypervisors=_public(session, rows, settings.conductor_heartbeat_timeout),
        next_marker=next_marker,
    )


@router.get("/{hypervisor_ref}")
def show_hypervisor(
    hypervisor_ref: str, session: SessionDep, _: AdminDep, settings: SettingsDep
) -> HypervisorPublic:
    """One hypervisor, by id or name."""
    row = get_hypervisor(session, hypervisor_ref)
    return _public(session, [row], settings.conductor_heartbeat_timeout)[0]


@router.delete("/{hypervisor_ref}", status_code=status.HTTP_204_NO_CONTENT)
def delete_hypervisor(hypervisor_ref: str, session: SessionDep, _: AdminDep) -> None:
    """Forget a hypervisor that has no VM nodes (409 while it has some). Its conductor,
    if it still runs with ``hypervisor = true``, reports it again at its next start."""
    row = get_hypervisor(session, hypervisor_ref)
    vms = session.exec(
        select(func.count(col(Node.id))).where(col(Node.hypervisor_id) == row.id)
    ).one()
    if vms:
        raise Conflict(f"hypervisor {row.name!r} still has {vms} VM node(s); delete them first")
    session.exec(delete(Hypervisor).where(col(Hypervisor.id) == row.id))
    session.commit()
