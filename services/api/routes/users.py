"""Users (admin only): a name, a password (write-only) and a role in one project."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from sqlmodel import Session, col, delete, select

from libs.db import Project, Token, User
from libs.errors import NotFound

from ..auth import hash_password
from ..deps import AdminDep, SessionDep, token_cache_of
from ..errors import InvalidInput
from ..queries import PageDep, commit_unique, paginate
from ..schemas import UserCreate, UserList, UserPublic

router = APIRouter(prefix="/v1/users", tags=["users"])


def get_user(session: Session, user_id: str) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id!r} not found")
    return user


@router.post("", status_code=status.HTTP_201_CREATED)
def create_user(body: UserCreate, session: SessionDep, _: AdminDep) -> UserPublic:
    if session.get(Project, body.project_id) is None:
        raise InvalidInput(f"project {body.project_id!r} not found")
    user = User(
        name=body.name,
        project_id=body.project_id,
        role=body.role,
        password_hash=hash_password(body.password),
    )
    session.add(user)
    commit_unique(session, f"a user named {body.name!r} exists")
    return UserPublic.from_row(user)


@router.get("")
def list_users(
    session: SessionDep,
    _: AdminDep,
    page: PageDep,
    project_id: Annotated[str | None, Query(max_length=36)] = None,
) -> UserList:
    statement = select(User)
    if project_id is not None:
        statement = statement.where(col(User.project_id) == project_id)
    rows, next_marker = paginate(session, statement, col(User.id), page)
    return UserList(users=[UserPublic.from_row(r) for r in rows], next_marker=next_marker)


@router.get("/{user_id}")
def show_user(user_id: str, session: SessionDep, _: AdminDep) -> UserPublic:
    return UserPublic.from_row(get_user(session, user_id))


@router.delete("/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_user(request: Request, user_id: str, session: SessionDep, _: AdminDep) -> None:
    user = get_user(session, user_id)
    # Their tokens stop working with them (in the other API processes once their token
    # cache forgets them: TETSU_TOKEN_CACHE_SECONDS).
    session.exec(delete(Token).where(col(Token.user_id) == user.id))
    session.delete(user)
    session.commit()
    token_cache_of(request).forget_user(user_id)
