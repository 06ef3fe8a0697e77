"""The all-in-one demo: a small fake-hardware estate and one instance, made over REST.

Everything goes through the public API with the admin token, as a user would do it with
the ``tetsu`` command, so the demo exercises the same path as production. Running it
again on the same state directory reuses what is already there.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from rich.console import Console

from .client import APIClient, APIError, Collection, Resource
from .session import Runtime
from .waiting import ServerProgress, ServerWatcher, WaitTimedOut, describe_server, poll

FLAVOR = "bm.demo"
IMAGE = "demo-image"
NETWORK = "demo-net"
DEMO_IMAGE_BYTES = b"tetsu demo disk image\n" * 4096  # ~90 KB, uploaded to the API
NODE_FAKE_DELAY = 1.0  # seconds each simulated ramdisk run takes: visible progress
CLEAN_RETRIES = 3  # a demo node that failed cleaning is provided again this many times


class DemoFailed(Exception):
    """The demo nodes or instance did not get ready in time; the message says why."""


def _find_or_create(collection: Collection, name: str, body: Resource) -> Resource:
    try:
        return collection.find(name)
    except APIError as exc:
        if exc.status != 404:
            raise
    return collection.create(body)


def wait_for_conductors(api: APIClient, *, console: Console, timeout: float = 120.0) -> int:
    """Wait until at least one conductor heartbeats: a node can be managed only through one
    (a stack started all at once has an API before its conductors). Returns how many."""
    try:
        return poll(
            lambda: sum(1 for c in api.json("GET", "/v1/conductors")["conductors"] if c["alive"]),
            lambda alive: f"{alive} alive",
            lambda alive: alive > 0,
            what="conductors",
            timeout=timeout,
            interval=0.5,
            runtime=Runtime(),
            console=console,
        )
    except WaitTimedOut:
        raise DemoFailed(f"no conductor is alive after {timeout:g} s") from None


def _move_on(api: APIClient, node: Resource, managing: set[str]) -> None:
    """Move a demo node one step on towards available: manage it from enroll or clean
    failed, provide it once manageable. Managing is asynchronous (the conductor reads the
    power state first and the node shows its old state meanwhile), so a node told to manage
    is left alone (``managing``) until it shows manageable; the caller looks again."""
    state = node["provision_state"]
    if state == "manageable":
        managing.discard(node["id"])
        api.nodes.set_provision_state(node["id"], "provide")
    elif state in ("enroll", "clean failed") and node["id"] not in managing:
        managing.add(node["id"])
        api.nodes.set_provision_state(node["id"], "manage")


def seed(api: APIClient, *, nodes: int, console: Console, timeout: float = 120.0) -> None:
    """Flavor, image, network and ``nodes`` available fake nodes (idempotent)."""
    _find_or_create(
        api.flavors,
        FLAVOR,
        {
            "name": FLAVOR,
            "resource_class": "baremetal",
            "cpus": 2,
            "memory_mb": 2048,
            "disk_gb": 10,
        },
    )
    image = _find_or_create(
        api.images, IMAGE, {"name": IMAGE, "disk_format": "raw", "visibility": "public"}
    )
    if image.get("status") != "active":
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "demo.raw"
            path.write_bytes(DEMO_IMAGE_BYTES)
            api.images.upload(image["id"], path)
    _find_or_create(api.networks, NETWORK, {"name": NETWORK})
    managing: set[str] = set()
    # Cleaning can fail while the stack is still starting (e.g. before netctl listens).
    retries: dict[str, int] = {}
    for i in range(1, nodes + 1):
        name = f"demo-{i:02d}"
        try:
            node = api.nodes.get(name)
        except APIError as exc:
            if exc.status != 404:
                raise
            node = api.nodes.create(
                {
                    "name": name,
                    "resource_class": "baremetal",
                    "properties": {"cpus": 4, "memory_mb": 4096 * i, "disk_gb": 40},
                    "driver_info": {"fake_delay": NODE_FAKE_DELAY},
                }
            )
            api.ports.create({"address": f"52:54:00:de:00:{i:02x}", "node_id": node["id"]})
        _move_on(api, node, managing)

    def states() -> list[str]:
        demo = [n for n in api.nodes.list() if n["name"].startswith("demo-")]
        for node in demo:
            if node["provision_state"] == "clean failed" and node["id"] not in managing:
                if retries.get(node["name"], 0) >= CLEAN_RETRIES:
                    raise DemoFailed(
                        f"demo node {node['name']} failed cleaning {CLEAN_RETRIES + 1} times: "
                        f"{node.get('last_error')}"
                    )
                retries[node["name"]] = retries.get(node["name"], 0) + 1
            _move_on(api, node, managing)
        return [n["provision_state"] for n in demo]

    try:
        poll(
            states,
            lambda states: f"{states.count('available')} of {nodes} available",
            lambda states: states.count("available") + states.count("active") >= nodes,
            what="demo nodes",
            timeout=timeout,
            interval=0.5,
            runtime=Runtime(),
            console=console,
        )
    except WaitTimedOut as exc:
        raise DemoFailed(
            f"the demo nodes are not available after {timeout:g} s ({exc.last})"
        ) from None


def deploy(api: APIClient, *, console: Console, timeout: float = 120.0) -> Resource:
    """Create one instance and follow it to ACTIVE, showing each state change."""
    network = api.networks.find(NETWORK)
    instance = api.instances.create(
        {"name": "demo-server", "flavor": FLAVOR, "image": IMAGE, "networks": [network["id"]]}
    )
    watcher = ServerWatcher(api, instance["id"])
    try:
        progress: ServerProgress = poll(
            watcher.fetch,
            describe_server,
            lambda p: p.instance.get("status") in {"ACTIVE", "ERROR"},
            what="server demo-server",
            timeout=timeout,
            interval=0.3,
            runtime=Runtime(),
            console=console,
            first=ServerProgress(instance, None),
        )
    except WaitTimedOut as exc:
        raise DemoFailed(
            f"demo-server is not ACTIVE after {timeout:g} s (still {exc.last})"
        ) from None
    if progress.instance.get("status") != "ACTIVE":
        raise DemoFailed(f"demo-server ended in ERROR: {progress.instance.get('fault')}")
    return progress.instance


def seed_and_deploy(endpoint: str, token: str, *, nodes: int, console: Console) -> Resource:
    with APIClient(endpoint, token) as api:
        seed(api, nodes=nodes, console=console)
        server = deploy(api, console=console)
        node = api.nodes.get(str(server["node_id"]))
        console.print(
            f"[green]demo-server is ACTIVE[/] on node {node['name']} "
            f"(its port is in network {NETWORK})"
        )
        return server
