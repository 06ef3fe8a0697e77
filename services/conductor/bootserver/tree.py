"""The boot server's tree of files (``boot_root``): where each file lives, and writing it.

Every file is put in place atomically (a hidden temporary file, then a rename), so the
HTTP server, the TFTP server and dnsmasq see the old file or the new one, never half of
one. The layout is the contract of docs/baremetal.md.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path

BOOT_SCRIPT = "boot.ipxe"
IPXE_DIR = "ipxe"
RAMDISK_DIR = "ramdisk"
JOBS_DIR = "jobs"
IMAGES_DIR = "images"
TFTP_DIR = "tftp"
DHCP_HOSTS_DIR = "dhcp-hosts"

RAMDISK_KERNEL = "vmlinuz"
RAMDISK_INITRAMFS = "initramfs"

#: A job carries the ramdisk's callback token: readable by the conductor's user only.
JOB_MODE = 0o600
FILE_MODE = 0o644

_MAC = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$")
# Node and image ids become file names: nothing that could climb out of the folder.
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


def mac_name(mac: str) -> str:
    """``52:54:00:AB:CD:EF`` -> ``52-54-00-ab-cd-ef``: the form of iPXE's ``${mac:hexhyp}``,
    used to name a MAC's files. ValueError if ``mac`` is not a MAC address."""
    lowered = mac.strip().lower()
    if not _MAC.match(lowered):
        raise ValueError(f"{mac!r} is not a MAC address")
    return lowered.replace(":", "-")


def mac_address(mac: str) -> str:
    """``52-54-00-AB-CD-EF`` -> ``52:54:00:ab:cd:ef`` (dnsmasq's form)."""
    return mac_name(mac).replace("-", ":")


def check_name(name: str, what: str) -> str:
    """``name`` if it is safe as a file name (an id), else ValueError."""
    if not _NAME.match(name):
        raise ValueError(f"{what} {name!r} cannot name a file")
    return name


def _temporary(path: Path) -> Path:
    # Hidden: dnsmasq skips dot files in its hosts folder, and a reader of the tree never
    # asks for one.
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def write_atomic(path: Path, data: str | bytes, mode: int = FILE_MODE) -> None:
    """Replace ``path`` with ``data``; the file has ``mode`` from its first byte on."""
    raw = data.encode() if isinstance(data, str) else data
    temporary = _temporary(path)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
        os.chmod(temporary, mode)  # the umask may have taken bits away
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def link_atomic(path: Path, target: Path) -> None:
    """Make ``path`` a symbolic link to ``target``, replacing whatever was there."""
    temporary = _temporary(path)
    os.symlink(target, temporary)
    try:
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def remove(path: Path) -> bool:
    """Delete ``path`` if it exists. Returns whether it did."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


class BootTree:
    """The files under ``root`` that the boot server serves."""

    def __init__(self, root: Path) -> None:
        # Absolute, not resolved: the tree may itself be reached through a link.
        self.root = root.absolute()

    @property
    def boot_script(self) -> Path:
        return self.root / BOOT_SCRIPT

    @property
    def ramdisk_kernel(self) -> Path:
        return self.root / RAMDISK_DIR / RAMDISK_KERNEL

    @property
    def ramdisk_initramfs(self) -> Path:
        return self.root / RAMDISK_DIR / RAMDISK_INITRAMFS

    @property
    def tftp_root(self) -> Path:
        return self.root / TFTP_DIR

    @property
    def images(self) -> Path:
        return self.root / IMAGES_DIR

    def create(self) -> None:
        """Make the tree's folders (those that exist are left as they are)."""
        for folder in (IPXE_DIR, RAMDISK_DIR, JOBS_DIR, IMAGES_DIR, TFTP_DIR):
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    def ipxe_script(self, mac: str) -> Path:
        return self.root / IPXE_DIR / f"{mac_name(mac)}.ipxe"

    def job(self, node_id: str) -> Path:
        return self.root / JOBS_DIR / check_name(node_id, "node id")

    def image(self, image_id: str) -> Path:
        return self.images / check_name(image_id, "image id")

    def write_ipxe_script(self, mac: str, script: str) -> Path:
        path = self.ipxe_script(mac)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, script)
        return path

    def remove_ipxe_script(self, mac: str) -> bool:
        return remove(self.ipxe_script(mac))

    def write_job(self, node_id: str, job: str) -> Path:
        path = self.job(node_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, job, JOB_MODE)
        return path

    def remove_job(self, node_id: str) -> bool:
        return remove(self.job(node_id))

    def link_image(self, image_id: str, target: Path) -> Path:
        path = self.image(image_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        link_atomic(path, target)
        return path
