"""The HTTP conventions every route shares: request ids, error bodies, logs, OpenAPI."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from libs.db import Flavor
from libs.log import ContextFilter
from libs.rpc import current_context
from services.api.app import create_app
from services.api.deps import LANES, SessionDep, one_hop
from services.api.errors import InvalidInput

from .support import ADMIN, ADMIN_TOKEN, error_of

GENERATED = re.compile(r"req-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}")


def test_a_sane_request_id_is_echoed(client):
    response = client.get("/healthz", headers={"X-Request-ID": "lb-01:abc.DEF_9-x"})
    assert response.headers["X-Request-ID"] == "lb-01:abc.DEF_9-x"


@pytest.mark.parametrize("given", [None, "has space", "x" * 129, "quote'd", "café".encode()])
def test_otherwise_a_new_request_id_is_made(client, given):
    headers = {} if given is None else {"X-Request-ID": given}
    response = client.get("/healthz", headers=headers)
    assert GENERATED.fullmatch(response.headers["X-Request-ID"])


def test_errors_carry_the_request_id(client):
    response = client.get("/v1/instances", headers={"X-Request-ID": "trace-me"})
    assert error_of(response)["request_id"] == "trace-me"


def test_unknown_route_and_wrong_method_are_json(client):
    missing = client.get("/v1/nothing", headers=ADMIN)
    assert missing.status_code == 404
    assert error_of(missing)["code"] == "not_found"
    wrong = client.patch("/v1/flavors", headers=ADMIN)
    assert wrong.status_code == 405
    assert error_of(wrong)["code"] == "method_not_allowed"


def test_an_unexpected_error_is_500_without_a_traceback(settings, db, memory_transport, caplog):
    app = create_app(settings, db, memory_transport)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    with TestClient(app) as client, caplog.at_level(logging.ERROR):
        response = client.get("/boom", headers={"X-Request-ID": "boom-1"})
    assert response.status_code == 500
    assert error_of(response) == {
        "code": "internal_error",
        "reason": "internal server error",
        "request_id": "boom-1",
    }
    assert "secret internals" not in response.text
    assert "Traceback" not in response.text
    assert "secret internals" in caplog.text  # but the operator can find out


def test_handlers_run_in_the_request_context(settings, db, memory_transport):
    """So every log line a handler writes (and every RPC it sends) names the request."""
    app = create_app(settings, db, memory_transport)

    @app.get("/whoami")
    def whoami() -> dict[str, str | None]:
        ctxt = current_context.get()
        return {"request_id": ctxt.request_id if ctxt is not None else None}

    with TestClient(app) as client:
        response = client.get("/whoami", headers={"X-Request-ID": "ctx-1"})
    assert response.json() == {"request_id": "ctx-1"}
    assert current_context.get() is None  # and it does not leak out of the request


def test_what_a_route_left_open_is_committed_a_failure_rolled_back(settings, db, memory_transport):
    """The session's exit, in the event loop when it waits on nothing, still commits what
    a route left uncommitted and rolls back what a failing route wrote."""
    app = create_app(settings, db, memory_transport)

    @app.post("/left-open")
    def left_open(session: SessionDep) -> None:
        session.add(Flavor(name="left-open", resource_class="baremetal"))

    @app.post("/fails")
    def fails(session: SessionDep) -> None:
        session.add(Flavor(name="rolled-back", resource_class="baremetal"))
        session.flush()
        raise InvalidInput("refused after a write")

    with TestClient(app) as client:
        assert client.post("/left-open").status_code == 200
        assert client.post("/fails").status_code == 400
    with db.session() as session:
        names = session.exec(select(Flavor.name)).all()
    assert "left-open" in names
    assert "rolled-back" not in names


def test_a_one_hop_route_runs_off_the_event_loop_with_its_parameters(
    settings, db, memory_transport
):
    app = create_app(settings, db, memory_transport)

    def echo(item: str, session: SessionDep) -> dict[str, str | bool | None]:
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        ctxt = current_context.get()
        return {
            "item": item,
            "on_loop": on_loop,
            "request_id": ctxt.request_id if ctxt is not None else None,
        }

    app.get("/echo/{item}")(one_hop(echo))
    with TestClient(app) as client:
        response = client.get("/echo/x1", headers={"X-Request-ID": "hop-1"})
        spec = client.get("/openapi.json").json()
    assert response.json() == {"item": "x1", "on_loop": False, "request_id": "hop-1"}
    [parameter] = spec["paths"]["/echo/{item}"]["get"]["parameters"]
    assert parameter["name"] == "item"
    assert parameter["in"] == "path"


def test_one_access_line_per_request_without_credentials(client, caplog):
    with caplog.at_level(logging.INFO, logger="services.api.access"):
        client.get("/v1/flavors?limit=5", headers=ADMIN | {"X-Request-ID": "log-1"})
    lines = [r for r in caplog.records if r.name == "services.api.access"]
    assert len(lines) == 1
    message = lines[0].getMessage()
    assert message.startswith("GET /v1/flavors 200 ")
    assert message.endswith("ms")
    assert ADMIN_TOKEN not in caplog.text


def test_a_path_cannot_forge_a_log_line(client, caplog):
    forged = "%0A2030-01-01 INFO api services.api.access [req-admin] DELETE /v1/nodes/n1 204"
    with caplog.at_level(logging.INFO, logger="services.api.access"):
        client.get(f"/v1/flavors{forged}", headers=ADMIN)
    [line] = [r.getMessage() for r in caplog.records if r.name == "services.api.access"]
    assert "\n" not in line
    assert line.startswith("GET /v1/flavors%0A2030-01-01%20INFO%20api%20services.api.access")


def test_request_id_is_the_logging_context(client, caplog):
    caplog.handler.addFilter(ContextFilter("api"))
    with caplog.at_level(logging.INFO, logger="services.api.access"):
        client.get("/healthz", headers={"X-Request-ID": "ctx-7"})
    record = next(r for r in caplog.records if r.name == "services.api.access")
    assert record.request_id == "ctx-7"


def test_openapi_describes_the_api(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    for path in (
        "/v1/instances",
        "/v1/instances/{instance_id}",
        "/v1/nodes/{node_ref}/states/provision",
        "/v1/nodes/{node_id}/callback",
        "/v1/images/{image_id}/file",
        "/v1/tokens",
    ):
        assert path in spec["paths"], path
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    # Every operation takes the token, except those that cannot have one yet.
    assert spec["security"] == [{"HTTPBearer": []}]
    no_token = [
        (method, path)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if operation.get("security") == []
    ]
    assert sorted(no_token) == [
        ("get", "/healthz"),
        ("post", "/v1/nodes/{node_id}/callback"),
        ("post", "/v1/tokens"),
    ]
    assert client.get("/docs").status_code == 200


def test_healthz_needs_no_token(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_openapi_promises_400_for_bad_input_not_422(client):
    spec = client.get("/openapi.json").json()
    create = spec["paths"]["/v1/instances"]["post"]["responses"]
    assert "400" in create
    assert all(
        "422" not in op["responses"] for path in spec["paths"].values() for op in path.values()
    )
    refused = client.post("/v1/instances", json={}, headers=ADMIN)
    assert refused.status_code == 400


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/projects/a%00b", "project_id"),
        ("/v1/nodes/a%00b/validate", "node_ref"),
        ("/v1/flavors?marker=a%00b", "marker"),
        ("/v1/images?name=a%00b", "name"),
        ("/v1/nodes?provision_state=available%00", "provision_state"),
    ],
)
def test_a_nul_in_a_path_or_query_parameter_is_400_naming_it(client, path, field):
    # PostgreSQL refuses NUL even in a WHERE clause (a 500); SQLite would just not match.
    response = client.get(path, headers=ADMIN)
    assert response.status_code == 400
    assert error_of(response) | {"request_id": ""} == {
        "code": "invalid_input",
        "reason": f"{field}: must not contain NUL characters",
        "request_id": "",
    }


NODE = '"resource_class": "bm", "properties": {"cpus": 1, "memory_mb": 1, "disk_gb": 1}'


@pytest.mark.parametrize(
    ("path", "body", "reason"),
    [
        ("/v1/projects", '{"name": "a\\u0000b"}', "name: must not contain NUL characters"),
        (
            "/v1/nodes",
            '{"name": "n", ' + NODE + ', "driver_info": {"ipmi_port": NaN}}',
            "driver_info: must be a finite number",
        ),
        (
            "/v1/nodes",
            '{"name": "n", ' + NODE + ', "driver_info": {"user": "\\udc00"}}',
            "driver_info: must be valid Unicode (it contains a lone surrogate)",
        ),
        (
            "/v1/nodes",
            '{"name": "n", ' + NODE + ', "driver_info": ' + "[" * 300 + "]" * 300 + "}",
            "driver_info: must not nest objects or lists more than 32 levels deep",
        ),
    ],
)
def test_values_no_database_could_store_are_400_naming_the_field(client, path, body, reason):
    before = client.get(path, headers=ADMIN).json()
    response = client.post(
        path, content=body.encode(), headers=ADMIN | {"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert error_of(response)["reason"] == reason
    # Nothing was stored (a stored value that cannot be answered as JSON breaks the list).
    assert client.get(path, headers=ADMIN).json() == before


def test_reads_are_answered_while_writes_fill_their_sessions(client):
    """A burst of writes takes every write session; a GET still gets a read session at
    once, and a write waits for a write session to come free."""

    async def take_every_write_session() -> asyncio.Semaphore:
        lane = LANES.lane("POST")
        for _ in range(LANES.writes):
            await lane.acquire()
        return lane

    portal = client.portal
    assert portal is not None
    lane = portal.call(take_every_write_session)
    with ThreadPoolExecutor(1) as pool:
        write = pool.submit(
            client.post,
            "/v1/flavors",
            headers=ADMIN,
            json={
                "name": "waits",
                "resource_class": "baremetal",
                "cpus": 1,
                "memory_mb": 1024,
                "disk_gb": 10,
            },
        )
        try:
            assert client.get("/v1/flavors", headers=ADMIN).status_code == 200
            time.sleep(0.3)
            assert not write.done()  # no write session for it yet
        finally:
            for _ in range(LANES.writes):
                portal.call(_release, lane)
        assert write.result(timeout=10).status_code == 201


async def _release(lane: asyncio.Semaphore) -> None:
    lane.release()
