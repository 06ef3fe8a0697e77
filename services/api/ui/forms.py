"""The dashboard's forms: sign in and out, and every change, each made by the REST API's
route function with the viewer's context, after the form's anti-forgery token is checked.

A form sent by the page's script (header ``X-Tetsu-Fragment: 1``) is answered with the
changed table row, or the REST API's error body; a plain form submission with a redirect,
or the page again with the error shown.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlmodel import Session
from starlette.datastructures import FormData

from libs.errors import Unauthorized

from ..deps import (
    ConductorAPIDep,
    SchedulerAPIDep,
    SessionDep,
    SettingsDep,
    context_for_token,
)
from ..errors import InvalidInput
from ..routes import instances, networks, nodes, ports
from ..schemas import (
    InstanceCreate,
    NetworkCreate,
    NodeCreate,
    NodeUpdate,
    PortCreate,
    PowerRequest,
    ProvisionRequest,
    normalise_mac,
)
from .pages import instance_rows, instances_context, list_nodes, networks_context, node_rows
from .session import AdminViewerDep, CheckedFormDep, Viewer, ViewerDep, clear_session, set_session
from .views import SHOWN_ERRORS, Failure, failure_of, failure_response, render, wants_fragment

router = APIRouter(prefix="/ui", include_in_schema=False)

#: Longer than any token tetsu issues; a longer "token" is refused without a lookup.
MAX_TOKEN_LENGTH = 512


def text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def back_to(form: FormData, default: str) -> str:
    """Where a plain form submission returns to: the page it names, if it is a dashboard
    page (never another site)."""
    target = text(form, "next")
    if target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return default


def failed(
    request: Request,
    session: Session,
    viewer: Viewer,
    exc: Exception,
    template: str,
    context: Callable[[Session, Viewer], dict[str, Any]],
    **extra: Any,
) -> Response:
    """A change the REST route refused: its reason, on the page or to the script."""
    session.rollback()
    failure = failure_of(exc)
    if wants_fragment(request):
        return failure_response(request, failure)
    page = context(session, viewer)
    return render(request, template, viewer, status=failure.status, error=failure, **page, **extra)


@router.post("/login")
def sign_in(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    token: Annotated[str, Form()] = "",
) -> Response:
    """Check the token as the REST API does, then keep it in the session cookie."""
    token = token.strip()
    failure = None
    if not token or len(token) > MAX_TOKEN_LENGTH:
        failure = Failure(400, "invalid_input", "token: enter the token you were given")
    else:
        try:
            context_for_token(request, session, settings, token)
        except Unauthorized as exc:
            failure = Failure(exc.status, exc.code, exc.reason)
    if failure is not None:
        return render(request, "login.html", None, status=failure.status, error=failure)
    response = RedirectResponse("/ui/", status_code=303)
    set_session(response, request, token)
    return response


@router.post("/logout")
def sign_out(_: CheckedFormDep) -> Response:
    response = RedirectResponse("/ui/login", status_code=303)
    clear_session(response)
    return response


# Instances


@router.post("/instances")
def create_instance(
    request: Request,
    form: CheckedFormDep,
    session: SessionDep,
    viewer: ViewerDep,
    settings: SettingsDep,
    scheduler: SchedulerAPIDep,
) -> Response:
    chosen = [n for n in form.getlist("networks") if isinstance(n, str) and n]
    try:
        body = InstanceCreate(
            name=text(form, "name"),
            flavor=text(form, "flavor"),
            image=text(form, "image"),
            networks=chosen,
        )
        created = instances.create_instance(
            body, Response(), session, viewer.ctxt, settings, scheduler
        )
    except SHOWN_ERRORS as exc:
        return failed(request, session, viewer, exc, "instances.html", instances_context)
    if wants_fragment(request):
        response = instance_rows(request, session, viewer, [created])
        response.status_code = 202
        return response
    return RedirectResponse("/ui/", status_code=303)


@router.post("/instances/{instance_id}/delete")
def delete_instance(
    instance_id: str,
    request: Request,
    _: CheckedFormDep,
    session: SessionDep,
    viewer: ViewerDep,
    conductor: ConductorAPIDep,
) -> Response:
    try:
        deleted = instances.delete_instance(instance_id, session, viewer.ctxt, conductor)
    except SHOWN_ERRORS as exc:
        return failed(request, session, viewer, exc, "instances.html", instances_context)
    if wants_fragment(request):
        response = instance_rows(request, session, viewer, [deleted])
        response.status_code = 202
        return response
    return RedirectResponse("/ui/", status_code=303)


# Networks


@router.post("/networks")
def create_network(
    request: Request, form: CheckedFormDep, session: SessionDep, viewer: ViewerDep
) -> Response:
    try:
        networks.create_network(NetworkCreate(name=text(form, "name")), session, viewer.ctxt)
    except SHOWN_ERRORS as exc:
        return failed(request, session, viewer, exc, "networks.html", networks_context)
    return RedirectResponse("/ui/networks", status_code=303)


@router.post("/networks/{network_id}/delete")
def delete_network(
    network_id: str,
    request: Request,
    _: CheckedFormDep,
    session: SessionDep,
    viewer: ViewerDep,
) -> Response:
    try:
        networks.delete_network(network_id, session, viewer.ctxt)
    except SHOWN_ERRORS as exc:
        return failed(request, session, viewer, exc, "networks.html", networks_context)
    return RedirectResponse("/ui/networks", status_code=303)


# Nodes (admin)


def nodes_context(session: Session, viewer: Viewer) -> dict[str, Any]:
    return {"nodes": list_nodes(session, viewer)}


def enrollment(form: FormData) -> tuple[NodeCreate, list[str]]:
    """The node and the port MAC addresses an enrol form asks for."""
    raw_info = text(form, "driver_info") or "{}"
    try:
        driver_info = json.loads(raw_info)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"driver_info: not valid JSON ({exc.msg} at character {exc.pos})"
        ) from None
    if not isinstance(driver_info, dict):
        raise InvalidInput("driver_info: must be a JSON object")
    properties: dict[str, int] = {}
    for name in ("cpus", "memory_mb", "disk_gb"):
        try:
            properties[name] = int(text(form, name))
        except ValueError:
            raise InvalidInput(f"properties.{name}: must be a whole number") from None
    body = NodeCreate.model_validate(
        {
            "name": text(form, "name"),
            "resource_class": text(form, "resource_class"),
            "properties": properties,
            "driver_info": driver_info,
            **{
                f"{kind}_interface": text(form, f"{kind}_interface") or "fake"
                for kind in ("power", "boot", "deploy", "management")
            },
        }
    )
    macs = []
    for address in re.split(r"[\s,]+", text(form, "macs")):
        if address:
            try:
                macs.append(normalise_mac(address))
            except ValueError as exc:
                raise InvalidInput(f"ports: {address!r}: {exc}") from None
    return body, macs


@router.post("/nodes")
def enroll_node(
    request: Request, form: CheckedFormDep, session: SessionDep, viewer: AdminViewerDep
) -> Response:
    """Enrol a node and its ports; if a port is refused, the node is not kept."""
    try:
        body, macs = enrollment(form)
        created = nodes.create_node(body, session, viewer.ctxt)
        try:
            for mac in macs:
                ports.create_port(PortCreate(address=mac, node_id=created.id), session, viewer.ctxt)
        except SHOWN_ERRORS:
            session.rollback()
            nodes.delete_node(created.id, session, viewer.ctxt)
            raise
    except SHOWN_ERRORS as exc:
        return failed(request, session, viewer, exc, "nodes.html", nodes_context)
    if wants_fragment(request):
        response = node_rows(request, session, viewer, [created])
        response.status_code = 201
        return response
    return RedirectResponse(f"/ui/nodes/{created.id}", status_code=303)


def node_changed(
    request: Request,
    session: Session,
    viewer: Viewer,
    form: FormData,
    node_ref: str,
    change: Callable[[], object],
) -> Response:
    try:
        change()
        if wants_fragment(request):
            return node_rows(
                request, session, viewer, [nodes.show_node(node_ref, session, viewer.ctxt)]
            )
    except SHOWN_ERRORS as exc:
        return failed(request, session, viewer, exc, "nodes.html", nodes_context)
    return RedirectResponse(back_to(form, "/ui/nodes"), status_code=303)


@router.post("/nodes/{node_ref}/maintenance")
def set_maintenance(
    node_ref: str,
    request: Request,
    form: CheckedFormDep,
    session: SessionDep,
    viewer: AdminViewerDep,
) -> Response:
    """Put a node in maintenance (with an optional reason) or take it out."""

    def change() -> object:
        wanted = text(form, "maintenance") == "true"
        update: dict[str, Any] = {"maintenance": wanted}
        if wanted:
            update["maintenance_reason"] = text(form, "reason") or None
        return nodes.update_node(node_ref, NodeUpdate(**update), session, viewer.ctxt)

    return node_changed(request, session, viewer, form, node_ref, change)


@router.post("/nodes/{node_ref}/provision")
def set_provision_state(
    node_ref: str,
    request: Request,
    form: CheckedFormDep,
    session: SessionDep,
    viewer: AdminViewerDep,
    conductor: ConductorAPIDep,
) -> Response:
    def change() -> object:
        body = ProvisionRequest.model_validate({"target": text(form, "target")})
        return nodes.set_provision_state(node_ref, body, session, viewer.ctxt, conductor)

    return node_changed(request, session, viewer, form, node_ref, change)


@router.post("/nodes/{node_ref}/power")
def set_power_state(
    node_ref: str,
    request: Request,
    form: CheckedFormDep,
    session: SessionDep,
    viewer: AdminViewerDep,
    conductor: ConductorAPIDep,
) -> Response:
    def change() -> object:
        body = PowerRequest.model_validate({"target": text(form, "target")})
        return nodes.set_power_state(node_ref, body, session, viewer.ctxt, conductor)

    return node_changed(request, session, viewer, form, node_ref, change)
