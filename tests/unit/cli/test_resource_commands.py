"""The `list`, `show` and `delete` commands every resource group shares."""

from __future__ import annotations

import json

import pytest

from .screen import flat


def test_list_prints_each_item_as_a_table_row_or_the_api_objects_as_json(tetsu, api):
    api.add("flavors", name="bm.small", resource_class="bm", cpus=4, memory_mb=8192, disk_gb=50)
    api.add("flavors", name="bm.large", resource_class="bm", cpus=32, memory_mb=65536, disk_gb=500)

    table = tetsu("flavor", "list")
    as_json = tetsu("flavor", "list", "--format", "json")

    assert table.exit_code == 0, table.output
    assert "bm.small" in table.stdout and "bm.large" in table.stdout
    assert as_json.exit_code == 0, as_json.output
    assert sorted(item["name"] for item in json.loads(as_json.stdout)) == ["bm.large", "bm.small"]


@pytest.mark.parametrize(("group", "plural"), [("network", "networks"), ("node", "nodes")])
def test_show_finds_the_item_by_name(tetsu, api, group, plural):
    item = api.add(plural, name="first")
    api.add(plural, name="second")

    result = tetsu(group, "show", "first", "--format", "json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == item


def test_show_of_an_ambiguous_name_fails_and_names_the_candidates(tetsu, api):
    one = api.add("networks", name="lab")
    two = api.add("networks", name="lab")

    result = tetsu("network", "show", "lab")

    assert result.exit_code == 1
    assert "2 networks are named 'lab'" in flat(result.stderr)
    assert one["id"] in result.stderr and two["id"] in result.stderr


def test_delete_removes_the_item_and_says_which(tetsu, api):
    project = api.add("projects", name="research")

    result = tetsu("project", "delete", "research")

    assert result.exit_code == 0, result.output
    assert result.stdout == f"deleted project research ({project['id']})\n"
    assert api.items["projects"] == {}


def test_a_port_is_deleted_by_its_mac_and_named_by_it(tetsu, api):
    port = api.add("ports", address="52:54:00:aa:00:01", node_id="n1")

    result = tetsu("port", "delete", "52-54-00-AA-00-01")

    assert result.exit_code == 0, result.output
    assert result.stdout == f"deleted port 52:54:00:aa:00:01 ({port['id']})\n"
    assert api.items["ports"] == {}


def test_delete_of_an_unknown_item_fails_with_exit_status_1(tetsu, api):
    result = tetsu("user", "delete", "nobody")

    assert result.exit_code == 1
    assert "no user named 'nobody'" in flat(result.stderr)


def test_the_argument_is_named_after_the_resource(tetsu):
    result = tetsu("image", "show")

    assert result.exit_code == 2
    assert "Missing argument 'image'" in flat(result.output)
