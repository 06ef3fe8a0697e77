"""The conductor's boot server: the file tree, its HTTP server and its TFTP server, started
and stopped with the conductor when the ``pxe`` boot interface is enabled."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .dhcp import DhcpHosts, hostsdir_for
from .http import BootHTTPServer
from .ipxe import boot_script
from .tftp import TFTPServer, install_ipxe_roms
from .tree import BootTree, link_atomic, write_atomic

if TYPE_CHECKING:
    from services.conductor.settings import ConductorSettings

LOG = logging.getLogger(__name__)

RAMDISK_BUILD_HINT = "run deploy/ramdisk/build.sh"


class BootServerError(OSError):
    """The boot server cannot start (a missing ramdisk, a port in use). An OSError, like
    the other start-up failures the command line reports in one line."""


class BootServer:
    """Serves ``settings.boot_root`` over HTTP (and TFTP unless ``tftp_port`` is 0)."""

    def __init__(self, settings: ConductorSettings) -> None:
        self.settings = settings
        self.tree = BootTree(settings.boot_root)
        self.dhcp = DhcpHosts(hostsdir_for(self.tree.root, settings.dhcp_hostsdir))
        self.http = BootHTTPServer(
            self.tree.root,
            bind_host(settings.boot_server_host, settings.boot_server_url),
            settings.boot_server_port,
        )
        self.tftp = (
            TFTPServer(
                self.tree.tftp_root,
                bind_host(settings.tftp_host, settings.boot_server_url),
                settings.tftp_port,
            )
            if settings.tftp_port
            else None
        )

    @property
    def port(self) -> int:
        """The HTTP port (the one the system chose when ``boot_server_port`` is 0)."""
        return self.http.port

    @property
    def tftp_port(self) -> int | None:
        return self.tftp.port if self.tftp is not None else None

    def start(self) -> None:
        """Lay out the tree (``/boot.ipxe``, the ramdisk links, the iPXE builds for TFTP),
        then listen. BootServerError if the ramdisk is missing or a port is taken."""
        if not self.http.host:
            raise BootServerError(
                "boot server: no address to listen on: set boot_server_url (or boot_server_host)"
            )
        kernel = _ramdisk_file(self.settings.ramdisk_kernel, "ramdisk kernel")
        initramfs = _ramdisk_file(self.settings.ramdisk_initramfs, "ramdisk initramfs")
        self.tree.create()
        self.dhcp.hostsdir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.tree.boot_script, boot_script(self.settings.boot_server_url))
        link_atomic(self.tree.ramdisk_kernel, kernel)
        link_atomic(self.tree.ramdisk_initramfs, initramfs)
        if self.tftp is not None:
            install_ipxe_roms(self.tree.tftp_root)
        try:
            self.http.start()
        except OSError as exc:
            raise BootServerError(
                f"boot server: cannot listen on {self.http.host}:"
                f"{self.settings.boot_server_port}: {exc.strerror or exc}"
            ) from exc
        if self.tftp is None:
            return
        try:
            self.tftp.start()
        except Exception as exc:
            self.http.stop()
            reason = exc.strerror if isinstance(exc, OSError) else None
            raise BootServerError(
                f"boot server: cannot serve TFTP on {self.tftp.host}:"
                f"{self.settings.tftp_port}: {reason or exc}"
            ) from exc

    def stop(self) -> None:
        if self.tftp is not None:
            self.tftp.stop()
        self.http.stop()
        LOG.info("boot server stopped")


def bind_host(setting: str | None, boot_server_url: str | None) -> str:
    """The address to listen on: ``setting``, else the host nodes reach the boot server at
    (the provisioning network's, not every interface: jobs hold callback tokens). Empty
    when neither is known."""
    if setting:
        return setting
    if boot_server_url:
        return urlsplit(boot_server_url).hostname or ""
    return ""


def _ramdisk_file(setting: Path, what: str) -> Path:
    path = setting.absolute()
    if not path.is_file():
        raise BootServerError(f"{what} {setting} not found: {RAMDISK_BUILD_HINT}")
    return path
