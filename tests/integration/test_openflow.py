"""netctl's OpenFlow controller against a real Open vSwitch (userspace datapath), with
network namespaces as the tenants' machines, netctl as its own process (``tetsu service
netctl``, openflow backend) on the real RabbitMQ and PostgreSQL.

```
 netns a1 a2 (tenant A)   b1 b2 (tenant B)   boot (the boot server, always provisioning)
      eth0 (veth, tx off) ──── OVS bridge (netdev, fail_mode=secure, OpenFlow13) ──── netctl
```

Needs root and Open vSwitch (``scripts/test`` installs it with the lab's packages).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from libs import rpc
from libs.db import Database, Network, Node, Port, Project
from libs.rpc import transport_from_url
from services.netctl.rpcapi import NetworkAPI
from tests.integration.conftest import create_database, drop_database
from tests.integration.stack import Stack, free_port, wait_for
from tests.lab.harness import ensure_openvswitch, run

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
OVS_CTL = "/usr/share/openvswitch/scripts/ovs-ctl"
OVS_PIDFILE = "/var/run/openvswitch/ovs-vswitchd.pid"
SUBNET = "10.98.0"
SEGMENT_A, SEGMENT_B, PROVISIONING = 101, 102, 4000
CTXT = rpc.RequestContext(request_id="req-openflow-test")
NETHOST = "tests.integration.nethost"


@dataclass
class Host:
    name: str
    namespace: str
    port_name: str  # its switch port, as cabled (Port.switch_port)
    mac: str
    ip: str
    ip6: str

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> str:
        return run(
            "ip", "netns", "exec", self.namespace, *args, check=check, timeout=timeout
        ).stdout

    def tool(self, *args: str, timeout: float = 30) -> dict[str, Any]:
        """A :mod:`tests.integration.nethost` command run in this host's namespace."""
        result = subprocess.run(
            ["ip", "netns", "exec", self.namespace, sys.executable, "-m", NETHOST, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
            cwd=ROOT,
        )
        return dict(json.loads(result.stdout.strip().splitlines()[-1]))

    def start_tool(self, *args: str) -> subprocess.Popen[str]:
        """:meth:`tool` in the background; its JSON line comes from ``communicate()``."""
        return subprocess.Popen(
            ["ip", "netns", "exec", self.namespace, sys.executable, "-m", NETHOST, *args],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )

    def pings(
        self, other: Host, count: int = 2, timeout: float = 0.5, *, ipv6: bool = False
    ) -> int:
        """Echo replies ``other`` sent back out of ``count``."""
        address = other.ip6 if ipv6 else other.ip
        answer = self.tool("ping", address, "--count", str(count), "--timeout", str(timeout))
        return int(answer["received"])

    def tcp_works(self, other: Host) -> bool:
        port = 5000 + secrets.randbelow(1000)
        server = other.start_tool("tcp-serve", str(port), "--seconds", "4")
        try:
            assert server.stdout is not None
            assert "listening" in server.stdout.readline()
            return bool(self.tool("tcp-connect", other.ip, str(port), "--timeout", "2")["ok"])
        finally:
            server.kill()
            server.wait()

    def neighbour(self, other: Host) -> str:
        """This host's ARP entry for ``other`` ("" when there is none)."""
        return self.run("ip", "neigh", "show", other.ip, "dev", "eth0").strip()


@dataclass
class Fabric:
    bridge: str
    datapath_id: str  # as OVS shows it: 16 hex digits
    controller_port: int
    hosts: dict[str, Host] = field(default_factory=dict)

    def ofport(self, host: Host) -> int:
        return int(run("ovs-vsctl", "get", "interface", host.port_name, "ofport").stdout)

    def connected(self) -> bool:
        out = run(
            "ovs-vsctl",
            "--timeout=5",
            "get",
            "controller",
            self.bridge,
            "is_connected",
            check=False,
        )
        return out.stdout.strip() == "true"

    def tetsu_flows(self) -> list[str]:
        """tetsu's flows in the switch, without their counters, sorted."""
        out = run("ovs-ofctl", "-O", "OpenFlow13", "dump-flows", self.bridge, check=False).stdout
        return sorted(
            re.sub(r"(duration|n_packets|n_bytes|idle_age|hard_age)=[^,]*, ", "", line.strip())
            for line in out.splitlines()
            if "cookie=0x7e75" in line
        )


def _make_fabric(uid: str, controller_port: int) -> Fabric:
    bridge = f"tof{uid}"
    datapath_id = f"00007e75{uid}0000"[:16]
    run(
        "ovs-vsctl",
        "add-br",
        bridge,
        "--",
        "set",
        "bridge",
        bridge,
        "datapath_type=netdev",
        "fail_mode=secure",
        "protocols=OpenFlow13",
        f"other-config:datapath-id={datapath_id}",
    )
    run("ovs-vsctl", "set-controller", bridge, f"tcp:127.0.0.1:{controller_port}")
    fabric = Fabric(bridge, datapath_id, controller_port)
    addresses = {"a1": 11, "a2": 12, "b1": 21, "b2": 22, "boot": 1}
    for name, last in addresses.items():
        host = Host(
            name=name,
            namespace=f"tetsu-of-{uid}-{name}",
            port_name=f"tof{uid}{name}",
            mac=f"52:54:00:98:00:{last:02x}",
            ip=f"{SUBNET}.{last}",
            ip6=f"fd98::{last:x}",
        )
        run("ip", "netns", "add", host.namespace)
        peer = f"tofp{uid}{name}"[:15]
        run("ip", "link", "add", host.port_name, "type", "veth", "peer", "name", peer)
        run("ip", "link", "set", peer, "netns", host.namespace)
        host.run("ip", "link", "set", peer, "name", "eth0")
        host.run("ip", "link", "set", "eth0", "address", host.mac)
        host.run("ip", "addr", "add", f"{host.ip}/24", "dev", "eth0")
        host.run("ip", "-6", "addr", "add", f"{host.ip6}/64", "dev", "eth0", "nodad")
        host.run("ip", "link", "set", "eth0", "up")
        host.run("ip", "link", "set", "lo", "up")
        # Userspace OVS forwards what the veth hands it; checksums left to offload
        # would never be filled in, and TCP would silently fail.
        host.run("ethtool", "-K", "eth0", "tx", "off")
        run("ethtool", "-K", host.port_name, "tx", "off")
        run("ip", "link", "set", host.port_name, "up")
        run("ovs-vsctl", "add-port", fabric.bridge, host.port_name)
        fabric.hosts[name] = host
    return fabric


def _remove_fabric(fabric: Fabric) -> None:
    run("ovs-vsctl", "--if-exists", "del-br", fabric.bridge, check=False)
    for host in fabric.hosts.values():
        run("ip", "netns", "delete", host.namespace, check=False)
        run("ip", "link", "delete", host.port_name, check=False)


@dataclass
class Setup:
    fabric: Fabric
    stack: Stack
    api: NetworkAPI
    ports: dict[str, str]  # host name -> Port.id
    networks: dict[str, str]  # "A", "B" -> Network.id

    def bind(self, host: str, network: str) -> float:
        """Bind a host's port to network A or B; the seconds the call took."""
        started = time.monotonic()
        self.api.bind_port(CTXT, self.ports[host], self.networks[network])
        return time.monotonic() - started

    def h(self, name: str) -> Host:
        return self.fabric.hosts[name]

    def netctl_log(self) -> str:
        return self.stack.processes["netctl"].tail(60)


@pytest.fixture(scope="module")
def setup(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    if os.geteuid() != 0:
        pytest.fail("the OpenFlow tests need root (network namespaces, Open vSwitch)")
    ensure_openvswitch()
    uid = secrets.token_hex(2)
    controller_port = free_port()
    fabric = _make_fabric(uid, controller_port)
    db_name, db_url = create_database()
    database = Database(db_url)
    transport = transport_from_url(amqp_url)
    workdir = tmp_path_factory.mktemp("openflow")
    stack = Stack("", "", {}, workdir)
    try:
        with database.session() as session:
            project = Project(name="tenants")
            session.add(project)
            session.flush()
            networks = {
                "A": Network(name="net-a", project_id=project.id, segmentation_id=SEGMENT_A),
                "B": Network(name="net-b", project_id=project.id, segmentation_id=SEGMENT_B),
            }
            session.add_all(networks.values())
            ports = {}
            for name in ("a1", "a2", "b1", "b2"):
                host = fabric.hosts[name]
                node = Node(name=f"node-{name}", resource_class="baremetal")
                session.add(node)
                session.flush()
                ports[name] = Port(
                    address=host.mac,
                    node_id=node.id,
                    switch_id=fabric.datapath_id,
                    switch_port=host.port_name,
                )
            session.add_all(ports.values())
        stack.env = {
            **os.environ,
            "TETSU_DATABASE_URL": db_url,
            "TETSU_TRANSPORT_URL": amqp_url,
            "TETSU_LOG_LEVEL": "INFO",
            "TETSU_HOSTNAME": "netctl-openflow",
            "TETSU_BACKEND": "openflow",
            "TETSU_OPENFLOW_LISTEN_PORT": str(controller_port),
            "TETSU_PROVISIONING_SEGMENTATION_ID": str(PROVISIONING),
            "TETSU_PROVISIONING_PORTS": json.dumps(
                [f"{fabric.datapath_id}:{fabric.hosts['boot'].port_name}"]
            ),
        }
        stack.env.pop("TETSU_CONFIG", None)
        stack.start("netctl", "netctl")
        wait_for(
            lambda: _alive_and(stack, fabric.connected),
            timeout=30,
            what="OVS to connect to netctl",
        )
        api = NetworkAPI(transport, timeout=15, retry_for=30)
        yield Setup(
            fabric,
            stack,
            api,
            {name: port.id for name, port in ports.items()},
            {name: network.id for name, network in networks.items()},
        )
    finally:
        for name in list(stack.processes):
            stack.stop(name)
        transport.close()
        database.dispose()
        drop_database(db_name)
        _remove_fabric(fabric)


def _alive_and(stack: Stack, condition: Callable[[], bool]) -> bool:
    stack.check_alive()  # netctl died: fail now with its log
    return condition()


def _tenants(setup: Setup) -> None:
    """a1, a2 in network A, b1, b2 in B, and no host remembering an earlier test's ARP
    (an unanswered request is asked again only a second later)."""
    for host, network in (("a1", "A"), ("a2", "A"), ("b1", "B"), ("b2", "B")):
        setup.bind(host, network)
    for each in setup.fabric.hosts.values():
        each.run("ip", "neigh", "flush", "dev", "eth0")


def test_a_tenants_machines_reach_each_other_and_no_one_else(setup: Setup):
    _tenants(setup)
    a1, a2, b1, b2 = (setup.h(n) for n in ("a1", "a2", "b1", "b2"))

    assert a1.pings(a2) == 2, setup.netctl_log()
    assert b1.pings(b2) == 2
    assert a1.tcp_works(a2)
    assert b2.tcp_works(b1)

    assert a1.pings(b1) == 0
    assert b2.pings(a2) == 0
    assert not a1.tcp_works(b1)
    # ARP never crossed: a1 has no MAC address for b1.
    assert "lladdr" not in a1.neighbour(b1)
    # IPv6 alike (its neighbour discovery is multicast, flooded within a network only).
    assert a1.pings(a2, ipv6=True) == 2
    assert a1.pings(b1, ipv6=True) == 0


def test_broadcasts_stay_in_their_network(setup: Setup):
    _tenants(setup)
    a1, a2, b1 = setup.h("a1"), setup.h("a2"), setup.h("b1")
    run("ip", "netns", "exec", a1.namespace, "ip", "neigh", "flush", "dev", "eth0")

    def sniff(host: Host) -> subprocess.Popen[str]:
        return host.start_tool("sniff", "eth0", a1.mac, "--seconds", "3")

    sniffers = {"a2": sniff(a2), "b1": sniff(b1)}
    time.sleep(0.7)
    a1.pings(b1, count=2)  # ARP requests for b1: broadcasts
    seen = {
        name: json.loads(p.communicate(timeout=10)[0].strip().splitlines()[-1])
        for name, p in sniffers.items()
    }

    assert seen["a2"]["broadcasts"] >= 1  # the same network hears them
    assert seen["b1"] == {"frames": 0, "broadcasts": 0}  # the other never does


def test_the_boot_server_reaches_provisioned_ports_only(setup: Setup):
    _tenants(setup)
    boot, a1, b1 = setup.h("boot"), setup.h("a1"), setup.h("b1")
    assert boot.pings(a1) == 0

    setup.api.provision_port(CTXT, setup.ports["a1"])
    try:
        assert wait_for(lambda: boot.pings(a1, count=1) == 1, timeout=5, what="a1 provisioned")
        assert boot.pings(b1) == 0
        assert a1.pings(setup.h("a2")) == 0  # no longer in its tenant network
    finally:
        setup.bind("a1", "A")


def test_moving_a_machine_to_another_network_takes_effect_within_a_second(setup: Setup):
    _tenants(setup)
    a1, a2, b1 = setup.h("a1"), setup.h("a2"), setup.h("b1")
    assert a1.pings(a2) == 2
    assert a2.pings(b1) == 0

    # a2 pings b1 every 10 ms from before the move until the first answer. Both know the
    # other's MAC already: an ARP request unanswered before the move would be asked again
    # only a second later, which measures Linux, not the switch.
    a2.run("ip", "neigh", "replace", b1.ip, "lladdr", b1.mac, "dev", "eth0", "nud", "permanent")
    b1.run("ip", "neigh", "replace", a2.ip, "lladdr", a2.mac, "dev", "eth0", "nud", "permanent")
    try:
        prober = a2.start_tool(
            "ping", b1.ip, "--count", "500", "--interval", "0.01", "--timeout", "0.01",
            "--until-answered",
        )  # fmt: skip
        assert prober.stdout is not None and "ready" in prober.stdout.readline()
        started = time.monotonic()
        call = setup.bind("a2", "B")
        answer = json.loads(prober.communicate(timeout=30)[0].strip().splitlines()[-1])
    finally:
        for host in (a2, b1):
            host.run("ip", "neigh", "flush", "dev", "eth0", "nud", "permanent")
    assert answer["received"], "b1 never answered a2 after the move"
    effective = answer["first_answer"] - started
    print(
        f"\nmove A->B: bind_port returned after {call:.3f} s, "
        f"b1 first answered a2 {effective:.3f} s after the call"
    )
    assert effective < 1.0
    assert a1.pings(a2) == 0
    setup.bind("a2", "A")
    assert wait_for(lambda: a1.pings(a2, count=1) == 1, timeout=5, what="a2 back in A")


def test_a_port_that_comes_back_with_a_new_number_is_wired_again(setup: Setup):
    """What libvirt does at every power on: the guest's OVS port is deleted and re-added."""
    _tenants(setup)
    fabric, a1, a2 = setup.fabric, setup.h("a1"), setup.h("a2")
    before = fabric.ofport(a2)

    run("ovs-vsctl", "del-port", fabric.bridge, a2.port_name)
    run("ovs-vsctl", "add-port", fabric.bridge, a2.port_name)
    started = time.monotonic()
    assert fabric.ofport(a2) != before
    wait_for(
        lambda: a1.pings(a2, count=1, timeout=0.3) == 1, timeout=5, interval=0, what="a2 again"
    )
    took = time.monotonic() - started
    print(f"\nport renumbered {before} -> {fabric.ofport(a2)}: reachable after {took:.3f} s")
    assert a2.pings(setup.h("b1")) == 0


@pytest.mark.parametrize("how", ["stop", "kill -9"])
def test_isolation_is_back_by_itself_after_ovs_vswitchd_restarts(setup: Setup, how: str):
    _tenants(setup)
    fabric, a1, a2, b1 = setup.fabric, setup.h("a1"), setup.h("a2"), setup.h("b1")
    assert fabric.tetsu_flows()

    stopping = time.monotonic()
    if how == "stop":
        run(OVS_CTL, "--no-ovsdb-server", "stop", timeout=60)
    else:  # a crash: no goodbye to the controller
        pid = int(Path(OVS_PIDFILE).read_text())
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=10, what="vswitchd gone")
    run(OVS_CTL, "--no-ovsdb-server", "start", timeout=120)
    started = time.monotonic()
    wait_for(
        lambda: a1.pings(a2, count=1, timeout=0.3) == 1, timeout=15, interval=0, what="a1-a2 again"
    )
    back = time.monotonic() - started
    print(
        f"\novs-vswitchd {how}, started: a1 reaches a2 again {back:.3f} s after ovs-ctl start "
        f"returned ({time.monotonic() - stopping:.3f} s after the stop began)"
    )

    assert back < 5.0
    assert a1.pings(b1) == 0
    assert not a1.tcp_works(b1)
    assert a1.tcp_works(a2)


def test_a_netctl_restart_does_not_disturb_traffic(setup: Setup):
    _tenants(setup)
    a1, a2, b1 = setup.h("a1"), setup.h("a2"), setup.h("b1")
    flows_before = setup.fabric.tetsu_flows()

    # 15 s of pings, 20 a second: across netctl's stop, start and the switch's reconnection.
    pinging = a1.start_tool(
        "ping", a2.ip, "--count", "300", "--interval", "0.05", "--timeout", "0.5"
    )
    time.sleep(0.5)
    setup.stack.restart("netctl")
    wait_for(setup.fabric.connected, timeout=30, what="OVS to reconnect to the new netctl")
    reconnected = time.monotonic()
    result = json.loads(pinging.communicate(timeout=60)[0].strip().splitlines()[-1])
    assert reconnected < result["first_answer"] + 14, "netctl was back only after the pings"
    print(f"\nnetctl restart: {result['received']} of {result['sent']} pings answered")

    assert result["sent"] - result["received"] <= 1
    assert a1.pings(b1) == 0
    assert setup.fabric.tetsu_flows() == flows_before
