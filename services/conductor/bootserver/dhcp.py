"""DHCP for network boot: per-node host files for the operator's dnsmasq, and the dnsmasq
configuration that boots only the hosts tagged ``tetsu`` into iPXE.

Measured with dnsmasq 2.90 (Debian 12), see docs/baremetal.md: a new or rewritten file in
``--dhcp-hostsdir`` is read at once (inotify), and a rewritten file replaces the host
records it held; a *deleted* file's records stay until SIGHUP, and a SIGHUP once a host
tagged by such a file had a lease crashed dnsmasq (segfault). So a node's file is never
deleted: removing it rewrites it with a tag that no boot option names.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .tree import DHCP_HOSTS_DIR, mac_address, write_atomic

#: The tag dnsmasq gives a host that should network-boot the deploy ramdisk.
BOOT_TAG = "tetsu"
#: The tag of a host that no longer should (a tag no dhcp-boot line names).
OFF_TAG = "tetsu-off"

UNDI_ROM = "undionly.kpxe"  # BIOS PXE ROMs chain into iPXE with this
EFI_ROM = "ipxe.efi"  # UEFI PXE firmware (client architectures 7 and 9) with this


class DhcpHosts:
    """One dnsmasq host file per MAC in ``hostsdir`` (``--dhcp-hostsdir``)."""

    def __init__(self, hostsdir: Path) -> None:
        self.hostsdir = hostsdir.absolute()

    def path(self, mac: str) -> Path:
        """``hostsdir/52:54:00:ab:cd:ef``: one file per MAC, named by it."""
        return self.hostsdir / mac_address(mac)

    def add(self, mac: str) -> None:
        """Let ``mac`` network-boot the ramdisk (``<mac>,set:tetsu``)."""
        self._write(mac, BOOT_TAG)

    def remove(self, mac: str) -> None:
        """Stop ``mac`` network-booting the ramdisk. Rewrites its file rather than deleting
        it (dnsmasq keeps a deleted file's hosts); a MAC never added is left alone."""
        if self.path(mac).exists():
            self._write(mac, OFF_TAG)

    def boots(self, mac: str) -> bool:
        """Whether ``mac``'s file says it network-boots the ramdisk."""
        try:
            text = self.path(mac).read_text()
        except FileNotFoundError:
            return False
        return text.strip() == f"{mac_address(mac)},set:{BOOT_TAG}"

    def _write(self, mac: str, tag: str) -> None:
        self.hostsdir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path(mac), f"{mac_address(mac)},set:{tag}\n")


def hostsdir_for(boot_root: Path, dhcp_hostsdir: Path | None) -> Path:
    """The ``dhcp_hostsdir`` setting, or ``boot_root/dhcp-hosts`` when it is unset."""
    return dhcp_hostsdir if dhcp_hostsdir is not None else boot_root / DHCP_HOSTS_DIR


def dnsmasq_config(
    interface: str,
    dhcp_range: str | Sequence[str],
    boot_server_url: str,
    tftp_server_ip: str | None,
    hostsdir: Path,
    router: str | None = None,
    ipv6_ra_prefix: str | None = None,
    extra: Sequence[str] = (),
) -> str:
    """dnsmasq's configuration for a provisioning network on ``interface``.

    DHCP only (``port=0``: no DNS). Every host gets an address from ``dhcp_range``
    (dnsmasq's syntax, ``10.77.0.100,10.77.0.199,255.255.255.0,10m``, or its parts as a
    sequence: ``("10.77.0.100", "10.77.0.199")``); only those with a
    ``set:tetsu`` host file in ``hostsdir`` are given a boot file: iPXE (DHCP option 175)
    chains to ``<boot_server_url>/boot.ipxe``, a plain PXE ROM first fetches iPXE over TFTP
    from ``tftp_server_ip`` (None: no TFTP step). ``ipv6_ra_prefix`` (e.g. ``fd77::``) makes
    dnsmasq send router adverts, without which iPXE waits about 14 s for IPv6 at every
    boot; the interface needs an address in it. ``extra`` lines are added as they are.
    """
    url = boot_server_url.rstrip("/")
    addresses = dhcp_range if isinstance(dhcp_range, str) else ",".join(dhcp_range)
    lines = [
        "# dnsmasq for tetsu's provisioning network (services.conductor.bootserver)",
        "port=0",
        f"interface={interface}",
        "bind-interfaces",
        f"dhcp-range={addresses}",
        f"dhcp-hostsdir={hostsdir.absolute()}",
        "dhcp-match=set:ipxe,175",
        f"dhcp-boot=tag:{BOOT_TAG},tag:ipxe,{url}/boot.ipxe",
    ]
    if tftp_server_ip is not None:
        lines += [
            "dhcp-match=set:efi,option:client-arch,7",
            "dhcp-match=set:efi,option:client-arch,9",
            f"dhcp-boot=tag:{BOOT_TAG},tag:!ipxe,tag:efi,{EFI_ROM},,{tftp_server_ip}",
            f"dhcp-boot=tag:{BOOT_TAG},tag:!ipxe,tag:!efi,{UNDI_ROM},,{tftp_server_ip}",
        ]
    if router is not None:
        lines.append(f"dhcp-option=option:router,{router}")
    if ipv6_ra_prefix is not None:
        lines += ["enable-ra", f"dhcp-range={ipv6_ra_prefix},ra-only,64"]
    lines += list(extra)
    for line in lines:
        if "\n" in line or "\r" in line:
            raise ValueError(f"a dnsmasq setting holds a line break: {line!r}")
    return "\n".join(lines) + "\n"
