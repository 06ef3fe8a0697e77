"""Power-on to ACTIVE on a QEMU guest behind virtualbmc, tetsu against the raw chain.

The raw chain is the same guest, BMC, dnsmasq and ramdisk with no control plane: the
benchmark writes the iPXE script and the ramdisk's job itself, powers the guest on with
ipmitool and waits for the ramdisk's callback. tetsu's figure is an instance created over
REST on the same guest: from the guest's power-on (seen by libvirt) to ACTIVE, which also
covers the conductor's work after the callback (boot device, power cycle).

    .venv/bin/python benchmarks/baremetal/run.py --markdown docs/benchmarks.md   (as root)

Needs what ``scripts/test`` installs (the lab's packages, .venv-lab with virtualbmc) and
the real RabbitMQ and PostgreSQL.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.server
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.integration.conftest import create_database, drop_database  # noqa: E402
from tests.integration.rabbitnode import create_vhost, delete_vhost  # noqa: E402
from tests.integration.stack import free_port, running_stack, wait_for  # noqa: E402
from tests.lab.harness import HOST_IP, Guest, boot_settings, lab  # noqa: E402
from tests.lab.images import make_marker_image  # noqa: E402

MiB = 1024 * 1024
LAB_MD = {24: 10.0, 256: 22.5}  # ../shared/LAB.md: power-on to callback under TCG


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the raw chain's files and takes the ramdisk's callback."""

    callbacks: list[tuple[float, dict[str, Any]]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.callbacks.append((time.time(), json.loads(body or b"{}")))
        self.send_response(202)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def wait_running(guest: Guest, timeout: float = 120) -> float:
    """The wall-clock time at which the guest's QEMU process started (libvirt's pid file,
    checked every 20 ms: cheaper than asking libvirt, so the guest keeps its CPU)."""
    pid_file = Path("/run/libvirt/qemu") / f"{guest.name}.pid"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid_file.exists():
            return time.time()
        time.sleep(0.02)
    raise RuntimeError(f"{guest.name} did not power on within {timeout} s")


def raw_chain(guest: Guest, root: Path, port: int, image: Path, sha256: str, size: int) -> float:
    """ipmitool power on -> iPXE -> ramdisk writes and checks the image -> callback."""
    url = f"http://{HOST_IP}:{port}"
    ramdisk = root / "ramdisk"
    (root / "ipxe").mkdir(exist_ok=True)
    (root / "jobs").mkdir(exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    (root / "boot.ipxe").write_text(f"#!ipxe\nchain {url}/ipxe/${{mac:hexhyp}}.ipxe || exit\n")
    (root / "ipxe" / f"{guest.mac.replace(':', '-')}.ipxe").write_text(
        f"#!ipxe\nkernel {url}/ramdisk/vmlinuz console=ttyS0,115200 quiet panic=-1 "
        f"tetsu_job={url}/jobs/raw\ninitrd {url}/ramdisk/initramfs\nboot\n"
    )
    link = root / "images" / image.name
    link.unlink(missing_ok=True)
    link.symlink_to(image)
    (root / "jobs" / "raw").write_text(
        "action=deploy\nnode_id=raw\n"
        f"callback_url={url}/callback\ntoken={secrets.token_hex(8)}\n"
        f"image_url={url}/images/{image.name}\nimage_size={size}\nimage_sha256={sha256}\n"
        "after=poweroff\n"
    )
    assert ramdisk.exists()
    callbacks: list[tuple[float, dict[str, Any]]] = []
    handler = type("Handler", (_Handler,), {"callbacks": callbacks})
    server = http.server.ThreadingHTTPServer((HOST_IP, port), partial(handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        guest.ipmitool("chassis", "bootdev", "pxe")
        guest.ipmitool("power", "on")
        powered = wait_running(guest)
        wait_for(lambda: callbacks, timeout=180, interval=0.5, what="the raw chain's callback")
        at, body = callbacks[0]
        if not body.get("success"):
            raise RuntimeError(f"raw chain failed: {body.get('message')}")
        wait_for(lambda: guest.domain_state() == "shut off", timeout=60, what="power off")
        return at - powered
    finally:
        server.shutdown()
        server.server_close()


def tetsu_chain(admin: httpx.Client, guest: Guest, flavor: str, image_id: str) -> dict[str, float]:
    """An instance over REST: create -> ACTIVE, and the guest's power-on -> ACTIVE."""
    created = time.time()
    instance = admin.post(
        "/v1/instances", json={"name": f"bench-{image_id[:6]}", "flavor": flavor, "image": image_id}
    ).json()
    powered = wait_running(guest)

    def active() -> dict[str, Any] | None:
        row: dict[str, Any] = admin.get(f"/v1/instances/{instance['id']}").json()
        if row["status"] == "ERROR":
            raise RuntimeError(f"deploy failed: {row.get('fault')}")
        return row if row["status"] == "ACTIVE" else None

    # Polled slowly (the guest's emulated CPU shares the host's two cores with everything
    # else); the time it became ACTIVE is the instance's own last update.
    row = wait_for(active, timeout=300, interval=0.5, what="ACTIVE")
    done = dt.datetime.fromisoformat(row["updated_at"]).timestamp()
    admin.delete(f"/v1/instances/{instance['id']}")
    return {"create_to_active": done - created, "power_on_to_active": done - powered}


def wait_available(admin: httpx.Client, node_id: str) -> None:
    def available() -> bool:
        row = admin.get(f"/v1/nodes/{node_id}").json()
        if row["provision_state"] in ("clean failed", "deploy failed"):
            raise RuntimeError(f"node failed: {row['last_error']}")
        return bool(row["provision_state"] == "available" and row["reservation"] is None)

    wait_for(available, timeout=300, interval=0.5, what="an available node")


def enroll(admin: httpx.Client, guest: Guest) -> tuple[str, str]:
    """A flavor and the guest as an available node (managed, cleaned); their ids."""
    flavor = admin.post(
        "/v1/flavors",
        json={
            "name": "bm.bench",
            "resource_class": "baremetal",
            "cpus": 1,
            "memory_mb": 256,
            "disk_gb": 0,
        },
    ).json()["id"]
    node_id = admin.post("/v1/nodes", json=guest.node_request).json()["id"]
    admin.post("/v1/ports", json={"address": guest.mac, "node_id": node_id})
    admin.put(f"/v1/nodes/{node_id}/states/provision", json={"target": "manage"})
    wait_for(
        lambda: admin.get(f"/v1/nodes/{node_id}").json()["provision_state"] == "manageable",
        timeout=60,
        what="manageable",
    )
    admin.put(f"/v1/nodes/{node_id}/states/provision", json={"target": "provide"})
    wait_available(admin, node_id)
    return flavor, node_id


def build_ramdisk(out: Path) -> tuple[Path, Path]:
    subprocess.run([str(ROOT / "deploy/ramdisk/build.sh"), "--out", str(out)], check=True)
    return out / "vmlinuz", out / "initramfs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="24,256", help="image sizes in MiB (comma-separated)")
    parser.add_argument("--markdown", type=Path, help="append the results to this file")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    work = Path(tempfile.mkdtemp(prefix="tetsu-bench-bm-"))
    kernel, initramfs = build_ramdisk(work / "ramdisk-build")
    images = {}
    for size_mb in sizes:
        path = work / f"image-{size_mb}.img"
        images[size_mb] = (path, *make_marker_image(path, f"BENCH-{size_mb}", size_mb * MiB))

    raw_root = work / "raw"
    (raw_root / "ramdisk").mkdir(parents=True)
    (raw_root / "ramdisk" / "vmlinuz").symlink_to(kernel)
    (raw_root / "ramdisk" / "initramfs").symlink_to(initramfs)
    api_port, boot_port = free_port(), free_port()
    env, config = boot_settings(
        boot_root=work / "boot",
        boot_port=boot_port,
        api_port=api_port,
        kernel=kernel,
        initramfs=initramfs,
    )
    env["TETSU_LOG_LEVEL"] = "WARNING"
    hostsdir = Path(env["TETSU_DHCP_HOSTSDIR"])
    results: dict[int, dict[str, float]] = {size: {} for size in sizes}
    vhost = f"tetsu-bench-{secrets.token_hex(4)}"
    amqp_url = create_vhost(vhost)
    db_name, db_url = create_database()
    try:
        with lab(work / "lab", guests=1, dnsmasq_config=config) as the_lab:
            guest = the_lab.guests[0]
            # The raw chain first, with the boot server's port served by a plain HTTP server.
            (hostsdir / guest.mac).write_text(f"{guest.mac},set:tetsu\n")
            for size_mb, (path, sha256, size) in images.items():
                seconds = raw_chain(guest, raw_root, boot_port, path, sha256, size)
                results[size_mb]["raw"] = seconds
                print(f"raw chain, {size_mb} MiB: power-on to callback {seconds:.1f} s", flush=True)
            (hostsdir / guest.mac).unlink()
            (work / "stack").mkdir()
            with (
                running_stack(
                    work / "stack",
                    database_url=db_url,
                    transport_url=amqp_url,
                    port=api_port,
                    extra_env=env,
                ) as stack,
                stack.client() as admin,
            ):
                flavor, node_id = enroll(admin, guest)
                for size_mb, (path, _sha, _size) in images.items():
                    image = admin.post(
                        "/v1/images", json={"name": f"bench-{size_mb}", "disk_format": "raw"}
                    ).json()
                    with path.open("rb") as data:
                        admin.put(f"/v1/images/{image['id']}/file", content=data)
                    figures = tetsu_chain(admin, guest, flavor, image["id"])
                    results[size_mb].update(figures)
                    print(
                        f"tetsu, {size_mb} MiB: power-on to ACTIVE "
                        f"{figures['power_on_to_active']:.1f} s, create to ACTIVE "
                        f"{figures['create_to_active']:.1f} s",
                        flush=True,
                    )
                    wait_available(admin, node_id)
    finally:
        drop_database(db_name)
        delete_vhost(vhost)
    report(results, args.markdown)


def report(results: dict[int, dict[str, float]], markdown: Path | None) -> None:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## Bare-metal deploy under TCG, {now}",
        "",
        f"Machine: nproc {os.cpu_count()}, kernel {platform.release()}, Python "
        f"{platform.python_version()}; one QEMU guest (TCG, 1 vCPU, 384 MiB) behind virtualbmc, "
        "userspace Open vSwitch.",
        "",
        "| image | raw chain: power-on to callback | tetsu: power-on to ACTIVE | ratio "
        "| tetsu: create to ACTIVE | LAB.md raw chain |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for size_mb, row in results.items():
        ratio = row["power_on_to_active"] / row["raw"]
        lines.append(
            f"| {size_mb} MiB | {row['raw']:.1f} s | {row['power_on_to_active']:.1f} s | "
            f"{ratio:.2f}x | {row['create_to_active']:.1f} s | "
            f"{LAB_MD.get(size_mb, float('nan')):.1f} s |"
        )
    aim = all(r["power_on_to_active"] / r["raw"] <= 1.5 for r in results.values())
    lines += ["", f"- aim: tetsu within 1.5x of the raw chain: {'OK' if aim else 'MISSED'}", ""]
    text = "\n".join(lines)
    print(text)
    if markdown is not None:
        with markdown.open("a") as out:
            out.write("\n" + text)


if __name__ == "__main__":
    main()
