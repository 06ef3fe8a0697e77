"""The API process: uvicorn in a thread on a free port, stopped cleanly."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvloop

from services.api.service import APIService

from .support import ADMIN


def test_serves_on_a_free_port_until_stopped(settings, db, memory_transport):
    settings.port = 0
    service = APIService(settings, db, memory_transport)
    service.start()
    try:
        assert service.port > 0
        response = httpx.get(f"{service.url}/v1/flavors", headers=ADMIN, timeout=5)
        assert response.status_code == 200
        assert response.headers["X-Request-ID"].startswith("req-")
        url = service.url
    finally:
        service.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=2)


def test_a_busy_port_is_an_error(settings, db, memory_transport):
    settings.port = 0
    first = APIService(settings, db, memory_transport)
    first.start()
    try:
        settings.port = first.port
        with pytest.raises(OSError):
            APIService(settings, db, memory_transport).start()
    finally:
        first.stop()


@contextmanager
def served_connections(settings, db, transport) -> Iterator[list[Any]]:
    """The server side of the connection a request was just answered on (kept open)."""
    settings.port = 0
    service = APIService(settings, db, transport)
    service.start()
    try:
        with httpx.Client(base_url=service.url, headers=ADMIN, timeout=5) as client:
            assert client.get("/v1/flavors").status_code == 200
            server = service._server
            assert server is not None
            connections = list(server.server_state.connections)
            assert connections
            yield connections
    finally:
        service.stop()


def test_answers_are_sent_without_waiting_for_acks(settings, db, memory_transport):
    """Nagle's algorithm is off on the served connections: uvicorn writes an answer's head
    and its body apart, and with Nagle on the body waited for the client's delayed ACK
    (~40 ms per request on a kept-alive connection)."""
    with served_connections(settings, db, memory_transport) as connections:
        for connection in connections:
            sock = connection.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_served_by_uvloop_and_httptools(settings, db, memory_transport):
    """uvicorn's event loop and HTTP parser written in C (the project depends on both;
    without them uvicorn falls back to asyncio's loop and h11, silently)."""
    with served_connections(settings, db, memory_transport) as connections:
        for connection in connections:
            assert type(connection).__name__ == "HttpToolsProtocol"
            assert isinstance(connection.loop, uvloop.Loop)
