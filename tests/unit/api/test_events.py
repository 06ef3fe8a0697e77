"""GET /v1/events and /v1/events/stream: the API's own events (instances created and
deleted, nodes enrolled and put in maintenance), scoped by project, filtered, paged
newest first, and streamed live as server-sent events on a real uvicorn server."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from libs.db import Instance
from libs.notify.payloads import Phase
from services.api.service import APIService

from .support import ADMIN, Member, error_of, wait_until


def create(client: Any, member: Member, name: str = "vm1") -> dict[str, Any]:
    response = client.post(
        "/v1/instances",
        json={"name": name, "flavor": "small", "image": "ubuntu"},
        headers=member.headers,
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def items(client: Any, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    response = client.get("/v1/events", params=params, headers=headers)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["events"]
    return found


def test_an_instance_created_and_deleted_is_listed_newest_first(client, alice, catalog):
    instance = create(client, alice)
    assert (
        client.delete(f"/v1/instances/{instance['id']}", headers=alice.headers).status_code == 202
    )

    listed = items(client, alice.headers, object_id=instance["id"])
    assert [e["event_type"] for e in listed] == [
        "tetsu.instance.delete.end",  # it had no node yet: deleted at once
        "tetsu.instance.create.start",
    ]
    created = listed[1]
    assert set(created) == {
        "id",
        "created_at",
        "event_type",
        "object_type",
        "object_id",
        "project_id",
        "severity",
        "payload",
        "request_id",
    }
    assert created["object_type"] == "instance"
    assert created["project_id"] == alice.project_id
    assert created["severity"] == "info"
    assert created["payload"]["status"] == "BUILD"
    assert created["payload"]["name"] == "vm1"
    assert created["payload"]["payload_version"] == "1.0"
    assert created["request_id"].startswith("req-")


def test_members_see_their_projects_events_and_admins_all(client, alice, bob, catalog):
    mine = create(client, alice)
    theirs = create(client, bob)

    assert {e["object_id"] for e in items(client, alice.headers)} == {mine["id"]}
    assert {e["object_id"] for e in items(client, bob.headers)} == {theirs["id"]}
    assert {mine["id"], theirs["id"]} <= {e["object_id"] for e in items(client, ADMIN)}
    # Another project's event is no marker to page from either.
    bobs = items(client, bob.headers)[0]["id"]
    response = client.get("/v1/events", params={"marker": bobs}, headers=alice.headers)
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_input"


def test_node_events_are_for_admins_only_without_an_instance(client, alice):
    node = client.post(
        "/v1/nodes",
        json={
            "name": "n1",
            "resource_class": "baremetal",
            "properties": {"cpus": 1, "memory_mb": 1024, "disk_gb": 10},
            "driver_info": {"password": "bmc-secret-value"},
        },
        headers=ADMIN,
    ).json()
    patched = client.patch(f"/v1/nodes/{node['id']}", json={"maintenance": True}, headers=ADMIN)
    assert patched.status_code == 200, patched.text

    listed = items(client, ADMIN, object_type="node", object_id=node["id"])
    assert [e["event_type"] for e in listed] == [
        "tetsu.node.maintenance_set.end",
        "tetsu.node.create.end",
    ]
    assert listed[0]["payload"]["maintenance"] is True
    assert listed[0]["project_id"] is None
    assert "bmc-secret-value" not in json.dumps(listed)
    assert items(client, alice.headers, object_type="node") == []


def test_filters_and_pages(client, alice, catalog):
    created = [create(client, alice, f"vm{i}") for i in range(5)]

    page = client.get("/v1/events", params={"limit": 2}, headers=alice.headers).json()
    seen = [e["object_id"] for e in page["events"]]
    while page["next_marker"]:
        page = client.get(
            "/v1/events", params={"limit": 2, "marker": page["next_marker"]}, headers=alice.headers
        ).json()
        seen += [e["object_id"] for e in page["events"]]
    assert seen == [i["id"] for i in reversed(created)]

    assert items(client, alice.headers, severity="error") == []
    only = items(client, alice.headers, event_type="tetsu.instance.create.start", limit=1)
    assert [e["object_id"] for e in only] == [created[-1]["id"]]
    later = items(client, alice.headers, since=only[0]["created_at"])
    assert [e["object_id"] for e in later] == [created[-1]["id"]]


@pytest.mark.parametrize(
    "params",
    [{"severity": "fatal"}, {"object_type": "port"}, {"since": "yesterday"}, {"marker": "nope"}],
)
def test_bad_filters_are_400(client, alice, params):
    response = client.get("/v1/events", params=params, headers=alice.headers)
    assert response.status_code == 400, response.text
    assert error_of(response)["code"] == "invalid_input"


class Stream:
    """An SSE client on its own thread: each message as a dict (id, event, data)."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.comments: queue.Queue[str] = queue.Queue()
        self.status: int | None = None
        self._client = httpx.Client(timeout=httpx.Timeout(10.0, read=None))
        self._opened = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(url, headers), daemon=True)
        self._thread.start()
        assert self._opened.wait(5), "the stream did not open"

    def _read(self, url: str, headers: dict[str, str]) -> None:
        try:
            with self._client.stream("GET", url, headers=headers) as response:
                self.status = response.status_code
                self.content_type = response.headers.get("content-type", "")
                self._opened.set()
                message: dict[str, Any] = {}
                for line in response.iter_lines():
                    if line.startswith(":"):
                        self.comments.put(line)
                    elif not line:
                        if message:
                            self.messages.put(message)
                        message = {}
                    else:
                        field, _, value = line.partition(": ")
                        message[field] = json.loads(value) if field == "data" else value
        except httpx.HTTPError:
            pass
        finally:
            self._opened.set()

    def next(self, timeout: float = 5.0) -> dict[str, Any]:
        return self.messages.get(timeout=timeout)

    def close(self) -> None:
        self._client.close()
        self._thread.join(5)


@pytest.fixture
def server(settings, db, memory_transport, backend) -> Iterator[APIService]:
    settings.port = 0
    settings.event_stream_keepalive = 0.2
    service = APIService(settings, db, memory_transport)
    service.start()
    yield service
    service.stop()


def test_the_stream_sends_each_event_as_it_happens_to_its_project_only(server, alice, bob):
    api = httpx.Client(base_url=server.url, timeout=10)
    assert api.post(
        "/v1/flavors",
        json={
            "name": "small",
            "resource_class": "baremetal",
            "cpus": 1,
            "memory_mb": 1,
            "disk_gb": 1,
        },
        headers=ADMIN,
    ).is_success
    image = {"name": "ubuntu", "visibility": "public", "source_url": "http://i/u.img"}
    assert api.post(
        "/v1/images", json=image | {"sha256": "a" * 64, "size": 1}, headers=ADMIN
    ).is_success
    hub = server.app.state.event_hub
    alices = Stream(f"{server.url}/v1/events/stream", alice.headers)
    bobs = Stream(f"{server.url}/v1/events/stream", bob.headers)
    assert alices.status == 200
    assert alices.content_type.startswith("text/event-stream")
    wait_until(lambda: hub.clients == 2)

    first = create(api, alice)
    message = alices.next()
    assert message["event"] == "tetsu.instance.create.start"
    assert message["data"]["object_id"] == first["id"]
    assert message["id"] == message["data"]["id"]
    # The same object the list shows.
    assert message["data"] == items(api, alice.headers, object_id=first["id"])[0]

    # Bob's stream stays alive (keep-alive comments) and shows nothing of Alice's.
    bobs.comments.get(timeout=5)
    assert bobs.messages.empty()

    # Reconnecting with Last-Event-ID resends what was missed meanwhile.
    alices.close()
    wait_until(lambda: hub.clients == 1)  # the disconnect was noticed and cleaned up
    second = create(api, alice, "vm2")
    again = Stream(
        f"{server.url}/v1/events/stream", alice.headers | {"Last-Event-ID": message["id"]}
    )
    missed = again.next()
    assert missed["data"]["object_id"] == second["id"]
    assert missed["event"] == "tetsu.instance.create.start"
    third = create(api, alice, "vm3")
    assert again.next()["data"]["object_id"] == third["id"]
    assert bobs.messages.empty()
    again.close()
    bobs.close()
    api.close()


def test_the_stream_needs_a_token(server):
    response = httpx.get(f"{server.url}/v1/events/stream", timeout=5)
    assert response.status_code == 401
    assert error_of(response)["code"] == "unauthorized"


def test_metrics_count_requests_and_nodes_without_auth(client, alice):
    client.post(
        "/v1/nodes",
        json={
            "name": "n1",
            "resource_class": "baremetal",
            "properties": {"cpus": 1, "memory_mb": 1, "disk_gb": 1},
        },
        headers=ADMIN,
    )
    assert client.get("/v1/instances/nope", headers=alice.headers).status_code == 404

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'tetsu_nodes{power_state="unknown",provision_state="enroll"} 1.0' in text
    assert (
        'tetsu_api_requests_total{method="GET",route="/v1/instances/{instance_id}",status="404"}'
        in text
    )
    assert 'tetsu_errors_total{code="not_found",service="api"}' in text
    assert "tetsu_api_request_seconds_bucket" in text


def test_members_are_not_shown_which_node_holds_their_instance(client, alice, catalog):
    instance = create(client, alice)
    node_id = "node-" + instance["id"][:8]
    app = client.app
    with app.state.db.session() as session:
        row = session.get(Instance, instance["id"])
        row.node_id = node_id
        session.add(row)
        app.state.notifier.instance(session, row, "schedule", Phase.END, failed_node_id="n0")
    kind = {"event_type": "tetsu.instance.schedule.end"}
    for_admin = items(client, ADMIN, **kind)[0]["payload"]
    for_alice = items(client, alice.headers, **kind)[0]["payload"]
    assert (for_admin["node_id"], for_admin["failed_node_id"]) == (node_id, "n0")
    assert "node_id" not in for_alice
    assert "failed_node_id" not in for_alice
    assert for_alice["name"] == for_admin["name"]
