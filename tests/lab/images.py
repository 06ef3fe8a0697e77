"""Bootable test disk images for the lab: a raw disk whose boot sector prints a marker on
the serial port, so a test can tell that a machine booted the image it was given.

The rest of the disk is deterministic pseudo-random bytes: a deployment that drops or
reorders any of them changes the sha256.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
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


# -- a Linux image that probes its network ---------------------------------------------------

#: Runs as the probe image's first process (``rdinit=/probe``): loads the deploy ramdisk's
#: NIC modules, takes the address <prefix>.<last byte of its MAC>, then pings every peer
#: once per round, forever, and prints each answer on the serial console.
PROBE_SCRIPT = """\
#!/bin/busybox sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2> /dev/null
while read -r module; do
\t[ -n "$module" ] && insmod "/lib/modules/$module.ko" 2> /dev/null
done < /etc/tetsu/modules
arg() {
\tfor word in $(cat /proc/cmdline); do
\t\tcase "$word" in "$1="*) echo "${word#*=}" | tr , ' ';; esac
\tdone
}
marker=$(arg tetsu_probe_marker)
prefix=$(arg tetsu_probe_prefix)
peers=$(arg tetsu_probe_peers)
nic=""
while [ -z "$nic" ]; do
\tfor path in /sys/class/net/*; do
\t\t[ "${path##*/}" = lo ] || nic=${path##*/}
\tdone
\t[ -n "$nic" ] || sleep 0.2
done
mac=$(cat "/sys/class/net/$nic/address")
self="$prefix.$(printf %d "0x${mac##*:}")"
ip link set lo up
ip addr add "$self/24" dev "$nic"
ip link set "$nic" up
echo "tetsu-probe $marker up $self $mac"
round=0
while true; do
\tround=$((round + 1))
\tfor peer in $peers; do
\t\t[ "$peer" = "$self" ] && continue
\t\tif ping -c 1 -W 1 "$peer" > /dev/null 2>&1; then answer=yes; else answer=no; fi
\t\techo "tetsu-probe $self -> $peer $answer"
\tdone
\techo "tetsu-probe $self round $round"
\tsleep 1
done
"""

#: The boot loader's configuration: straight into Linux with the serial console.
SYSLINUX_CFG = """\
SERIAL 0 115200
DEFAULT probe
PROMPT 0
TIMEOUT 0
LABEL probe
  KERNEL vmlinuz
  APPEND initrd=initrd console=ttyS0,115200 rdinit=/probe quiet {arguments}
"""

MBR_CODE = Path("/usr/lib/syslinux/mbr/mbr.bin")
PARTITION_START_SECTOR = 2048  # 1 MiB, as partitioning tools align


def probe_address(prefix: str, mac: str) -> str:
    """The IPv4 address the probe image takes on the machine with NIC ``mac``."""
    return f"{prefix}.{int(mac.rsplit(':', 1)[-1], 16)}"


def make_probe_image(
    path: Path,
    *,
    kernel: Path,
    initramfs: Path,
    marker: str,
    prefix: str,
    peers: list[str],
    size_mb: int = 32,
) -> ImageInfo:
    """Writes a raw disk image that boots Linux (syslinux on a FAT partition, the deploy
    ramdisk's kernel and modules) into :data:`PROBE_SCRIPT`: the machine takes
    ``<prefix>.<last MAC byte>`` and reports, round after round, which of ``peers`` answer
    a ping ("tetsu-probe <self> -> <peer> yes|no" on its serial console)."""
    arguments = " ".join(
        [
            f"tetsu_probe_marker={marker}",
            f"tetsu_probe_prefix={prefix}",
            f"tetsu_probe_peers={','.join(peers)}",
        ]
    )
    with tempfile.TemporaryDirectory(prefix="tetsu-probe-") as scratch:
        folder = Path(scratch)
        # The deploy ramdisk's archive plus a second one with the probe: the kernel
        # unpacks concatenated archives in order, and rdinit= picks the probe.
        tree = folder / "tree"
        tree.mkdir()
        probe = tree / "probe"
        probe.write_text(PROBE_SCRIPT)
        probe.chmod(0o755)
        overlay = subprocess.run(
            ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
            input=b"probe\n",
            cwd=tree,
            capture_output=True,
            check=True,
        ).stdout
        initrd = folder / "initrd"
        initrd.write_bytes(initramfs.read_bytes() + gzip.compress(overlay))
        shutil.copyfile(kernel, folder / "vmlinuz")
        (folder / "syslinux.cfg").write_text(SYSLINUX_CFG.format(arguments=arguments))

        partition = folder / "partition.img"
        sectors = size_mb * 2048 - PARTITION_START_SECTOR
        _tool("mkfs.fat", "-C", "-F", "16", "-h", str(PARTITION_START_SECTOR), "-n", "TETSUPROBE",
              str(partition), str(sectors // 2))  # fmt: skip
        _tool("syslinux", "--install", str(partition))
        for name in ("vmlinuz", "initrd", "syslinux.cfg"):
            _tool("mcopy", "-i", str(partition), str(folder / name), f"::{name}")

        with path.open("wb") as disk:
            disk.truncate(size_mb << 20)
        table = f"label: dos\nstart={PARTITION_START_SECTOR}, type=6, bootable\n"
        _tool("sfdisk", "--quiet", str(path), input_text=table)
        with path.open("r+b") as disk:
            disk.write(MBR_CODE.read_bytes()[:440])  # boot code only: the table follows
            disk.seek(PARTITION_START_SECTOR * SECTOR)
            with partition.open("rb") as source:
                shutil.copyfileobj(source, disk, PADDING_BLOCK)
    return ImageInfo(sha256=sha256_of(path), size=path.stat().st_size)


def _tool(*args: str, input_text: str | None = None) -> None:
    result = subprocess.run(
        list(args), input=input_text, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {(result.stderr or result.stdout).strip()}")
