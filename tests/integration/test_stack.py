"""The four services as separate processes on the real RabbitMQ and PostgreSQL, driven
over REST as a user and an operator would: instances from request to ACTIVE and back."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import create_database, drop_database
from tests.integration.stack import Stack, running_stack, wait_for

pytestmark = pytest.mark.integration

NODES = 20
IMAGE_BYTES = b"tetsu test image\n" * 64


@pytest.fixture(scope="module")
def stack(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    name, url = create_database()
    workdir = tmp_path_factory.mktemp("stack")
    try:
        with running_stack(workdir, database_url=url, transport_url=amqp_url) as running:
            yield running
    finally:
        drop_database(name)


@pytest.fixture(scope="module")
def cloud(stack: Stack) -> dict[str, str]:
    """A project with a member, a flavor, an image, a network and 20 available nodes."""
    with stack.client() as admin:
        project = ok(admin.post("/v1/projects", json={"name": "acme"}), 201)
        other = ok(admin.post("/v1/projects", json={"name": "other"}), 201)
        for user, proj in (("alice", project), ("mallory", other)):
            ok(
                admin.post(
                    "/v1/users",
                    json={
                        "name": user,
                        "password": f"{user}-password",
                        "project_id": proj["id"],
                        "role": "member",
                    },
                ),
                201,
            )
        flavor = ok(
            admin.post(
                "/v1/flavors",
                json={
                    "name": "bm.small",
                    "resource_class": "baremetal",
                    "cpus": 4,
                    "memory_mb": 8192,
                    "disk_gb": 100,
                },
            ),
            201,
        )
        image = ok(
            admin.post(
                "/v1/images",
                json={
                    "name": "debian-12",
                    "disk_format": "raw",
                    "visibility": "public",
                    "source_url": "http://images.example/debian-12.raw",
                    "sha256": hashlib.sha256(IMAGE_BYTES).hexdigest(),
                    "size": len(IMAGE_BYTES),
                },
            ),
            201,
        )
        assert image["status"] == "active"

        def enroll(i: int) -> str:
            node = ok(
                admin.post(
                    "/v1/nodes",
                    json={
                        "name": f"node-{i:02d}",
                        "resource_class": "baremetal",
                        "properties": {"cpus": 8, "memory_mb": 16384, "disk_gb": 200},
                        "driver_info": {
                            "fake_delay": 0.3,
                            "ipmi_address": f"10.0.0.{i}",
                            "ipmi_password": "very-secret-bmc-pw",
                        },
                    },
                ),
                201,
            )
            ok(
                admin.post(
                    "/v1/ports",
                    json={"address": f"52:54:00:00:00:{i:02X}", "node_id": node["id"]},
                ),
                201,
            )
            ok(admin.put(f"/v1/nodes/{node['id']}/states/provision", json={"target": "manage"}))
            ok(admin.put(f"/v1/nodes/{node['id']}/states/provision", json={"target": "provide"}))
            return str(node["id"])

        with ThreadPoolExecutor(8) as pool:
            node_ids = list(pool.map(enroll, range(1, NODES + 1)))
        wait_for(
            lambda: count_nodes(admin, "available") == NODES,
            timeout=120,
            what="20 nodes available",
        )
    alice = login(stack, "alice")
    mallory = login(stack, "mallory")
    with stack.client(alice) as member:
        network = ok(member.post("/v1/networks", json={"name": "acme-net"}), 201)
    return {
        "project": project["id"],
        "flavor": flavor["id"],
        "image": image["id"],
        "network": network["id"],
        "alice": alice,
        "mallory": mallory,
        "first_node": node_ids[0],
    }


def ok(response: httpx.Response, status: int | tuple[int, ...] = (200, 202)) -> dict[str, Any]:
    expected = (status,) if isinstance(status, int) else status
    assert response.status_code in expected, (response.status_code, response.text)
    return response.json() if response.content else {}


def login(stack: Stack, name: str) -> str:
    response = httpx.post(
        f"{stack.endpoint}/v1/tokens", json={"name": name, "password": f"{name}-password"}
    )
    return str(ok(response, 201)["token"])


def count_nodes(admin: httpx.Client, state: str) -> int:
    nodes = admin.get("/v1/nodes", params={"provision_state": state, "limit": 1000}).json()
    return len(nodes["nodes"])


def node_in(admin: httpx.Client, node_id: str, state: str) -> bool:
    return bool(ok(admin.get(f"/v1/nodes/{node_id}"))["provision_state"] == state)


def instance(client: httpx.Client, instance_id: str) -> dict[str, Any]:
    return ok(client.get(f"/v1/instances/{instance_id}"), 200)


def test_twenty_instances_become_active_on_twenty_nodes_and_come_back(stack, cloud):
    with stack.client(cloud["alice"]) as member, stack.client() as admin:

        def create(i: int) -> str:
            response = member.post(
                "/v1/instances",
                json={
                    "name": f"web-{i}",
                    "flavor": "bm.small",
                    "image": cloud["image"],
                    "networks": [cloud["network"]],
                },
            )
            body = ok(response, 202)
            assert response.headers["location"].endswith(f"/v1/instances/{body['id']}")
            assert body["status"] == "BUILD"
            return str(body["id"])

        with ThreadPoolExecutor(NODES) as pool:
            ids = list(pool.map(create, range(NODES)))

        def all_active() -> bool:
            stack.check_alive()
            statuses = [instance(member, i)["status"] for i in ids]
            assert "ERROR" not in statuses, [instance(admin, i) for i in ids]
            return all(s == "ACTIVE" for s in statuses)

        wait_for(all_active, timeout=180, what="20 instances ACTIVE")
        rows = [instance(admin, i) for i in ids]
        assert len({row["node_id"] for row in rows}) == NODES
        assert count_nodes(admin, "active") == NODES
        # Each node's port is in the tenant network now.
        ports = admin.get("/v1/ports", params={"limit": 1000}).json()["ports"]
        assert {p["binding"] for p in ports} == {"tenant"}
        assert {p["network_id"] for p in ports} == {cloud["network"]}

        for i in ids:
            ok(member.delete(f"/v1/instances/{i}"), 202)

        def all_deleted() -> bool:
            stack.check_alive()
            return all(instance(member, i)["status"] == "DELETED" for i in ids)

        wait_for(all_deleted, timeout=180, what="20 instances DELETED")
        wait_for(
            lambda: count_nodes(admin, "available") == NODES, timeout=60, what="nodes available"
        )
        nodes = admin.get("/v1/nodes", params={"limit": 1000}).json()["nodes"]
        assert all(n["instance_id"] is None for n in nodes)
        ports = admin.get("/v1/ports", params={"limit": 1000}).json()["ports"]
        assert {p["binding"] for p in ports} == {"none"}
        assert member.get("/v1/instances").json()["instances"] == []


def test_a_failed_deploy_is_rescheduled_on_another_node(stack, cloud):
    with stack.client(cloud["alice"]) as member, stack.client() as admin:
        # The smallest node that fits is tried first (best fit): make it the broken one.
        broken = ok(
            admin.post(
                "/v1/nodes",
                json={
                    "name": "broken-disk",
                    "resource_class": "baremetal",
                    "properties": {"cpus": 4, "memory_mb": 8192, "disk_gb": 100},
                    "driver_info": {"fake_delay": 0.2, "fake_fail_deploy": "disk /dev/sda gone"},
                },
            ),
            201,
        )
        for target in ("manage", "provide"):
            ok(admin.put(f"/v1/nodes/{broken['id']}/states/provision", json={"target": target}))
        wait_for(
            lambda: admin.get(f"/v1/nodes/{broken['id']}").json()["provision_state"] == "available",
            what="the broken node available",
        )
        body = ok(
            member.post(
                "/v1/instances",
                json={"name": "retry-me", "flavor": "bm.small", "image": "debian-12"},
            ),
            202,
        )
        row = wait_for(
            lambda: (r := instance(admin, body["id"]))["status"] in ("ACTIVE", "ERROR") and r,
            timeout=120,
            what="the instance to settle",
        )
        assert row["status"] == "ACTIVE", row
        assert row["node_id"] != broken["id"]
        assert row["attempts"] == 2
        node = admin.get(f"/v1/nodes/{broken['id']}").json()
        assert node["provision_state"] == "deploy failed"
        assert "disk /dev/sda gone" in node["last_error"]
        assert node["instance_id"] is None
        ok(member.delete(f"/v1/instances/{body['id']}"), 202)
        wait_for(
            lambda: instance(member, body["id"])["status"] == "DELETED", what="retry-me deleted"
        )


def test_no_capacity_puts_the_instance_in_error_with_the_reason(stack, cloud):
    with stack.client(cloud["alice"]) as member, stack.client() as admin:
        ok(
            admin.post(
                "/v1/flavors",
                json={
                    "name": "bm.huge",
                    "resource_class": "baremetal",
                    "cpus": 512,
                    "memory_mb": 8192,
                    "disk_gb": 100,
                },
            ),
            201,
        )
        body = ok(
            member.post(
                "/v1/instances", json={"name": "too-big", "flavor": "bm.huge", "image": "debian-12"}
            ),
            202,
        )
        row = wait_for(
            lambda: (r := instance(member, body["id"]))["status"] == "ERROR" and r,
            what="no valid host",
        )
        assert row["fault"]["code"] == "no_valid_host"
        assert "PropertiesFilter" in row["fault"]["message"]
        ok(member.delete(f"/v1/instances/{body['id']}"), 202)
        assert instance(member, body["id"])["status"] == "DELETED"


def test_bad_requests_get_the_right_4xx_with_a_reason(stack, cloud):
    with stack.client(cloud["alice"]) as member, stack.client() as admin:
        cases = [
            (
                member.post(
                    "/v1/instances", json={"name": "x", "flavor": "nope", "image": "debian-12"}
                ),
                400,
            ),
            (member.post("/v1/instances", json={"name": "x"}), 400),
            (member.post("/v1/instances", json={"name": "x", "flavor": 5, "image": []}), 400),
            (
                admin.post(
                    "/v1/ports",
                    json={"address": "52:54:zz:00:00:01", "node_id": cloud["first_node"]},
                ),
                400,
            ),
            (admin.post("/v1/ports", json={"node_id": cloud["first_node"]}), 400),
            (member.get("/v1/nodes"), 403),
            (
                httpx.get(
                    f"{stack.endpoint}/v1/instances", headers={"Authorization": "Bearer wrong"}
                ),
                401,
            ),
            (httpx.get(f"{stack.endpoint}/v1/instances"), 401),
        ]
        for response, status in cases:
            assert response.status_code == status, (response.request.url, response.text)
            error = response.json()["error"]
            assert error["reason"]
            assert error["request_id"] == response.headers["x-request-id"]

        mine = ok(
            member.post(
                "/v1/instances",
                json={"name": "private", "flavor": "bm.small", "image": "debian-12"},
            ),
            202,
        )
        with stack.client(cloud["mallory"]) as intruder:
            assert intruder.get(f"/v1/instances/{mine['id']}").status_code == 404
            assert intruder.delete(f"/v1/instances/{mine['id']}").status_code == 404
        wait_for(
            lambda: instance(member, mine["id"])["status"] == "ACTIVE", timeout=120, what="ACTIVE"
        )
        ok(member.delete(f"/v1/instances/{mine['id']}"), 202)
        wait_for(
            lambda: instance(member, mine["id"])["status"] == "DELETED", timeout=120, what="DELETED"
        )


def test_bmc_passwords_never_leave_the_api(stack, cloud):
    with stack.client() as admin:
        node = admin.get(f"/v1/nodes/{cloud['first_node']}").json()
        assert node["driver_info"]["ipmi_password"] == "******"
        listing = admin.get("/v1/nodes", params={"limit": 1000}).text
        assert "very-secret-bmc-pw" not in listing
    for process in stack.processes.values():
        assert "very-secret-bmc-pw" not in process.log.read_text(errors="replace")


def test_request_id_flows_from_http_into_every_service_log(stack, cloud):
    with stack.client(cloud["alice"]) as member:
        response = member.post(
            "/v1/instances",
            json={"name": "traced", "flavor": "bm.small", "image": "debian-12"},
            headers={"X-Request-ID": "req-trace-me-42"},
        )
        body = ok(response, 202)
        assert response.headers["x-request-id"] == "req-trace-me-42"
        wait_for(
            lambda: instance(member, body["id"])["status"] == "ACTIVE", timeout=120, what="ACTIVE"
        )
        for name in ("api", "scheduler", "conductor-1", "netctl"):
            assert "req-trace-me-42" in stack.processes[name].log.read_text(), name
        ok(member.delete(f"/v1/instances/{body['id']}"), 202)
        wait_for(
            lambda: instance(member, body["id"])["status"] == "DELETED", timeout=120, what="DELETED"
        )


def test_the_cli_creates_and_deletes_a_server_against_the_running_api(stack, cloud, tmp_path: Path):
    env = {
        **os.environ,
        "TETSU_ENDPOINT": stack.endpoint,
        "TETSU_TOKEN": cloud["alice"],
        "TETSU_CLI_CONFIG": str(tmp_path / "none.toml"),
        "COLUMNS": "200",
    }

    def tetsu(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "libs.cli.main", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    created = tetsu(
        "server",
        "create",
        "from-cli",
        "--flavor",
        "bm.small",
        "--image",
        "debian-12",
        "--wait",
        "--format",
        "json",
    )
    assert created.returncode == 0, created.stdout + created.stderr
    listed = tetsu("server", "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    assert any(
        s["name"] == "from-cli" and s["status"] == "ACTIVE" for s in json.loads(listed.stdout)
    )
    server_id = next(s["id"] for s in json.loads(listed.stdout) if s["name"] == "from-cli")
    with stack.client() as admin:
        node_id = ok(admin.get(f"/v1/instances/{server_id}"))["node_id"]
        newer = {
            "name": "debian-13",
            "disk_format": "raw",
            "visibility": "public",
            "source_url": "http://images.example/debian-13.raw",
            "sha256": "e" * 64,
            "size": 4096,
        }
        ok(admin.post("/v1/images", json=newer), 201)
    # Rebuild in place with another image: the same server on the same node, re-imaged.
    rebuilt = tetsu("server", "rebuild", "from-cli", "--image", "debian-13", "--wait")
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    with stack.client() as admin:
        row = ok(admin.get(f"/v1/instances/{server_id}"))
        assert (row["status"], row["node_id"], row["name"]) == ("ACTIVE", node_id, "from-cli")
        assert row["image_id"] != cloud["image"]
        history = ok(admin.get("/v1/events", params={"object_id": node_id, "limit": 200}))
        kinds = [e["event_type"] for e in reversed(history["events"])]
        assert kinds.count("tetsu.node.rebuild.start") == 1
        assert kinds.index("tetsu.node.rebuild.start") < len(kinds) - 1 - kinds[::-1].index(
            "tetsu.node.deploy.end"
        ), "the node was deployed again after the rebuild began"
    deleted = tetsu("server", "delete", server_id, "--wait")
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    refused = tetsu("server", "create", "x", "--flavor", "no-such-flavor", "--image", "debian-12")
    assert refused.returncode != 0
    assert "no-such-flavor" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_an_operator_runs_the_estate_with_the_cli(stack, cloud, tmp_path: Path):
    env = {
        **os.environ,
        "TETSU_ENDPOINT": stack.endpoint,
        "TETSU_TOKEN": stack.admin_token,
        "TETSU_CLI_CONFIG": str(tmp_path / "cli.toml"),
        "COLUMNS": "200",
    }

    def tetsu(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "libs.cli.main", *args],
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert "Traceback" not in result.stderr
        return result

    enrolled = tetsu(
        "node", "enroll", "cli-node", "--resource-class", "cli", "--cpus", "2",
        "--memory-mb", "2048", "--disk-gb", "20", "--driver-info", "fake_delay=0.2",
        "--driver-info", "ipmi_password=cli-secret-pw", "--port", "52:54:00:cc:00:01",
        "--provide", "--wait",
    )  # fmt: skip
    assert enrolled.returncode == 0, enrolled.stdout + enrolled.stderr
    assert "cli-secret-pw" not in enrolled.stdout + enrolled.stderr
    nodes = json.loads(tetsu("node", "list", "--format", "json").stdout)
    node = next(n for n in nodes if n["name"] == "cli-node")
    assert node["provision_state"] == "available"

    assert tetsu("node", "maintenance", "cli-node", "on", "--reason", "fan").returncode == 0
    shown = json.loads(tetsu("node", "show", "cli-node", "--format", "json").stdout)
    assert shown["maintenance"] is True
    assert shown["maintenance_reason"] == "fan"
    assert shown["driver_info"]["ipmi_password"] == "******"
    assert tetsu("node", "maintenance", "cli-node", "off").returncode == 0

    assert tetsu("node", "power", "cli-node", "off").returncode == 0
    wait_for(
        lambda: (
            json.loads(tetsu("node", "show", "cli-node", "--format", "json").stdout)["power_state"]
            == "power off"
        ),
        what="cli-node powered off",
    )

    image_file = tmp_path / "disk.raw"
    image_file.write_bytes(IMAGE_BYTES)
    created = tetsu("image", "create", "cli-image", "--file", str(image_file), "--format", "json")
    assert created.returncode == 0, created.stderr
    image = json.loads(created.stdout)
    assert image["status"] == "active"
    assert image["sha256"] == hashlib.sha256(IMAGE_BYTES).hexdigest()
    assert image["size"] == len(IMAGE_BYTES)

    flavor = tetsu("flavor", "create", "cli.small", "--resource-class", "cli", "--cpus", "1",
                   "--memory-mb", "1024", "--disk-gb", "10")  # fmt: skip
    assert flavor.returncode == 0, flavor.stderr
    assert "cli.small" in tetsu("flavor", "list").stdout

    token = tetsu("login", "alice", "--password-stdin", stdin="alice-password\n")
    assert token.returncode == 0, token.stderr
    assert tetsu("login", "alice", "--password-stdin", stdin="wrong\n").returncode == 1

    duplicate = tetsu("flavor", "create", "cli.small", "--resource-class", "cli", "--cpus", "1",
                      "--memory-mb", "1024", "--disk-gb", "10")  # fmt: skip
    assert duplicate.returncode == 1
    assert "duplicate" in duplicate.stderr

    assert tetsu("node", "delete", "cli-node").returncode == 0
    assert "cli-node" not in tetsu("node", "list").stdout


def test_an_instance_of_a_failed_node_is_evacuated_to_another(stack, cloud, tmp_path: Path):
    """An operator marks the node failed (maintenance) and evacuates its instance with the
    CLI: the same server (id, name, network) becomes ACTIVE on another node, and the old
    node is fenced: powered off, its ports cut off, left in maintenance."""
    with stack.client(cloud["alice"]) as member:
        body = {
            "name": "to-evacuate",
            "flavor": cloud["flavor"],
            "image": cloud["image"],
            "networks": [cloud["network"]],
        }
        server_id = ok(member.post("/v1/instances", json=body), 202)["id"]
        wait_for(
            lambda: instance(member, server_id)["status"] == "ACTIVE", timeout=60, what="ACTIVE"
        )
    with stack.client() as admin:
        old_node = instance(admin, server_id)["node_id"]
        ok(admin.patch(f"/v1/nodes/{old_node}", json={"maintenance": True}))
    env = {
        **os.environ,
        "TETSU_ENDPOINT": stack.endpoint,
        "TETSU_TOKEN": stack.admin_token,
        "TETSU_CLI_CONFIG": str(tmp_path / "none.toml"),
    }
    evacuated = subprocess.run(
        [sys.executable, "-m", "libs.cli.main", "server", "evacuate", server_id, "--wait"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert evacuated.returncode == 0, evacuated.stdout + evacuated.stderr
    with stack.client() as admin:
        row = instance(admin, server_id)
        assert (row["status"], row["name"]) == ("ACTIVE", "to-evacuate")
        assert row["node_id"] not in (None, old_node)
        assert row["network_ids"] == [cloud["network"]]
        old = ok(admin.get(f"/v1/nodes/{old_node}"))
        assert (old["provision_state"], old["maintenance"]) == ("error", True)
        assert old["power_state"] == "power off"
        assert old["instance_id"] is None
        assert "evacuated" in old["maintenance_reason"]
        ports = ok(admin.get("/v1/ports", params={"node_id": old_node}))["ports"]
        assert [p["binding"] for p in ports] == ["none"]
        # Repaired, the node is taken back: manage, provide (cleaned), available.
        ok(admin.patch(f"/v1/nodes/{old_node}", json={"maintenance": False}))
        for target, state in (("manage", "manageable"), ("provide", "available")):
            ok(admin.put(f"/v1/nodes/{old_node}/states/provision", json={"target": target}))
            wait_for(
                partial(node_in, admin, old_node, state),
                timeout=60,
                what=f"the old node {state}",
            )
        ok(admin.delete(f"/v1/instances/{server_id}"), 202)
        wait_for(
            lambda: instance(admin, server_id)["status"] == "DELETED", timeout=60, what="DELETED"
        )
