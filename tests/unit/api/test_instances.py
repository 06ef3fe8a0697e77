"""Instances: create asks the scheduler, delete tears the node down; projects are isolated."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlmodel import delete

from libs import rpc
from libs.db import Conductor, Database, Instance, InstanceStatus, Node
from services.api.app import create_app

from .support import ADMIN, Member, error_of


def create(client: TestClient, member: Member, **body: Any) -> httpx.Response:
    response: httpx.Response = client.post(
        "/v1/instances",
        json={"name": "vm1", "flavor": "small", "image": "ubuntu"} | body,
        headers=member.headers,
    )
    return response


def give_node(
    db: Database,
    instance_id: str,
    node_id: str = "node-1",
    status: InstanceStatus = InstanceStatus.ACTIVE,
) -> None:
    with db.session() as session:
        instance = session.get(Instance, instance_id)
        assert instance is not None
        instance.node_id = node_id
        instance.status = status
        instance.task_state = None
        session.add(instance)


def test_create_is_accepted_and_cast_to_the_scheduler(client, alice, catalog, backend):
    network = client.post("/v1/networks", json={"name": "n"}, headers=alice.headers).json()
    response = client.post(
        "/v1/instances",
        json={"name": "web", "flavor": "small", "image": "ubuntu", "networks": [network["id"]]},
        headers=alice.headers | {"X-Request-ID": "create-web-1"},
    )

    assert response.status_code == 202, response.text
    instance = response.json()
    assert response.headers["Location"] == f"/v1/instances/{instance['id']}"
    assert instance["status"] == "BUILD"
    assert instance["task_state"] == "scheduling"
    assert instance["project_id"] == alice.project_id
    assert instance["user_id"] == alice.user_id
    assert instance["flavor_id"] == catalog.flavor["id"]
    assert instance["image_id"] == catalog.image["id"]
    assert instance["network_ids"] == [network["id"]]
    call = backend.scheduler.recorder.wait_for("schedule_instance", instance_id=instance["id"])
    assert call.ctxt.request_id == response.headers["X-Request-ID"] == "create-web-1"
    assert call.ctxt.project_id == alice.project_id
    assert call.ctxt.user_id == alice.user_id


def test_flavor_and_image_may_be_given_by_id(client, alice, catalog):
    response = create(client, alice, flavor=catalog.flavor["id"], image=catalog.image["id"])
    assert response.status_code == 202


def test_location_uses_the_public_url(settings, db, memory_transport, backend, alice, catalog):
    settings.public_url = "https://cloud.example/"
    with TestClient(create_app(settings, db, memory_transport)) as other:
        response = create(other, alice)
    assert (
        response.headers["Location"]
        == f"https://cloud.example/v1/instances/{response.json()['id']}"
    )


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"flavor": "huge"}, "flavor 'huge' not found"),
        ({"image": "windows"}, "image 'windows' not found"),
        ({"networks": ["net-x"]}, "network 'net-x' not found"),
        ({"name": ""}, "name:"),
        ({"name": "x" * 256}, "name:"),
        ({"networks": "net-x"}, "networks:"),
        ({"flavour": "small"}, "flavour: unknown field"),
    ],
)
def test_bad_references_and_fields_are_400(client, alice, catalog, backend, body, reason):
    response = create(client, alice, **body)
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_input"
    assert reason in error_of(response)["reason"]
    assert backend.scheduler.recorder.methods() == []


def test_missing_fields_are_400(client, alice):
    response = client.post("/v1/instances", json={}, headers=alice.headers)
    assert response.status_code == 400
    reason = error_of(response)["reason"]
    assert all(f"{field}: Field required" in reason for field in ("name", "flavor", "image"))


def test_body_that_is_not_json_is_400(client, alice):
    response = client.post(
        "/v1/instances",
        content=b"{not json",
        headers=alice.headers | {"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert error_of(response)["reason"].startswith("body: not valid JSON at character 1")


def test_queued_image_is_400(client, alice, catalog):
    client.post("/v1/images", json={"name": "empty"}, headers=alice.headers)
    response = create(client, alice, image="empty")
    assert response.status_code == 400
    assert "not active" in error_of(response)["reason"]


def test_another_projects_network_or_image_is_not_found(client, alice, bob, catalog):
    network = client.post("/v1/networks", json={"name": "n"}, headers=bob.headers).json()
    image = client.post(
        "/v1/images",
        json={"name": "b", "source_url": "http://x/y", "sha256": "b" * 64, "size": 1},
        headers=bob.headers,
    ).json()
    assert create(client, alice, networks=[network["id"]]).status_code == 400
    assert create(client, alice, image=image["id"]).status_code == 400
    assert create(client, bob, networks=[network["id"]], image=image["id"]).status_code == 202


def test_another_projects_instance_is_not_found(client, alice, bob, catalog):
    instance = create(client, alice).json()
    for method in ("GET", "DELETE"):
        response = client.request(method, f"/v1/instances/{instance['id']}", headers=bob.headers)
        assert response.status_code == 404
        assert error_of(response)["code"] == "not_found"
    assert client.get("/v1/instances", headers=bob.headers).json()["instances"] == []
    forbidden = client.get(f"/v1/instances?project_id={alice.project_id}", headers=bob.headers)
    assert forbidden.status_code == 403


def test_node_is_shown_to_admins_only(client, db, alice, catalog):
    instance = create(client, alice).json()
    give_node(db, instance["id"])
    assert (
        client.get(f"/v1/instances/{instance['id']}", headers=alice.headers).json()["node_id"]
        is None
    )
    assert client.get(f"/v1/instances/{instance['id']}", headers=ADMIN).json()["node_id"] == (
        "node-1"
    )


def test_admin_lists_every_project_and_filters(client, alice, bob, catalog):
    a = create(client, alice).json()
    b = create(client, bob).json()
    everyone = client.get("/v1/instances", headers=ADMIN).json()["instances"]
    assert {i["id"] for i in everyone} == {a["id"], b["id"]}
    only_bob = client.get(f"/v1/instances?project_id={bob.project_id}", headers=ADMIN).json()
    assert [i["id"] for i in only_bob["instances"]] == [b["id"]]
    building = client.get("/v1/instances?status=BUILD", headers=ADMIN).json()["instances"]
    assert len(building) == 2
    bad = client.get("/v1/instances?status=SLEEPING", headers=ADMIN)
    assert bad.status_code == 400
    assert error_of(bad)["reason"].startswith("status:")


def test_instance_list_pages(client, alice, catalog):
    ids = sorted(create(client, alice, name=f"vm{i}").json()["id"] for i in range(3))
    first = client.get("/v1/instances?limit=2", headers=alice.headers).json()
    assert [i["id"] for i in first["instances"]] == ids[:2]
    assert first["next_marker"] == ids[1]
    second = client.get(
        f"/v1/instances?limit=2&marker={first['next_marker']}", headers=alice.headers
    ).json()
    assert [i["id"] for i in second["instances"]] == ids[2:]
    assert second["next_marker"] is None


def test_delete_without_node_is_deleted_at_once(client, alice, catalog, backend):
    instance = create(client, alice).json()

    response = client.delete(f"/v1/instances/{instance['id']}", headers=alice.headers)

    assert response.status_code == 202
    assert response.json()["status"] == "DELETED"
    shown = client.get(f"/v1/instances/{instance['id']}", headers=alice.headers).json()
    assert shown["status"] == "DELETED"
    assert client.get("/v1/instances", headers=alice.headers).json()["instances"] == []
    deleted = client.get("/v1/instances?status=DELETED", headers=alice.headers).json()
    assert [i["id"] for i in deleted["instances"]] == [instance["id"]]
    again = client.delete(f"/v1/instances/{instance['id']}", headers=alice.headers)
    assert again.status_code == 404
    assert "tear_down_node" not in backend.conductor.recorder.methods()


def test_delete_with_node_tears_it_down(client, db, alice, catalog, backend):
    instance = create(client, alice).json()
    give_node(db, instance["id"], node_id="node-7")

    response = client.delete(
        f"/v1/instances/{instance['id']}", headers=alice.headers | {"X-Request-ID": "del-1"}
    )

    assert response.status_code == 202
    assert response.json()["status"] == "DELETING"
    assert response.json()["task_state"] == "deleting"
    call = backend.conductor.recorder.wait_for("tear_down_node", node_id="node-7")
    assert call.ctxt.request_id == "del-1"
    again = client.delete(f"/v1/instances/{instance['id']}", headers=alice.headers)
    assert again.status_code == 409
    assert error_of(again)["code"] == "invalid_state"


def test_delete_with_no_live_conductor_is_503_and_can_be_retried(client, db, alice, catalog):
    instance = create(client, alice).json()
    give_node(db, instance["id"])
    with db.session() as session:
        session.exec(delete(Conductor))

    response = client.delete(f"/v1/instances/{instance['id']}", headers=alice.headers)

    assert response.status_code == 503
    assert error_of(response)["code"] == "no_live_conductor"
    shown = client.get(f"/v1/instances/{instance['id']}", headers=alice.headers).json()
    assert shown["status"] == "ACTIVE"
    assert shown["task_state"] is None


class NoSchedulerTransport(rpc.MemoryTransport):
    """The broker refuses everything for the scheduler (as if it were unreachable)."""

    def send(self, target: rpc.Target, body: bytes, *, msg_id: str) -> None:
        if target.topic == "scheduler":
            raise rpc.TransportError("broker unreachable")
        super().send(target, body, msg_id=msg_id)


def test_unreachable_scheduler_is_503_and_the_instance_errors(client, settings, db, alice, catalog):
    with TestClient(create_app(settings, db, NoSchedulerTransport())) as broken:
        response = create(broken, alice)
    assert response.status_code == 503
    assert error_of(response)["code"] == "service_unavailable"
    [instance] = client.get("/v1/instances", headers=alice.headers).json()["instances"]
    assert instance["status"] == "ERROR"
    assert instance["task_state"] is None
    assert instance["fault"]["code"] == "service_unavailable"


def test_rebuild_re_images_an_active_instance_in_place(client, db, alice, catalog, backend):
    instance = create(client, alice).json()
    give_node(db, instance["id"], node_id="node-3")
    other = client.post(
        "/v1/images",
        json={
            "name": "debian",
            "visibility": "public",
            "source_url": "http://images.example/debian.img",
            "sha256": "d" * 64,
            "size": 1024,
        },
        headers=ADMIN,
    ).json()
    assert other["status"] == "active"

    response = client.post(
        f"/v1/instances/{instance['id']}/rebuild",
        json={"image": other["name"]},
        headers=alice.headers,
    )

    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["status"], body["task_state"]) == ("REBUILD", "rebuilding")
    assert body["image_id"] == other["id"]
    backend.conductor.recorder.wait_for("rebuild_node", node_id="node-3", instance_id=body["id"])
    again = client.post(f"/v1/instances/{instance['id']}/rebuild", json={}, headers=alice.headers)
    assert again.status_code == 409
    assert "only an ACTIVE instance" in error_of(again)["reason"]


def test_rebuild_is_refused_with_a_reason(client, db, alice, bob, catalog):
    building = create(client, alice).json()
    response = client.post(
        f"/v1/instances/{building['id']}/rebuild", json={}, headers=alice.headers
    )
    assert response.status_code == 409  # not ACTIVE yet
    active = create(client, alice, name="vm2").json()
    give_node(db, active["id"])
    unknown = client.post(
        f"/v1/instances/{active['id']}/rebuild", json={"image": "nope"}, headers=alice.headers
    )
    assert unknown.status_code == 400
    assert "image 'nope' not found" in error_of(unknown)["reason"]
    theirs = client.post(f"/v1/instances/{active['id']}/rebuild", json={}, headers=bob.headers)
    assert theirs.status_code == 404
    shown = client.get(f"/v1/instances/{active['id']}", headers=alice.headers).json()
    assert shown["status"] == "ACTIVE"


def test_rebuild_with_no_live_conductor_is_503_and_leaves_it_active(client, db, alice, catalog):
    instance = create(client, alice).json()
    give_node(db, instance["id"])
    with db.session() as session:
        session.exec(delete(Conductor))

    response = client.post(
        f"/v1/instances/{instance['id']}/rebuild", json={}, headers=alice.headers
    )

    assert response.status_code == 503
    shown = client.get(f"/v1/instances/{instance['id']}", headers=alice.headers).json()
    assert (shown["status"], shown["task_state"]) == ("ACTIVE", None)


def put_node(db: Database, node_id: str, **fields: Any) -> None:
    with db.session() as session:
        session.add(Node(id=node_id, name=node_id, resource_class="baremetal", **fields))


def test_evacuate_is_for_admins_and_a_dead_node_only(client, db, alice, catalog, backend):
    instance = create(client, alice).json()
    put_node(db, "node-ok", provision_state="active", power_state="power on")
    give_node(db, instance["id"], node_id="node-ok")
    path = f"/v1/instances/{instance['id']}/evacuate"

    assert client.post(path, headers=alice.headers).status_code == 403
    alive = client.post(path, headers=ADMIN)
    assert alive.status_code == 409
    assert "looks alive" in error_of(alive)["reason"]

    with db.session() as session:
        node = session.get(Node, "node-ok")
        assert node is not None
        node.maintenance = True
        session.add(node)
    response = client.post(path, headers=ADMIN)

    assert response.status_code == 202, response.text
    assert (response.json()["status"], response.json()["task_state"]) == ("ACTIVE", "evacuating")
    backend.conductor.recorder.wait_for(
        "evacuate_node", node_id="node-ok", instance_id=instance["id"]
    )
    busy = client.post(path, headers=ADMIN)
    assert busy.status_code == 409
    assert "busy (evacuating)" in error_of(busy)["reason"]


def test_an_unreadable_bmc_makes_a_node_evacuable(client, db, alice, catalog, backend):
    instance = create(client, alice).json()
    put_node(db, "node-gone", last_error="power state sync: reading the power state failed: x")
    give_node(db, instance["id"], node_id="node-gone")
    response = client.post(f"/v1/instances/{instance['id']}/evacuate", headers=ADMIN)
    assert response.status_code == 202, response.text
