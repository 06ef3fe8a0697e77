"""Metrics on the live stack: after one deploy on the fake driver, each service's
/metrics (the API's route, the others' own servers) counts what it did: the casts that
carried the deploy on both sides, one deploy duration, and the nodes by state."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import create_database, drop_database
from tests.integration.stack import Stack, free_port, running_stack, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    name, url = create_database()
    workdir: Path = tmp_path_factory.mktemp("metrics")
    try:
        with running_stack(
            workdir, database_url=url, transport_url=amqp_url, extra_env={"TETSU_METRICS_PORT": "0"}
        ) as running:
            yield running
    finally:
        drop_database(name)


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def total(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= found)


def in_state(admin: httpx.Client, node_id: str, state: str) -> bool:
    return bool(admin.get(f"/v1/nodes/{node_id}").json()["provision_state"] == state)


def ok(response: httpx.Response, status: int) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def test_every_service_counts_a_deploy(stack: Stack) -> None:
    ports = {}
    for name, service, hostname in (
        ("scheduler", "scheduler", "scheduler-1"),
        ("conductor-1", "conductor", "conductor-1"),
        ("netctl", "netctl", "netctl-1"),
    ):
        ports[service] = free_port()
        stack.stop(name)
        stack.start(
            name, service, {"TETSU_HOSTNAME": hostname, "TETSU_METRICS_PORT": str(ports[service])}
        )
    urls = {service: f"http://127.0.0.1:{port}/metrics" for service, port in ports.items()}

    def serving() -> bool:
        stack.check_alive()
        try:
            return all(httpx.get(url, timeout=2).status_code == 200 for url in urls.values())
        except httpx.TransportError:
            return False

    wait_for(serving, timeout=60, what="the services' /metrics")

    with stack.client() as admin:
        wait_for(
            lambda: any(c["alive"] for c in admin.get("/v1/conductors").json()["conductors"]),
            what="a live conductor",
        )
        nodes = []
        for n in range(2):
            node = ok(
                admin.post(
                    "/v1/nodes",
                    json={
                        "name": f"m-node-{n}",
                        "resource_class": "m",
                        "properties": {"cpus": 1, "memory_mb": 1024, "disk_gb": 10},
                        "driver_info": {"fake_delay": 0.1},
                    },
                ),
                201,
            )
            nodes.append(node["id"])
            port = {"address": f"52:54:00:ab:00:0{n}", "node_id": node["id"]}
            ok(admin.post("/v1/ports", json=port), 201)
            for target, state in (("manage", "manageable"), ("provide", "available")):
                ok(
                    admin.put(f"/v1/nodes/{node['id']}/states/provision", json={"target": target}),
                    202,
                )
                wait_for(partial(in_state, admin, node["id"], state), what=f"node {state}")
        ok(
            admin.post(
                "/v1/flavors",
                json={"name": "m", "resource_class": "m", "cpus": 1, "memory_mb": 1, "disk_gb": 1},
            ),
            201,
        )
        ok(
            admin.post(
                "/v1/images",
                json={
                    "name": "m-image",
                    "visibility": "public",
                    "source_url": "http://images.invalid/m.img",
                    "sha256": "c" * 64,
                    "size": 1,
                },
            ),
            201,
        )
        instance = ok(
            admin.post("/v1/instances", json={"name": "m-vm", "flavor": "m", "image": "m-image"}),
            202,
        )
        wait_for(
            lambda: admin.get(f"/v1/instances/{instance['id']}").json()["status"] == "ACTIVE",
            what="ACTIVE",
        )
        wait_for(
            lambda: admin.get("/v1/nodes", params={"provision_state": "active"}).json()["nodes"],
            what="an active node",
        )

    api = scrape(f"{stack.endpoint}/metrics")
    scheduler = scrape(urls["scheduler"])
    conductor = scrape(urls["conductor"])
    netctl = scrape(urls["netctl"])

    # The API cast schedule_instance; the scheduler handled it and cast deploy_node; the
    # conductor handled that and called netctl for the ports.
    rpc = "tetsu_rpc_calls_total"
    assert total(api, rpc, side="client", method="schedule_instance", outcome="ok") >= 1
    assert total(scheduler, rpc, side="server", method="schedule_instance", outcome="ok") >= 1
    assert (
        total(scheduler, rpc, side="client", kind="cast", method="deploy_node", outcome="ok") >= 1
    )
    assert (
        total(conductor, rpc, side="server", kind="cast", method="deploy_node", outcome="ok") >= 1
    )
    assert (
        total(conductor, rpc, side="client", kind="call", method="provision_port", outcome="ok")
        >= 1
    )
    assert (
        total(netctl, rpc, side="server", kind="call", method="provision_port", outcome="ok") >= 1
    )
    assert total(conductor, "tetsu_rpc_seconds_count", side="server", method="deploy_node") >= 1

    # One deploy, timed; the two cleanings of provide, timed.
    assert total(conductor, "tetsu_deploy_seconds_count", outcome="success") == 1
    assert total(conductor, "tetsu_clean_seconds_count", outcome="success") == 2

    # Nodes by state, read from the database at scrape time, in the API and the conductor.
    for samples in (api, conductor):
        assert total(samples, "tetsu_nodes", provision_state="active") == 1
        assert total(samples, "tetsu_nodes", provision_state="available") == 1
    assert (
        total(api, "tetsu_api_requests_total", method="POST", route="/v1/instances", status="202")
        == 1
    )
    assert total(api, "tetsu_api_request_seconds_count", route="/v1/nodes") >= 2
