"""Hypervisors: admins see each one's room, what its VM nodes hold and what is free, and
may forget one that has no VM nodes left."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient

from libs.db import Conductor, Database, Hypervisor, Node, utcnow

from .support import ADMIN, error_of


def add_hypervisor(db: Database, name: str, conductor: str, **values: int) -> Hypervisor:
    row = Hypervisor(
        name=name,
        conductor=conductor,
        resource_class="vm",
        vcpus=values.get("vcpus", 16),
        memory_mb=values.get("memory_mb", 8192),
        disk_gb=values.get("disk_gb", 100),
        bridge="br-vm",
    )
    with db.session() as session:
        session.add(row)
    return row


def add_vm(db: Database, hypervisor: Hypervisor, name: str, cpus: int, memory_mb: int) -> None:
    with db.session() as session:
        session.add(
            Node(
                name=name,
                resource_class="vm",
                cpus=cpus,
                memory_mb=memory_mb,
                disk_gb=10,
                hypervisor_id=hypervisor.id,
                pinned_conductor=hypervisor.conductor,
            )
        )


def test_an_admin_sees_room_use_and_liveness(client: TestClient, db: Database) -> None:
    with db.session() as session:
        session.add(Conductor(hostname="cond-a", online=True, updated_at=utcnow()))
        session.add(
            Conductor(hostname="cond-b", online=True, updated_at=utcnow() - timedelta(hours=1))
        )
    busy = add_hypervisor(db, "hv-a", "cond-a")
    add_hypervisor(db, "hv-b", "cond-b", vcpus=4)
    add_vm(db, busy, "vm-1", 2, 1024)
    add_vm(db, busy, "vm-2", 4, 2048)

    listed = client.get("/v1/hypervisors", headers=ADMIN)

    assert listed.status_code == 200, listed.text
    rows = listed.json()["hypervisors"]
    assert [(r["name"], r["alive"], r["vm_nodes"]) for r in rows] == [
        ("hv-a", True, 2),
        ("hv-b", False, 0),
    ]
    assert rows[0]["used"] == {"vcpus": 6, "memory_mb": 3072, "disk_gb": 20}
    assert rows[0]["free"] == {"vcpus": 10, "memory_mb": 5120, "disk_gb": 80}
    assert rows[1]["free"] == rows[1]["capacity"] == {"vcpus": 4, "memory_mb": 8192, "disk_gb": 100}
    shown = client.get("/v1/hypervisors/hv-a", headers=ADMIN).json()
    assert shown == rows[0]
    assert client.get(f"/v1/hypervisors/{busy.id}", headers=ADMIN).json()["name"] == "hv-a"
    nodes = client.get("/v1/nodes", headers=ADMIN).json()["nodes"]
    assert {(n["hypervisor_id"], n["pinned_conductor"]) for n in nodes} == {(busy.id, "cond-a")}


def test_a_hypervisor_is_forgotten_only_without_vm_nodes(client: TestClient, db: Database) -> None:
    busy = add_hypervisor(db, "hv-a", "cond-a")
    add_hypervisor(db, "hv-b", "cond-b")
    add_vm(db, busy, "vm-1", 1, 512)

    refused = client.delete("/v1/hypervisors/hv-a", headers=ADMIN)
    assert refused.status_code == 409
    assert "still has 1 VM node(s)" in error_of(refused)["reason"]
    assert client.delete("/v1/hypervisors/hv-b", headers=ADMIN).status_code == 204
    missing = client.get("/v1/hypervisors/hv-b", headers=ADMIN)
    assert missing.status_code == 404
    assert error_of(missing)["reason"] == "hypervisor 'hv-b' not found"
