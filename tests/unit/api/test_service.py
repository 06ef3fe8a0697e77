"""The API process: uvicorn in a thread on a free port, stopped cleanly."""

from __future__ import annotations

import httpx
import pytest

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
