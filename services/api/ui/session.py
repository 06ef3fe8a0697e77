"""Who is looking at a dashboard page: the session cookie checked exactly as a bearer
token is (``deps.context_for_token``), the admin check of the REST API (``deps.ensure_admin``),
and the anti-forgery token every form that changes something must carry."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.datastructures import FormData
from starlette.responses import Response

from libs.db import Project, User
from libs.errors import Forbidden, Unauthorized
from libs.rpc import RequestContext

from ..auth import SESSION_COOKIE, csrf_token
from ..deps import SessionDep, SettingsDep, context_for_token, ensure_admin

#: The form field that carries the anti-forgery token.
CSRF_FIELD = "csrf_token"


class SignInRequired(Exception):
    """No session, or its token expired: the browser is sent to the sign-in page."""


class AdminOnly(Exception):
    """A member asked for an operator's page: answered 403 with a page that says so."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ForgedForm(Exception):
    """A form came without this session's anti-forgery token: answered 403."""


@dataclass(frozen=True)
class Viewer:
    """The signed-in caller of a page: the context the REST routes check, and the
    anti-forgery token the page's forms carry."""

    ctxt: RequestContext
    csrf: str
    user_name: str
    project_name: str

    @property
    def is_admin(self) -> bool:
        return self.ctxt.is_admin


def set_session(response: Response, request: Request, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        path="/",
        secure=request.url.scheme == "https",
    )


def clear_session(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")


def get_viewer(request: Request, session: SessionDep, settings: SettingsDep) -> Viewer:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise SignInRequired
    try:
        ctxt = context_for_token(request, session, settings, token)
    except Unauthorized:
        raise SignInRequired from None
    user = session.get(User, ctxt.user_id) if ctxt.user_id else None
    project = session.get(Project, ctxt.project_id) if ctxt.project_id else None
    return Viewer(
        ctxt=ctxt,
        csrf=csrf_token(token),
        user_name=user.name if user else "bootstrap admin",
        project_name=project.name if project else "",
    )


ViewerDep = Annotated[Viewer, Depends(get_viewer)]


def get_admin(viewer: ViewerDep) -> Viewer:
    """The viewer, if the REST API's own admin check lets them through."""
    try:
        ensure_admin(viewer.ctxt)
    except Forbidden as exc:
        raise AdminOnly(exc.reason) from None
    return viewer


AdminViewerDep = Annotated[Viewer, Depends(get_admin)]


async def checked_form(request: Request, viewer: ViewerDep) -> FormData:
    """The submitted form of a signed-in viewer, once its anti-forgery token matches the
    session's."""
    form = await request.form()
    sent = form.get(CSRF_FIELD)
    if not isinstance(sent, str):
        raise ForgedForm
    if not hmac.compare_digest(sent.encode("utf-8"), viewer.csrf.encode("utf-8")):
        raise ForgedForm
    return form


CheckedFormDep = Annotated[FormData, Depends(checked_form)]
