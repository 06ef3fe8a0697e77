"""The operator's dnsmasq with the configuration and host files the boot server makes: a
real dnsmasq in a network namespace answering a real DHCP client (busybox udhcpc) in
another, as root. A node's MAC gets boot options while it is tagged and stops getting
them once it is untagged, with no restart or signal of dnsmasq."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.conductor.bootserver import DhcpHosts, dnsmasq_config

pytestmark = pytest.mark.integration

BOOT_URL = "http://10.79.0.1:8080"
SERVER_IP = "10.79.0.1"
MAC = "52:54:00:79:00:01"
IPXE_OPTION = "0xaf:0101"  # DHCP option 175: what makes dnsmasq tag a client "ipxe"

UDHCPC_SCRIPT = """#!/bin/sh
[ "$1" = bound ] && echo "bound ip=$ip boot_file=${boot_file:-none}"
exit 0
"""


def _missing() -> list[str]:
    missing = [tool for tool in ("dnsmasq", "busybox", "ip") if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root (network namespaces)")
    return missing


def run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=30).stdout


@dataclass
class DhcpNetwork:
    """dnsmasq in namespace ``server``, a client NIC with :data:`MAC` in ``client``."""

    server: str
    client: str
    workdir: Path
    hosts: DhcpHosts
    pid: int

    def boot_file(self, *, ipxe: bool) -> str:
        """The boot file the client is offered ("none" if none), from a full DHCP exchange."""
        extra = ["-x", IPXE_OPTION] if ipxe else []
        output = run(
            "ip", "netns", "exec", self.client,
            "busybox", "udhcpc", "-i", "tdq-cli", "-n", "-q", "-f", "-t", "8", "-T", "1",
            "-s", str(self.workdir / "udhcpc.sh"), *extra,
        )  # fmt: skip
        for line in output.splitlines():
            if line.startswith("bound "):
                return line.split("boot_file=", 1)[1]
        raise AssertionError(f"no DHCP lease: {output!r}")

    def settles_on(self, expected: str, *, ipxe: bool, within: float = 3.0) -> str:
        """The boot file once it is ``expected`` (dnsmasq reads host files via inotify:
        give it a moment), or the last one seen."""
        deadline = time.monotonic() + within
        while True:
            seen = self.boot_file(ipxe=ipxe)
            if seen == expected or time.monotonic() > deadline:
                return seen
            time.sleep(0.2)

    def dnsmasq_alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True


@pytest.fixture
def network(tmp_path: Path) -> Iterator[DhcpNetwork]:
    missing = _missing()
    assert not missing, f"this test needs {', '.join(missing)}"  # never skipped silently
    suffix = secrets.token_hex(2)
    server, client = f"tetsu-dq-s-{suffix}", f"tetsu-dq-c-{suffix}"
    hostsdir = tmp_path / "dhcp-hosts"
    hostsdir.mkdir()
    (tmp_path / "udhcpc.sh").write_text(UDHCPC_SCRIPT)
    (tmp_path / "udhcpc.sh").chmod(0o755)
    config = dnsmasq_config(
        interface="tdq-srv",
        dhcp_range=("10.79.0.100", "10.79.0.199", "255.255.255.0", "2m"),
        boot_server_url=BOOT_URL,
        tftp_server_ip=SERVER_IP,
        hostsdir=hostsdir,
        extra=[
            "user=root",
            f"pid-file={tmp_path / 'dnsmasq.pid'}",
            f"dhcp-leasefile={tmp_path / 'leases'}",
            f"log-facility={tmp_path / 'dnsmasq.log'}",
            "log-dhcp",
        ],
    )
    (tmp_path / "dnsmasq.conf").write_text(config)
    pid = 0
    try:
        run("ip", "netns", "add", server)
        run("ip", "netns", "add", client)
        run("ip", "link", "add", f"tdq-s{suffix}", "type", "veth", "peer", "name", f"tdq-c{suffix}")
        run("ip", "link", "set", f"tdq-s{suffix}", "netns", server)
        run("ip", "link", "set", f"tdq-c{suffix}", "netns", client)
        for namespace, name, side in ((server, "tdq-srv", "s"), (client, "tdq-cli", "c")):
            run("ip", "-n", namespace, "link", "set", f"tdq-{side}{suffix}", "name", name)
            run("ip", "-n", namespace, "link", "set", name, "up")
        run("ip", "-n", server, "addr", "add", f"{SERVER_IP}/24", "dev", "tdq-srv")
        run("ip", "-n", client, "link", "set", "tdq-cli", "address", MAC)
        run("ip", "netns", "exec", server, "dnsmasq", f"--conf-file={tmp_path / 'dnsmasq.conf'}")
        pid = int((tmp_path / "dnsmasq.pid").read_text())
        yield DhcpNetwork(server, client, tmp_path, DhcpHosts(hostsdir), pid)
    finally:
        if pid:
            os.kill(pid, signal.SIGTERM)
        for namespace in (server, client):
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, check=False)


def test_dnsmasq_accepts_the_configuration(tmp_path: Path) -> None:
    assert shutil.which("dnsmasq"), "this test needs dnsmasq (apt-get install dnsmasq-base)"
    config = tmp_path / "dnsmasq.conf"
    config.write_text(
        dnsmasq_config(
            interface="lab0",
            dhcp_range="10.77.0.100,10.77.0.199,255.255.255.0,10m",
            boot_server_url=BOOT_URL,
            tftp_server_ip=SERVER_IP,
            hostsdir=tmp_path,
            router="10.77.0.1",
            ipv6_ra_prefix="fd77::",
        )
    )
    result = subprocess.run(
        ["dnsmasq", "--test", f"--conf-file={config}"],
        check=False,
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 0, result.stderr
    assert "syntax check OK" in result.stderr


def test_a_node_boots_only_while_its_mac_is_tagged(network: DhcpNetwork) -> None:
    # Not tagged: an address, but nothing to boot.
    assert network.boot_file(ipxe=True) == "none"

    network.hosts.add(MAC)
    assert network.settles_on(f"{BOOT_URL}/boot.ipxe", ipxe=True) == f"{BOOT_URL}/boot.ipxe"
    assert network.boot_file(ipxe=False) == "undionly.kpxe"  # a plain PXE ROM: iPXE first

    network.hosts.remove(MAC)
    assert network.settles_on("none", ipxe=True) == "none"
    assert network.boot_file(ipxe=False) == "none"

    network.hosts.add(MAC)  # the next deploy of the same node
    assert network.settles_on(f"{BOOT_URL}/boot.ipxe", ipxe=True) == f"{BOOT_URL}/boot.ipxe"
    assert network.dnsmasq_alive()  # the same dnsmasq all along: no restart, no SIGHUP
