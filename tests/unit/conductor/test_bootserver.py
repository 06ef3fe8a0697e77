"""The conductor's boot server: real HTTP and TFTP transfers from its tree, dnsmasq's host
files and configuration, and its start and stop with the conductor."""

from __future__ import annotations

import http.client
import logging
import os
import resource
import socket
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import tftpy  # type: ignore[import-untyped]

from services.conductor.bootserver import (
    BootServer,
    BootServerError,
    DhcpHosts,
    TFTPServer,
    dnsmasq_config,
)
from services.conductor.bootserver.server import bind_host
from services.conductor.bootserver.tftp import install_ipxe_roms
from services.conductor.rpcapi import live_conductors
from services.conductor.service import ConductorService
from tests.unit.conductor.conftest import Cloud, make_settings

BOOT_URL = "http://10.77.0.254:8080"
MIB = 1024 * 1024


@pytest.fixture
def ramdisk(tmp_path: Path) -> tuple[Path, Path]:
    build = tmp_path / "ramdisk-build"
    build.mkdir()
    (build / "vmlinuz").write_bytes(b"KERNEL" * 1000)
    (build / "initramfs").write_bytes(b"INITRAMFS" * 1000)
    return build / "vmlinuz", build / "initramfs"


def boot_settings(tmp_path: Path, ramdisk: tuple[Path, Path], **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "enabled_boot_interfaces": ["fake", "pxe"],
        "boot_root": tmp_path / "boot",
        "boot_server_host": "127.0.0.1",
        "boot_server_port": 0,
        "boot_server_url": BOOT_URL,
        "tftp_host": "127.0.0.1",
        "tftp_port": 0,
        "ramdisk_kernel": ramdisk[0],
        "ramdisk_initramfs": ramdisk[1],
    }
    values.update(overrides)
    return make_settings(**values)


@pytest.fixture
def server(tmp_path: Path, ramdisk: tuple[Path, Path]) -> Iterator[BootServer]:
    boot = BootServer(boot_settings(tmp_path, ramdisk))
    boot.start()
    yield boot
    boot.stop()


def url(server: BootServer, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_tree_is_laid_out_and_served_at_start(
    server: BootServer, ramdisk: tuple[Path, Path]
) -> None:
    script = httpx.get(url(server, "/boot.ipxe"))
    assert script.status_code == 200
    assert script.text.splitlines() == [
        "#!ipxe",
        "# tetsu: this machine's ramdisk script if it is being deployed or cleaned",
        f"chain {BOOT_URL}/ipxe/${{mac:hexhyp}}.ipxe || exit",
    ]
    kernel = httpx.get(url(server, "/ramdisk/vmlinuz"))
    assert kernel.content == ramdisk[0].read_bytes()
    assert kernel.headers["content-length"] == str(ramdisk[0].stat().st_size)
    assert httpx.get(url(server, "/ramdisk/initramfs")).content == ramdisk[1].read_bytes()
    # The ramdisk files are links to the build, so a rebuild is served without a restart.
    assert os.readlink(server.tree.ramdisk_kernel) == str(ramdisk[0])


def test_head_gives_the_length_without_the_body(server: BootServer) -> None:
    response = httpx.head(url(server, "/ramdisk/initramfs"))
    assert response.status_code == 200
    assert response.headers["content-length"] == str(9 * 1000)
    assert response.content == b""
    assert httpx.head(url(server, "/nothing")).status_code == 404


def test_a_large_image_is_streamed_not_read_into_memory(server: BootServer, tmp_path: Path) -> None:
    image = tmp_path / "big.img"
    with open(image, "wb") as handle:  # sparse: 256 MiB on disk costs nothing
        handle.truncate(256 * MIB)
        handle.seek(256 * MIB - 5)
        handle.write(b"last!")
    server.tree.link_image("big", image)
    peak_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    received = 0
    tail = b""
    with httpx.stream("GET", url(server, "/images/big"), timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-length"] == str(256 * MIB)
        for chunk in response.iter_bytes(MIB):
            received += len(chunk)
            tail = (tail + chunk)[-5:]

    assert received == 256 * MIB
    assert tail == b"last!"
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before_kib) / 1024
    assert grown_mib < 64, f"serving the image grew the process by {grown_mib:.0f} MiB"


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/jobs",
        "/jobs/",
        "/images/",
        "/missing",
        "/jobs/no-such-node",
        "/../outside.txt",
        "/%2e%2e/outside.txt",
        "/images/..%2f..%2foutside.txt",
        "/ipxe/../../outside.txt",
    ],
)
def test_only_regular_files_inside_the_root_are_served(server: BootServer, path: str) -> None:
    (server.tree.root.parent / "outside.txt").write_text("secret next to the root")
    server.tree.write_job("node-1", "token=abc\n")

    # http.client sends the path as it is (httpx would resolve the dot segments).
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()

    assert response.status == 404
    assert b"secret" not in body
    assert b"token" not in body


def test_a_fifo_in_the_tree_is_not_served_and_does_not_hang(server: BootServer) -> None:
    os.mkfifo(server.tree.root / "jobs" / "fifo")
    assert httpx.get(url(server, "/jobs/fifo"), timeout=5).status_code == 404


def test_other_methods_are_refused(server: BootServer) -> None:
    assert httpx.post(url(server, "/boot.ipxe"), content=b"x").status_code == 501


def test_a_job_is_private_and_its_content_never_logged(
    server: BootServer, caplog: pytest.LogCaptureFixture
) -> None:
    path = server.tree.write_job("node-1", "action=clean\ntoken=tok-SECRET-123\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    with caplog.at_level(logging.DEBUG, logger="services.conductor.bootserver"):
        response = httpx.get(url(server, "/jobs/node-1?probe=query-text"))

    assert response.text == "action=clean\ntoken=tok-SECRET-123\n"
    logged = caplog.text
    assert "GET /jobs/node-1 200" in logged  # the access log is there, at DEBUG...
    assert "tok-SECRET-123" not in logged  # ...without the job's content
    assert "query-text" not in logged  # ...or the query string


def test_a_job_is_served_once(server: BootServer) -> None:
    """Its token is for the one machine that boots first: a second reader, be it the
    machine or anyone else on the network, finds nothing."""
    server.tree.write_job("node-1", "action=clean\ntoken=tok-1\n")
    assert httpx.head(url(server, "/jobs/node-1")).status_code == 200  # a HEAD takes nothing
    first = httpx.get(url(server, "/jobs/node-1"))
    assert first.status_code == 200
    assert first.text == "action=clean\ntoken=tok-1\n"
    assert httpx.get(url(server, "/jobs/node-1")).status_code == 404
    assert list((server.tree.root / "jobs").iterdir()) == []  # nothing left behind

    server.tree.write_job("node-1", "action=clean\ntoken=tok-2\n")  # the next job
    assert "tok-2" in httpx.get(url(server, "/jobs/node-1")).text


def test_a_job_asked_for_by_many_at_once_goes_to_one(server: BootServer) -> None:
    server.tree.write_job("node-1", "token=tok-race\n")
    with ThreadPoolExecutor(8) as pool:
        statuses = list(
            pool.map(lambda _: httpx.get(url(server, "/jobs/node-1")).status_code, range(8))
        )
    assert sorted(statuses) == [200] + [404] * 7


@pytest.mark.parametrize(
    "path",
    ["/jobs/.node-1.1a2b3c4d.tmp", "/images/.img-1.1a2b3c4d.part", "/.hidden", "/ipxe/.x"],
)
def test_hidden_files_are_not_served(server: BootServer, path: str) -> None:
    """Temporary files (a job or script being written) and partial downloads are hidden
    (dot) files next to their final name."""
    (server.tree.root / path.lstrip("/")).write_text("token=half-written\n")
    assert httpx.get(url(server, path)).status_code == 404


def test_a_malformed_request_gets_an_answer_and_an_access_log_line(
    server: BootServer, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.DEBUG, logger="services.conductor.bootserver"),
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as connection,
    ):
        connection.sendall(b"GET /x HTTP/9z\r\n\r\n")
        answer = connection.recv(4096)
    # No status line: an unknown version is answered the HTTP/0.9 way, with the page only.
    assert b"Error code: 400" in answer
    assert "boot server: -  400 from 127.0.0.1" in caplog.text


def test_a_missing_ramdisk_stops_the_start_with_what_to_do(
    tmp_path: Path, ramdisk: tuple[Path, Path]
) -> None:
    missing = Path("deploy/ramdisk/build/nothing-here")
    boot = BootServer(boot_settings(tmp_path, ramdisk, ramdisk_kernel=missing))
    with pytest.raises(BootServerError) as caught:
        boot.start()
    assert str(caught.value) == (f"ramdisk kernel {missing} not found: run deploy/ramdisk/build.sh")


def test_a_port_in_use_stops_the_start(tmp_path: Path, ramdisk: tuple[Path, Path]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        boot = BootServer(boot_settings(tmp_path, ramdisk, boot_server_port=port))
        with pytest.raises(BootServerError, match=f"cannot listen on 127.0.0.1:{port}"):
            boot.start()


def test_a_tftp_upload_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    tftp_root = tmp_path / "tftp"
    tftp_root.mkdir()
    (tftp_root / "undionly.kpxe").write_bytes(b"the real iPXE")
    (tmp_path / "evil.bin").write_bytes(b"not iPXE at all")
    server = TFTPServer(tftp_root, "127.0.0.1", free_udp_port())
    server.start()
    try:
        client = tftpy.TftpClient("127.0.0.1", server.port)
        for name in ("undionly.kpxe", "new.kpxe", "sub/dir/new.kpxe"):
            with pytest.raises(tftpy.TftpException, match="Access violation"):
                client.upload(name, str(tmp_path / "evil.bin"), timeout=2)
        # Still serving, and serving what it served before.
        client.download("undionly.kpxe", str(tmp_path / "got.kpxe"), timeout=2)
    finally:
        server.stop()
    assert (tmp_path / "got.kpxe").read_bytes() == b"the real iPXE"
    assert sorted(p.name for p in tftp_root.iterdir()) == ["undionly.kpxe"]


def test_ipxe_builds_are_copied_again_when_their_content_changes(tmp_path: Path) -> None:
    roms, tftp_root = tmp_path / "roms", tmp_path / "tftp"
    roms.mkdir()
    tftp_root.mkdir()
    (roms / "ipxe.efi").write_bytes(b"iPXE 1.21")
    install_ipxe_roms(tftp_root, source=roms)
    (roms / "ipxe.efi").write_bytes(b"iPXE 1.22")  # an upgrade of the same size
    assert install_ipxe_roms(tftp_root, source=roms) == ["ipxe.efi"]
    assert (tftp_root / "ipxe.efi").read_bytes() == b"iPXE 1.22"
    assert sorted(p.name for p in tftp_root.iterdir()) == ["ipxe.efi"]  # no temporary left


def test_ipxe_builds_are_downloaded_over_tftp(tmp_path: Path, ramdisk: tuple[Path, Path]) -> None:
    roms = tmp_path / "ipxe-roms"
    roms.mkdir()
    (roms / "undionly.kpxe").write_bytes(os.urandom(70_000))  # many 512-byte blocks
    tftp_root = tmp_path / "tftp"
    tftp_root.mkdir()
    assert install_ipxe_roms(tftp_root, source=roms) == ["undionly.kpxe"]
    server = TFTPServer(tftp_root, "127.0.0.1", free_udp_port())
    server.start()
    try:
        client = tftpy.TftpClient("127.0.0.1", server.port)
        client.download("undionly.kpxe", str(tmp_path / "got.kpxe"), timeout=2)
        assert (tmp_path / "got.kpxe").read_bytes() == (roms / "undionly.kpxe").read_bytes()
    finally:
        server.stop()
    # Stopped means the port is free again.
    again = TFTPServer(tftp_root, "127.0.0.1", server.requested_port)
    again.start()
    again.stop()


def test_the_boot_server_serves_tftp_when_it_has_a_port(
    tmp_path: Path, ramdisk: tuple[Path, Path]
) -> None:
    boot = BootServer(boot_settings(tmp_path, ramdisk, tftp_port=free_udp_port()))
    boot.start()
    try:
        (boot.tree.tftp_root / "hello.txt").write_text("hello over tftp")
        assert boot.tftp_port is not None
        tftpy.TftpClient("127.0.0.1", boot.tftp_port).download(
            "hello.txt", str(tmp_path / "got.txt"), timeout=2
        )
        assert (tmp_path / "got.txt").read_text() == "hello over tftp"
    finally:
        boot.stop()


def test_by_default_it_listens_on_the_boot_server_urls_address_only(
    tmp_path: Path, ramdisk: tuple[Path, Path]
) -> None:
    assert bind_host(None, "http://10.77.0.254:8080/") == "10.77.0.254"
    assert bind_host(None, "http://[fd77::1]:8080") == "fd77::1"
    assert bind_host("0.0.0.0", "http://10.77.0.254:8080") == "0.0.0.0"

    settings = boot_settings(
        tmp_path, ramdisk, boot_server_host=None, boot_server_url="http://127.0.0.1:8080"
    )
    boot = BootServer(settings)
    assert boot.http.host == "127.0.0.1"
    assert boot.tftp is None  # tftp_port 0
    with_tftp = BootServer(settings.model_copy(update={"tftp_port": free_udp_port()}))
    assert with_tftp.tftp is not None and with_tftp.tftp.host == "127.0.0.1"

    nowhere = BootServer(
        boot_settings(tmp_path, ramdisk, boot_server_host=None, boot_server_url=None)
    )
    with pytest.raises(BootServerError, match="no address to listen on: set boot_server_url"):
        nowhere.start()


def test_dhcp_host_files_tag_a_mac_and_untag_it_without_deleting(tmp_path: Path) -> None:
    hosts = DhcpHosts(tmp_path / "dhcp-hosts")

    hosts.add("52:54:00:AB:00:01")
    path = tmp_path / "dhcp-hosts" / "52:54:00:ab:00:01"
    assert path.read_text() == "52:54:00:ab:00:01,set:tetsu\n"
    assert hosts.boots("52:54:00:ab:00:01")

    hosts.remove("52:54:00:ab:00:01")
    # Rewritten, not deleted: dnsmasq keeps the hosts of a deleted file (docs/baremetal.md).
    assert path.read_text() == "52:54:00:ab:00:01,set:tetsu-off\n"
    assert not hosts.boots("52:54:00:ab:00:01")
    hosts.remove("52:54:00:ab:00:01")  # again: nothing changes

    hosts.remove("52:54:00:ab:00:02")  # never added: no file for dnsmasq to read
    assert sorted(p.name for p in (tmp_path / "dhcp-hosts").iterdir()) == ["52:54:00:ab:00:01"]
    with pytest.raises(ValueError, match="not a MAC"):
        hosts.add("52:54:00:ab:00:01\n52:54:00:ab:00:09,set:tetsu")


def test_dnsmasq_config_boots_only_tagged_hosts(tmp_path: Path) -> None:
    text = dnsmasq_config(
        interface="lab0",
        dhcp_range="10.77.0.100,10.77.0.199,255.255.255.0,10m",
        boot_server_url=BOOT_URL + "/",
        tftp_server_ip="10.77.0.254",
        hostsdir=tmp_path / "hosts",
        router="10.77.0.1",
    )
    lines = text.splitlines()
    for line in [
        "port=0",
        "interface=lab0",
        "bind-interfaces",
        "dhcp-range=10.77.0.100,10.77.0.199,255.255.255.0,10m",
        f"dhcp-hostsdir={tmp_path / 'hosts'}",
        "dhcp-match=set:ipxe,175",
        f"dhcp-boot=tag:tetsu,tag:ipxe,{BOOT_URL}/boot.ipxe",
        "dhcp-boot=tag:tetsu,tag:!ipxe,tag:!efi,undionly.kpxe,,10.77.0.254",
        "dhcp-boot=tag:tetsu,tag:!ipxe,tag:efi,ipxe.efi,,10.77.0.254",
        "dhcp-option=option:router,10.77.0.1",
    ]:
        assert line in lines
    # Every boot option is for hosts tagged tetsu only.
    assert all("tag:tetsu," in line for line in lines if line.startswith("dhcp-boot="))
    assert "enable-ra" not in lines


def test_dnsmasq_config_sends_router_adverts_for_an_ipv6_prefix(tmp_path: Path) -> None:
    text = dnsmasq_config(
        "lab0",
        ("10.77.0.100", "10.77.0.199", "10m"),
        BOOT_URL,
        None,
        tmp_path,
        ipv6_ra_prefix="fd77::",
        extra=["log-dhcp"],
    )
    lines = text.splitlines()
    assert "dhcp-range=10.77.0.100,10.77.0.199,10m" in lines
    assert lines[-3:] == ["enable-ra", "dhcp-range=fd77::,ra-only,64", "log-dhcp"]
    assert not any("undionly" in line for line in lines)  # no TFTP server, no TFTP step
    with pytest.raises(ValueError, match="line break"):
        dnsmasq_config(
            "lab0\ndhcp-script=/bin/sh", "10.77.0.100,10.77.0.199", BOOT_URL, None, tmp_path
        )


def test_a_conductor_runs_a_boot_server_only_with_pxe_enabled(
    cloud: Cloud, tmp_path: Path, ramdisk: tuple[Path, Path]
) -> None:
    plain = cloud.start_conductor()
    assert plain.boot_server is None  # the fake defaults need no ramdisk and no port

    settings = boot_settings(tmp_path, ramdisk, hostname="c2")
    service = cloud.start_conductor(**settings.model_dump(include=_BOOT_FIELDS | {"hostname"}))
    assert service.boot_server is not None
    port = service.boot_server.port
    assert httpx.get(f"http://127.0.0.1:{port}/boot.ipxe").status_code == 200

    service.stop(timeout=5.0)
    cloud.services.remove(service)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/boot.ipxe")


def test_a_conductor_whose_start_fails_after_joining_leaves_the_ring(
    cloud: Cloud, tmp_path: Path, ramdisk: tuple[Path, Path]
) -> None:
    settings = boot_settings(tmp_path, ramdisk, hostname="c-broken")
    service = ConductorService(settings, cloud.db, cloud.transport)
    # Its periodic work cannot start (here: it runs already), after the heartbeat.
    service.manager.periodic.start()
    with pytest.raises(RuntimeError, match="periodic tasks already started"):
        service.start()

    # Nobody routes nodes to it, and its boot server is gone with it.
    assert "c-broken" not in live_conductors(cloud.db, 60.0)
    assert service.boot_server is not None
    with pytest.raises(RuntimeError, match="not started"):
        service.boot_server.port  # noqa: B018


_BOOT_FIELDS = {
    "enabled_boot_interfaces",
    "boot_root",
    "boot_server_host",
    "boot_server_port",
    "boot_server_url",
    "tftp_port",
    "ramdisk_kernel",
    "ramdisk_initramfs",
}
