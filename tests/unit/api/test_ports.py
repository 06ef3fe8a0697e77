"""Ports: MAC addresses validated and stored in one form, unique, tied to a node."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from libs.db import Port, PortBinding

from .support import ADMIN, error_of


@pytest.fixture
def node(client):
    body = {
        "name": "n1",
        "resource_class": "baremetal",
        "properties": {"cpus": 1, "memory_mb": 1024, "disk_gb": 10},
    }
    return client.post("/v1/nodes", json=body, headers=ADMIN).json()


def make_port(
    client: TestClient, node: dict[str, Any], address: Any = "52:54:00:ab:cd:ef", **extra: Any
) -> httpx.Response:
    response: httpx.Response = client.post(
        "/v1/ports", json={"address": address, "node_id": node["id"], **extra}, headers=ADMIN
    )
    return response


@pytest.mark.parametrize(
    "address", ["52:54:00:AB:CD:EF", "52-54-00-ab-cd-ef", "5254.00ab.cdef", "525400ABCDEF"]
)
def test_mac_is_stored_lower_case_with_colons(client, node, address):
    response = make_port(client, node, address, switch_id="0x1", switch_port="eth3")
    assert response.status_code == 201, response.text
    port = response.json()
    assert port["address"] == "52:54:00:ab:cd:ef"
    assert port["node_id"] == node["id"]
    assert port["switch_port"] == "eth3"
    assert port["binding"] == "none"


@pytest.mark.parametrize(
    "address", ["52:54:00:ab:cd", "zz:54:00:ab:cd:ef", "52:54-00:ab:cd:ef", "", 42]
)
def test_malformed_mac_is_400_naming_address(client, node, address):
    response = make_port(client, node, address)
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_input"
    assert error_of(response)["reason"].startswith("address:")


def test_same_mac_in_another_spelling_is_409(client, node):
    assert make_port(client, node).status_code == 201
    again = make_port(client, node, "52-54-00-AB-CD-EF")
    assert again.status_code == 409
    assert error_of(again)["code"] == "duplicate"


def test_port_of_an_unknown_node_is_400(client):
    response = client.post(
        "/v1/ports", json={"address": "52:54:00:00:00:01", "node_id": "nope"}, headers=ADMIN
    )
    assert response.status_code == 400
    assert "node 'nope' not found" in error_of(response)["reason"]


def test_list_filters_by_node_and_address(client, node):
    other = client.post(
        "/v1/nodes",
        json={
            "name": "n2",
            "resource_class": "baremetal",
            "properties": {"cpus": 1, "memory_mb": 1, "disk_gb": 1},
        },
        headers=ADMIN,
    ).json()
    first = make_port(client, node, "52:54:00:00:00:01").json()
    make_port(client, other, "52:54:00:00:00:02")

    by_node = client.get(f"/v1/ports?node_id={node['id']}", headers=ADMIN).json()["ports"]
    by_address = client.get("/v1/ports?address=52-54-00-00-00-01", headers=ADMIN).json()["ports"]
    assert [p["id"] for p in by_node] == [first["id"]]
    assert [p["id"] for p in by_address] == [first["id"]]
    bad = client.get("/v1/ports?address=nonsense", headers=ADMIN)
    assert bad.status_code == 400


def test_show_patch_delete(client, node):
    port = make_port(client, node).json()
    assert client.get(f"/v1/ports/{port['id']}", headers=ADMIN).json() == port

    patched = client.patch(
        f"/v1/ports/{port['id']}",
        json={"address": "52:54:00:AA:AA:AA", "switch_port": "eth9"},
        headers=ADMIN,
    )
    assert patched.status_code == 200
    assert patched.json()["address"] == "52:54:00:aa:aa:aa"
    assert patched.json()["switch_port"] == "eth9"

    assert client.delete(f"/v1/ports/{port['id']}", headers=ADMIN).status_code == 204
    assert client.get(f"/v1/ports/{port['id']}", headers=ADMIN).status_code == 404


def test_bound_port_cannot_be_deleted(client, db, node):
    port = make_port(client, node).json()
    with db.session() as session:
        row = session.get(Port, port["id"])
        assert row is not None
        row.binding = PortBinding.PROVISIONING
        session.add(row)
    response = client.delete(f"/v1/ports/{port['id']}", headers=ADMIN)
    assert response.status_code == 409
    assert error_of(response)["code"] == "in_use"
