"""`tetsu server`: creating, waiting for, listing and deleting instances."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx

from .fakeapi import MEMBER_TOKEN, FakeAPI


def test_create_wait_follows_the_build_until_active(tetsu, api):
    node = api.add("nodes", name="rack1-n3", provision_state="available")

    def script(instance_id):
        api.then(
            instance_id,
            {"task_state": "deploying", "node_id": node["id"]},
            {"status": "ACTIVE", "task_state": None},
        )

    api.handler = _after_create(api, script)
    result = tetsu("server", "create", "web1", "--flavor", "small", "--image", "debian", "--wait")

    assert result.exit_code == 0, result.output
    progress = result.stderr
    assert "server web1: BUILD, task scheduling" in progress
    assert "server web1: BUILD, task deploying, node available" in progress
    assert "server web1: ACTIVE" in progress
    assert progress.index("scheduling") < progress.index("deploying") < progress.index("ACTIVE")
    assert "ACTIVE" in result.stdout  # the final server, shown as a table
    created = json.loads(api.calls("POST", "/v1/instances")[0].content)
    assert created == {"name": "web1", "flavor": "small", "image": "debian"}


def test_create_wait_reports_the_fault_and_exits_1_when_the_build_fails(tetsu, api):
    fault = {"code": "no_valid_host", "message": "no available node fits flavor small"}
    api.handler = _after_create(
        api, lambda instance_id: api.then(instance_id, {"status": "ERROR", "fault": fault})
    )

    result = tetsu("server", "create", "web1", "--flavor", "small", "--image", "debian", "--wait")

    assert result.exit_code == 1
    assert "error: server web1 (" in result.stderr
    assert "failed: no available node fits flavor small (no_valid_host)" in result.stderr
    assert "Traceback" not in result.output


def test_create_wait_gives_up_with_exit_2_at_the_timeout(tetsu, api):
    result = tetsu(
        "server", "create", "web1", "--flavor", "small", "--image", "debian",
        "--wait", "--timeout", "30", "--poll-interval", "5",
    )  # fmt: skip

    assert result.exit_code == 2
    assert "is not ACTIVE after 30 s (still BUILD, task scheduling)" in result.stderr
    assert tetsu.clock.slept == [5, 5, 5, 5, 5, 5]  # polled until the deadline, no longer


def test_create_without_wait_prints_the_new_server_as_json(tetsu, api):
    result = tetsu(
        "server", "create", "web1", "--flavor", "small", "--image", "debian", "--format", "json"
    )

    assert result.exit_code == 0, result.output
    server = json.loads(result.stdout)
    assert server["status"] == "BUILD"
    assert server["id"] in api.items["instances"]


def test_create_turns_network_names_into_ids(tetsu, api):
    blue = api.add("networks", name="blue")
    green = api.add("networks", name="green")

    result = tetsu(
        "server", "create", "web1", "--flavor", "small", "--image", "debian",
        "--network", "green", "--network", blue["id"],
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    created = json.loads(api.calls("POST", "/v1/instances")[0].content)
    assert created["networks"] == [green["id"], blue["id"]]


def test_a_member_waits_without_seeing_nodes(tetsu, api, monkeypatch):
    monkeypatch.setenv("TETSU_TOKEN", MEMBER_TOKEN)
    api.handler = _after_create(
        api,
        lambda instance_id: api.then(
            instance_id,
            {"task_state": "deploying", "node_id": "node-hidden-from-members"},
            {"status": "ACTIVE", "task_state": None},
        ),
    )

    result = tetsu("server", "create", "web1", "--flavor", "f", "--image", "i", "--wait")

    assert result.exit_code == 0, result.output
    assert "server web1: BUILD, task deploying" in result.stderr
    assert len(api.calls("GET", "/v1/nodes")) == 1  # refused once, then not asked again


def test_delete_wait_lasts_until_deleted(tetsu, api):
    server = api.add("instances", name="web1", status="ACTIVE", task_state=None, node_id="n1")
    api.then(server["id"], {"node_id": "n1"}, {"status": "DELETED", "task_state": None})

    result = tetsu("server", "delete", "web1", "--wait")

    assert result.exit_code == 0, result.output
    assert "server web1: DELETING, task deleting" in result.stderr
    assert f"deleted server web1 ({server['id']})" in result.stdout


def test_show_by_an_ambiguous_name_asks_for_the_id(tetsu, api):
    first = api.add("instances", name="web", status="ACTIVE")
    second = api.add("instances", name="web", status="BUILD")

    result = tetsu("server", "show", "web")

    assert result.exit_code == 1
    assert "2 servers are named 'web'" in result.stderr
    assert first["id"] in result.stderr and second["id"] in result.stderr


def test_list_filters_by_status(tetsu, api):
    api.add("instances", name="up", status="ACTIVE")
    api.add("instances", name="broken", status="ERROR")

    result = tetsu("server", "list", "--status", "error")

    assert result.exit_code == 0, result.output
    assert "broken" in result.stdout and "up" not in result.stdout
    assert api.calls("GET", "/v1/instances")[0].url.params["status"] == "ERROR"


def _after_create(
    api: FakeAPI, script: Callable[[str], None]
) -> Callable[[httpx.Request], httpx.Response]:
    """The fake's handler, running ``script(instance_id)`` once an instance is created."""
    handle = api.handler

    def handler(request: httpx.Request) -> httpx.Response:
        response = handle(request)
        if request.method == "POST" and request.url.path == "/v1/instances":
            script(response.json()["id"])
        return response

    return handler


def test_wait_rides_out_a_moment_when_the_api_is_down(tetsu, api: FakeAPI):
    handle = api.handler
    outage = iter([True])  # the first GET of the instance finds the API down

    def flaky(request: httpx.Request) -> httpx.Response:
        response = handle(request)
        if request.method == "POST":
            api.then(response.json()["id"], {"status": "ACTIVE", "task_state": None})
        elif request.method == "GET" and next(outage, False):
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return response

    api.handler = flaky
    result = tetsu("server", "create", "web1", "--flavor", "f", "--image", "i", "--wait")

    assert result.exit_code == 0, result.output
    assert "server web1: API unavailable, retrying: cannot connect" in result.stderr
    assert "server web1: ACTIVE" in result.stderr
