"""End to end on real parts: tetsu's services (real RabbitMQ and PostgreSQL) deploy QEMU
guests behind virtualbmc BMCs over IPMI, network-booting tetsu's own ramdisk through
dnsmasq and the conductor's boot server, and the guests then boot from their own disks.

The tests share one lab and run in file order; each leaves both guests ``available``
except the last, whose failed node the lab's tear-down removes.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import create_database, drop_database
from tests.integration.stack import Stack, free_port, running_stack, wait_for
from tests.lab.harness import LIBVIRT_URI, Guest, Lab, boot_settings, lab, run
from tests.lab.images import make_marker_image

pytestmark = pytest.mark.lab

MiB = 1024 * 1024
DEPLOY_TIMEOUT = 300.0


@dataclass
class Baremetal:
    lab: Lab
    stack: Stack
    guests: dict[str, Guest]  # node id -> guest
    flavor: str
    network: str
    files: Path  # served at files_url, for images given by URL
    files_url: str
    shared: dict[str, Any] = field(default_factory=dict)  # what one test hands the next

    def guest_of(self, node_id: str) -> Guest:
        return self.guests[node_id]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def baremetal(
    amqp_url: str, ramdisk_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Baremetal]:
    workdir = tmp_path_factory.mktemp("baremetal")
    files = workdir / "files"
    files.mkdir()
    api_port = free_port()
    kernel, initramfs = ramdisk_files
    env, config = boot_settings(
        boot_root=workdir / "boot",
        boot_port=free_port(),
        api_port=api_port,
        kernel=kernel,
        initramfs=initramfs,
    )
    env.update(
        {
            "TETSU_IPMI_TIMEOUT": "4",
            "TETSU_IPMI_RETRIES": "2",
            "TETSU_POWER_SYNC_INTERVAL": "5",
            "TETSU_CALLBACK_TIMEOUT": str(DEPLOY_TIMEOUT),
            "TETSU_MAX_ATTEMPTS": "1",  # a failed deploy ends in ERROR, not on the other guest
        }
    )
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(_QuietHandler, directory=str(files))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    name, url = create_database()
    try:
        with (
            lab(workdir, guests=2, dnsmasq_config=config) as the_lab,
            running_stack(
                workdir,
                database_url=url,
                transport_url=amqp_url,
                port=api_port,
                extra_env=env,
            ) as stack,
        ):
            try:
                yield _enroll(the_lab, stack, files, f"http://127.0.0.1:{server.server_port}")
            except BaseException:
                print(stack.logs())
                print("--- dnsmasq ---\n" + the_lab.dnsmasq_log()[-3000:])
                for guest in the_lab.guests:
                    print(f"--- {guest.name} serial ---\n{guest.serial()[-3000:]}")
                raise
    finally:
        server.shutdown()
        drop_database(name)


def _enroll(the_lab: Lab, stack: Stack, files: Path, files_url: str) -> Baremetal:
    """Enroll the guests as nodes with their BMC credentials, then manage and provide them
    (which cleans their disks with the ramdisk) until they are available."""
    guests: dict[str, Guest] = {}
    with stack.client() as admin:
        flavor = ok(
            admin.post(
                "/v1/flavors",
                json={
                    "name": "bm.lab",
                    "resource_class": "baremetal",
                    "cpus": 1,
                    "memory_mb": 256,
                    "disk_gb": 0,
                },
            ),
            201,
        )
        network = ok(admin.post("/v1/networks", json={"name": "lab-net"}), 201)
        for guest in the_lab.guests:
            node = ok(admin.post("/v1/nodes", json=guest.node_request), 201)
            ok(admin.post("/v1/ports", json={"address": guest.mac, "node_id": node["id"]}), 201)
            guests[node["id"]] = guest
        for node_id in guests:
            ok(admin.put(f"/v1/nodes/{node_id}/states/provision", json={"target": "manage"}))
        wait_for(lambda: all_nodes_in(admin, guests, "manageable"), timeout=60, what="manageable")
        for node_id in guests:
            ok(admin.put(f"/v1/nodes/{node_id}/states/provision", json={"target": "provide"}))
        wait_for(
            lambda: all_nodes_in(admin, guests, "available"),
            timeout=DEPLOY_TIMEOUT,
            interval=1,
            what="cleaned, available nodes",
        )
    return Baremetal(the_lab, stack, guests, flavor["id"], network["id"], files, files_url)


def ok(response: httpx.Response, status: int | tuple[int, ...] = (200, 202)) -> dict[str, Any]:
    wanted = (status,) if isinstance(status, int) else status
    assert response.status_code in wanted, response.text
    return response.json() if response.content else {}


def node(admin: httpx.Client, node_id: str) -> dict[str, Any]:
    return ok(admin.get(f"/v1/nodes/{node_id}"), 200)


def all_nodes_in(admin: httpx.Client, node_ids: Any, state: str) -> bool:
    rows = [node(admin, node_id) for node_id in node_ids]
    failed = [r for r in rows if r["provision_state"] in ("clean failed", "deploy failed")]
    assert not failed, f"node(s) failed: {[(r['name'], r['last_error']) for r in failed]}"
    return all(r["provision_state"] == state and r["reservation"] is None for r in rows)


def upload_image(admin: httpx.Client, path: Path, name: str) -> dict[str, Any]:
    image = ok(admin.post("/v1/images", json={"name": name, "disk_format": "raw"}), 201)
    with path.open("rb") as data:
        return ok(admin.put(f"/v1/images/{image['id']}/file", content=data), 200)


def instance(admin: httpx.Client, instance_id: str) -> dict[str, Any]:
    return ok(admin.get(f"/v1/instances/{instance_id}"), 200)


def console_shows(guest: Guest, mark: int, text: str) -> Callable[[], bool]:
    """Whether ``text`` appeared on the guest's console after ``mark``."""
    return lambda: text in guest.serial_since(mark)


def test_two_instances_become_active_on_two_guests_that_then_boot_their_disks(
    baremetal: Baremetal, tmp_path: Path
) -> None:
    marker = "TETSU-LAB-IMAGE-A"
    sha256, size = make_marker_image(tmp_path / "a.img", marker, 24 * MiB)
    marks = {node_id: g.serial_mark() for node_id, g in baremetal.guests.items()}
    with baremetal.stack.client() as admin:
        image = upload_image(admin, tmp_path / "a.img", "lab-image-a")
        assert (image["sha256"], image["size"]) == (sha256, size)

        def create(i: int) -> str:
            body = {
                "name": f"web-{i}",
                "flavor": baremetal.flavor,
                "image": image["id"],
                "networks": [baremetal.network],
            }
            return str(ok(admin.post("/v1/instances", json=body), 202)["id"])

        with ThreadPoolExecutor(2) as pool:
            instance_ids = list(pool.map(create, range(2)))

        def both_active() -> bool:
            rows = [instance(admin, i) for i in instance_ids]
            errors = [r for r in rows if r["status"] == "ERROR"]
            assert not errors, errors
            return all(r["status"] == "ACTIVE" for r in rows)

        wait_for(both_active, timeout=DEPLOY_TIMEOUT, interval=1, what="two ACTIVE instances")
        node_ids = {instance(admin, i)["node_id"] for i in instance_ids}
        assert node_ids == set(baremetal.guests), "each instance has a guest of its own"
        for node_id in node_ids:
            row = node(admin, node_id)
            assert row["provision_state"] == "active"
            assert row["power_state"] == "power on"
            assert row["last_error"] is None
            guest = baremetal.guest_of(node_id)
            # Our ramdisk wrote the disk (its progress on the console), then the guest
            # booted the image from its own disk and printed the image's marker.
            wait_for(
                console_shows(guest, marks[node_id], marker),
                timeout=90,
                what=f"{marker} on {guest.name}'s console",
            )
            console = guest.serial_since(marks[node_id])
            assert "tetsu-ramdisk:" in console
            assert console.index("tetsu-ramdisk:") < console.rindex(marker)
            assert guest.power_status() == "on"
            assert "Hard-Drive" in guest.ipmitool("chassis", "bootparam", "get", "5")
            assert hashlib.sha256(guest.disk.read_bytes()[:size]).hexdigest() == sha256
            # The ramdisk's token was single-use: a forged or replayed callback is refused.
            forged = httpx.post(
                f"{baremetal.stack.endpoint}/v1/nodes/{node_id}/callback",
                json={"token": "forged", "success": False, "message": "pwned"},
            )
            assert forged.status_code == 401
            assert node(admin, node_id)["provision_state"] == "active"
    baremetal.shared["instance_ids"] = instance_ids


def test_deleting_the_instances_cleans_the_guests_and_makes_them_available(
    baremetal: Baremetal,
) -> None:
    instance_ids: list[str] = baremetal.shared.get("instance_ids", [])
    assert instance_ids, "runs after the deploy test"
    with baremetal.stack.client() as admin:
        for instance_id in instance_ids:
            ok(admin.delete(f"/v1/instances/{instance_id}"), 202)
        seen_cleaning = set()

        def cleaned() -> bool:
            for node_id in baremetal.guests:
                if node(admin, node_id)["provision_state"] in ("cleaning", "clean wait"):
                    seen_cleaning.add(node_id)
            return all_nodes_in(admin, baremetal.guests, "available")

        wait_for(cleaned, timeout=DEPLOY_TIMEOUT, interval=0.5, what="cleaned nodes")
        assert seen_cleaning == set(baremetal.guests), "each node went through cleaning"
        for instance_id in instance_ids:
            assert instance(admin, instance_id)["status"] == "DELETED"
        for guest in baremetal.guests.values():
            assert guest.power_status() == "off"
            # The quick wipe zeroed the partition table and boot sector the image had.
            assert guest.disk_head(1 * MiB) == bytes(1 * MiB)


def test_a_stopped_bmc_is_recorded_as_a_power_failure_and_nothing_stays_stuck(
    baremetal: Baremetal,
) -> None:
    node_id, guest = next(iter(baremetal.guests.items()))
    baremetal.lab.stop_bmc(guest)
    try:
        with baremetal.stack.client() as admin:
            ok(admin.put(f"/v1/nodes/{node_id}/states/power", json={"target": "power on"}))

            def failure_recorded() -> dict[str, Any] | None:
                row = node(admin, node_id)
                error = row["last_error"] or ""
                done = row["reservation"] is None and row["target_power_state"] is None
                return row if "IPMI" in error and done else None

            row = wait_for(failure_recorded, timeout=90, interval=0.5, what="a power failure")
            assert "did not answer" in row["last_error"], row["last_error"]
            assert guest.ipmi_password not in row["last_error"]
            assert row["provision_state"] == "available"  # a stable state, not a stuck one
    finally:
        baremetal.lab.start_bmc(guest)
    with baremetal.stack.client() as admin:
        # The BMC is back: the same node answers again.
        ok(admin.put(f"/v1/nodes/{node_id}/states/power", json={"target": "power on"}))
        wait_for(lambda: guest.power_status() == "on", timeout=60, what="power on")
        ok(admin.put(f"/v1/nodes/{node_id}/states/power", json={"target": "power off"}))
        wait_for(
            lambda: (
                guest.power_status() == "off" and node(admin, node_id)["power_state"] == "power off"
            ),
            timeout=60,
            what="power off",
        )


def test_a_rebuild_with_a_new_image_boots_it_on_the_same_guest(
    baremetal: Baremetal, tmp_path: Path
) -> None:
    old, new = "TETSU-LAB-REBUILD-OLD", "TETSU-LAB-REBUILD-NEW"
    make_marker_image(tmp_path / "old.img", old, 4 * MiB)
    make_marker_image(tmp_path / "new.img", new, 4 * MiB)
    with baremetal.stack.client() as admin:
        first = upload_image(admin, tmp_path / "old.img", "lab-rebuild-old")
        second = upload_image(admin, tmp_path / "new.img", "lab-rebuild-new")
        body = {
            "name": "rebuilt",
            "flavor": baremetal.flavor,
            "image": first["id"],
            "networks": [baremetal.network],
        }
        instance_id = ok(admin.post("/v1/instances", json=body), 202)["id"]
        row = wait_for(
            lambda: (r := instance(admin, instance_id))["status"] in ("ACTIVE", "ERROR") and r,
            timeout=DEPLOY_TIMEOUT,
            interval=1,
            what="the instance ACTIVE",
        )
        assert row["status"] == "ACTIVE", row["fault"]
        node_id = row["node_id"]
        guest = baremetal.guest_of(node_id)
        wait_for(console_shows(guest, 0, old), timeout=90, what=f"{old} on the console")
        mark = guest.serial_mark()

        ok(admin.post(f"/v1/instances/{instance_id}/rebuild", json={"image": second["id"]}))

        row = wait_for(
            lambda: (
                (r := instance(admin, instance_id))["status"] in ("ACTIVE", "ERROR")
                and r["task_state"] is None
                and r
            ),
            timeout=DEPLOY_TIMEOUT,
            interval=1,
            what="the rebuilt instance ACTIVE",
        )
        assert row["status"] == "ACTIVE", row["fault"]
        assert (row["node_id"], row["image_id"]) == (node_id, second["id"])
        wait_for(console_shows(guest, mark, new), timeout=90, what=f"{new} on the console")
        console = guest.serial_since(mark)
        assert "tetsu-ramdisk:" in console  # the ramdisk wrote the new image
        assert old not in console
    baremetal.shared["rebuilt"] = instance_id


def test_evacuating_a_dead_guests_instance_brings_it_up_on_the_other(
    baremetal: Baremetal,
) -> None:
    """The guest is gone (its BMC stopped, its domain destroyed): the admin evacuates its
    instance, which becomes ACTIVE on the other guest with the same name and network; the
    dead node is fenced (ports cut off, maintenance). Then it is repaired and taken back."""
    instance_id = baremetal.shared.get("rebuilt")
    assert instance_id, "runs after the rebuild test"
    with baremetal.stack.client() as admin:
        before = instance(admin, instance_id)
        dead_id = before["node_id"]
        dead = baremetal.guest_of(dead_id)
        other = next(g for n, g in baremetal.guests.items() if n != dead_id)
        mark = other.serial_mark()
        baremetal.lab.stop_bmc(dead)
        try:
            run("virsh", "-c", LIBVIRT_URI, "destroy", dead.name, check=False)
            # The power sync finds the BMC silent; only then is the node evacuable.
            wait_for(
                lambda: "power state sync" in (node(admin, dead_id)["last_error"] or ""),
                timeout=90,
                interval=1,
                what="the power sync to find the BMC gone",
            )
            started = time.monotonic()
            ok(admin.post(f"/v1/instances/{instance_id}/evacuate"))
            row = wait_for(
                lambda: (
                    (r := instance(admin, instance_id))["status"] in ("ACTIVE", "ERROR")
                    and r["task_state"] is None
                    and r["node_id"] != dead_id
                    and r
                ),
                timeout=DEPLOY_TIMEOUT,
                interval=0.5,
                what="the evacuated instance ACTIVE",
            )
            took = time.monotonic() - started
            assert row["status"] == "ACTIVE", row["fault"]
            assert row["node_id"] in baremetal.guests and row["node_id"] != dead_id
            assert (row["id"], row["name"]) == (instance_id, before["name"])
            assert row["network_ids"] == before["network_ids"]
            wait_for(
                console_shows(other, mark, "TETSU-LAB-REBUILD-NEW"),
                timeout=90,
                what="the image's marker on the other guest",
            )
            fenced = node(admin, dead_id)
            assert (fenced["provision_state"], fenced["maintenance"]) == ("error", True)
            assert fenced["instance_id"] is None
            assert "not powered off" in fenced["maintenance_reason"]  # its BMC was gone
            ports = ok(admin.get("/v1/ports", params={"node_id": dead_id}), 200)["ports"]
            assert [p["binding"] for p in ports] == ["none"]
            print(f"evacuate -> ACTIVE on the other guest: {took:.1f} s")
        finally:
            baremetal.lab.start_bmc(dead)
        # Repaired: back under management, cleaned, available; the instance deleted.
        ok(admin.delete(f"/v1/instances/{instance_id}"), 202)
        # (409 while the power sync holds the node for a moment: asked again.)
        wait_for(
            lambda: admin.patch(f"/v1/nodes/{dead_id}", json={"maintenance": False}).is_success,
            timeout=30,
            what="maintenance off",
        )
        wait_for(
            lambda: (
                admin.put(
                    f"/v1/nodes/{dead_id}/states/provision", json={"target": "manage"}
                ).is_success
            ),
            timeout=30,
            what="manage accepted",
        )
        wait_for(
            lambda: all_nodes_in(admin, [dead_id], "manageable"), timeout=90, what="manageable"
        )
        wait_for(
            lambda: (
                admin.put(
                    f"/v1/nodes/{dead_id}/states/provision", json={"target": "provide"}
                ).is_success
            ),
            timeout=30,
            what="provide accepted",
        )
        wait_for(
            lambda: all_nodes_in(admin, baremetal.guests, "available"),
            timeout=DEPLOY_TIMEOUT,
            interval=1,
            what="both guests available again",
        )


def test_a_wrong_checksum_fails_the_deploy_with_that_reason(
    baremetal: Baremetal, tmp_path: Path
) -> None:
    """A source_url image whose data is not its sha256: the conductor finds it out as it
    downloads (before the machine is powered on; the ramdisk's own check of what it wrote
    is covered by test_ramdisk.py). Whoever finds it, the user sees why."""
    _, size = make_marker_image(baremetal.files / "b.img", "TETSU-LAB-IMAGE-B", 2 * MiB)
    wrong = "0" * 64
    with baremetal.stack.client() as admin:
        image = ok(
            admin.post(
                "/v1/images",
                json={
                    "name": "lab-image-bad-sum",
                    "disk_format": "raw",
                    "source_url": f"{baremetal.files_url}/b.img",
                    "sha256": wrong,
                    "size": size,
                },
            ),
            201,
        )
        body = {"name": "bad", "flavor": baremetal.flavor, "image": image["id"]}
        instance_id = ok(admin.post("/v1/instances", json=body), 202)["id"]
        row = wait_for(
            lambda: (r := instance(admin, instance_id))["status"] == "ERROR" and r,
            timeout=DEPLOY_TIMEOUT,
            interval=1,
            what="the instance in ERROR",
        )
        assert "checksum mismatch" in row["fault"]["message"], row["fault"]
        failed = [
            node(admin, n)
            for n in baremetal.guests
            if node(admin, n)["provision_state"] == "deploy failed"
        ]
        assert len(failed) == 1
        assert "checksum mismatch" in failed[0]["last_error"]
        assert f"expected {wrong}" in failed[0]["last_error"]
        assert failed[0]["reservation"] is None
        assert baremetal.guest_of(failed[0]["id"]).power_status() == "off"
