"""Events on the live stack (the services as processes on the real RabbitMQ and
PostgreSQL): an instance's life on the fake driver is listed in order, arrives live on an
event stream opened before it began, reaches no member of another project (list or
stream), and the conductor's sweep deletes events past their retention."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from libs.db import utcnow
from tests.integration.conftest import create_database, drop_database
from tests.integration.stack import Stack, running_stack, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cloud(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    name, url = create_database()
    workdir: Path = tmp_path_factory.mktemp("events")
    try:
        with running_stack(
            workdir,
            database_url=url,
            transport_url=amqp_url,
            extra_env={"TETSU_EVENT_SWEEP_INTERVAL": "1", "TETSU_METRICS_PORT": "0"},
        ) as stack:
            yield stack, url
    finally:
        drop_database(name)


def in_state(admin: httpx.Client, node_id: str, state: str) -> bool:
    return bool(admin.get(f"/v1/nodes/{node_id}").json()["provision_state"] == state)


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


class Stream:
    """``GET /v1/events/stream`` read on a thread of its own: each message as a dict."""

    def __init__(self, stack: Stack, token: str, **params: str) -> None:
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.status: int | None = None
        self._client = httpx.Client(
            base_url=stack.endpoint,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(10.0, read=None),
        )
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(params,), daemon=True)
        self._thread.start()
        assert self._connected.wait(10), "the stream did not open"

    def _read(self, params: dict[str, str]) -> None:
        try:
            with self._client.stream("GET", "/v1/events/stream", params=params) as response:
                self.status = response.status_code
                message: dict[str, Any] = {}
                for line in response.iter_lines():
                    if line == ": connected":
                        self._connected.set()  # subscribed: nothing from now on is missed
                    elif not line:
                        if message:
                            self.messages.put(message)
                        message = {}
                    elif not line.startswith(":"):
                        field, _, value = line.partition(": ")
                        message[field] = json.loads(value) if field == "data" else value
        except httpx.HTTPError:
            pass
        finally:
            self._connected.set()

    def drain(self) -> list[dict[str, Any]]:
        found = []
        while not self.messages.empty():
            found.append(self.messages.get_nowait())
        return found

    def close(self) -> None:
        self._client.close()
        self._thread.join(10)


def member(stack: Stack, admin: httpx.Client, name: str) -> tuple[str, str]:
    """A project and a member of it with a token: (project id, token)."""
    project = ok(admin.post("/v1/projects", json={"name": f"{name}-project"}), 201)
    password = f"{name}-password-123"
    body = {"name": name, "password": password, "project_id": project["id"], "role": "member"}
    ok(admin.post("/v1/users", json=body), 201)
    with httpx.Client(base_url=stack.endpoint, timeout=30) as anonymous:
        token = ok(anonymous.post("/v1/tokens", json={"name": name, "password": password}), 201)
    return project["id"], str(token["token"])


def test_an_instance_life_is_listed_streamed_and_kept_to_its_project(
    cloud: tuple[Stack, str],
) -> None:
    stack, database_url = cloud
    with stack.client() as admin:
        node = ok(
            admin.post(
                "/v1/nodes",
                json={
                    "name": "ev-node",
                    "resource_class": "ev",
                    "properties": {"cpus": 1, "memory_mb": 1024, "disk_gb": 10},
                    "driver_info": {"fake_delay": 0.2, "password": "ev-bmc-password"},
                },
            ),
            201,
        )
        ok(
            admin.post("/v1/ports", json={"address": "52:54:00:ee:00:01", "node_id": node["id"]}),
            201,
        )
        for target, state in (("manage", "manageable"), ("provide", "available")):
            ok(admin.put(f"/v1/nodes/{node['id']}/states/provision", json={"target": target}), 202)
            wait_for(partial(in_state, admin, node["id"], state), what=f"the node {state}")
        flavor = ok(
            admin.post(
                "/v1/flavors",
                json={
                    "name": "ev",
                    "resource_class": "ev",
                    "cpus": 1,
                    "memory_mb": 1,
                    "disk_gb": 1,
                },
            ),
            201,
        )
        image = ok(
            admin.post(
                "/v1/images",
                json={
                    "name": "ev-image",
                    "visibility": "public",
                    "source_url": "http://images.invalid/ev.img",
                    "sha256": "b" * 64,
                    "size": 1,
                },
            ),
            201,
        )
        _, alice = member(stack, admin, "ev-alice")
        _, mallory = member(stack, admin, "ev-mallory")

    alices = Stream(stack, alice)
    mallorys = Stream(stack, mallory)
    everything = Stream(stack, stack.admin_token, object_type="instance")
    assert alices.status == mallorys.status == 200

    with stack.client(alice) as client:
        instance = ok(
            client.post(
                "/v1/instances",
                json={"name": "ev-vm", "flavor": flavor["id"], "image": image["id"]},
            ),
            202,
        )
        wait_for(
            lambda: client.get(f"/v1/instances/{instance['id']}").json()["status"] == "ACTIVE",
            what="ACTIVE",
        )
        listed = ok(client.get("/v1/events", params={"object_id": instance["id"]}))["events"]
        assert [e["event_type"] for e in reversed(listed)] == [
            "tetsu.instance.create.start",  # the API
            "tetsu.instance.schedule.end",  # the scheduler's claim
            "tetsu.instance.create.end",  # the conductor: ACTIVE
        ]
        assert listed[0]["payload"]["status"] == "ACTIVE"

        # Live: Alice's stream got every event of her instance, in order, and none of the
        # node's (members are not shown nodes).
        def alice_saw() -> list[dict[str, Any]] | None:
            seen.extend(alices.drain())
            types = [m["event"] for m in seen if m["data"]["object_id"] == instance["id"]]
            return seen if "tetsu.instance.create.end" in types else None

        seen: list[dict[str, Any]] = []
        wait_for(alice_saw, timeout=30, what="the events on Alice's stream")
        streamed = [m["data"] for m in seen if m["data"]["object_id"] == instance["id"]]
        assert streamed == list(reversed(listed))  # the very objects the list shows
        assert not [m for m in seen if m["data"]["object_type"] == "node"]

        ok(client.delete(f"/v1/instances/{instance['id']}"), 202)
        wait_for(
            lambda: client.get(f"/v1/instances/{instance['id']}").json()["status"] == "DELETED",
            what="DELETED",
        )

    def alice_saw_the_delete() -> bool:
        seen.extend(alices.drain())
        return any(m["event"] == "tetsu.instance.delete.end" for m in seen)

    wait_for(alice_saw_the_delete, timeout=30, what="delete.end on Alice's stream")
    admin_seen = everything.drain()
    assert {m["data"]["object_id"] for m in admin_seen} >= {instance["id"]}
    assert all(m["data"]["object_type"] == "instance" for m in admin_seen)

    # Mallory, of another project, saw nothing of it, live or listed.
    assert mallorys.drain() == []
    with stack.client(mallory) as client:
        assert ok(client.get("/v1/events"))["events"] == []
        assert ok(client.get("/v1/events", params={"object_id": instance["id"]}))["events"] == []
    for stream in (alices, mallorys, everything):
        stream.close()

    # The node's history (admins) never shows its BMC password.
    with stack.client() as admin:
        history = ok(admin.get("/v1/events", params={"object_id": node["id"], "limit": 1000}))
        assert "ev-bmc-password" not in json.dumps(history)
        assert history["events"][0]["object_type"] == "node"
        node_types = [e["event_type"] for e in history["events"]]
        assert {"tetsu.node.deploy.start", "tetsu.node.deploy.end"} <= set(node_types)

    # Retention: an event older than 72 h is swept by the conductor; recent ones stay.
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO event (id, created_at, event_type, object_type, object_id,"
                " severity, payload) VALUES ('old-event', :at, 'tetsu.node.power.end', 'node',"
                " :node, 'info', '{}')"
            ),
            {"at": utcnow() - timedelta(hours=100), "node": node["id"]},
        )

    def swept() -> bool:
        with engine.connect() as connection:
            return not connection.execute(
                text("SELECT 1 FROM event WHERE id = 'old-event'")
            ).first()

    wait_for(swept, timeout=30, what="the sweep of the old event")
    with engine.connect() as connection:
        left = connection.execute(
            text("SELECT count(*) FROM event WHERE object_id = :i"), {"i": instance["id"]}
        ).scalar_one()
    engine.dispose()
    assert left == 5  # create.start, schedule.end, create.end, delete.start, delete.end
