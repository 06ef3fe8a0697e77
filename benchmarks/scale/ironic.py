"""The same burst on OpenStack Ironic: N fake-hardware nodes enrolled, managed and provided
over its REST API, all deployed at once, then all undeployed.

Ironic runs from PyPI in a virtual environment of its own, outside the checkout (made on
first use), as one process (``ironic``: API and conductor together, ``rpc_transport =
none``) on SQLite with ``auth_strategy = noauth``, the ``fake-hardware`` type and fake
interfaces, automated cleaning off and the ``noop`` network interface (no port work).

    .venv/bin/python benchmarks/scale/ironic.py --nodes 100

prints one JSON object on stdout, or {"skipped": "<why>"} when Ironic cannot be installed
or started here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from benchmarks.scale.common import (  # noqa: E402
    BurstClient,
    Latencies,
    Prober,
    burst,
    cpu_seconds,
    descendants,
    log,
    peak_rss_mib,
    timestamp,
    wait_until,
)

#: The release verified with this script (Python 3.11, Debian 12).
IRONIC_REQUIREMENT = "ironic==39.0.0"
#: Outside the checkout (ruff, mypy and git leave it alone), kept between runs.
DEFAULT_VENV = Path(
    os.environ.get("TETSU_IRONIC_VENV") or Path.home() / ".cache" / "tetsu" / "ironic-venv"
)
HEADERS = {"X-OpenStack-Ironic-API-Version": "latest"}

CONFIG = """\
[DEFAULT]
host = bench-conductor
rpc_transport = none
auth_strategy = noauth
enabled_hardware_types = fake-hardware
enabled_bios_interfaces = no-bios
enabled_boot_interfaces = fake
enabled_console_interfaces = no-console
enabled_deploy_interfaces = fake
enabled_firmware_interfaces = no-firmware
enabled_inspect_interfaces = no-inspect
enabled_management_interfaces = fake
enabled_network_interfaces = noop
enabled_power_interfaces = fake
enabled_raid_interfaces = no-raid
enabled_rescue_interfaces = no-rescue
enabled_storage_interfaces = noop
enabled_vendor_interfaces = no-vendor
default_network_interface = noop
use_stderr = true
debug = false

[api]
host_ip = 127.0.0.1
port = {port}

[conductor]
automated_clean = false

[database]
connection = sqlite:///{workdir}/ironic.sqlite

[dhcp]
dhcp_provider = none

[oslo_concurrency]
lock_path = {workdir}/locks
"""


class IronicUnavailable(RuntimeError):
    """Ironic could not be installed or started here; the message says why."""


def _run(command: list[str], what: str, timeout: float) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise IronicUnavailable(f"{what}: {exc}") from None
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        raise IronicUnavailable(f"{what} failed (rc {done.returncode}): {' | '.join(lines[-3:])}")
    return done.stdout


def ensure_venv(venv: Path = DEFAULT_VENV) -> str:
    """Ironic's virtual environment, created with pip on first use; its Ironic version."""
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import importlib.metadata as m; print(m.version('ironic'))"]
    if python.exists():
        done = subprocess.run(check, capture_output=True, text=True, check=False)
        wanted = IRONIC_REQUIREMENT.split("==", 1)[1]
        if done.returncode == 0 and done.stdout.strip() == wanted:
            return wanted
    log(f"[ironic] creating {venv} and installing {IRONIC_REQUIREMENT} (a few minutes) ...")
    venv.parent.mkdir(parents=True, exist_ok=True)
    _run(["python3", "-m", "venv", str(venv)], "python3 -m venv", 120)
    _run(
        [str(python), "-m", "pip", "install", "-q", IRONIC_REQUIREMENT],
        f"pip install {IRONIC_REQUIREMENT}",
        1200,
    )
    return _run(check, "import ironic", 60).strip()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_ironic(venv: Path = DEFAULT_VENV) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Ironic's single process on a fresh SQLite database; (endpoint, process)."""
    workdir = Path(tempfile.mkdtemp(prefix="tetsu-scale-ironic-"))
    port = _free_port()
    config = workdir / "ironic.conf"
    config.write_text(CONFIG.format(port=port, workdir=workdir))
    (workdir / "locks").mkdir()
    _run(
        [str(venv / "bin" / "ironic-dbsync"), "--config-file", str(config), "create_schema"],
        "ironic-dbsync create_schema",
        300,
    )
    log_file = (workdir / "ironic.log").open("wb")
    process = subprocess.Popen(
        [str(venv / "bin" / "ironic"), "--config-file", str(config)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log_file.close()
    endpoint = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if process.poll() is not None:
                tail = (workdir / "ironic.log").read_text(errors="replace").splitlines()[-5:]
                raise IronicUnavailable(f"ironic exited (rc {process.returncode}): {tail}")
            try:
                return httpx.get(f"{endpoint}/v1/drivers", headers=HEADERS, timeout=2).is_success
            except httpx.TransportError:
                return False

        wait_until(ready, timeout=120, interval=0.5, what="Ironic's API")
        yield endpoint, process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 15)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


FIELDS = "uuid,provision_state,target_provision_state,provision_updated_at,last_error"


def list_nodes(client: httpx.Client) -> list[dict[str, Any]]:
    """Every node (the fields the waits need), following Ironic's ``next`` links."""
    nodes: list[dict[str, Any]] = []
    url: str | None = f"/v1/nodes?fields={FIELDS}&limit=1000"
    while url:
        response = client.get(url)
        response.raise_for_status()
        body = response.json()
        nodes.extend(body["nodes"])
        url = body.get("next")
    return nodes


def settled(client: httpx.Client, state: str, count: int) -> list[dict[str, Any]] | None:
    """All ``count`` nodes in ``state`` with nothing more to do; RuntimeError on a failure."""
    nodes = list_nodes(client)
    failed = [n for n in nodes if "fail" in n["provision_state"] or n["provision_state"] == "error"]
    if failed:
        raise RuntimeError(f"{len(failed)} Ironic node(s) failed: {failed[0]['last_error']}")
    done = [n for n in nodes if n["provision_state"] == state and not n["target_provision_state"]]
    return done if len(done) == count else None


def set_state(client: httpx.Client | BurstClient, uuid: str, target: str) -> None:
    response = client.put(f"/v1/nodes/{uuid}/states/provision", json={"target": target})
    if response.status_code != 202:
        raise RuntimeError(f"{target} {uuid}: {response.status_code} {response.text[:300]}")


def _time_of(nodes: list[dict[str, Any]]) -> float:
    return max(timestamp(n["provision_updated_at"]) for n in nodes)


class _PhaseLatencies(Latencies):
    elapsed: float = 0.0


def _phase(
    client: httpx.Client,
    bursting: BurstClient,
    uuids: list[str],
    target: str,
    state: str,
    concurrency: int,
    timeout: float,
    poll: float,
) -> tuple[_PhaseLatencies, list[dict[str, Any]]]:
    """Every node to ``target`` at once, then the wait until all are in ``state``."""
    latencies = _PhaseLatencies()
    started = time.perf_counter()
    burst(
        uuids,
        lambda uuid: set_state(bursting, uuid, target),
        concurrency=concurrency,
        latencies=latencies,
    )
    latencies.elapsed = time.perf_counter() - started
    done = wait_until(
        lambda: settled(client, state, len(uuids)),
        timeout=timeout,
        interval=poll,
        what=f"{state} Ironic nodes",
    )
    return latencies, done


def run_burst(endpoint: str, nodes: int, *, concurrency: int, poll: float) -> dict[str, Any]:
    result: dict[str, Any] = {"system": "ironic", "nodes": nodes, "concurrency": concurrency}
    timeout = 120 + nodes * 2.0
    limits = httpx.Limits(max_connections=concurrency + 5, max_keepalive_connections=concurrency)
    # The bursts and the reads beside them go through the client tetsu's bursts use.
    with (
        httpx.Client(base_url=endpoint, headers=HEADERS, timeout=300.0, limits=limits) as client,
        BurstClient(endpoint, HEADERS, timeout=300.0) as bursting,
    ):
        log(f"[ironic] enrolling {nodes} nodes over REST ...")
        started = time.perf_counter()
        enrolled = Latencies()

        def enroll(i: int) -> str:
            response = client.post(
                "/v1/nodes",
                json={
                    "name": f"scale-{i:06d}",
                    "driver": "fake-hardware",
                    "resource_class": "baremetal",
                    "properties": {"cpus": 8, "memory_mb": 16384, "local_gb": 200},
                },
            )
            if response.status_code != 201:
                raise RuntimeError(f"enroll: {response.status_code} {response.text[:300]}")
            uuid = str(response.json()["uuid"])
            set_state(client, uuid, "manage")
            wait_until(
                lambda: (
                    client.get(f"/v1/nodes/{uuid}?fields=provision_state").json()["provision_state"]
                    == "manageable"
                ),
                timeout=timeout,
                interval=0.2,
                what="manageable",
            )
            set_state(client, uuid, "provide")
            return uuid

        uuids = [
            u for u in burst(range(nodes), enroll, concurrency=concurrency, latencies=enrolled) if u
        ]
        if enrolled.failures:
            raise RuntimeError(f"Ironic enrolment failed: {enrolled.failures[:3]}")
        wait_until(
            lambda: settled(client, "available", nodes),
            timeout=timeout,
            interval=poll,
            what="available Ironic nodes",
        )
        result["enroll_s"] = round(time.perf_counter() - started, 2)
        log(f"[ironic] {nodes} nodes available after {result['enroll_s']} s")

        def probe() -> None:
            bursting.get(f"/v1/nodes/{uuids[-1]}").raise_for_status()

        for phase, target, state in (
            ("create", "active", "active"),
            ("delete", "deleted", "available"),
        ):
            log(f"[ironic] {target}: {nodes} nodes, {concurrency} at a time ...")
            with Prober(probe) as prober:
                started_at = time.time()
                latencies, done = _phase(
                    client, bursting, uuids, target, state, concurrency, timeout, poll
                )
                result[f"{phase}_requests_s"] = round(latencies.elapsed, 2)
            key = "active_s" if phase == "create" else "available_s"
            result[key] = round(_time_of(done) - started_at, 2)
            result[f"{phase}_latency"] = latencies.summary()
            result[f"{phase}_probe"] = prober.latencies.summary()
            log(f"[ironic] all {nodes} {state} after {result[key]} s")
        result["total_s"] = round(result["active_s"] + result["available_s"], 2)
    return result


def run(nodes: int, *, concurrency: int, poll: float, venv: Path = DEFAULT_VENV) -> dict[str, Any]:
    """The burst on Ironic, or {"skipped": why} when it cannot be installed or started."""
    try:
        version = ensure_venv(venv)
        log(f"[ironic] {version}, N={nodes}: starting ...")
        with running_ironic(venv) as (endpoint, process):
            result = run_burst(endpoint, nodes, concurrency=concurrency, poll=poll)
            pids = descendants(process.pid)
            result["processes"] = {
                f"ironic pid {pid}" if pid != process.pid else "ironic (launcher)": {
                    "peak_rss_mib": peak_rss_mib(pid),
                    "cpu_s": cpu_seconds(pid),
                }
                for pid in pids
            }
        result["version"] = version
        return result
    except IronicUnavailable as exc:
        log(f"[ironic] skipped: {exc}")
        return {"system": "ironic", "nodes": nodes, "skipped": str(exc)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=100, help="nodes deployed (100)")
    parser.add_argument("--concurrency", type=int, default=50, help="requests at once (50)")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between looks (1)")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help=f"({DEFAULT_VENV})")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.nodes, concurrency=args.concurrency, poll=args.poll, venv=args.venv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
