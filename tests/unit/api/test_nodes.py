"""Nodes: enrolment, masking of BMC passwords, updates, state changes through the owning
conductor, and the ramdisk's callback."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import delete

from libs.db import Conductor, Database, Node
from libs.errors import InvalidStateTransition, NodeLocked

from .support import ADMIN, error_of

NODE = {
    "name": "rack1-u07",
    "resource_class": "baremetal",
    "properties": {"cpus": 16, "memory_mb": 65536, "disk_gb": 480},
    "power_interface": "ipmi",
    "driver_info": {"ipmi_address": "10.0.0.7", "ipmi_username": "root", "ipmi_password": "calvin"},
}


def make_node(client: TestClient, **changes: Any) -> dict[str, Any]:
    response = client.post("/v1/nodes", json=NODE | changes, headers=ADMIN)
    assert response.status_code == 201, response.text
    node: dict[str, Any] = response.json()
    return node


def set_node(db: Database, node_id: str, **values: Any) -> None:
    with db.session() as session:
        node = session.get(Node, node_id)
        for key, value in values.items():
            setattr(node, key, value)
        session.add(node)


def test_new_node_is_enrolled_with_unknown_power(client):
    node = make_node(client)
    assert node["provision_state"] == "enroll"
    assert node["power_state"] == "unknown"
    assert node["properties"] == NODE["properties"]
    assert node["power_interface"] == "ipmi"
    assert node["boot_interface"] == "fake"
    assert node["instance_id"] is None
    assert "driver_internal_info" not in node


def test_passwords_are_masked_everywhere(client):
    node = make_node(client, driver_info={"ipmi_password": "calvin", "SNMP_Password": "x", "a": 1})
    shown = client.get(f"/v1/nodes/{node['id']}", headers=ADMIN).json()
    listed = client.get("/v1/nodes", headers=ADMIN).json()["nodes"][0]
    for body in (node, shown, listed):
        assert body["driver_info"] == {"ipmi_password": "******", "SNMP_Password": "******", "a": 1}
    assert "calvin" not in client.get("/v1/nodes", headers=ADMIN).text


def test_nested_and_other_credentials_are_masked_too(client):
    info = {"bmc": {"password": "n3sted-pw", "host": "10.0.0.8"}, "api_token": "tok-42-long"}
    node = make_node(client, driver_info=info)
    shown = client.get(f"/v1/nodes/{node['id']}", headers=ADMIN)
    assert shown.json()["driver_info"] == {
        "bmc": {"password": "******", "host": "10.0.0.8"},
        "api_token": "******",
    }
    assert "n3sted-pw" not in shown.text
    assert "tok-42-long" not in shown.text


def test_show_by_name(client):
    node = make_node(client)
    assert client.get("/v1/nodes/rack1-u07", headers=ADMIN).json()["id"] == node["id"]


@pytest.mark.parametrize("name", ["rack1/u07", "rack 1", "nœud", "a?b"])
def test_a_node_name_that_cannot_be_a_url_segment_is_400(client, name):
    response = client.post("/v1/nodes", json=NODE | {"name": name}, headers=ADMIN)
    assert response.status_code == 400
    assert error_of(response)["reason"].startswith("name:")


def test_duplicate_node_name_is_409(client):
    make_node(client)
    response = client.post("/v1/nodes", json=NODE, headers=ADMIN)
    assert response.status_code == 409
    assert error_of(response)["code"] == "duplicate"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"power_interface": ""}, "power_interface"),
        ({"boot_interface": "   "}, "boot_interface"),
        ({"deploy_interface": 3}, "deploy_interface"),
        ({"properties": {"cpus": 1}}, "properties.memory_mb"),
        ({"properties": {"cpus": 1, "memory_mb": 1, "disk_gb": 1, "gpus": 2}}, "properties.gpus"),
        ({"driver_info": "ipmi://x"}, "driver_info"),
    ],
)
def test_bad_node_fields_are_400(client, change, field):
    response = client.post("/v1/nodes", json=NODE | change, headers=ADMIN)
    assert response.status_code == 400
    assert error_of(response)["reason"].startswith(f"{field}:")


def test_filters(client, db):
    a = make_node(client, name="a")
    b = make_node(client, name="b", resource_class="gpu")
    set_node(db, a["id"], provision_state="available", maintenance=True)

    def names(query: str) -> list[str]:
        response = client.get(f"/v1/nodes?{query}", headers=ADMIN)
        assert response.status_code == 200, response.text
        return [n["name"] for n in response.json()["nodes"]]

    assert names("provision_state=available") == ["a"]
    assert names("resource_class=gpu") == ["b"]
    assert names("maintenance=true") == ["a"]
    assert names("maintenance=false") == ["b"]
    assert names("instance_id=nothing") == []
    assert sorted(names("")) == sorted([a["name"], b["name"]])


def test_bad_filter_value_is_400(client):
    response = client.get("/v1/nodes?maintenance=perhaps", headers=ADMIN)
    assert response.status_code == 400
    assert error_of(response)["reason"].startswith("maintenance:")


def test_patch_merges_driver_info_and_keeps_a_masked_password(client, db):
    node = make_node(client)
    response = client.patch(
        f"/v1/nodes/{node['id']}",
        json={
            "name": "renamed",
            "properties": {"cpus": 32},
            "driver_info": {"ipmi_password": "******", "ipmi_username": None, "ipmi_port": 623},
            "maintenance": True,
            "maintenance_reason": "fan",
        },
        headers=ADMIN,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["name"] == "renamed"
    assert body["properties"] == {"cpus": 32, "memory_mb": 65536, "disk_gb": 480}
    assert body["maintenance"] is True
    assert body["maintenance_reason"] == "fan"
    assert body["driver_info"] == {
        "ipmi_address": "10.0.0.7",
        "ipmi_password": "******",
        "ipmi_port": 623,
    }
    with db.session() as session:
        stored = session.get(Node, node["id"])
        assert stored is not None
        assert stored.driver_info["ipmi_password"] == "calvin"

    cleared = client.patch(f"/v1/nodes/{node['id']}", json={"maintenance": False}, headers=ADMIN)
    assert cleared.json()["maintenance"] is False
    assert cleared.json()["maintenance_reason"] is None


def test_patch_of_a_locked_node_is_409(client, db):
    node = make_node(client)
    set_node(db, node["id"], reservation="cond-1")
    response = client.patch(f"/v1/nodes/{node['id']}", json={"name": "x"}, headers=ADMIN)
    assert response.status_code == 409
    assert error_of(response)["code"] == "node_locked"


def test_patch_to_a_taken_name_is_409(client):
    make_node(client, name="a")
    b = make_node(client, name="b")
    response = client.patch(f"/v1/nodes/{b['id']}", json={"name": "a"}, headers=ADMIN)
    assert response.status_code == 409
    assert error_of(response)["code"] == "duplicate"


def test_delete_node_and_its_ports(client):
    node = make_node(client)
    port = client.post(
        "/v1/ports", json={"address": "52:54:00:00:00:01", "node_id": node["id"]}, headers=ADMIN
    ).json()
    assert client.delete(f"/v1/nodes/{node['id']}", headers=ADMIN).status_code == 204
    assert client.get(f"/v1/nodes/{node['id']}", headers=ADMIN).status_code == 404
    assert client.get(f"/v1/ports/{port['id']}", headers=ADMIN).status_code == 404


@pytest.mark.parametrize(
    ("values", "code"),
    [
        ({"provision_state": "active"}, "invalid_state"),
        ({"provision_state": "available", "instance_id": "i-1"}, "invalid_state"),
        ({"reservation": "cond-1"}, "node_locked"),
    ],
)
def test_busy_node_cannot_be_deleted(client, db, values, code):
    node = make_node(client)
    set_node(db, node["id"], **values)
    response = client.delete(f"/v1/nodes/{node['id']}", headers=ADMIN)
    assert response.status_code == 409
    assert error_of(response)["code"] == code


def test_provision_action_goes_to_the_conductor(client, backend):
    node = make_node(client)
    response = client.put(
        f"/v1/nodes/{node['id']}/states/provision",
        json={"target": "manage"},
        headers=ADMIN | {"X-Request-ID": "manage-1"},
    )
    assert response.status_code == 202
    assert response.json()["provision_state"] == "manageable"  # re-read after the call
    call = backend.conductor.recorder.wait_for("do_provisioning_action", node_id=node["id"])
    assert call.args["action"] == "manage"
    assert call.ctxt.request_id == "manage-1"
    assert call.ctxt.is_admin


def test_unknown_provision_target_is_400(client, backend):
    node = make_node(client)
    response = client.put(
        f"/v1/nodes/{node['id']}/states/provision", json={"target": "explode"}, headers=ADMIN
    )
    assert response.status_code == 400
    assert error_of(response)["reason"].startswith("target:")
    assert backend.conductor.recorder.methods() == []


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (InvalidStateTransition("cannot provide a node in enroll"), 409, "invalid_state"),
        (NodeLocked("node is locked by cond-2"), 409, "node_locked"),
    ],
)
def test_conductor_errors_pass_through(client, backend, error, status, code):
    node = make_node(client)
    backend.conductor.error = error
    response = client.put(
        f"/v1/nodes/{node['id']}/states/provision", json={"target": "provide"}, headers=ADMIN
    )
    assert response.status_code == status
    assert error_of(response)["code"] == code
    assert error_of(response)["reason"] == error.reason


def test_power_action_goes_to_the_conductor(client, backend):
    node = make_node(client)
    response = client.put(
        f"/v1/nodes/{node['id']}/states/power", json={"target": "reboot"}, headers=ADMIN
    )
    assert response.status_code == 202
    assert response.json()["id"] == node["id"]
    assert backend.conductor.recorder.wait_for("set_power_state").args["state"] == "reboot"


def test_no_live_conductor_is_503(client, db):
    node = make_node(client)
    with db.session() as session:
        session.exec(delete(Conductor))
    response = client.put(
        f"/v1/nodes/{node['id']}/states/power", json={"target": "power on"}, headers=ADMIN
    )
    assert response.status_code == 503
    assert error_of(response)["code"] == "no_live_conductor"


def test_validate_shows_each_interface(client):
    node = make_node(client)
    response = client.get(f"/v1/nodes/{node['id']}/validate", headers=ADMIN)
    assert response.status_code == 200
    assert response.json() == {
        "power": {"result": True, "reason": None},
        "boot": {"result": False, "reason": "no deploy kernel"},
    }


# The ramdisk's callback


def waiting_node(
    client: TestClient, db: Database, token: str = "ramdisk-secret", state: str = "wait call-back"
) -> dict[str, Any]:
    node = make_node(client)
    digest = hashlib.sha256(token.encode()).hexdigest()
    set_node(
        db,
        node["id"],
        provision_state=state,
        driver_internal_info={"callback_token_sha256": digest},
    )
    return node


def test_callback_with_the_right_token_reaches_the_conductor(client, db, backend):
    node = waiting_node(client, db)
    response = client.post(
        f"/v1/nodes/{node['id']}/callback",
        json={"token": "ramdisk-secret", "success": False, "message": "disk full"},
        headers={"X-Request-ID": "ramdisk-42"},
    )
    assert response.status_code == 202
    call = backend.conductor.recorder.wait_for("ramdisk_callback", node_id=node["id"])
    assert call.args["success"] is False
    assert call.args["message"] == "disk full"
    assert call.ctxt.request_id == "ramdisk-42"


def test_callback_while_cleaning_is_accepted(client, db, backend):
    node = waiting_node(client, db, state="clean wait")
    response = client.post(
        f"/v1/nodes/{node['id']}/callback", json={"token": "ramdisk-secret", "success": True}
    )
    assert response.status_code == 202


@pytest.mark.parametrize("token", ["wrong", "RAMDISK-SECRET"])
def test_callback_with_a_wrong_token_is_401(client, db, backend, token):
    node = waiting_node(client, db)
    response = client.post(
        f"/v1/nodes/{node['id']}/callback", json={"token": token, "success": True}
    )
    assert response.status_code == 401
    assert backend.conductor.recorder.methods() == []


def test_callback_to_a_node_without_token_is_401(client):
    node = make_node(client)
    response = client.post(
        f"/v1/nodes/{node['id']}/callback", json={"token": "anything", "success": True}
    )
    assert response.status_code == 401


def test_callback_when_not_waiting_is_409(client, db):
    node = waiting_node(client, db, state="active")
    response = client.post(
        f"/v1/nodes/{node['id']}/callback", json={"token": "ramdisk-secret", "success": True}
    )
    assert response.status_code == 409
    assert error_of(response)["code"] == "invalid_state"


def test_callback_success_must_be_a_boolean(client, db):
    node = waiting_node(client, db)
    response = client.post(
        f"/v1/nodes/{node['id']}/callback", json={"token": "ramdisk-secret", "success": "yes"}
    )
    assert response.status_code == 400
    assert error_of(response)["reason"].startswith("success:")
