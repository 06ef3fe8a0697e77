"""Query helpers the routes share: limit/marker pagination, commits of unique names, and
letting go of what only deleted instances still refer to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Query
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, delete, select
from sqlmodel.sql.expression import SelectOfScalar

from libs.db import Instance, InstanceStatus

from .errors import Duplicate, InUse

T = TypeVar("T")

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


@dataclass(frozen=True)
class PageParams:
    limit: int
    marker: str | None


async def page_params(
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description="Items per page (1..1000)")
    ] = DEFAULT_LIMIT,
    marker: Annotated[
        str | None, Query(max_length=255, description="Id of the last item seen")
    ] = None,
) -> PageParams:
    return PageParams(limit=limit, marker=marker)


PageDep = Annotated[PageParams, Depends(page_params)]


def paginate(
    session: Session, statement: SelectOfScalar[T], key: Any, page: PageParams
) -> tuple[list[T], str | None]:
    """One page of ``statement`` ordered by ``key`` (a unique string column), and the
    marker of the next page (None when this is the last one).

    One row more than asked for is read, so ``next_marker`` is only set when there is
    something after it.
    """
    if page.marker is not None:
        statement = statement.where(key > page.marker)
    rows = list(session.exec(statement.order_by(key).limit(page.limit + 1)).all())
    if len(rows) <= page.limit:
        return rows, None
    rows = rows[: page.limit]
    return rows, str(getattr(rows[-1], key.key))


def commit_unique(session: Session, reason: str) -> None:
    """Commit; a unique violation (a concurrent request took the name) is a 409 ``duplicate``."""
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Duplicate(reason) from None


def release_from_instances(session: Session, column: Any, value: str, what: str) -> None:
    """Before deleting ``what``, which instances refer to through ``column`` (e.g.
    ``Instance.flavor_id == value``): refuse (409 ``in_use``) while one not DELETED does;
    else remove the deleted ones' records, which would otherwise pin it forever."""
    in_use = session.exec(
        select(Instance.id)
        .where(col(column) == value, col(Instance.status) != InstanceStatus.DELETED)
        .limit(1)
    ).first()
    if in_use is not None:
        raise InUse(f"{what} is used by instance {in_use}")
    session.exec(
        delete(Instance).where(col(column) == value, col(Instance.status) == InstanceStatus.DELETED)
    )
