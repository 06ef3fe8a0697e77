"""Evacuate to ACTIVE: a QEMU guest that runs an instance dies (its BMC stopped, its domain
destroyed) and the admin evacuates the instance to the other guest of the lab.

Each run times, from the ``evacuate`` request, how long the instance takes to be ACTIVE
again on the other guest (monotonic clock, polled every 0.5 s); of that, the fence (the
instance's ``evacuate.start`` to ``evacuate.end`` events: the dead node's power-off
attempt against a silent BMC, its ports cut off) and the deploy (the other guest's power-on,
seen by libvirt, to the instance's ACTIVE). Between runs the dead guest is repaired (BMC
started, maintenance off, manage, provide) and the next run evacuates a fresh instance back
to it (an instance is never placed again on a node it was evacuated from).

    .venv/bin/python benchmarks/baremetal/evacuate.py --markdown docs/benchmarks.md   (as root)

Needs what ``scripts/test`` installs (the lab's packages, .venv-lab with virtualbmc) and
the real RabbitMQ and PostgreSQL.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from benchmarks.baremetal.run import build_ramdisk, wait_available, wait_running  # noqa: E402
from tests.integration.conftest import create_database, drop_database  # noqa: E402
from tests.integration.rabbitnode import create_vhost, delete_vhost  # noqa: E402
from tests.integration.stack import Stack, free_port, running_stack, wait_for  # noqa: E402
from tests.lab.harness import LIBVIRT_URI, Guest, Lab, boot_settings, lab, run  # noqa: E402
from tests.lab.images import make_marker_image  # noqa: E402

MiB = 1024 * 1024
DEPLOY_TIMEOUT = 300.0
POLL = 0.5  # slow on purpose: the guests' emulated CPUs share the host's two cores


@dataclass
class Estate:
    """The stack's view of the lab: the guests as nodes, and what an instance needs."""

    guests: dict[str, Guest]  # node id -> guest
    flavor: str
    network: str
    image: str


@dataclass
class Evacuation:
    """The figures of one run, in seconds."""

    source: str  # the dead guest ("node1")
    target: str  # the guest the instance came up on
    detected: float  # guest killed -> the power sync records the silent BMC
    total: float  # evacuate request -> ACTIVE seen (monotonic)
    fence: float  # the instance's evacuate.start -> evacuate.end events
    deploy: float  # the target guest's power-on -> the instance's ACTIVE


def timestamp(text: str) -> float:
    """Seconds since the epoch of one of the API's times (UTC when no offset is given)."""
    moment = dt.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def checked(response: httpx.Response) -> dict[str, Any]:
    if not response.is_success:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path}: "
            f"{response.status_code} {response.text}"
        )
    return response.json() if response.content else {}


def node(admin: httpx.Client, node_id: str) -> dict[str, Any]:
    return checked(admin.get(f"/v1/nodes/{node_id}"))


def instance(admin: httpx.Client, instance_id: str) -> dict[str, Any]:
    return checked(admin.get(f"/v1/instances/{instance_id}"))


def enroll(admin: httpx.Client, the_lab: Lab, image_path: Path) -> Estate:
    """A flavor, a network, the image, and every guest as an available node (enrolled with
    its BMC, managed, cleaned by the ramdisk)."""
    flavor = checked(
        admin.post(
            "/v1/flavors",
            json={
                "name": "bm.evacuate",
                "resource_class": "baremetal",
                "cpus": 1,
                "memory_mb": 256,
                "disk_gb": 0,
            },
        )
    )["id"]
    network = checked(admin.post("/v1/networks", json={"name": "bench-net"}))["id"]
    image = checked(admin.post("/v1/images", json={"name": "bench-evacuate", "disk_format": "raw"}))
    with image_path.open("rb") as data:
        checked(admin.put(f"/v1/images/{image['id']}/file", content=data))
    guests: dict[str, Guest] = {}
    for guest in the_lab.guests:
        node_id = checked(admin.post("/v1/nodes", json=guest.node_request))["id"]
        checked(admin.post("/v1/ports", json={"address": guest.mac, "node_id": node_id}))
        guests[node_id] = guest
    for node_id in guests:
        checked(admin.put(f"/v1/nodes/{node_id}/states/provision", json={"target": "manage"}))
    wait_for(
        lambda: all(node(admin, n)["provision_state"] == "manageable" for n in guests),
        timeout=60,
        what="manageable nodes",
    )
    for node_id in guests:
        checked(admin.put(f"/v1/nodes/{node_id}/states/provision", json={"target": "provide"}))
    for node_id in guests:
        wait_available(admin, node_id)
    return Estate(guests, flavor, network, image["id"])


def wait_active(admin: httpx.Client, instance_id: str, not_on: str | None = None) -> dict[str, Any]:
    """The instance's row once it is ACTIVE with no task left (on a node other than
    ``not_on``); an ERROR ends the benchmark."""

    def active() -> dict[str, Any] | None:
        row = instance(admin, instance_id)
        if row["status"] == "ERROR":
            raise RuntimeError(f"instance {instance_id} failed: {row.get('fault')}")
        settled = row["status"] == "ACTIVE" and row["task_state"] is None
        return row if settled and row["node_id"] != not_on else None

    result: dict[str, Any] = wait_for(
        active, timeout=DEPLOY_TIMEOUT, interval=POLL, what=f"instance {instance_id} ACTIVE"
    )
    return result


def event_time(admin: httpx.Client, object_id: str, event_type: str, after: float) -> float:
    """When the newest ``event_type`` event of the object was stored, at or after
    ``after`` (seconds since the epoch)."""
    events = checked(
        admin.get(
            "/v1/events", params={"object_id": object_id, "event_type": event_type, "limit": 5}
        )
    )["events"]
    times = [timestamp(e["created_at"]) for e in events]
    fresh = [t for t in times if t >= after - 1.0]  # the API's clock is this machine's
    if not fresh:
        raise RuntimeError(f"no {event_type} event of {object_id} in this run")
    return max(fresh)


def kill(the_lab: Lab, admin: httpx.Client, node_id: str, guest: Guest) -> float:
    """Stop the guest's BMC and destroy its domain; the seconds until the power sync
    recorded that its BMC is silent (the API evacuates only a node that looks dead)."""
    the_lab.stop_bmc(guest)
    run("virsh", "-c", LIBVIRT_URI, "destroy", guest.name, check=False)
    killed = time.monotonic()
    wait_for(
        lambda: "power state sync" in (node(admin, node_id)["last_error"] or ""),
        timeout=120,
        interval=POLL,
        what=f"the power sync to find {guest.name}'s BMC gone",
    )
    return time.monotonic() - killed


def evacuate(
    the_lab: Lab, admin: httpx.Client, estate: Estate, instance_id: str
) -> tuple[Evacuation, str]:
    """Kill the guest under the instance and evacuate it; the figures and the dead node."""
    dead_id = instance(admin, instance_id)["node_id"]
    dead = estate.guests[dead_id]
    target = next(g for n, g in estate.guests.items() if n != dead_id)
    # Its power-on is timed from libvirt's pid file: the guest must be off before.
    wait_for(lambda: target.domain_state() == "shut off", timeout=60, what=f"{target.name} off")
    detected = kill(the_lab, admin, dead_id, dead)
    posted = time.time()
    started = time.monotonic()
    checked(admin.post(f"/v1/instances/{instance_id}/evacuate"))
    powered = wait_running(target, timeout=DEPLOY_TIMEOUT)
    row = wait_active(admin, instance_id, not_on=dead_id)
    total = time.monotonic() - started
    if row["node_id"] not in estate.guests:
        raise RuntimeError(f"instance {instance_id} came up on unknown node {row['node_id']}")
    fence_start = event_time(admin, instance_id, "tetsu.instance.evacuate.start", posted)
    fence_end = event_time(admin, instance_id, "tetsu.instance.evacuate.end", posted)
    figures = Evacuation(
        source=f"node{dead.index + 1}",
        target=f"node{target.index + 1}",
        detected=detected,
        total=total,
        fence=fence_end - fence_start,
        deploy=timestamp(row["updated_at"]) - powered,
    )
    return figures, dead_id


def retried(admin: httpx.Client, method: str, path: str, body: dict[str, Any], what: str) -> None:
    """A request the node's lock may refuse for a moment (409 while the power sync or
    the fence holds it): asked again until accepted."""
    wait_for(
        lambda: admin.request(method, path, json=body).is_success,
        timeout=60,
        interval=1,
        what=what,
    )


def repair(the_lab: Lab, admin: httpx.Client, node_id: str, guest: Guest) -> float:
    """Take a fenced node back: BMC started, maintenance off, manage, provide (cleaned);
    the seconds until it is available."""
    started = time.monotonic()
    the_lab.start_bmc(guest)
    retried(admin, "PATCH", f"/v1/nodes/{node_id}", {"maintenance": False}, "maintenance off")
    provision = f"/v1/nodes/{node_id}/states/provision"
    retried(admin, "PUT", provision, {"target": "manage"}, "manage accepted")
    wait_for(
        lambda: node(admin, node_id)["provision_state"] == "manageable",
        timeout=90,
        interval=POLL,
        what="manageable",
    )
    retried(admin, "PUT", provision, {"target": "provide"}, "provide accepted")
    wait_available(admin, node_id)
    return time.monotonic() - started


def create_instance(admin: httpx.Client, estate: Estate, name: str) -> str:
    body = {
        "name": name,
        "flavor": estate.flavor,
        "image": estate.image,
        "networks": [estate.network],
    }
    return str(checked(admin.post("/v1/instances", json=body))["id"])


def benchmark(stack: Stack, the_lab: Lab, image_path: Path, runs: int) -> list[Evacuation]:
    results: list[Evacuation] = []
    with stack.client() as admin:
        estate = enroll(admin, the_lab, image_path)
        instance_id = create_instance(admin, estate, "evacuee-1")
        wait_active(admin, instance_id)
        for number in range(1, runs + 1):
            figures, dead_id = evacuate(the_lab, admin, estate, instance_id)
            results.append(figures)
            print(
                f"run {number}: {figures.source} -> {figures.target}: evacuate to ACTIVE "
                f"{figures.total:.1f} s (fence {figures.fence:.1f} s, deploy "
                f"{figures.deploy:.1f} s); the power sync saw the dead BMC after "
                f"{figures.detected:.1f} s",
                flush=True,
            )
            if number == runs:
                break
            # An instance never goes back to a node it was evacuated from (the node stays
            # in its failed_node_ids), so the next run evacuates a fresh one: made on the
            # node this one came up on while the dead node is repaired, it then goes the
            # other way, to the repaired node.
            live_id = next(n for n in estate.guests if n != dead_id)
            checked(admin.delete(f"/v1/instances/{instance_id}"))
            wait_available(admin, live_id)
            instance_id = create_instance(admin, estate, f"evacuee-{number + 1}")
            took = repair(the_lab, admin, dead_id, estate.guests[dead_id])
            print(f"  {figures.source} repaired in {took:.1f} s", flush=True)
            wait_active(admin, instance_id)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2, help="evacuations, back and forth")
    parser.add_argument("--size", type=int, default=24, help="image size in MiB")
    parser.add_argument(
        "--power-sync-interval", type=float, default=5.0, help="TETSU_POWER_SYNC_INTERVAL (s)"
    )
    parser.add_argument("--ipmi-timeout", type=float, default=4.0, help="TETSU_IPMI_TIMEOUT (s)")
    parser.add_argument("--ipmi-retries", type=int, default=2, help="TETSU_IPMI_RETRIES")
    parser.add_argument("--markdown", type=Path, help="append the results to this file")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    work = Path(tempfile.mkdtemp(prefix="tetsu-bench-evacuate-"))
    kernel, initramfs = build_ramdisk(work / "ramdisk-build")
    image_path = work / "image.img"
    make_marker_image(image_path, "BENCH-EVACUATE", args.size * MiB)
    api_port = free_port()
    env, config = boot_settings(
        boot_root=work / "boot",
        boot_port=free_port(),
        api_port=api_port,
        kernel=kernel,
        initramfs=initramfs,
    )
    # As the lab tests: a power sync often enough to see a dead BMC soon, and IPMI
    # attempts short enough that fencing a silent BMC does not take minutes.
    env.update(
        {
            "TETSU_LOG_LEVEL": "WARNING",
            "TETSU_POWER_SYNC_INTERVAL": str(args.power_sync_interval),
            "TETSU_IPMI_TIMEOUT": str(args.ipmi_timeout),
            "TETSU_IPMI_RETRIES": str(args.ipmi_retries),
            "TETSU_CALLBACK_TIMEOUT": str(DEPLOY_TIMEOUT),
        }
    )
    vhost = f"tetsu-bench-{secrets.token_hex(4)}"
    amqp_url = create_vhost(vhost)
    db_name, db_url = create_database()
    try:
        with lab(work / "lab", guests=2, dnsmasq_config=config) as the_lab:
            (work / "stack").mkdir()
            with running_stack(
                work / "stack",
                database_url=db_url,
                transport_url=amqp_url,
                port=api_port,
                extra_env=env,
            ) as stack:
                try:
                    results = benchmark(stack, the_lab, image_path, args.runs)
                except BaseException:
                    print(stack.logs(), file=sys.stderr)
                    for guest in the_lab.guests:
                        print(f"--- {guest.name} serial ---", file=sys.stderr)
                        print(guest.serial()[-3000:], file=sys.stderr)
                    raise
    finally:
        drop_database(db_name)
        delete_vhost(vhost)
    report(results, args, args.markdown)


def report(results: list[Evacuation], args: argparse.Namespace, markdown: Path | None) -> None:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## Evacuate to ACTIVE, {now}",
        "",
        f"Machine: {platform.platform()}, nproc {os.cpu_count()}, Python "
        f"{platform.python_version()}; two QEMU guests (TCG, 1 vCPU, 384 MiB) behind "
        f"virtualbmc, userspace Open vSwitch; a {args.size} MiB image; power sync every "
        f"{args.power_sync_interval:g} s, IPMI timeout {args.ipmi_timeout:g} s x "
        f"{args.ipmi_retries} attempts.",
        "",
        "| run | dead guest -> other guest | evacuate -> ACTIVE | of which fence "
        "| of which deploy (power-on -> ACTIVE) | kill -> power sync saw it |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for number, row in enumerate(results, 1):
        lines.append(
            f"| {number} | {row.source} -> {row.target} | {row.total:.1f} s | "
            f"{row.fence:.1f} s | {row.deploy:.1f} s | {row.detected:.1f} s |"
        )
    lines.append("")
    text = "\n".join(lines)
    print(text)
    if markdown is not None:
        with markdown.open("a") as out:
            out.write("\n" + text)


if __name__ == "__main__":
    main()
