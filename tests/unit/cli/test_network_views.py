"""Where a user sees networks: a server's networks by name, a port's binding."""

from __future__ import annotations

import json


def test_server_show_names_the_networks_the_server_is_in(tetsu, api):
    blue = api.add("networks", name="blue")
    gone = "0b7c6a52-5f0e-4d65-9a1b-1c2d3e4f5a6b"  # deleted since, or not visible
    api.add("instances", name="web1", status="ACTIVE", network_ids=[blue["id"], gone])

    result = tetsu("server", "show", "web1")

    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if line.split()[:2] == ["│", "networks"])
    assert f"blue ({blue['id']})" in row
    assert gone in row


def test_server_show_as_json_is_the_apis_object(tetsu, api):
    blue = api.add("networks", name="blue")
    server = api.add("instances", name="web1", status="ACTIVE", network_ids=[blue["id"]])

    result = tetsu("server", "show", "web1", "--format", "json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == server


def test_port_show_tells_where_it_is_cabled_and_bound(tetsu, api):
    api.add(
        "ports",
        address="52:54:00:12:34:56",
        node_id="n1",
        switch_id="0000aabbccddeeff",
        switch_port="vnet3",
        binding="tenant",
        network_id="net-1",
    )

    result = tetsu("port", "show", "52-54-00-12-34-56", "--format", "json")

    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert (shown["binding"], shown["network_id"]) == ("tenant", "net-1")
    assert (shown["switch_id"], shown["switch_port"]) == ("0000aabbccddeeff", "vnet3")
