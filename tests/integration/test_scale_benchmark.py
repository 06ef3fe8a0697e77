"""The scale benchmark's scripts start, and its burst drives a real stack from enrolment
to ACTIVE and back, measuring what it claims to (a handful of nodes: no timing asserted)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.scale import burst
from benchmarks.scale.common import wait_until
from tests.integration.conftest import create_database, drop_database
from tests.integration.stack import Stack, running_stack

pytestmark = pytest.mark.integration

SCRIPTS = Path(__file__).resolve().parents[2] / "benchmarks" / "scale"
NODES = 5


@pytest.mark.parametrize(
    ("script", "option"),
    [
        ("run.py", "--nodes"),
        ("burst.py", "--nodes"),
        ("ironic.py", "--nodes"),
        ("scheduler.py", "--nodes"),
        ("ceiling.py", "--in-flight"),
    ],
)
def test_every_script_explains_itself(script, option):
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / script), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout and option in done.stdout


@pytest.fixture
def stack(amqp_url: str, tmp_path: Path) -> Iterator[Stack]:
    name, url = create_database()
    try:
        with running_stack(tmp_path, database_url=url, transport_url=amqp_url) as running:
            yield running
    finally:
        drop_database(name)


def test_a_small_burst_goes_to_active_and_back(stack):
    result = burst.run_burst(stack, NODES, concurrency=3, poll=0.2)

    for phase in ("create", "delete"):
        latency = result[f"{phase}_latency"]
        assert latency["requests"] == NODES and latency["failed"] == 0, latency
        assert latency["p50_ms"] <= latency["p99_ms"]
        # Where the cores went meanwhile: each service, and the servers on this machine.
        window = result[f"{phase}_cpu"]
        assert window["seconds"] > 0
        assert {"api", "scheduler", "conductor-1", "netctl", "postgresql", "rabbitmq"} <= set(
            window["cpu_s"]
        )
        # A few requests take a clock tick or two (10 ms) of some party's CPU, none less.
        assert all(seconds >= 0 for seconds in window["cpu_s"].values())
        assert sum(window["cpu_s"].values()) > 0
    assert result["active_s"] > 0 and result["available_s"] > 0
    assert result["total_s"] == pytest.approx(result["active_s"] + result["available_s"])
    assert set(result["processes"]) == {"api", "scheduler", "conductor-1", "netctl"}
    assert all(p["peak_rss_mib"] > 10 for p in result["processes"].values())
    with stack.client() as admin:
        # What the burst reports is what happened: every instance went and came back.
        deleted = admin.get("/v1/instances", params={"status": "DELETED"}).json()["instances"]
        assert len(deleted) == NODES
        nodes = admin.get("/v1/nodes").json()["nodes"]
        assert len(nodes) == NODES
        assert {n["provision_state"] for n in nodes} == {"available"}
        assert all(n["instance_id"] is None for n in nodes)


def test_a_failed_node_stops_the_wait_with_its_reason(stack):
    with stack.client() as admin:
        admin.timeout = httpx.Timeout(60.0)
        burst.enroll(stack, admin, 1, 1)
        node = admin.get("/v1/nodes").json()["nodes"][0]
        admin.patch(f"/v1/nodes/{node['id']}", json={"driver_info": {"fake_fail_clean": "disk"}})
        admin.put(f"/v1/nodes/{node['id']}/states/provision", json={"target": "manage"})
        admin.put(f"/v1/nodes/{node['id']}/states/provision", json={"target": "provide"})
        with pytest.raises(RuntimeError, match="clean failed"):
            wait_until(lambda: burst.free_nodes(admin), timeout=60, what="a free node")
