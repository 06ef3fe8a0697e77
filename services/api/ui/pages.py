"""The dashboard's pages and the table rows its script fetches. Every list comes from the
REST API's route function, called with the viewer's context."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session

from libs.db import ImageStatus

from ..deps import SessionDep, SettingsDep
from ..routes import conductors, flavors, images, instances, networks, nodes, ports, projects
from ..schemas import (
    FlavorPublic,
    ImagePublic,
    InstancePublic,
    NetworkPublic,
    NodePublic,
)
from .session import AdminViewerDep, Viewer, ViewerDep
from .views import SHOWN_ERRORS, every_page, failure_of, failure_response, render

router = APIRouter(prefix="/ui", include_in_schema=False)


@dataclass(frozen=True)
class Names:
    """Names to show instead of ids, for what the viewer may see."""

    flavors: dict[str, str]
    images: dict[str, str]
    networks: dict[str, str]
    nodes: dict[str, str]
    projects: dict[str, str]


def list_flavors(session: Session, viewer: Viewer) -> list[FlavorPublic]:
    def page(params: Any) -> tuple[list[FlavorPublic], str | None]:
        found = flavors.list_flavors(session, viewer.ctxt, params, None)
        return found.flavors, found.next_marker

    return every_page(page)


def list_images(session: Session, viewer: Viewer) -> list[ImagePublic]:
    def page(params: Any) -> tuple[list[ImagePublic], str | None]:
        found = images.list_images(session, viewer.ctxt, params, None)
        return found.images, found.next_marker

    return every_page(page)


def list_networks(session: Session, viewer: Viewer) -> list[NetworkPublic]:
    def page(params: Any) -> tuple[list[NetworkPublic], str | None]:
        found = networks.list_networks(session, viewer.ctxt, params, None, None)
        return found.networks, found.next_marker

    return every_page(page)


def list_instances(session: Session, viewer: Viewer) -> list[InstancePublic]:
    def page(params: Any) -> tuple[list[InstancePublic], str | None]:
        found = instances.list_instances(session, viewer.ctxt, params, None, None)
        return found.instances, found.next_marker

    return every_page(page)


def list_nodes(session: Session, viewer: Viewer) -> list[NodePublic]:
    """Every node; the caller has checked that the viewer is an admin."""

    def page(params: Any) -> tuple[list[NodePublic], str | None]:
        found = nodes.list_nodes(session, viewer.ctxt, params, None, None, None, None)
        return found.nodes, found.next_marker

    return every_page(page)


def names_for(
    session: Session,
    viewer: Viewer,
    flavor_list: list[FlavorPublic] | None = None,
    image_list: list[ImagePublic] | None = None,
    network_list: list[NetworkPublic] | None = None,
) -> Names:
    """The names the viewer may see (the lists given are not read again)."""
    node_names: dict[str, str] = {}
    project_names: dict[str, str] = {}
    if viewer.is_admin:
        node_names = {n.id: n.name for n in list_nodes(session, viewer)}

        def page(params: Any) -> tuple[list[Any], str | None]:
            found = projects.list_projects(session, viewer.ctxt, params)
            return found.projects, found.next_marker

        project_names = {p.id: p.name for p in every_page(page)}
    if flavor_list is None:
        flavor_list = list_flavors(session, viewer)
    if image_list is None:
        image_list = list_images(session, viewer)
    if network_list is None:
        network_list = list_networks(session, viewer)
    return Names(
        flavors={f.id: f.name for f in flavor_list},
        images={i.id: i.name for i in image_list},
        networks={n.id: n.name for n in network_list},
        nodes=node_names,
        projects=project_names,
    )


def instances_context(session: Session, viewer: Viewer) -> dict[str, Any]:
    """What the instances page shows: the instances, and the choices of the create form."""
    flavor_list = list_flavors(session, viewer)
    image_list = list_images(session, viewer)
    network_list = list_networks(session, viewer)
    return {
        "instances": list_instances(session, viewer),
        "flavors": flavor_list,
        "images": [i for i in image_list if i.status == ImageStatus.ACTIVE],
        "networks": network_list,
        "names": names_for(session, viewer, flavor_list, image_list, network_list),
    }


def instance_rows(
    request: Request, session: Session, viewer: Viewer, rows: list[InstancePublic]
) -> HTMLResponse:
    return render(
        request,
        "instance_rows.html",
        viewer,
        instances=rows,
        names=names_for(session, viewer),
    )


def node_rows(
    request: Request, session: Session, viewer: Viewer, rows: list[NodePublic]
) -> HTMLResponse:
    return render(request, "node_rows.html", viewer, nodes=rows)


@router.get("")
def dashboard_root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/")
def instances_page(request: Request, session: SessionDep, viewer: ViewerDep) -> HTMLResponse:
    return render(request, "instances.html", viewer, **instances_context(session, viewer))


@router.get("/instances/rows")
def instances_rows(request: Request, session: SessionDep, viewer: ViewerDep) -> HTMLResponse:
    """Every row of the instances table (the script reconciles the page with it)."""
    return instance_rows(request, session, viewer, list_instances(session, viewer))


@router.get("/instances/{instance_id}/row")
def instance_row(
    instance_id: str, request: Request, session: SessionDep, viewer: ViewerDep
) -> Response:
    """One instance's row, as the REST API would show that instance to the viewer."""
    try:
        found = instances.show_instance(instance_id, session, viewer.ctxt)
    except SHOWN_ERRORS as exc:
        return failure_response(request, failure_of(exc))
    return instance_rows(request, session, viewer, [found])


@router.get("/login")
def login_page(request: Request) -> HTMLResponse:
    return render(request, "login.html", None)


@router.get("/networks")
def networks_page(request: Request, session: SessionDep, viewer: ViewerDep) -> HTMLResponse:
    return render(request, "networks.html", viewer, **networks_context(session, viewer))


def networks_context(session: Session, viewer: Viewer) -> dict[str, Any]:
    network_list = list_networks(session, viewer)
    return {
        "networks": network_list,
        "names": names_for(session, viewer, network_list=network_list),
    }


@router.get("/images")
def images_page(request: Request, session: SessionDep, viewer: ViewerDep) -> HTMLResponse:
    return render(request, "images.html", viewer, images=list_images(session, viewer))


@router.get("/nodes")
def nodes_page(request: Request, session: SessionDep, viewer: AdminViewerDep) -> HTMLResponse:
    return render(request, "nodes.html", viewer, nodes=list_nodes(session, viewer))


@router.get("/nodes/rows")
def nodes_rows(request: Request, session: SessionDep, viewer: AdminViewerDep) -> HTMLResponse:
    return node_rows(request, session, viewer, list_nodes(session, viewer))


@router.get("/nodes/{node_ref}/row")
def node_row(
    node_ref: str, request: Request, session: SessionDep, viewer: AdminViewerDep
) -> Response:
    try:
        found = nodes.show_node(node_ref, session, viewer.ctxt)
    except SHOWN_ERRORS as exc:
        return failure_response(request, failure_of(exc))
    return node_rows(request, session, viewer, [found])


@router.get("/nodes/{node_ref}")
def node_page(
    node_ref: str, request: Request, session: SessionDep, viewer: AdminViewerDep
) -> HTMLResponse:
    """A node's details, its ports and its event history (read from /v1/events)."""
    try:
        found = nodes.show_node(node_ref, session, viewer.ctxt)
    except SHOWN_ERRORS as exc:
        failure = failure_of(exc)
        return render(request, "refused.html", viewer, status=failure.status, error=failure)

    def page(params: Any) -> tuple[list[Any], str | None]:
        found_ports = ports.list_ports(session, viewer.ctxt, params, found.id, None)
        return found_ports.ports, found_ports.next_marker

    return render(request, "node.html", viewer, node=found, ports=every_page(page))


@router.get("/conductors")
def conductors_page(
    request: Request, session: SessionDep, viewer: AdminViewerDep, settings: SettingsDep
) -> HTMLResponse:
    def page(params: Any) -> tuple[list[Any], str | None]:
        found = conductors.list_conductors(session, viewer.ctxt, settings, params)
        return found.conductors, found.next_marker

    return render(request, "conductors.html", viewer, conductors=every_page(page))
