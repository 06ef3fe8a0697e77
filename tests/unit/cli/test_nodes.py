"""`tetsu node` and `tetsu port`: enrolling machines and moving them through their states."""

from __future__ import annotations

import json

from .screen import flat


def test_enroll_with_ports_and_provide_waits_until_available(tetsu, api):
    result = tetsu(
        "node", "enroll", "rack1-n1", "--resource-class", "bm.small",
        "--cpus", "8", "--memory-mb", "16384", "--disk-gb", "100",
        "--power-interface", "ipmi", "--driver-info", "ipmi_address=10.0.0.5",
        "--driver-info", "ipmi_port=623", "--driver-info", "ipmi_password=0123",
        "--port", "52:54:00:AA:00:01", "--port", "52-54-00-aa-00-02",
        "--provide", "--wait", "--format", "json",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    node = json.loads(result.stdout)
    assert node["provision_state"] == "available"
    enrolled = json.loads(api.calls("POST", "/v1/nodes")[0].content)
    assert enrolled == {
        "name": "rack1-n1",
        "resource_class": "bm.small",
        "properties": {"cpus": 8, "memory_mb": 16384, "disk_gb": 100},
        "driver_info": {"ipmi_address": "10.0.0.5", "ipmi_port": 623, "ipmi_password": "0123"},
        "power_interface": "ipmi",
    }
    ports = [json.loads(r.content) for r in api.calls("POST", "/v1/ports")]
    assert [p["address"] for p in ports] == ["52:54:00:aa:00:01", "52:54:00:aa:00:02"]
    assert {p["node_id"] for p in ports} == {node["id"]}
    actions = [json.loads(r.content)["target"] for r in api.calls("PUT", "/v1/nodes")]
    assert actions == ["manage", "provide"]
    assert "node rack1-n1: cleaning -> available" in result.stderr
    assert "node rack1-n1: available" in result.stderr


def test_enroll_removes_the_node_again_when_a_port_is_refused(tetsu, api):
    api.refuse_addresses.add("52:54:00:aa:00:02")

    result = tetsu(
        "node", "enroll", "rack1-n1", "--resource-class", "bm", "--cpus", "1",
        "--memory-mb", "1", "--disk-gb", "1",
        "--port", "52:54:00:aa:00:01", "--port", "52:54:00:aa:00:02",
    )  # fmt: skip

    assert result.exit_code == 1
    assert "error: a port with address 52:54:00:aa:00:02 exists (duplicate, req-" in result.stderr
    assert "removed node rack1-n1 again" in result.stderr
    assert api.items["nodes"] == {} and api.items["ports"] == {}


def test_enroll_refuses_a_malformed_mac_before_enrolling_anything(tetsu, api):
    result = tetsu(
        "node", "enroll", "n1", "--resource-class", "bm", "--cpus", "1",
        "--memory-mb", "1", "--disk-gb", "1", "--port", "52:54:00:zz:00:01",
    )  # fmt: skip

    assert result.exit_code == 2
    assert "'52:54:00:zz:00:01' is not a MAC address" in flat(result.output)
    assert api.requests == []


def test_provide_wait_fails_with_the_nodes_last_error(tetsu, api):
    api.add("nodes", name="n1", provision_state="manageable", target_provision_state=None)
    api.fail_clean = "disk wipe failed: /dev/sda is read-only"

    result = tetsu("node", "provide", "n1", "--wait")

    assert result.exit_code == 1
    assert (
        "error: node n1 is clean failed, not available: disk wipe failed: /dev/sda is read-only"
        in result.stderr
    )


def test_undeploy_without_wait_only_asks(tetsu, api):
    node = api.add("nodes", name="n1", provision_state="deploy failed")

    result = tetsu("node", "undeploy", "n1")

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "delete requested for node n1"
    request = api.calls("PUT", f"/v1/nodes/{node['id']}/states/provision")[0]
    assert json.loads(request.content) == {"target": "delete"}


def test_list_passes_the_filters_to_the_api(tetsu, api):
    api.add("nodes", name="in-maint", provision_state="available", maintenance=True)
    api.add("nodes", name="free", provision_state="available", maintenance=False)
    api.add("nodes", name="busy", provision_state="active", maintenance=False)

    result = tetsu("node", "list", "--state", "available", "--no-maintenance")

    assert result.exit_code == 0, result.output
    assert "free" in result.stdout
    assert "busy" not in result.stdout and "in-maint" not in result.stdout
    params = api.calls("GET", "/v1/nodes")[0].url.params
    assert params["provision_state"] == "available" and params["maintenance"] == "false"


def test_power_and_maintenance(tetsu, api):
    node = api.add("nodes", name="n1", maintenance=False)

    powered = tetsu("node", "power", "n1", "reboot")
    into = tetsu("node", "maintenance", "n1", "on", "--reason", "fan replaced")
    out = tetsu("node", "maintenance", "n1", "off")

    assert powered.exit_code == into.exit_code == out.exit_code == 0
    assert node["target_power_state"] == "reboot"
    assert "node n1 is in maintenance: fan replaced" in into.stdout
    patches = [json.loads(r.content) for r in api.calls("PATCH")]
    assert patches == [
        {"maintenance": True, "maintenance_reason": "fan replaced"},
        {"maintenance": False, "maintenance_reason": None},
    ]
    assert node["maintenance"] is False


def test_port_commands_take_a_node_name_and_a_mac(tetsu, api):
    node = api.add("nodes", name="n1")

    created = tetsu("port", "create", "52:54:00:AA:BB:CC", "--node", "n1", "--switch-port", "7")
    listed = tetsu("port", "list", "--node", "n1", "--format", "json")
    deleted = tetsu("port", "delete", "52-54-00-AA-BB-CC")

    assert created.exit_code == listed.exit_code == deleted.exit_code == 0
    body = json.loads(api.calls("POST", "/v1/ports")[0].content)
    assert body == {"address": "52:54:00:aa:bb:cc", "node_id": node["id"], "switch_port": "7"}
    assert [p["address"] for p in json.loads(listed.stdout)] == ["52:54:00:aa:bb:cc"]
    assert "deleted port 52:54:00:aa:bb:cc" in deleted.stdout
    assert api.items["ports"] == {}
