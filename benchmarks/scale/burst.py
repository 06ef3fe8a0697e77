"""A burst of instances on tetsu: N fake nodes, N instances created at once over REST, timed
until all are ACTIVE, then all deleted, timed until every node is available again.

The services run as separate processes (``tetsu service NAME``: the API under uvicorn,
the scheduler, one or more conductors, netctl) on the real RabbitMQ (a vhost of their own)
and a fresh PostgreSQL database, exactly as tests/integration/stack.py starts them. Nodes
are enrolled over REST (node, port, manage, provide), with the fake drivers and
``fake_delay: 0``; each instance joins one network, so netctl binds a port per deploy.
As deploy/compose.yaml runs them by default, the API serves in two processes and the
workers (scheduler, conductors, netctl) run at niceness 10 (``--api-workers 1
--worker-nice 0``: one API process, everything at the same priority).

    .venv/bin/python benchmarks/scale/burst.py --nodes 100 --conductors 1

prints one JSON object per run on stdout (progress on stderr); benchmarks/scale/run.py
runs it for several sizes beside Ironic and prints the tables.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from benchmarks.scale.common import (  # noqa: E402
    BurstClient,
    CpuMeter,
    Latencies,
    Prober,
    Reply,
    burst,
    cpu_seconds,
    descendants,
    find_process,
    log,
    peak_rss_mib,
    timestamp,
    wait_until,
)
from tests.integration.conftest import create_database, drop_database  # noqa: E402
from tests.integration.rabbitnode import create_vhost, delete_vhost  # noqa: E402
from tests.integration.stack import Stack, running_stack  # noqa: E402

IMAGE_BYTES = b"tetsu scale benchmark image\n"
#: The services' own defaults for their timers, as an operator runs them: the test stack
#: beats every second and checks for stranded work every second, to make tests quick.
PRODUCT_TIMERS = {
    "TETSU_HEARTBEAT_INTERVAL": "10",
    "TETSU_CONDUCTOR_HEARTBEAT_TIMEOUT": "60",
    "TETSU_CHECK_INTERVAL": "5",
}
FLAVOR = "bm.scale"
PASSWORD = "scale-bench-password"  # a throwaway user of a throwaway database
RETRIES = 10  # of a deletion answered 503, of a provisioning action answered node_locked


def list_all(client: httpx.Client, path: str, key: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a paginated list (pages of 1000)."""
    items: list[dict[str, Any]] = []
    marker = None
    while True:
        query = {**params, "limit": 1000, **({"marker": marker} if marker else {})}
        response = client.get(path, params=query)
        response.raise_for_status()
        body = response.json()
        items.extend(body[key])
        marker = body["next_marker"]
        if marker is None:
            return items


def expect(response: httpx.Response | Reply, *statuses: int) -> dict[str, Any]:
    if response.status_code not in statuses:
        if isinstance(response, Reply):
            what = f"{response.method} {response.path}"
        else:
            what = f"{response.request.method} {response.request.url.path}"
        raise RuntimeError(f"{what}: {response.status_code} {response.text[:300]}")
    return response.json() if response.content else {}


#: The workers' niceness in deploy/compose.yaml (TETSU_WORKER_NICE's default).
WORKER_NICE = 10
#: The API's processes in deploy/compose.yaml (TETSU_API_WORKERS's default there).
API_WORKERS = 2


@contextmanager
def tetsu_stack(
    conductors: int,
    extra_env: dict[str, str] | None = None,
    worker_nice: int = WORKER_NICE,
    api_workers: int = API_WORKERS,
) -> Iterator[Stack]:
    """A fresh database and vhost, the services running on them; all removed afterwards."""
    db_name, db_url = create_database()
    vhost = f"tetsu-scale-{uuid.uuid4().hex[:8]}"
    amqp_url = create_vhost(vhost)
    workdir = Path(tempfile.mkdtemp(prefix="tetsu-scale-"))
    finished = False
    try:
        with running_stack(
            workdir,
            database_url=db_url,
            transport_url=amqp_url,
            conductors=conductors,
            extra_env={**(extra_env or {}), "TETSU_API_WORKERS": str(api_workers)},
            worker_env={"TETSU_NICE": str(worker_nice)},
        ) as stack:
            yield stack
        finished = True
    finally:
        drop_database(db_name)
        delete_vhost(vhost)
        if finished:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"[tetsu] the services' logs are kept in {workdir}")


def prepare_cloud(admin: httpx.Client, stack: Stack) -> dict[str, str]:
    """A project with a member, a flavor, a public image and the member's network."""
    project = expect(admin.post("/v1/projects", json={"name": "scale"}), 201)
    expect(
        admin.post(
            "/v1/users",
            json={
                "name": "scale-user",
                "password": PASSWORD,
                "project_id": project["id"],
                "role": "member",
            },
        ),
        201,
    )
    expect(
        admin.post(
            "/v1/flavors",
            json={
                "name": FLAVOR,
                "resource_class": "baremetal",
                "cpus": 4,
                "memory_mb": 8192,
                "disk_gb": 100,
            },
        ),
        201,
    )
    image = expect(
        admin.post(
            "/v1/images",
            json={
                "name": "scale-image",
                "disk_format": "raw",
                "visibility": "public",
                "source_url": "http://images.example/scale.raw",
                "sha256": hashlib.sha256(IMAGE_BYTES).hexdigest(),
                "size": len(IMAGE_BYTES),
            },
        ),
        201,
    )
    token = expect(
        httpx.post(
            f"{stack.endpoint}/v1/tokens", json={"name": "scale-user", "password": PASSWORD}
        ),
        201,
    )["token"]
    with stack.client(token) as member:
        network = expect(member.post("/v1/networks", json={"name": "scale-net"}), 201)
    return {"token": token, "image": image["id"], "network": network["id"]}


def enroll(stack: Stack, admin: httpx.Client, count: int, concurrency: int) -> dict[str, Any]:
    """``count`` fake nodes with a port each, managed and provided (cleaned), over REST:
    ``concurrency`` threads, each on a connection of its own (BurstClient; one httpx
    client shared by fifty threads once failed a request with EBADF when the API asked
    for a connection to be closed), and ``admin`` to watch them become available."""
    client = BurstClient(stack.endpoint, {"Authorization": f"Bearer {stack.admin_token}"})
    latencies = Latencies()
    locked_retries: list[str] = []

    def one(i: int) -> str:
        node = expect(
            client.post(
                "/v1/nodes",
                json={
                    "name": f"scale-{i:06d}",
                    "resource_class": "baremetal",
                    "properties": {"cpus": 8, "memory_mb": 16384, "disk_gb": 200},
                    "driver_info": {"fake_delay": 0},
                },
            ),
            201,
        )
        mac = "52:54:" + ":".join(f"{(i >> shift) & 0xFF:02x}" for shift in (24, 16, 8, 0))
        expect(client.post("/v1/ports", json={"address": mac, "node_id": node["id"]}), 201)
        for target in ("manage", "provide"):
            path = f"/v1/nodes/{node['id']}/states/provision"
            for attempt in range(RETRIES + 1):
                # The conductor still holds the node for the manage it was just asked for
                # (it waits 3 s for a lock, as Ironic's does): try again, as Ironic's client
                # does on its 409 NodeLocked.
                response = client.put(path, json={"target": target})
                if response.status_code == 409 and attempt < RETRIES and node_locked(response):
                    locked_retries.append(str(node["id"]))
                    time.sleep(1.0)
                    continue
                expect(response, 200, 202)
                break
        return str(node["id"])

    started = time.perf_counter()
    with client:
        ids = burst(range(count), one, concurrency=concurrency, latencies=latencies)
    if latencies.failures:
        raise RuntimeError(f"enrolment failed: {latencies.failures[:3]}")
    wait_until(
        lambda: len(free_nodes(admin)) == count,
        timeout=60 + count * 0.5,
        interval=0.5,
        what=f"{count} available nodes",
    )
    return {
        "seconds": round(time.perf_counter() - started, 2),
        "node_ids": ids,
        "retries_after_node_locked": len(locked_retries),
    }


def node_locked(response: httpx.Response | Reply) -> bool:
    try:
        return bool(response.json()["error"]["code"] == "node_locked")
    except (ValueError, KeyError, TypeError):
        return False


#: Node states a burst never recovers from by itself.
FAILED_STATES = ("deploy failed", "clean failed", "error")


def free_nodes(admin: httpx.Client) -> list[dict[str, Any]]:
    """Nodes available, unclaimed and unlocked; RuntimeError once a node has failed."""
    for state in FAILED_STATES:
        failed = expect(admin.get("/v1/nodes", params={"provision_state": state, "limit": 1}), 200)[
            "nodes"
        ]
        if failed:
            raise RuntimeError(f"node {failed[0]['id']} is in {state}: {failed[0]['last_error']}")
    return [
        n
        for n in list_all(admin, "/v1/nodes", "nodes", provision_state="available")
        if n["instance_id"] is None and n["reservation"] is None
    ]


def settled(stack: Stack, admin: httpx.Client, status: str) -> bool:
    """No instance left in ``status`` (BUILD, DELETING), none in ERROR. Asks for one row
    of each, so watching costs the API little while the burst runs."""
    stack.check_alive()
    failed = expect(admin.get("/v1/instances", params={"status": "ERROR", "limit": 1}), 200)
    if failed["instances"]:
        raise RuntimeError(f"an instance is in ERROR: {failed['instances'][0]['fault']}")
    waiting = expect(admin.get("/v1/instances", params={"status": status, "limit": 1}), 200)
    return not waiting["instances"]


def count_status(admin: httpx.Client, status: str) -> list[dict[str, Any]]:
    return list_all(admin, "/v1/instances", "instances", status=status)


def run_burst(
    stack: Stack,
    nodes: int,
    *,
    concurrency: int = 50,
    poll: float = 1.0,
    profile_dir: Path | None = None,
) -> dict[str, Any]:
    """Enroll ``nodes`` nodes, then the create burst and the delete burst; the figures."""
    result: dict[str, Any] = {"system": "tetsu", "nodes": nodes, "concurrency": concurrency}
    timeout = 120 + nodes * 0.5
    with stack.client() as admin:
        admin.timeout = httpx.Timeout(120.0)
        cloud = prepare_cloud(admin, stack)
        log(f"[tetsu] enrolling {nodes} nodes over REST ...")
        enrolled = enroll(stack, admin, nodes, concurrency)
        result["enroll_s"] = enrolled["seconds"]
        result["enroll_retries_after_node_locked"] = enrolled["retries_after_node_locked"]
        log(f"[tetsu] {nodes} nodes available after {result['enroll_s']} s")

        member = BurstClient(stack.endpoint, {"Authorization": f"Bearer {cloud['token']}"})
        created: list[str] = []

        def probe() -> None:
            if created:
                member.get(f"/v1/instances/{created[-1]}").raise_for_status()
            else:
                member.get("/v1/flavors").raise_for_status()

        meter = CpuMeter(cpu_parties(stack))
        profilers = start_profilers(stack, profile_dir)
        try:
            # --- create -------------------------------------------------------------
            creates = Latencies()

            def create(i: int) -> str:
                body = expect(
                    member.post(
                        "/v1/instances",
                        json={
                            "name": f"burst-{i}",
                            "flavor": FLAVOR,
                            "image": cloud["image"],
                            "networks": [cloud["network"]],
                        },
                    ),
                    202,
                )
                created.append(body["id"])
                return str(body["id"])

            log(f"[tetsu] creating {nodes} instances, {concurrency} at a time ...")
            with Prober(probe) as prober:
                started = time.time()
                meter.start()
                burst(range(nodes), create, concurrency=concurrency, latencies=creates)
                result["create_cpu"] = meter.stop()
                result["create_requests_s"] = round(time.time() - started, 2)
                answered = result["create_requests_s"]
                log(f"[tetsu] creations answered in {answered} s, {creates.brief()}")

                wait_until(
                    lambda: settled(stack, admin, "BUILD"),
                    timeout=timeout,
                    interval=poll,
                    what="ACTIVE",
                )
                active = count_status(admin, "ACTIVE")
                if len(active) != len(created):
                    raise RuntimeError(f"{len(active)} of {len(created)} instances ACTIVE")
            result["active_s"] = round(max(timestamp(i["updated_at"]) for i in active) - started, 2)
            result["create_latency"] = creates.summary()
            result["create_probe"] = prober.latencies.summary()
            log(f"[tetsu] all {len(active)} ACTIVE after {result['active_s']} s")

            # --- delete -------------------------------------------------------------
            deletes = Latencies()

            retried: list[str] = []

            def delete(instance_id: str) -> None:
                # A 503 (the database had no connection for the API) asks the client to
                # come back after Retry-After; a deletion is safe to ask for again, as a
                # client would. The latency counts the whole wait.
                for attempt in range(RETRIES + 1):
                    response = member.delete(f"/v1/instances/{instance_id}")
                    if response.status_code == 503 and attempt < RETRIES:
                        retried.append(instance_id)
                        time.sleep(float(response.headers.get("retry-after") or 1))
                        continue
                    if attempt and response.status_code == 409:
                        return  # the earlier attempt got through after all
                    expect(response, 202)
                    return

            log(f"[tetsu] deleting {len(created)} instances ...")
            with Prober(probe) as prober:
                started = time.time()
                meter.start()
                burst(list(created), delete, concurrency=concurrency, latencies=deletes)
                result["delete_cpu"] = meter.stop()
                result["delete_requests_s"] = round(time.time() - started, 2)
                answered = result["delete_requests_s"]
                log(f"[tetsu] deletions answered in {answered} s, {deletes.brief()}")

                def all_free() -> list[dict[str, Any]] | None:
                    # Nodes whose instance could not be created or deleted stay taken.
                    taken = len(count_status(admin, "ACTIVE"))
                    free = free_nodes(admin)
                    return free if len(free) == nodes - taken else None

                wait_until(
                    lambda: settled(stack, admin, "DELETING"),
                    timeout=timeout,
                    interval=poll,
                    what="DELETED",
                )
                free = wait_until(all_free, timeout=timeout, interval=poll, what="available nodes")
            result["available_s"] = round(
                max(timestamp(n["updated_at"]) for n in free) - started, 2
            )
            result["delete_latency"] = deletes.summary()
            result["delete_retries_after_503"] = len(retried)
            result["delete_probe"] = prober.latencies.summary()
            log(f"[tetsu] all {nodes} nodes available after {result['available_s']} s")
            result["total_s"] = round(result["active_s"] + result["available_s"], 2)
        finally:
            stop_profilers(profilers)
            member.close()
    result["seq_scans"] = sequential_scans(stack.env["TETSU_DATABASE_URL"])
    result["processes"] = {}
    for name, process in stack.processes.items():
        # The API's worker processes (and multiprocessing's helper) each on a row of its own.
        for pid in descendants(process.popen.pid):
            label = name if pid == process.popen.pid else f"{name} child pid {pid}"
            result["processes"][label] = {
                "peak_rss_mib": peak_rss_mib(pid),
                "cpu_s": cpu_seconds(pid),
            }
    return result


def cpu_parties(stack: Stack) -> dict[str, int]:
    """The process trees whose CPU time a burst's windows measure: each service, the
    PostgreSQL and RabbitMQ servers when they run on this machine, and this benchmark
    (its client threads)."""
    parties = {name: process.popen.pid for name, process in stack.processes.items()}
    postmaster = postgres_postmaster(stack.env["TETSU_DATABASE_URL"])
    if postmaster is not None:
        parties["postgresql"] = postmaster
    rabbit = find_process("beam.smp", "rabbit")
    if rabbit is not None:
        parties["rabbitmq"] = rabbit
    parties["benchmark client"] = os.getpid()
    return parties


def postgres_postmaster(database_url: str) -> int | None:
    """The pid of the PostgreSQL server behind ``database_url`` if it runs on this
    machine: the parent of the backend that answers (None for a server elsewhere)."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            backend = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
            # Read while the connection is open: the backend exits when it closes.
            try:
                if b"postgres" not in Path(f"/proc/{backend}/cmdline").read_bytes():
                    return None
                stat = Path(f"/proc/{backend}/stat").read_text()
            except OSError:
                return None
    finally:
        engine.dispose()
    return int(stat.rsplit(")", 1)[1].split()[1])


def sequential_scans(database_url: str) -> dict[str, dict[str, int]]:
    """Per table, how many sequential scans the run made and the rows they read: a table
    read whole again and again is a query without the index it needs."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT relname, seq_scan, seq_tup_read, idx_scan FROM pg_stat_user_tables "
                    "ORDER BY seq_tup_read DESC"
                )
            ).all()
    finally:
        engine.dispose()
    return {
        name: {"seq_scan": seq, "seq_rows": rows_read, "idx_scan": idx or 0}
        for name, seq, rows_read, idx in rows
        if seq
    }


def start_profilers(stack: Stack, folder: Path | None) -> list[subprocess.Popen[bytes]]:
    """py-spy (``--profile``) sampling every service while the bursts run: only the thread
    that holds the GIL, so the samples show where each process spends its CPU (threads
    waiting on a socket or a lock are left out)."""
    if folder is None:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    py_spy = Path(sys.executable).with_name("py-spy")
    if not py_spy.exists():
        py_spy = Path("py-spy")
    return [
        subprocess.Popen(
            [
                str(py_spy),
                "record",
                "--pid",
                str(process.popen.pid),
                "--rate",
                "97",
                "--format",
                "raw",
                "--threads",
                "--nonblocking",
                "--gil",
                "--subprocesses",
                "--output",
                str(folder / f"{name}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, process in stack.processes.items()
    ]


def stop_profilers(profilers: list[subprocess.Popen[bytes]]) -> None:
    for profiler in profilers:
        profiler.send_signal(signal.SIGINT)
    for profiler in profilers:
        try:
            profiler.wait(timeout=30)
        except subprocess.TimeoutExpired:
            profiler.kill()
            profiler.wait()


def run(
    nodes: int,
    conductors: int,
    *,
    concurrency: int,
    poll: float,
    worker_nice: int = WORKER_NICE,
    api_workers: int = API_WORKERS,
    profile_dir: Path | None = None,
) -> dict[str, Any]:
    log(
        f"[tetsu] N={nodes}, {conductors} conductor(s), {api_workers} API process(es), "
        f"workers at niceness {worker_nice}: starting the services ..."
    )
    with tetsu_stack(conductors, PRODUCT_TIMERS, worker_nice, api_workers) as stack:
        result = run_burst(
            stack, nodes, concurrency=concurrency, poll=poll, profile_dir=profile_dir
        )
    result["conductors"] = conductors
    result["worker_nice"] = worker_nice
    result["api_workers"] = api_workers
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Needs the real RabbitMQ (rabbitmqctl, for a vhost) and PostgreSQL.",
    )
    parser.add_argument("--nodes", type=int, default=100, help="nodes and instances (100)")
    parser.add_argument("--conductors", type=int, default=1, help="conductor processes (1)")
    parser.add_argument(
        "--concurrency", type=int, default=50, help="requests in flight at once (50)"
    )
    parser.add_argument(
        "--poll", type=float, default=1.0, help="seconds between looks at the progress (1)"
    )
    parser.add_argument(
        "--worker-nice",
        type=int,
        default=WORKER_NICE,
        choices=range(20),
        metavar="0-19",
        help=f"the workers' TETSU_NICE ({WORKER_NICE}, as deploy/compose.yaml; 0: the API's)",
    )
    parser.add_argument(
        "--api-workers",
        type=int,
        default=API_WORKERS,
        help=f"the API's processes, TETSU_API_WORKERS ({API_WORKERS}, as deploy/compose.yaml)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample every service with py-spy during the bursts; raw stacks into DIR",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(
        args.nodes,
        args.conductors,
        concurrency=args.concurrency,
        poll=args.poll,
        worker_nice=args.worker_nice,
        api_workers=args.api_workers,
        profile_dir=args.profile,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
