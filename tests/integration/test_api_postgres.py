"""The API on PostgreSQL, which refuses what SQLite takes (NUL characters, NaN in JSON,
strings longer than their column): odd input is a 400 naming the field, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from libs.db import Database
from libs.rpc import MemoryTransport
from services.api.app import create_app
from services.api.settings import APISettings

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
