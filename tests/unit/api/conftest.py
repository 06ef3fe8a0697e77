"""Fixtures for the API's unit tests: the app on a fresh SQLite database, with recording
fake scheduler and conductor endpoints on the in-memory transport."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from libs import rpc
from libs.db import Conductor, Database
from services.api.app import create_app
from services.api.settings import APISettings

from .support import (
    ADMIN,
    ADMIN_TOKEN,
    CONDUCTOR_HOST,
    Backend,
    Catalog,
    FakeConductor,
    FakeScheduler,
    Member,
    make_member,
)


@pytest.fixture
def settings(tmp_path: Path) -> APISettings:
    return APISettings(
        admin_token=ADMIN_TOKEN,
        image_dir=tmp_path / "images",
        token_ttl_seconds=3600,
        conductor_heartbeat_timeout=60,
    )


@pytest.fixture
def backend(db: Database, memory_transport: rpc.MemoryTransport) -> Iterator[Backend]:
    """A fake scheduler and a fake live conductor, served on the memory transport."""
    scheduler, conductor = FakeScheduler(), FakeConductor(db)
    servers = [
        rpc.RPCServer(memory_transport, rpc.Target("scheduler", server="sched-1"), [scheduler]),
        rpc.RPCServer(
            memory_transport, rpc.Target("conductor", server=CONDUCTOR_HOST), [conductor]
        ),
    ]
    for server in servers:
        server.start()
    with db.session() as session:
        session.add(Conductor(hostname=CONDUCTOR_HOST))
    yield Backend(scheduler, conductor)
    for server in servers:
        server.stop()


@pytest.fixture
def client(
    settings: APISettings, db: Database, memory_transport: rpc.MemoryTransport, backend: Backend
) -> Iterator[TestClient]:
    with TestClient(create_app(settings, db, memory_transport)) as test_client:
        yield test_client


@pytest.fixture
def alice(client: TestClient, db: Database) -> Member:
    return make_member(db, "alice")


@pytest.fixture
def bob(client: TestClient, db: Database) -> Member:
    return make_member(db, "bob")


@pytest.fixture
def catalog(client: TestClient) -> Catalog:
    """A flavor and a public, active image every project may use."""
    flavor = client.post(
        "/v1/flavors",
        json={
            "name": "small",
            "resource_class": "baremetal",
            "cpus": 2,
            "memory_mb": 2048,
            "disk_gb": 20,
        },
        headers=ADMIN,
    )
    image = client.post(
        "/v1/images",
        json={
            "name": "ubuntu",
            "visibility": "public",
            "source_url": "http://images.example/ubuntu.img",
            "sha256": "a" * 64,
            "size": 1024,
        },
        headers=ADMIN,
    )
    assert flavor.status_code == 201, flavor.text
    assert image.status_code == 201, image.text
    return Catalog(flavor=flavor.json(), image=image.json())
