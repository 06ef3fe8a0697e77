"""Tables for people, JSON for scripts, and errors as one line on stderr."""

from __future__ import annotations

import json
import re

import httpx

from .fakeapi import FakeAPI


def test_list_as_a_table_has_the_resources_columns(tetsu, api):
    node = api.add(
        "nodes", name="n1", provision_state="available", power_state="power off",
        resource_class="bm.small", maintenance=False, instance_id=None,
    )  # fmt: skip

    result = tetsu("node", "list")

    assert result.exit_code == 0, result.output
    header, row = _table_lines(result.stdout)
    assert header == [
        "id", "name", "provision state", "power", "resource class", "maintenance", "instance",
    ]  # fmt: skip
    assert row == [node["id"], "n1", "available", "power off", "bm.small", "false", ""]


def test_list_as_json_is_the_apis_objects_from_every_page(tetsu):
    tetsu.api = FakeAPI(page_size=2)
    made = [tetsu.api.add("flavors", name=f"f{n}", cpus=n) for n in range(5)]

    result = tetsu("flavor", "list", "--format", "json")

    assert result.exit_code == 0, result.output
    assert sorted(json.loads(result.stdout), key=lambda f: f["id"]) == sorted(
        made, key=lambda f: f["id"]
    )
    assert len(tetsu.api.requests) == 3


def test_show_prints_every_field(tetsu, api):
    api.add(
        "nodes", name="n1", properties={"cpus": 8, "memory_mb": 1024},
        driver_info={"ipmi_password": "******"}, last_error=None,
    )  # fmt: skip

    result = tetsu("node", "show", "n1")

    assert result.exit_code == 0, result.output
    rows = {field: value for field, value in _table_lines(result.stdout)[1:]}
    assert rows["name"] == "n1"
    assert rows["properties"] == "cpus=8, memory_mb=1024"
    assert rows["driver_info"] == "ipmi_password=******"


def test_values_are_printed_as_they_are_not_as_markup(tetsu, api):
    api.add("flavors", name="[bold]big[/bold]", resource_class="bm")

    result = tetsu("flavor", "list")

    assert "[bold]big[/bold]" in result.stdout


def refusing_deletes(api, code: str, reason: str, times: int | None = None):
    """The fake API's handler, but DELETE answered 409 ``code`` (``times`` times, or
    always)."""
    refused: list[httpx.Request] = []

    def handler(request):
        if request.method == "DELETE" and (times is None or len(refused) < times):
            refused.append(request)
            body = {"error": {"code": code, "reason": reason, "request_id": "req-1234"}}
            return httpx.Response(409, json=body, headers={"X-Request-ID": "req-1234"})
        return api.handle(request)

    return handler, refused


def test_an_api_error_is_one_line_on_stderr_with_code_and_request_id(tetsu, api):
    api.add("nodes", name="n1", provision_state="active", instance_id="i1")
    api.handler, refused = refusing_deletes(api, "invalid_state", "node 'n1' is active")

    result = tetsu("node", "delete", "n1")

    assert result.exit_code == 1
    assert result.stderr == "error: node 'n1' is active (invalid_state, req-1234)\n"
    assert result.stdout == ""
    assert len(refused) == 1  # not asked again


def test_a_locked_node_is_asked_again_and_the_wait_shown(tetsu, api):
    api.add("nodes", name="n1", provision_state="available")
    reason = "node 'n1' is locked by conductor-2"
    api.handler, refused = refusing_deletes(api, "node_locked", reason, times=2)

    result = tetsu("node", "delete", "n1")

    assert result.exit_code == 0, result.stderr
    assert len(refused) == 2
    assert result.stderr == f"{reason}; trying again in 2 s\n" * 2
    assert tetsu.clock.slept == [2.0, 2.0]


def test_a_node_locked_for_long_is_an_error_after_five_more_tries(tetsu, api):
    api.add("nodes", name="n1", provision_state="available")
    reason = "node 'n1' is locked by conductor-2"
    api.handler, refused = refusing_deletes(api, "node_locked", reason)

    result = tetsu("node", "delete", "n1")

    assert result.exit_code == 1
    assert len(refused) == 6
    assert tetsu.clock.slept == [2.0] * 5
    assert result.stderr.endswith(f"error: {reason} (node_locked, req-1234)\n")


def test_without_a_token_the_error_says_how_to_get_one(tetsu, monkeypatch):
    monkeypatch.delenv("TETSU_TOKEN")

    result = tetsu("server", "list")

    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error: a valid bearer token is needed (unauthorized, req-")
    assert lines[1].startswith("hint: no token given")


def test_an_unreachable_api_is_named_without_a_traceback(tetsu):
    def refuse(request):
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    tetsu.api.handler = refuse
    result = tetsu("server", "list", "--endpoint", "http://10.9.8.7:8000")

    assert result.exit_code == 1
    assert result.stderr.startswith(
        "error: cannot connect to the tetsu API at http://10.9.8.7:8000: "
        "[Errno 111] Connection refused (unreachable, req-"
    )
    assert "Traceback" not in result.output


def _table_lines(text: str) -> list[list[str]]:
    """The cells of each row of a rich table, header first (border lines left out)."""
    return [
        [cell.strip() for cell in re.split("[┃│]", line)[1:-1]]
        for line in text.splitlines()
        if line[:1] in {"┃", "│"}
    ]
