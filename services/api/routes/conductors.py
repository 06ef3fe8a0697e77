"""Conductors (admin only): which conductor processes heartbeat, and whether they are alive."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter
from sqlmodel import col, select

from libs.db import Conductor, as_utc, utcnow

from ..deps import AdminDep, SessionDep, SettingsDep
from ..queries import PageDep, paginate
from ..schemas import ConductorList, ConductorPublic

router = APIRouter(prefix="/v1/conductors", tags=["conductors"])


@router.get("")
def list_conductors(
    session: SessionDep, _: AdminDep, settings: SettingsDep, page: PageDep
) -> ConductorList:
    """Every conductor that ever registered; ``alive`` as the hash ring sees it."""
    since = utcnow() - timedelta(seconds=settings.conductor_heartbeat_timeout)
    rows, next_marker = paginate(session, select(Conductor), col(Conductor.hostname), page)
    return ConductorList(
        conductors=[
            ConductorPublic.from_row(r, alive=r.online and as_utc(r.updated_at) >= since)
            for r in rows
        ],
        next_marker=next_marker,
    )
