"""Flavors: the sizes of machine a user can ask for (admins define them, anyone reads)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from fastapi import APIRouter, Query, status
from sqlalchemy import bindparam, or_
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from libs.db import Flavor, Instance
from libs.errors import NotFound

from ..deps import AdminDep, ContextDep, SessionDep
from ..queries import PageDep, commit_unique, paginate, release_from_instances
from ..schemas import FlavorCreate, FlavorList, FlavorPublic

router = APIRouter(prefix="/v1/flavors", tags=["flavors"])


_FLAVOR = Flavor.metadata.tables["flavor"]
#: The ids of the flavor whose id or name is ``flavor_ref``: one query for both (users mostly
#: name flavors: a miss by id, then a look by name, cost two), built once.
FLAVOR_IDS = (
    sa_select(_FLAVOR.c.id)
    .where(or_(_FLAVOR.c.id == bindparam("flavor_ref"), _FLAVOR.c.name == bindparam("flavor_ref")))
    .limit(2)
)


def find_flavor_id(session: Session, ref: str) -> str | None:
    """The id of the flavor whose id, or else whose name, is ``ref``."""
    return choose_flavor_id(
        session.connection().execute(FLAVOR_IDS, {"flavor_ref": ref}).scalars(), ref
    )


def choose_flavor_id(ids: Iterable[str], ref: str) -> str | None:
    """Of the ids that :data:`FLAVOR_IDS` found for ``ref``, the flavor's."""
    found = list(ids)
    return ref if ref in found else next(iter(found), None)


def find_flavor(session: Session, ref: str) -> Flavor | None:
    """The flavor whose id, or else whose name, is ``ref``."""
    flavor_id = find_flavor_id(session, ref)
    return None if flavor_id is None else session.get(Flavor, flavor_id)


def get_flavor(session: Session, ref: str) -> Flavor:
    flavor = find_flavor(session, ref)
    if flavor is None:
        raise NotFound(f"flavor {ref!r} not found")
    return flavor


@router.post("", status_code=status.HTTP_201_CREATED)
def create_flavor(body: FlavorCreate, session: SessionDep, _: AdminDep) -> FlavorPublic:
    flavor = Flavor.model_validate(body.model_dump())
    session.add(flavor)
    commit_unique(session, f"a flavor named {body.name!r} exists")
    return FlavorPublic.from_row(flavor)


@router.get("")
def list_flavors(
    session: SessionDep,
    _: ContextDep,
    page: PageDep,
    resource_class: Annotated[str | None, Query(max_length=80)] = None,
) -> FlavorList:
    statement = select(Flavor)
    if resource_class is not None:
        statement = statement.where(col(Flavor.resource_class) == resource_class)
    rows, next_marker = paginate(session, statement, col(Flavor.id), page)
    return FlavorList(flavors=[FlavorPublic.from_row(r) for r in rows], next_marker=next_marker)


@router.get("/{flavor_ref}")
def show_flavor(flavor_ref: str, session: SessionDep, _: ContextDep) -> FlavorPublic:
    """A flavor by id or name."""
    return FlavorPublic.from_row(get_flavor(session, flavor_ref))


@router.delete("/{flavor_ref}", status_code=status.HTTP_204_NO_CONTENT)
def delete_flavor(flavor_ref: str, session: SessionDep, _: AdminDep) -> None:
    flavor = get_flavor(session, flavor_ref)
    release_from_instances(session, Instance.flavor_id, flavor.id, f"flavor {flavor.name!r}")
    session.delete(flavor)
    session.commit()
