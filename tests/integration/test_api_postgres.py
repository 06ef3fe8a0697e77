"""The API on PostgreSQL, which refuses what SQLite takes (NUL characters, NaN in JSON,
strings longer than their column): odd input is a 400 naming the field, never a 500. And
the instance routes' PostgreSQL path, each change committed alone with its event."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import col, select, update

from libs.db import Conductor, Database, Instance, InstanceStatus, Node, utcnow
from libs.db.models import Event
from libs.notify import Phase
from libs.rpc import MemoryTransport, RequestContext, RPCServer, Target
from services.api.app import create_app
from services.api.deps import statements_commit_alone
from services.api.routes.instances import _START_DELETING, _changed, _with, get_instance
from services.api.settings import APISettings
from tests.unit.api.support import CONDUCTOR_HOST, FakeConductor, FakeScheduler

pytestmark = pytest.mark.integration

ADMIN = {"Authorization": "Bearer pg-admin-token"}
#: A node's body up to its driver_info, which each case adds.
NODE = '{"name": "n", "resource_class": "bm", "properties": {"cpus": 1, "memory_mb": 1, '
NODE += '"disk_gb": 1}, "driver_info": '


@pytest.fixture
def client(pg_url: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = APISettings(admin_token="pg-admin-token", image_dir=tmp_path / "images")
    db, transport = Database(pg_url), MemoryTransport()
    app = create_app(settings, db, transport)
    try:
        with TestClient(app, raise_server_exceptions=False) as test_client:
            yield test_client
    finally:
        transport.close()
        db.dispose()


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("GET", "/v1/projects/a%00b", None, "project_id"),
        ("DELETE", "/v1/instances/a%00b", None, "instance_id"),
        ("GET", "/v1/nodes?marker=a%00b", None, "marker"),
        ("GET", "/v1/images?name=a%00b", None, "name"),
        ("POST", "/v1/nodes/a%00b/callback", '{"token": "t", "success": true}', "node_id"),
        ("POST", "/v1/projects", '{"name": "a\\u0000b"}', "name"),
        ("POST", "/v1/tokens", '{"name": "a\\u0000b", "password": "pw"}', "name"),
        ("POST", "/v1/projects", '{"name": "' + "x" * 300 + '"}', "name"),
        ("POST", "/v1/nodes", NODE + '{"ipmi_port": NaN}}', "driver_info"),
        ("POST", "/v1/nodes", NODE + '{"ipmi_username": "\\udc00"}}', "driver_info"),
    ],
)
def test_input_postgresql_cannot_take_is_400_naming_the_field(client, method, path, body, field):
    response = client.request(
        method,
        path,
        content=None if body is None else body.encode(),
        headers=ADMIN | {"Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert error["reason"].startswith(f"{field}: ")


def test_names_as_long_as_their_column_fit_in_any_script(client):
    for name in ("x" * 255, "é" * 255, "\N{GRINNING FACE}" * 255):
        response = client.post("/v1/projects", json={"name": name}, headers=ADMIN)
        assert response.status_code == 201, response.text
        assert response.json()["name"] == name


# --- an instance's creation and deletion: each change committed with its event ----------


@pytest.fixture
def served(pg_url: str, tmp_path: Path) -> Iterator[tuple[TestClient, Database, FakeConductor]]:
    """The API on PostgreSQL with a fake scheduler and a fake live conductor."""
    settings = APISettings(admin_token="pg-admin-token", image_dir=tmp_path / "images")
    db, transport = Database(pg_url), MemoryTransport()
    conductor = FakeConductor(db)
    servers = [
        RPCServer(transport, Target("scheduler", server="sched-1"), [FakeScheduler()]),
        RPCServer(transport, Target("conductor", server=CONDUCTOR_HOST), [conductor]),
    ]
    for server in servers:
        server.start()
    with db.session() as session:
        session.add(Conductor(hostname=CONDUCTOR_HOST))
    try:
        with TestClient(create_app(settings, db, transport)) as test_client:
            yield test_client, db, conductor
    finally:
        for server in servers:
            server.stop()
        transport.close()
        db.dispose()


def _new_instance(client: TestClient) -> dict[str, Any]:
    flavor = client.post(
        "/v1/flavors",
        json={"name": "f", "resource_class": "bm", "cpus": 1, "memory_mb": 1, "disk_gb": 1},
        headers=ADMIN,
    ).json()
    image = client.post(
        "/v1/images",
        json={
            "name": "img",
            "visibility": "public",
            "source_url": "http://images.example/img",
            "sha256": "a" * 64,
            "size": 1,
        },
        headers=ADMIN,
    ).json()
    network = client.post("/v1/networks", json={"name": "net"}, headers=ADMIN).json()
    body = {"name": "vm", "flavor": "f", "image": "img", "networks": [network["id"]]}
    response = client.post("/v1/instances", json=body, headers=ADMIN)
    assert response.status_code == 202, response.text
    created: dict[str, Any] = response.json()
    assert (created["flavor_id"], created["image_id"]) == (flavor["id"], image["id"])
    return created


def _events_of(db: Database, instance_id: str) -> list[tuple[str, str]]:
    with db.session() as session:
        rows = session.exec(
            select(Event.event_type, Event.payload)
            .where(col(Event.object_id) == instance_id)
            .order_by(col(Event.created_at))
        ).all()
    return [(event_type, payload["status"]) for event_type, payload in rows]


def test_an_instance_is_created_and_deleted_each_time_with_its_event(served):
    client, db, _ = served
    unplaced = _new_instance(client)
    assert _events_of(db, unplaced["id"]) == [("tetsu.instance.create.start", "BUILD")]

    deleted = client.delete(f"/v1/instances/{unplaced['id']}", headers=ADMIN)

    assert deleted.status_code == 202, deleted.text
    assert deleted.json()["status"] == "DELETED"
    assert client.get(f"/v1/instances/{unplaced['id']}", headers=ADMIN).json()["status"] == (
        "DELETED"
    )
    assert _events_of(db, unplaced["id"])[-1] == ("tetsu.instance.delete.end", "DELETED")


def test_deleting_a_placed_instance_sends_the_tear_down_after_its_event(served):
    client, db, conductor = served
    placed = _new_instance(client)
    with db.session() as session:
        session.add(Node(id="node-1", name="node-1", resource_class="bm"))
        session.flush()
        session.exec(
            update(Instance)
            .where(col(Instance.id) == placed["id"])
            .values(node_id="node-1", status=InstanceStatus.ACTIVE, task_state=None)
        )

    deleting = client.delete(f"/v1/instances/{placed['id']}", headers=ADMIN)

    assert deleting.status_code == 202, deleting.text
    assert (deleting.json()["status"], deleting.json()["task_state"]) == ("DELETING", "deleting")
    conductor.recorder.wait_for("tear_down_node", node_id="node-1")
    assert _events_of(db, placed["id"])[-1] == ("tetsu.instance.delete.start", "DELETING")
    again = client.delete(f"/v1/instances/{placed['id']}", headers=ADMIN)
    assert again.status_code == 409
    assert [e for e, _ in _events_of(db, placed["id"])].count("tetsu.instance.delete.start") == 1


def test_a_change_that_matches_no_row_writes_no_event(served):
    client, db, _ = served
    created = _new_instance(client)
    with db.session() as session:
        assert statements_commit_alone(session)
        instance = get_instance(session, created["id"], RequestContext(roles=("admin",)))
        stale = {"b_id": instance.id, "b_node": "no-such-node", "b_status": "ACTIVE"}
        after = _with(instance, status=InstanceStatus.DELETING)
        matched = _changed(
            session, True, _START_DELETING, stale | {"b_now": utcnow()}, after, Phase.START
        )
    assert not matched
    assert [e for e, _ in _events_of(db, created["id"])] == ["tetsu.instance.create.start"]
