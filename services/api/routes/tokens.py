"""Log in: a user name and password exchanged for a bearer token."""

from __future__ import annotations

from fastapi import APIRouter, status

from libs.errors import Unauthorized

from ..auth import authenticate, issue_token
from ..deps import NO_TOKEN, SessionDep, SettingsDep
from ..schemas import TokenCreate, TokenPublic

router = APIRouter(prefix="/v1/tokens", tags=["tokens"])


@router.post("", status_code=status.HTTP_201_CREATED, openapi_extra=NO_TOKEN)
def create_token(body: TokenCreate, session: SessionDep, settings: SettingsDep) -> TokenPublic:
    user = authenticate(session, body.name, body.password)
    if user is None:
        # The same answer for an unknown name and a wrong password.
        raise Unauthorized("wrong user name or password")
    secret, token = issue_token(session, user, settings.token_ttl_seconds)
    session.commit()
    return TokenPublic(
        token=secret,
        expires_at=token.expires_at,
        user_id=user.id,
        project_id=user.project_id,
        role=user.role,
    )
