"""Bootable test disk images for the lab: a raw disk whose boot sector prints a marker on
the serial port, so a test can tell that a machine booted the image it was given.

The rest of the disk is deterministic pseudo-random bytes: a deployment that drops or
reorders any of them changes the sha256.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

SECTOR = 512
#: The BIOS loads the boot sector here and jumps to it.
LOAD_ADDRESS = 0x7C00
#: The marker must end before the partition table (byte 446).
PARTITION_TABLE_OFFSET = 446
PADDING_BLOCK = 1 << 20

# 16-bit real-mode code of the boot sector, hand-assembled (offsets in the comments).
# It sends each byte of the NUL-terminated message that follows it to COM1, waiting
# until the UART can take one, then halts for good.
BOOT_CODE = b"".join(
    [
        b"\xfa",  # 00 cli               nothing may wake the final hlt
        b"\x31\xc0",  # 01 xor ax, ax
        b"\x8e\xd8",  # 03 mov ds, ax        the message is addressed from segment 0
        b"\xbe\x23\x7c",  # 05 mov si, 0x7c23  the message: right after this code (0x23 bytes)
        b"\xfc",  # 08 cld               lodsb walks forwards
        b"\xac",  # 09 next: lodsb       al = [ds:si], si += 1
        b"\x84\xc0",  # 0a test al, al
        b"\x74\x12",  # 0c jz halt (0x20)    the NUL ends the message
        b"\x88\xc4",  # 0e mov ah, al        keep the byte while al reads the status
        b"\xba\xfd\x03",  # 10 mov dx, 0x3fd  COM1 line status register
        b"\xec",  # 13 wait: in al, dx
        b"\xa8\x20",  # 14 test al, 0x20     transmitter holding register empty?
        b"\x74\xfb",  # 16 jz wait (0x13)
        b"\x88\xe0",  # 18 mov al, ah
        b"\xba\xf8\x03",  # 1a mov dx, 0x3f8  COM1 data register
        b"\xee",  # 1d out dx, al
        b"\xeb\xe9",  # 1e jmp next (0x09)
        b"\xf4",  # 20 halt: hlt
        b"\xeb\xfd",  # 21 jmp halt (0x20)   hlt returns after an NMI: halt again
    ]
)
assert len(BOOT_CODE) == 0x23


class ImageInfo(NamedTuple):
    """What a deployment needs to know about an image."""

    sha256: str
    size: int


def boot_sector(marker: str) -> bytes:
    """A 512-byte MBR boot sector printing ``marker`` and CRLF on COM1, then halting."""
    message = (marker + "\r\n").encode("ascii") + b"\0"
    if b"\0" in message[:-1]:
        raise ValueError("the marker may not contain NUL")
    code = BOOT_CODE + message
    if len(code) > PARTITION_TABLE_OFFSET:
        raise ValueError(
            f"marker too long: {len(marker)} characters, at most "
            f"{PARTITION_TABLE_OFFSET - len(BOOT_CODE) - 3}"
        )
    return code.ljust(SECTOR - 2, b"\0") + b"\x55\xaa"


def make_marker_image(path: Path, marker: str, size_bytes: int) -> ImageInfo:
    """Writes a raw disk image of ``size_bytes`` to ``path`` whose boot sector prints
    ``marker`` on the serial port; returns its sha256 and size."""
    if size_bytes < SECTOR:
        raise ValueError(f"an image holds at least its {SECTOR}-byte boot sector")
    # One pseudo-random MiB, repeated: fast to make, and the same for the same marker.
    padding = hashlib.shake_256(f"tetsu test image {marker}".encode()).digest(PADDING_BLOCK)
    digest = hashlib.sha256()
    with path.open("wb") as image:
        written = 0
        chunk = boot_sector(marker) + padding[SECTOR:]
        while written < size_bytes:
            piece = chunk[: size_bytes - written]
            image.write(piece)
            digest.update(piece)
            written += len(piece)
            chunk = padding
    return ImageInfo(sha256=digest.hexdigest(), size=size_bytes)


def sha256_of(path: Path, size: int | None = None) -> str:
    """The sha256 of the first ``size`` bytes of ``path`` (all of it by default)."""
    digest = hashlib.sha256()
    remaining = path.stat().st_size if size is None else size
    with path.open("rb") as file:
        while remaining > 0:
            block = file.read(min(PADDING_BLOCK, remaining))
            if not block:
                break
            digest.update(block)
            remaining -= len(block)
    return digest.hexdigest()


def boot_disk(disk: Path, marker: str, timeout: float = 60.0, interface: str = "virtio") -> float:
    """Boots ``disk`` alone in QEMU (TCG; attached as ``interface``) and returns the seconds
    until ``marker`` showed on its serial port; raises AssertionError with the serial
    output if it never did."""
    with tempfile.TemporaryDirectory(prefix="tetsu-boot-") as folder:
        log = Path(folder) / "serial.log"
        command = [
            "qemu-system-x86_64",
            "-accel", "tcg",
            "-m", "64",
            "-nographic",
            "-monitor", "none",
            "-display", "none",
            "-drive", f"file={disk},format=raw,if={interface}",
            "-serial", f"file:{log}",
            "-no-reboot",
        ]  # fmt: skip
        started = time.monotonic()
        qemu = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            while time.monotonic() - started < timeout:
                if log.exists() and marker.encode() in log.read_bytes():
                    return time.monotonic() - started
                if qemu.poll() is not None:
                    break
                time.sleep(0.1)
            output = log.read_bytes().decode(errors="replace") if log.exists() else ""
            raise AssertionError(f"{disk} did not print {marker!r}; serial output:\n{output}")
        finally:
            qemu.kill()
            qemu.wait()
