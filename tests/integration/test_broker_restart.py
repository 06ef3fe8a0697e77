"""RabbitMQ killed (kill -9) and restarted while instances are being deployed: nothing is
lost, every instance still becomes ACTIVE."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import create_database, drop_database
from tests.integration.rabbitnode import RabbitNode
from tests.integration.stack import running_stack, wait_for

pytestmark = pytest.mark.integration

INSTANCES = 6


def ok(response: httpx.Response, status: int | tuple[int, ...] = (200, 202)) -> dict[str, Any]:
    expected = (status,) if isinstance(status, int) else status
    assert response.status_code in expected, (response.status_code, response.text)
    return response.json() if response.content else {}


def test_instances_survive_a_broker_crash_in_the_middle_of_their_deploys(tmp_path: Path) -> None:
    name, url = create_database()
    try:
        with (
            RabbitNode(tmp_path / "rabbit") as broker,
            running_stack(tmp_path, database_url=url, transport_url=broker.url) as stack,
        ):
            try:
                run(stack, broker)
            except BaseException:
                print(stack.logs())
                raise
    finally:
        drop_database(name)


def run(stack: Any, broker: RabbitNode) -> None:
    with stack.client() as admin:
        ok(
            admin.post(
                "/v1/flavors",
                json={
                    "name": "bm",
                    "resource_class": "bm",
                    "cpus": 1,
                    "memory_mb": 1,
                    "disk_gb": 1,
                },
            ),
            201,
        )
        ok(
            admin.post(
                "/v1/images",
                json={"name": "img", "source_url": "http://x/img", "sha256": "0" * 64, "size": 1},
            ),
            201,
        )
        for i in range(INSTANCES):
            node = ok(
                admin.post(
                    "/v1/nodes",
                    json={
                        "name": f"n{i}",
                        "resource_class": "bm",
                        "properties": {"cpus": 1, "memory_mb": 1, "disk_gb": 1},
                        "driver_info": {"fake_delay": 0.2},
                    },
                ),
                201,
            )
            ok(
                admin.post(
                    "/v1/ports", json={"address": f"52:54:00:bb:00:{i:02x}", "node_id": node["id"]}
                ),
                201,
            )
            for target in ("manage", "provide"):
                ok(admin.put(f"/v1/nodes/{node['id']}/states/provision", json={"target": target}))
        wait_for(
            lambda: all(
                n["provision_state"] == "available" for n in admin.get("/v1/nodes").json()["nodes"]
            ),
            what="nodes available",
        )
        # Slow ramdisks, so the deploys are in flight when the broker dies.
        for node in admin.get("/v1/nodes").json()["nodes"]:
            ok(admin.patch(f"/v1/nodes/{node['id']}", json={"driver_info": {"fake_delay": 4}}))

        with ThreadPoolExecutor(INSTANCES) as pool:
            ids = list(
                pool.map(
                    lambda i: ok(
                        admin.post(
                            "/v1/instances", json={"name": f"s{i}", "flavor": "bm", "image": "img"}
                        ),
                        202,
                    )["id"],
                    range(INSTANCES),
                )
            )
        wait_for(
            lambda: (
                sum(
                    n["provision_state"] == "wait call-back"
                    for n in admin.get("/v1/nodes").json()["nodes"]
                )
                >= INSTANCES // 2
            ),
            what="deploys in flight",
        )
        broker.kill()
        time.sleep(2)
        broker.restart()

        def settled() -> list[dict[str, Any]] | None:
            rows = [admin.get(f"/v1/instances/{i}").json() for i in ids]
            return rows if all(r["status"] in ("ACTIVE", "ERROR") for r in rows) else None

        rows = wait_for(settled, timeout=240, interval=1, what="instances to settle")
        assert [r["status"] for r in rows] == ["ACTIVE"] * INSTANCES, rows
        assert [r["attempts"] for r in rows] == [1] * INSTANCES, rows  # no deploy failed
        # The services did see the broker go away and came back to it on their own.
        assert "lost" in stack.processes["conductor-1"].log.read_text().lower()
