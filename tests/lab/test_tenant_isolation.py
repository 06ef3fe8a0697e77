"""Tenant isolation end to end: the lab's bridge forwards only what netctl's OpenFlow
controller allows (``fail_mode=secure``), two tenants each deploy two QEMU guests over the
REST API, and the image the guests then boot pings every other guest and the boot services.

```
 tenant alpha: a1 a2 ─┐                            ┌─ tenant beta: b1 b2
                      └─ OVS tlab<id> (secure) ────┘    netctl (openflow backend) programs it
 provisioning: the bridge's own port (API, boot server) and dnsmasq's namespace
```

Every guest takes an address in the provisioning network's subnet, so a leak into the
provisioning network (the API, the boot server, dnsmasq) would show as an answer as
surely as one into the other tenant's network. Enrolment already runs the lab's first
cleaning through the isolated provisioning network, and each deploy moves the guest's
port from provisioning to its tenant network while libvirt re-creates the port at each
power on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import create_database, drop_database
from tests.integration.stack import Stack, free_port, running_stack, wait_for
from tests.lab.harness import (
    DNSMASQ_IP,
    HOST_IP,
    SUBNET_PREFIX,
    Guest,
    Lab,
    boot_settings,
    lab,
    run,
)
from tests.lab.images import make_probe_image, probe_address
from tests.lab.test_baremetal import all_nodes_in, instance, ok

pytestmark = pytest.mark.lab

DEPLOY_TIMEOUT = 480.0
TENANTS = {"alpha": ("a1", "a2"), "beta": ("b1", "b2")}
#: Rounds of pings every guest completes after all its neighbours answered, before the
#: verdict: each round asks every other guest and both boot services once.
ROUNDS_AFTER = 2
PROBE_LINE = re.compile(r"tetsu-probe (\S+) -> (\S+) (yes|no)")
VM_MAC = "52:54:00:77:01:21"  # the probe image takes .33


@dataclass
class Tenant:
    name: str
    token: str
    network: dict[str, Any]


@dataclass
class IsolatedLab:
    lab: Lab
    stack: Stack
    guests: dict[str, Guest]  # node id -> guest
    flavor: str
    tenants: dict[str, Tenant]
    shared: dict[str, Any] = field(default_factory=dict)  # what one test hands the next


@pytest.fixture(scope="module")
def isolated(
    amqp_url: str, ramdisk_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IsolatedLab]:
    workdir = tmp_path_factory.mktemp("isolation")
    api_port, controller_port = free_port(), free_port()
    kernel, initramfs = ramdisk_files
    env, config = boot_settings(
        boot_root=workdir / "boot",
        boot_port=free_port(),
        api_port=api_port,
        kernel=kernel,
        initramfs=initramfs,
    )
    name, url = create_database()
    try:
        with lab(
            workdir, guests=4, dnsmasq_config=config, controller_port=controller_port
        ) as the_lab:
            env.update(
                {
                    "TETSU_BACKEND": "openflow",
                    "TETSU_OPENFLOW_LISTEN_PORT": str(controller_port),
                    "TETSU_PROVISIONING_PORTS": json.dumps(the_lab.provisioning_ports),
                    "TETSU_IPMI_TIMEOUT": "4",
                    "TETSU_IPMI_RETRIES": "2",
                    "TETSU_CALLBACK_TIMEOUT": str(DEPLOY_TIMEOUT),
                    "TETSU_MAX_ATTEMPTS": "1",
                    "TETSU_ENABLED_POWER_INTERFACES": '["fake", "ipmi", "libvirt"]',
                    "TETSU_ENABLED_MANAGEMENT_INTERFACES": '["fake", "ipmi", "libvirt"]',
                    "TETSU_ENABLED_BOOT_INTERFACES": '["fake", "pxe", "virtual"]',
                    "TETSU_ENABLED_DEPLOY_INTERFACES": '["fake", "ramdisk", "image"]',
                    "TETSU_VM_ROOT": str(workdir / "vms"),
                    "TETSU_VM_CSUM_OFFLOAD": "false",  # OVS's userspace datapath
                    "TETSU_VM_DOMAIN_TYPE": "qemu",  # no working KVM here
                    # This host is also a hypervisor with room for one 1-vCPU VM made on
                    # demand (its memory and disk as libvirt and the disk report them).
                    "TETSU_HYPERVISOR": "true",
                    "TETSU_HYPERVISOR_RESOURCE_CLASS": "vm-demand",
                    "TETSU_VM_BRIDGE": the_lab.bridge,
                    "TETSU_VM_SWITCH_ID": the_lab.datapath_id,
                    "TETSU_VM_VCPUS": "1",
                    "TETSU_VM_CPU_ALLOCATION_RATIO": "1",
                }
            )
            with running_stack(
                workdir, database_url=url, transport_url=amqp_url, port=api_port, extra_env=env
            ) as stack:
                try:
                    wait_for(
                        lambda: _controller_connected(the_lab),
                        timeout=60,
                        what="the lab bridge to connect to netctl",
                    )
                    yield _enroll(the_lab, stack)
                except BaseException:
                    print("--- flows ---\n" + _flows(the_lab))
                    for guest in the_lab.guests:
                        print(f"--- {guest.name} serial ---\n{guest.serial()[-2500:]}")
                    raise
    finally:
        drop_database(name)


def _controller_connected(the_lab: Lab) -> bool:
    answer = run("ovs-vsctl", "--timeout=5", "get", "controller", the_lab.bridge, "is_connected")
    return answer.stdout.strip() == "true"


def _flows(the_lab: Lab) -> str:
    return run("ovs-ofctl", "-O", "OpenFlow13", "dump-flows", the_lab.bridge, check=False).stdout


def _enroll(the_lab: Lab, stack: Stack) -> IsolatedLab:
    """The guests as nodes whose ports name their switch port, made available (their first
    cleaning runs in the isolated provisioning network), and two tenants with a network each."""
    guests: dict[str, Guest] = {}
    with stack.client() as admin:
        flavor = ok(
            admin.post(
                "/v1/flavors",
                json={
                    "name": "bm.isolated",
                    "resource_class": "baremetal",
                    "cpus": 1,
                    "memory_mb": 256,
                    "disk_gb": 0,
                },
            ),
            201,
        )
        for guest in the_lab.guests:
            node = ok(admin.post("/v1/nodes", json=guest.node_request), 201)
            port = guest.port_request(node["id"], the_lab.datapath_id)
            ok(admin.post("/v1/ports", json=port), 201)
            guests[node["id"]] = guest
        for target, state in (("manage", "manageable"), ("provide", "available")):
            for node_id in guests:
                ok(admin.put(f"/v1/nodes/{node_id}/states/provision", json={"target": target}))
            wait_for(
                partial(all_nodes_in, admin, guests, state),
                timeout=DEPLOY_TIMEOUT,
                interval=1,
                what=f"nodes {state} after {target}",
            )
        tenants = {}
        for tenant in TENANTS:
            project = ok(admin.post("/v1/projects", json={"name": tenant}), 201)
            password = f"{tenant}-password-1"
            user = {"name": f"{tenant}-user", "password": password, "project_id": project["id"]}
            ok(admin.post("/v1/users", json=user), 201)
            login = {"name": user["name"], "password": password}
            token = ok(httpx.post(f"{stack.endpoint}/v1/tokens", json=login), 201)["token"]
            with stack.client(token) as member:
                network = ok(member.post("/v1/networks", json={"name": f"{tenant}-net"}), 201)
            tenants[tenant] = Tenant(tenant, token, network)
    return IsolatedLab(the_lab, stack, guests, flavor["id"], tenants)


def _answers(guest: Guest, mark: int) -> list[tuple[str, str, str]]:
    """(self, peer, yes|no) for each ping the guest's probe reported since ``mark``."""
    return PROBE_LINE.findall(guest.serial_since(mark))


def _rounds(guest: Guest, mark: int) -> int:
    """Probe rounds the guest finished since ``mark``."""
    return guest.serial_since(mark).count(" round ")


def _rounds_reach(guest: Guest, mark: int, rounds: int) -> bool:
    return _rounds(guest, mark) >= rounds


def _shows(guest: Guest, mark: int, text: str) -> bool:
    return text in guest.serial_since(mark)


def test_deployed_guests_reach_their_own_tenant_and_nothing_else(
    isolated: IsolatedLab, tmp_path: Path
) -> None:
    addresses = {
        guest.name: probe_address(SUBNET_PREFIX, guest.mac) for guest in isolated.guests.values()
    }
    image_path = tmp_path / "probe.img"
    make_probe_image(
        image_path,
        kernel=Path(isolated.stack.env["TETSU_RAMDISK_KERNEL"]),
        initramfs=Path(isolated.stack.env["TETSU_RAMDISK_INITRAMFS"]),
        marker="isolation",
        prefix=SUBNET_PREFIX,
        peers=[*addresses.values(), probe_address(SUBNET_PREFIX, VM_MAC), DNSMASQ_IP, HOST_IP],
    )
    marks = {node_id: guest.serial_mark() for node_id, guest in isolated.guests.items()}
    with isolated.stack.client() as admin:
        body = {"name": "probe", "disk_format": "raw", "visibility": "public"}
        image = ok(admin.post("/v1/images", json=body), 201)
        with image_path.open("rb") as data:
            ok(admin.put(f"/v1/images/{image['id']}/file", content=data), 200)

    def create(job: tuple[str, str]) -> tuple[str, str]:
        tenant, name = job
        body = {
            "name": name,
            "flavor": isolated.flavor,
            "image": image["id"],
            "networks": [isolated.tenants[tenant].network["id"]],
        }
        with isolated.stack.client(isolated.tenants[tenant].token) as member:
            return name, str(ok(member.post("/v1/instances", json=body), 202)["id"])

    jobs = [(tenant, name) for tenant, names in TENANTS.items() for name in names]
    with ThreadPoolExecutor(len(jobs)) as pool:
        instance_ids = dict(pool.map(create, jobs))

    with isolated.stack.client() as admin:

        def all_active() -> bool:
            rows = [instance(admin, i) for i in instance_ids.values()]
            errors = [(r["name"], r["fault"]) for r in rows if r["status"] == "ERROR"]
            assert not errors, errors
            return all(r["status"] == "ACTIVE" for r in rows)

        wait_for(all_active, timeout=DEPLOY_TIMEOUT, interval=1, what="four ACTIVE instances")
        tenant_of: dict[str, str] = {}  # guest name -> tenant
        guest_of: dict[str, Guest] = {}  # instance name -> guest
        for tenant, names in TENANTS.items():
            network_id = isolated.tenants[tenant].network["id"]
            for name in names:
                row = instance(admin, instance_ids[name])
                guest = isolated.guests[row["node_id"]]
                tenant_of[guest.name] = tenant
                guest_of[name] = guest
                # The deploy moved the guest's port into its tenant's network.
                ports = ok(admin.get("/v1/ports", params={"node_id": row["node_id"]}), 200)
                assert [(p["binding"], p["network_id"]) for p in ports["ports"]] == [
                    ("tenant", network_id)
                ], ports

    def neighbour_of(guest: Guest) -> Guest:
        return next(
            other
            for other in guest_of.values()
            if other is not guest and tenant_of[other.name] == tenant_of[guest.name]
        )

    probe_marks: dict[str, int] = {}
    for guest in guest_of.values():
        # The guest booted the probe image from its disk, and its neighbour answers it.
        node_mark = next(marks[n] for n, g in isolated.guests.items() if g is guest)
        wait_for(
            partial(_shows, guest, node_mark, f"tetsu-probe isolation up {addresses[guest.name]}"),
            timeout=180,
            what=f"the probe image up on {guest.name}",
        )
        console = guest.serial_since(node_mark)
        assert "tetsu-ramdisk:" in console, "our ramdisk wrote the disk first"
        probe_marks[guest.name] = node_mark + console.index("tetsu-probe isolation up")
    for guest in guest_of.values():
        neighbour = addresses[neighbour_of(guest).name]
        wait_for(
            partial(_shows, guest, probe_marks[guest.name], f" -> {neighbour} yes"),
            timeout=120,
            what=f"{guest.name} to reach {neighbour} in its own tenant network",
        )
    # Everyone is up and reachable from inside its tenant: a few more full rounds, then
    # every answer any guest ever got from outside its tenant must be "no".
    after = {guest.name: _rounds(guest, probe_marks[guest.name]) for guest in guest_of.values()}
    for guest in guest_of.values():
        wait_for(
            partial(
                _rounds_reach, guest, probe_marks[guest.name], after[guest.name] + ROUNDS_AFTER
            ),
            timeout=120,
            what=f"{ROUNDS_AFTER} more probe rounds on {guest.name}",
        )
    for guest in guest_of.values():
        answers = _answers(guest, probe_marks[guest.name])
        own = addresses[guest.name]
        assert {me for me, _, _ in answers} == {own}, "the console is this guest's probe's"
        outsiders = {DNSMASQ_IP: "provisioning (dnsmasq)", HOST_IP: "provisioning (API)"}
        outsiders |= {
            addresses[other.name]: f"tenant {tenant_of[other.name]}"
            for other in guest_of.values()
            if tenant_of[other.name] != tenant_of[guest.name]
        }
        leaks = [
            (peer, outsiders[peer])
            for _, peer, said in answers
            if peer in outsiders and said == "yes"
        ]
        assert not leaks, f"{guest.name} ({tenant_of[guest.name]}) reached {leaks}"
        asked = {peer for _, peer, _ in answers}
        assert set(outsiders) <= asked, f"{guest.name} asked only {asked}"
        neighbour = addresses[neighbour_of(guest).name]
        latest = [said for _, peer, said in answers if peer == neighbour][-ROUNDS_AFTER:]
        assert latest == ["yes"] * ROUNDS_AFTER, f"{guest.name} lost its neighbour: {latest}"
    isolated.shared.update(
        image=image["id"], guest_of=guest_of, tenant_of=tenant_of, addresses=addresses
    )


def test_the_same_image_runs_as_a_vm_in_its_tenant_network(isolated: IsolatedLab) -> None:
    """A VM node (libvirt on the lab's host) gets the probe image through the same REST
    calls: its tap joins tenant alpha's network on the same switch, so it reaches alpha's
    bare-metal guests and they reach it, and beta's guests and the boot services never."""
    shared = isolated.shared
    assert shared, "runs after the bare-metal test"
    guest_of: dict[str, Guest] = shared["guest_of"]
    tenant_of: dict[str, str] = shared["tenant_of"]
    addresses: dict[str, str] = shared["addresses"]
    own = probe_address(SUBNET_PREFIX, VM_MAC)
    vm_root = Path(isolated.stack.env["TETSU_VM_ROOT"])
    marks = {guest.name: guest.serial_mark() for guest in guest_of.values()}
    alpha = isolated.tenants["alpha"]
    with isolated.stack.client() as admin:
        flavor = {"name": "vm.small", "resource_class": "vm", "cpus": 1, "memory_mb": 256}
        vm_flavor = ok(admin.post("/v1/flavors", json=flavor | {"disk_gb": 0}), 201)
        body = {
            "name": "vm-1",
            "resource_class": "vm",
            "properties": {"cpus": 1, "memory_mb": 256, "disk_gb": 0},
            "power_interface": "libvirt",
            "management_interface": "libvirt",
            "boot_interface": "virtual",
            "deploy_interface": "image",
            "driver_info": {"libvirt_bridge": isolated.lab.bridge},
        }
        node_id = ok(admin.post("/v1/nodes", json=body), 201)["id"]
        port = {
            "address": VM_MAC,
            "node_id": node_id,
            "switch_id": isolated.lab.datapath_id,
            "switch_port": f"{isolated.lab.bridge}-v1",
        }
        ok(admin.post("/v1/ports", json=port), 201)
        for target, state in (("manage", "manageable"), ("provide", "available")):
            ok(admin.put(f"/v1/nodes/{node_id}/states/provision", json={"target": target}))
            wait_for(
                partial(all_nodes_in, admin, [node_id], state),
                timeout=60,
                what=f"the VM node {state}",
            )
    try:
        with isolated.stack.client(alpha.token) as member:
            body = {
                "name": "a-vm",
                "flavor": vm_flavor["id"],
                "image": shared["image"],
                "networks": [alpha.network["id"]],
            }
            vm_instance = ok(member.post("/v1/instances", json=body), 202)["id"]
            row = wait_for(
                lambda: _settled(member, vm_instance),
                timeout=DEPLOY_TIMEOUT,
                interval=1,
                what="the VM instance ACTIVE",
            )
            assert row["status"] == "ACTIVE", row["fault"]
        with isolated.stack.client() as admin:  # members are not shown nodes
            assert instance(admin, vm_instance)["node_id"] == node_id
            ports = ok(admin.get("/v1/ports", params={"node_id": node_id}), 200)["ports"]
            assert [(p["binding"], p["network_id"]) for p in ports] == [
                ("tenant", alpha.network["id"])
            ]
        console = vm_root / f"{node_id}.console.log"
        vm = _Console(console)
        wait_for(
            lambda: f"tetsu-probe isolation up {own}" in vm.text(),
            timeout=180,
            what="the probe image up in the VM",
        )
        alpha_guests = [g for g in guest_of.values() if tenant_of[g.name] == "alpha"]
        beta_guests = [g for g in guest_of.values() if tenant_of[g.name] == "beta"]
        for guest in alpha_guests:
            peer = addresses[guest.name]
            wait_for(
                partial(vm.shows, f" -> {peer} yes"),
                timeout=120,
                what=f"the VM to reach {guest.name}",
            )
            wait_for(
                partial(_shows, guest, marks[guest.name], f" -> {own} yes"),
                timeout=120,
                what=f"{guest.name} to reach the VM",
            )
        rounds = vm.text().count(" round ")
        wait_for(
            lambda: vm.text().count(" round ") >= rounds + ROUNDS_AFTER,
            timeout=120,
            what="more probe rounds in the VM",
        )
        answers = PROBE_LINE.findall(vm.text())
        outsiders = {addresses[g.name] for g in beta_guests} | {DNSMASQ_IP, HOST_IP}
        leaks = [peer for _, peer, said in answers if peer in outsiders and said == "yes"]
        assert not leaks, f"the VM reached {leaks}"
        assert outsiders <= {peer for _, peer, _ in answers}
        for guest in beta_guests:
            heard = [said for _, peer, said in _answers(guest, marks[guest.name]) if peer == own]
            assert heard, f"{guest.name} asked the VM nothing"
            assert "yes" not in heard, f"{guest.name} (beta) reached alpha's VM"
        # The VM goes as it came: cleaning undefines its domain and removes its disk.
        with isolated.stack.client(alpha.token) as member:
            ok(member.delete(f"/v1/instances/{vm_instance}"), 202)
        with isolated.stack.client() as admin:
            wait_for(
                partial(all_nodes_in, admin, [node_id], "available"),
                timeout=120,
                what="the VM node cleaned",
            )
        assert not (vm_root / f"{node_id}.img").exists()
        assert _domain_state(node_id) == "undefined"
    finally:
        run("virsh", "-c", "qemu:///system", "destroy", f"tetsu-{node_id}", check=False)
        run("virsh", "-c", "qemu:///system", "undefine", f"tetsu-{node_id}", check=False)


def test_vms_are_made_on_demand_within_the_hypervisors_room(isolated: IsolatedLab) -> None:
    """The lab host's conductor reports its room (one vCPU; its memory and disk as
    libvirt and the disk say): a member's instance of the hypervisor's class gets a VM
    node made for it that boots the probe image, and boots it again on the same node
    after a rebuild; a second finds no room (a clear no_valid_host); deleting the first
    deletes its node and gives the room back."""
    shared = isolated.shared
    assert shared, "runs after the bare-metal test"
    vm_root = Path(isolated.stack.env["TETSU_VM_ROOT"])
    alpha = isolated.tenants["alpha"]
    with isolated.stack.client() as admin:
        [hypervisor] = ok(admin.get("/v1/hypervisors"), 200)["hypervisors"]
        assert (hypervisor["alive"], hypervisor["resource_class"]) == (True, "vm-demand")
        assert hypervisor["bridge"] == isolated.lab.bridge
        assert hypervisor["capacity"]["vcpus"] == 1
        assert hypervisor["capacity"]["memory_mb"] > 1024  # this host's, less 512 reserved
        assert hypervisor["capacity"]["disk_gb"] > 0
        assert hypervisor["free"] == hypervisor["capacity"]
        flavor = {"name": "vm.demand", "resource_class": "vm-demand", "cpus": 1}
        ok(admin.post("/v1/flavors", json=flavor | {"memory_mb": 256, "disk_gb": 0}), 201)
    made: list[str] = []
    try:
        with isolated.stack.client(alpha.token) as member:
            # A network of its own: the VM's address (from its random MAC) meets no guest.
            network = ok(member.post("/v1/networks", json={"name": "alpha-vms"}), 201)
            body = {
                "flavor": "vm.demand",
                "image": shared["image"],
                "networks": [network["id"]],
            }
            first = ok(member.post("/v1/instances", json=body | {"name": "vm-a"}), 202)["id"]
            row = wait_for(
                lambda: _settled(member, first),
                timeout=DEPLOY_TIMEOUT,
                interval=1,
                what="the on-demand VM ACTIVE",
            )
            assert row["status"] == "ACTIVE", row["fault"]
            second = ok(member.post("/v1/instances", json=body | {"name": "vm-b"}), 202)["id"]
            refused = wait_for(
                lambda: _settled(member, second), timeout=60, interval=0.5, what="vm-b settled"
            )
            assert refused["status"] == "ERROR"
            assert refused["fault"]["code"] == "no_valid_host"
            assert "no room for a VM of 1 vCPU(s), 256 MiB" in refused["fault"]["message"]
        with isolated.stack.client() as admin:
            node_id = instance(admin, first)["node_id"]
            made.append(node_id)
            node = ok(admin.get(f"/v1/nodes/{node_id}"), 200)
            assert (node["hypervisor_id"], node["resource_class"]) == (
                hypervisor["id"],
                "vm-demand",
            )
            shown = ok(admin.get(f"/v1/hypervisors/{hypervisor['name']}"), 200)
            assert (shown["vm_nodes"], shown["free"]["vcpus"]) == (1, 0)
        vm = _Console(vm_root / f"{node_id}.console.log")
        wait_for(
            lambda: "tetsu-probe isolation up" in vm.text(),
            timeout=180,
            what="the probe image up in the on-demand VM",
        )
        # A rebuild writes the image again on the same VM node, which boots it again.
        with isolated.stack.client(alpha.token) as member:
            ok(member.post(f"/v1/instances/{first}/rebuild", json={}), 202)
            row = wait_for(
                lambda: _settled(member, first),
                timeout=DEPLOY_TIMEOUT,
                interval=1,
                what="the rebuilt VM ACTIVE",
            )
            assert row["status"] == "ACTIVE", row["fault"]
        wait_for(
            lambda: vm.text().count("tetsu-probe isolation up") >= 2,
            timeout=180,
            what="the probe image up again after the rebuild",
        )
        with isolated.stack.client() as admin:
            assert instance(admin, first)["node_id"] == node_id
        with isolated.stack.client(alpha.token) as member:
            ok(member.delete(f"/v1/instances/{first}"), 202)
            ok(member.delete(f"/v1/instances/{second}"), 202)
        with isolated.stack.client() as admin:
            wait_for(
                lambda: admin.get(f"/v1/nodes/{node_id}").status_code == 404,
                timeout=120,
                what="the on-demand VM node deleted",
            )
            shown = ok(admin.get(f"/v1/hypervisors/{hypervisor['name']}"), 200)
            assert (shown["vm_nodes"], shown["free"]) == (0, shown["capacity"])
        assert not (vm_root / f"{node_id}.img").exists()
        assert _domain_state(node_id) == "undefined"
    finally:
        for node_id in made:
            run("virsh", "-c", "qemu:///system", "destroy", f"tetsu-{node_id}", check=False)
            run("virsh", "-c", "qemu:///system", "undefine", f"tetsu-{node_id}", check=False)


@dataclass
class _Console:
    path: Path

    def shows(self, text: str) -> bool:
        return text in self.text()

    def text(self) -> str:
        try:
            return self.path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _settled(client: httpx.Client, instance_id: str) -> dict[str, Any] | None:
    row = instance(client, instance_id)
    return row if row["status"] in ("ACTIVE", "ERROR") else None


def _domain_state(node_id: str) -> str:
    result = run("virsh", "-c", "qemu:///system", "domstate", f"tetsu-{node_id}", check=False)
    return result.stdout.strip() if result.returncode == 0 else "undefined"
