"""A conductor killed in the middle of a deploy: another conductor takes its nodes over,
fails the half-done deploy cleanly and the instance is rescheduled and becomes ACTIVE."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.conductor.hashring import HashRing
from tests.integration.conftest import create_database, drop_database
from tests.integration.stack import Stack, running_stack, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(amqp_url: str, tmp_path: Path) -> Iterator[Stack]:
    name, url = create_database()
    try:
        with running_stack(tmp_path, database_url=url, transport_url=amqp_url, conductors=2) as s:
            try:
                yield s
            except BaseException:
                print(s.logs())
                raise
    finally:
        drop_database(name)


def ok(response: httpx.Response, status: int | tuple[int, ...] = (200, 202)) -> dict[str, Any]:
    expected = (status,) if isinstance(status, int) else status
    assert response.status_code in expected, (response.status_code, response.text)
    return response.json() if response.content else {}


def enroll(admin: httpx.Client, name: str, cpus: int, delay: float, mac: str) -> dict[str, Any]:
    node = ok(
        admin.post(
            "/v1/nodes",
            json={
                "name": name,
                "resource_class": "baremetal",
                "properties": {"cpus": cpus, "memory_mb": 8192, "disk_gb": 100},
                "driver_info": {"fake_delay": delay},
            },
        ),
        201,
    )
    ok(admin.post("/v1/ports", json={"address": mac, "node_id": node["id"]}), 201)
    for target in ("manage", "provide"):
        ok(admin.put(f"/v1/nodes/{node['id']}/states/provision", json={"target": target}))
    return node


def test_a_conductor_killed_during_a_deploy_is_taken_over(stack: Stack) -> None:
    with stack.client() as admin:
        ok(
            admin.post(
                "/v1/flavors",
                json={
                    "name": "bm",
                    "resource_class": "baremetal",
                    "cpus": 4,
                    "memory_mb": 8192,
                    "disk_gb": 100,
                },
            ),
            201,
        )
        ok(
            admin.post(
                "/v1/images",
                json={
                    "name": "img",
                    "disk_format": "raw",
                    "source_url": "http://images.example/img.raw",
                    "sha256": "0" * 64,
                    "size": 1024,
                },
            ),
            201,
        )
        # The best fit (4 cpus) is tried first; its ramdisk "takes" ten minutes, so the
        # deploy is sure to be waiting for the callback when its conductor dies.
        slow = enroll(admin, "slow", 4, 0.2, "52:54:00:aa:00:01")
        for i in range(2, 4):
            enroll(admin, f"fast-{i}", 8, 0.2, f"52:54:00:aa:00:0{i}")
        wait_for(
            lambda: all(
                n["provision_state"] == "available" for n in admin.get("/v1/nodes").json()["nodes"]
            ),
            what="nodes available",
        )
        # Only now (cleaning on "provide" runs the same ramdisk) make its ramdisk slow.
        ok(admin.patch(f"/v1/nodes/{slow['id']}", json={"driver_info": {"fake_delay": 600}}))
        owner = HashRing(["conductor-1", "conductor-2"]).owner(slow["id"])

        server = ok(
            admin.post("/v1/instances", json={"name": "s", "flavor": "bm", "image": "img"}), 202
        )
        wait_for(
            lambda: (
                admin.get(f"/v1/nodes/{slow['id']}").json()["provision_state"] == "wait call-back"
            ),
            what="the slow node waiting for its ramdisk",
        )
        stack.stop(owner, kill=True)

        row = wait_for(
            lambda: (
                (r := admin.get(f"/v1/instances/{server['id']}").json())["status"]
                in ("ACTIVE", "ERROR")
                and r
            ),
            timeout=120,
            what="the instance rescheduled after the take-over",
        )
        assert row["status"] == "ACTIVE", row
        assert row["node_id"] != slow["id"]
        node = admin.get(f"/v1/nodes/{slow['id']}").json()
        assert node["provision_state"] == "deploy failed"
        assert owner in node["last_error"]
        assert node["reservation"] is None
        alive = [
            c["hostname"] for c in admin.get("/v1/conductors").json()["conductors"] if c["alive"]
        ]
        assert alive == [h for h in ("conductor-1", "conductor-2") if h != owner]
