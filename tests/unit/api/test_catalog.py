"""Flavors, images (with uploads) and networks."""

from __future__ import annotations

import hashlib

import pytest
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from services.api.app import create_app

from .support import ADMIN, error_of

FLAVOR = {
    "name": "large",
    "resource_class": "gpu",
    "cpus": 64,
    "memory_mb": 262144,
    "disk_gb": 2000,
}


# Flavors


def test_flavor_create_list_show_delete(client, alice):
    created = client.post("/v1/flavors", json=FLAVOR, headers=ADMIN)
    assert created.status_code == 201
    flavor = created.json()
    assert {k: flavor[k] for k in FLAVOR} == FLAVOR

    listed = client.get("/v1/flavors", headers=alice.headers).json()
    assert [f["name"] for f in listed["flavors"]] == ["large"]
    assert client.get("/v1/flavors/large", headers=alice.headers).json() == flavor
    assert client.get(f"/v1/flavors/{flavor['id']}", headers=alice.headers).json() == flavor

    assert client.delete("/v1/flavors/large", headers=alice.headers).status_code == 403
    assert client.delete(f"/v1/flavors/{flavor['id']}", headers=ADMIN).status_code == 204
    assert client.get("/v1/flavors/large", headers=alice.headers).status_code == 404


def test_a_flavor_is_found_by_its_id_before_another_flavors_name(client, alice):
    first = client.post("/v1/flavors", json=FLAVOR, headers=ADMIN).json()
    # A name may look like an id: the flavor with that id still wins.
    named = client.post("/v1/flavors", json={**FLAVOR, "name": first["id"]}, headers=ADMIN).json()

    assert client.get(f"/v1/flavors/{first['id']}", headers=alice.headers).json() == first
    assert client.get(f"/v1/flavors/{named['id']}", headers=alice.headers).json() == named
    assert client.get("/v1/flavors/nothing-like-it", headers=alice.headers).status_code == 404


def test_flavor_list_filters_by_resource_class(client, catalog):
    client.post("/v1/flavors", json=FLAVOR, headers=ADMIN)
    listed = client.get("/v1/flavors?resource_class=gpu", headers=ADMIN).json()
    assert [f["name"] for f in listed["flavors"]] == ["large"]


def test_member_cannot_create_a_flavor(client, alice):
    response = client.post("/v1/flavors", json=FLAVOR, headers=alice.headers)
    assert response.status_code == 403


def test_duplicate_flavor_is_409(client):
    client.post("/v1/flavors", json=FLAVOR, headers=ADMIN)
    response = client.post("/v1/flavors", json=FLAVOR, headers=ADMIN)
    assert response.status_code == 409
    assert error_of(response)["code"] == "duplicate"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"cpus": "four"}, "cpus"),
        ({"cpus": "4"}, "cpus"),
        ({"cpus": -1}, "cpus"),
        ({"cpus": 3226389328403364700348376225415168}, "cpus"),  # found by schemathesis
        ({"disk_gb": 2**31}, "disk_gb"),
        ({"memory_mb": 1.5}, "memory_mb"),
        ({"name": ""}, "name"),
        ({"name": ["x"]}, "name"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_flavor_fields_are_400_naming_them(client, change, field):
    response = client.post("/v1/flavors", json=FLAVOR | change, headers=ADMIN)
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_input"
    assert error_of(response)["reason"].startswith(f"{field}:")


def test_missing_flavor_fields_are_all_named(client):
    response = client.post("/v1/flavors", json={"name": "x"}, headers=ADMIN)
    assert response.status_code == 400
    reason = error_of(response)["reason"]
    for field in ("resource_class", "cpus", "memory_mb", "disk_gb"):
        assert f"{field}: Field required" in reason


def test_unknown_field_is_called_unknown(client):
    response = client.post("/v1/flavors", json=FLAVOR | {"cpu": 4}, headers=ADMIN)
    assert error_of(response)["reason"] == "cpu: unknown field"


# Images


def test_image_with_url_and_checksum_is_active_else_queued(client, alice):
    complete = client.post(
        "/v1/images",
        json={
            "name": "debian",
            "source_url": "https://cdn.example/debian.qcow2",
            "disk_format": "qcow2",
            "sha256": "AB" * 32,
            "size": 10,
        },
        headers=alice.headers,
    )
    assert complete.status_code == 201
    assert complete.json()["status"] == "active"
    assert complete.json()["sha256"] == "ab" * 32
    assert complete.json()["visibility"] == "private"
    assert complete.json()["project_id"] == alice.project_id

    partial = client.post("/v1/images", json={"name": "later"}, headers=alice.headers)
    assert partial.json()["status"] == "queued"


def test_member_cannot_make_a_public_image(client, alice):
    response = client.post(
        "/v1/images", json={"name": "x", "visibility": "public"}, headers=alice.headers
    )
    assert response.status_code == 403


def test_images_are_visible_to_their_project_and_public_ones_to_all(client, alice, bob, catalog):
    private = client.post("/v1/images", json={"name": "mine"}, headers=alice.headers).json()

    alice_sees = client.get("/v1/images", headers=alice.headers).json()["images"]
    bob_sees = client.get("/v1/images", headers=bob.headers).json()["images"]

    assert {i["name"] for i in alice_sees} == {"mine", "ubuntu"}
    assert {i["name"] for i in bob_sees} == {"ubuntu"}
    assert client.get(f"/v1/images/{private['id']}", headers=bob.headers).status_code == 404
    assert client.delete(f"/v1/images/{private['id']}", headers=bob.headers).status_code == 404
    named = client.get("/v1/images?name=mine", headers=alice.headers).json()["images"]
    assert [i["id"] for i in named] == [private["id"]]


def test_upload_then_download_an_image(client, alice, settings):
    image = client.post("/v1/images", json={"name": "blob"}, headers=alice.headers).json()
    data = bytes(range(256)) * 1000

    uploaded = client.put(f"/v1/images/{image['id']}/file", content=data, headers=alice.headers)

    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["status"] == "active"
    assert uploaded.json()["size"] == len(data)
    assert uploaded.json()["sha256"] == hashlib.sha256(data).hexdigest()
    assert (settings.image_dir / image["id"]).read_bytes() == data
    assert [p.name for p in settings.image_dir.iterdir()] == [image["id"]]
    downloaded = client.get(f"/v1/images/{image['id']}/file", headers=alice.headers)
    assert downloaded.status_code == 200
    assert downloaded.content == data


def test_no_database_connection_is_held_while_an_upload_streams_in(
    settings, db, memory_transport, alice
):
    """A large image takes minutes to arrive: the connection (and transaction) that
    checked the token must not stay checked out of the pool all that time."""
    app = create_app(settings, db, memory_transport)
    checked_out: list[int] = []

    async def watched(scope: Scope, receive: Receive, send: Send) -> None:
        async def receive_and_count() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                checked_out.append(db.engine.pool.checkedout())
            return message

        await app(scope, receive_and_count, send)

    with TestClient(watched) as client:
        image = client.post("/v1/images", json={"name": "big"}, headers=alice.headers).json()
        checked_out.clear()
        uploaded = client.put(f"/v1/images/{image['id']}/file", content=b"x", headers=alice.headers)

    assert uploaded.status_code == 200
    assert checked_out
    assert set(checked_out) == {0}


def test_second_upload_is_409_and_keeps_the_first(client, alice):
    image = client.post("/v1/images", json={"name": "blob"}, headers=alice.headers).json()
    client.put(f"/v1/images/{image['id']}/file", content=b"first", headers=alice.headers)
    again = client.put(f"/v1/images/{image['id']}/file", content=b"second", headers=alice.headers)
    assert again.status_code == 409
    downloaded = client.get(f"/v1/images/{image['id']}/file", headers=alice.headers)
    assert downloaded.content == b"first"


def test_only_owner_or_admin_uploads(client, alice, catalog):
    response = client.put(
        f"/v1/images/{catalog.image['id']}/file", content=b"x", headers=alice.headers
    )
    assert response.status_code == 403


def test_download_without_data_is_404(client, alice):
    image = client.post("/v1/images", json={"name": "empty"}, headers=alice.headers).json()
    assert client.get(f"/v1/images/{image['id']}/file", headers=alice.headers).status_code == 404


def test_delete_image_removes_its_file(client, alice, settings):
    image = client.post("/v1/images", json={"name": "blob"}, headers=alice.headers).json()
    client.put(f"/v1/images/{image['id']}/file", content=b"data", headers=alice.headers)
    assert client.delete(f"/v1/images/{image['id']}", headers=alice.headers).status_code == 204
    assert not (settings.image_dir / image["id"]).exists()
    assert client.get(f"/v1/images/{image['id']}", headers=alice.headers).status_code == 404


def test_image_used_by_an_instance_cannot_be_deleted(client, alice, catalog):
    client.post(
        "/v1/instances",
        json={"name": "vm", "flavor": "small", "image": "ubuntu"},
        headers=alice.headers,
    )
    response = client.delete(f"/v1/images/{catalog.image['id']}", headers=ADMIN)
    assert response.status_code == 409
    assert error_of(response)["code"] == "in_use"


@pytest.mark.parametrize(
    "change",
    [{"disk_format": "vmdk"}, {"sha256": "xyz"}, {"size": -5}, {"source_url": "ftp://x/y"}],
)
def test_bad_image_fields_are_400(client, alice, change):
    response = client.post("/v1/images", json={"name": "x"} | change, headers=alice.headers)
    assert response.status_code == 400
    assert error_of(response)["reason"].startswith(next(iter(change)))


# Networks


def test_segmentation_ids_are_the_lowest_free_from_100(client, alice, bob):
    first = client.post("/v1/networks", json={"name": "a"}, headers=alice.headers)
    second = client.post("/v1/networks", json={"name": "b"}, headers=bob.headers)
    assert first.status_code == second.status_code == 201
    assert first.json()["segmentation_id"] == 100
    assert second.json()["segmentation_id"] == 101
    assert first.json()["project_id"] == alice.project_id

    client.delete(f"/v1/networks/{first.json()['id']}", headers=alice.headers)
    third = client.post("/v1/networks", json={"name": "c"}, headers=alice.headers)
    assert third.json()["segmentation_id"] == 100


def test_admin_chooses_segment_and_project(client, alice):
    response = client.post(
        "/v1/networks",
        json={"name": "fixed", "segmentation_id": 7, "project_id": alice.project_id},
        headers=ADMIN,
    )
    assert response.status_code == 201
    assert response.json()["segmentation_id"] == 7
    listed = client.get("/v1/networks", headers=alice.headers).json()["networks"]
    assert [n["name"] for n in listed] == ["fixed"]
    again = client.post("/v1/networks", json={"name": "x", "segmentation_id": 7}, headers=ADMIN)
    assert again.status_code == 409
    assert error_of(again)["code"] == "duplicate"


def test_member_cannot_choose_a_segment(client, alice):
    response = client.post(
        "/v1/networks", json={"name": "x", "segmentation_id": 7}, headers=alice.headers
    )
    assert response.status_code == 403


def test_networks_are_private_to_their_project(client, alice, bob):
    network = client.post("/v1/networks", json={"name": "a"}, headers=alice.headers).json()
    assert client.get("/v1/networks", headers=bob.headers).json()["networks"] == []
    assert client.get(f"/v1/networks/{network['id']}", headers=bob.headers).status_code == 404
    assert client.delete(f"/v1/networks/{network['id']}", headers=bob.headers).status_code == 404
    shown = client.get(f"/v1/networks/{network['id']}", headers=alice.headers)
    assert shown.json() == network
    assert len(client.get("/v1/networks", headers=ADMIN).json()["networks"]) == 1


def test_network_used_by_an_instance_cannot_be_deleted(client, alice, catalog):
    network = client.post("/v1/networks", json={"name": "a"}, headers=alice.headers).json()
    client.post(
        "/v1/instances",
        json={"name": "vm", "flavor": "small", "image": "ubuntu", "networks": [network["id"]]},
        headers=alice.headers,
    )
    response = client.delete(f"/v1/networks/{network['id']}", headers=alice.headers)
    assert response.status_code == 409
    assert error_of(response)["code"] == "in_use"


def test_a_member_cannot_list_another_projects_networks(client, alice, bob):
    client.post("/v1/networks", json={"name": "a"}, headers=alice.headers)

    response = client.get(f"/v1/networks?project_id={alice.project_id}", headers=bob.headers)

    assert response.status_code == 403
    listed = client.get(f"/v1/networks?project_id={alice.project_id}", headers=ADMIN).json()
    assert [n["name"] for n in listed["networks"]] == ["a"]


# Flavors and images used by instances


@pytest.mark.parametrize("kind", ["flavor", "image"])
def test_a_flavor_or_image_is_freed_once_its_instance_is_deleted(client, alice, catalog, kind):
    thing = catalog.flavor if kind == "flavor" else catalog.image
    instance = client.post(
        "/v1/instances",
        json={"name": "vm", "flavor": "small", "image": "ubuntu"},
        headers=alice.headers,
    ).json()

    refused = client.delete(f"/v1/{kind}s/{thing['id']}", headers=ADMIN)
    assert refused.status_code == 409
    assert error_of(refused)["reason"] == (
        f"{kind} {thing['name']!r} is used by instance {instance['id']}"
    )

    client.delete(f"/v1/instances/{instance['id']}", headers=alice.headers)  # no node: at once
    assert client.delete(f"/v1/{kind}s/{thing['id']}", headers=ADMIN).status_code == 204
    gone = client.get(f"/v1/instances/{instance['id']}", headers=alice.headers)
    assert gone.status_code == 404  # the deleted instance's record went with it
