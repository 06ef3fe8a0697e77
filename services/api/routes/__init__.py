"""The REST API v1, one module per resource; :data:`ROUTERS` lists them for the app."""

from __future__ import annotations

from fastapi import APIRouter

from . import (
    conductors,
    events,
    flavors,
    hypervisors,
    images,
    instances,
    networks,
    nodes,
    ports,
    projects,
    tokens,
    users,
)

ROUTERS: tuple[APIRouter, ...] = (
    projects.router,
    users.router,
    tokens.router,
    flavors.router,
    images.router,
    networks.router,
    nodes.router,
    hypervisors.router,
    ports.router,
    instances.router,
    conductors.router,
    events.router,
)
