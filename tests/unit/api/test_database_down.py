"""The API while its database is down: every request is answered at once with 503, a
Retry-After header and a JSON error naming the database, never a 500."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from libs import rpc
from libs.db import Database
from services.api.app import create_app
from services.api.settings import APISettings

from .support import ADMIN


def closed_port() -> int:
    """A local port nothing listens on: connecting is refused, as with a stopped server."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def down_client(
    settings: APISettings, memory_transport: rpc.MemoryTransport
) -> Iterator[TestClient]:
    db = Database(f"postgresql+psycopg://tetsu@127.0.0.1:{closed_port()}/tetsu")
    try:
        with TestClient(create_app(settings, db, memory_transport)) as client:
            yield client
    finally:
        db.dispose()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/healthz", None),
        ("GET", "/v1/instances", None),
        ("GET", "/v1/instances/6f1c0000-0000-0000-0000-000000000000", None),
        ("POST", "/v1/instances", {"name": "web", "flavor": "small", "image": "ubuntu"}),
        ("GET", "/v1/nodes", None),
        ("POST", "/v1/tokens", {"name": "alice", "password": "secret"}),
    ],
)
def test_requests_get_503_with_retry_after(down_client, method, path, body):
    started = time.monotonic()
    response = down_client.request(method, path, json=body, headers=ADMIN)
    assert time.monotonic() - started < 5
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    error = response.json()["error"]
    assert error["code"] == "service_unavailable"
    assert "database" in error["reason"]
    assert error["request_id"] == response.headers["X-Request-ID"]
