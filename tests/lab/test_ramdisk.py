"""The deploy ramdisk on a real (QEMU, TCG) machine: built by deploy/ramdisk/build.sh,
booted directly (-kernel/-initrd, slirp networking), talking to a real HTTP server that
serves its job and image and takes its callback, as the conductor's boot server and the
API do. All boots start at once (each takes 5-15 s under TCG); the tests then check what
each one did to its disk and reported.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.lab.images import ImageInfo, boot_disk, make_marker_image, sha256_of

pytestmark = pytest.mark.lab

MIB = 1 << 20
#: How the guest reaches the host's 127.0.0.1 under QEMU user networking.
HOST_FROM_GUEST = "10.0.2.2"
CALLBACK_TIMEOUT = 150.0
POWEROFF_TIMEOUT = 30.0


@dataclass(frozen=True)
class Ramdisk:
    kernel: Path
    initramfs: Path


@pytest.fixture(scope="module")
def ramdisk(ramdisk_files: tuple[Path, Path]) -> Ramdisk:
    """The ramdisk the session built (tests/lab/conftest.py runs deploy/ramdisk/build.sh)."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    return Ramdisk(*ramdisk_files)


@dataclass
class NodeSite:
    """What the HTTP server holds for one node, and what the node did with it."""

    job: str
    #: Answer 404 to this many job fetches first (the conductor writes the job late).
    job_missing_for: int = 0
    #: Answer 503 to this many callbacks first (the API restarts).
    callback_failures: int = 0
    job_fetches: int = 0
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    first_callback_at: float | None = None
    reported: threading.Event = field(default_factory=threading.Event)


class LabServer(ThreadingHTTPServer):
    """The boot server and the API in one: GET /jobs/<node>, GET /images/<name>,
    POST /callback/<node>."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), LabHandler)
        self.nodes: dict[str, NodeSite] = {}
        self.images: dict[str, Path] = {}
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://{HOST_FROM_GUEST}:{self.server_address[1]}"


class LabHandler(BaseHTTPRequestHandler):
    server: LabServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the tests assert on what the nodes did, not on access lines

    def do_HEAD(self) -> None:
        self.do_GET(head=True)

    def do_GET(self, head: bool = False) -> None:
        kind, _, name = self.path.lstrip("/").partition("/")
        if kind == "jobs" and name in self.server.nodes:
            site = self.server.nodes[name]
            with self.server.lock:
                site.job_fetches += 1
                missing = site.job_fetches <= site.job_missing_for
            if not missing:
                self._reply(200, site.job.encode())
                return
        elif kind == "images" and name in self.server.images:
            path = self.server.images[name]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(path.stat().st_size))
            self.end_headers()
            if not head:
                with path.open("rb") as image:
                    shutil.copyfileobj(image, self.wfile, MIB)
            return
        self._reply(404, b"not found\n")

    def do_POST(self) -> None:
        kind, _, name = self.path.lstrip("/").partition("/")
        site = self.server.nodes.get(name)
        if kind != "callback" or site is None:
            self._reply(404, b"not found\n")
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            if site.first_callback_at is None:
                site.first_callback_at = time.monotonic()
            if site.callback_failures > 0:
                site.callback_failures -= 1
                self._reply(503, b"restarting\n")
                return
            site.callbacks.append(body)
        self._reply(202, b"")
        site.reported.set()

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server() -> Iterator[LabServer]:
    lab = LabServer()
    thread = threading.Thread(target=lab.serve_forever, daemon=True)
    thread.start()
    yield lab
    lab.shutdown()
    lab.server_close()


@dataclass
class Boot:
    """One machine: its first disk (None: no disk at all), its other disks, and what it
    did."""

    name: str
    disk: Path | None
    token: str
    more_disks: list[Path] = field(default_factory=list)
    #: A disk that reports itself removable (a SCSI disk, like a BMC's virtual USB stick).
    removable_disk: Path | None = None
    serial: str = ""
    seconds_to_callback: float | None = None
    exit_code: int | None = None

    def callback(self, site: NodeSite) -> dict[str, Any]:
        assert site.callbacks, f"{self.name}: no callback; serial output:\n{self.serial}"
        return site.callbacks[-1]


def make_job(server: LabServer, node: str, token: str, **fields: str | int) -> str:
    lines = {
        "node_id": node,
        "callback_url": f"{server.base_url}/callback/{node}",
        "token": token,
        **fields,
        "after": "poweroff",
    }
    return "".join(f"{key}={value}\n" for key, value in lines.items())


def run_boot(ramdisk: Ramdisk, server: LabServer, boot: Boot, workdir: Path) -> None:
    """Boots the ramdisk for ``boot`` and waits for its callback and its power-off."""
    site = server.nodes[boot.name]
    log = workdir / f"{boot.name}.serial.log"
    command = [
        "qemu-system-x86_64",
        "-accel", "tcg",
        "-m", "384",
        "-nographic",
        "-monitor", "none",
        "-no-reboot",
        "-kernel", str(ramdisk.kernel),
        "-initrd", str(ramdisk.initramfs),
        "-append",
        f"console=ttyS0,115200 quiet panic=-1 tetsu_job={server.base_url}/jobs/{boot.name}",
        "-netdev", "user,id=n0",
        # No iPXE option ROM: the kernel is loaded directly, and its prompt costs seconds.
        "-device", "virtio-net-pci,netdev=n0,romfile=",
        "-serial", f"file:{log}",
    ]  # fmt: skip
    for disk in [boot.disk, *boot.more_disks] if boot.disk is not None else []:
        command += ["-drive", f"file={disk},if=virtio,format=raw"]
    if boot.removable_disk is not None:
        command += [
            "-device", "virtio-scsi-pci,id=scsi0",
            "-drive", f"file={boot.removable_disk},if=none,id=stick,format=raw",
            "-device", "scsi-hd,drive=stick,bus=scsi0.0,removable=on",
        ]  # fmt: skip
    started = time.monotonic()
    qemu = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while not site.reported.wait(0.2):
            if qemu.poll() is not None or time.monotonic() - started > CALLBACK_TIMEOUT:
                break
        if site.first_callback_at is not None:
            boot.seconds_to_callback = site.first_callback_at - started
        boot.exit_code = qemu.wait(POWEROFF_TIMEOUT)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()
        boot.serial = log.read_text(errors="replace") if log.exists() else ""


def patterned_disk(path: Path, size: int) -> Path:
    """A disk full of pseudo-random bytes, so a wipe shows where it wrote."""
    block = hashlib.shake_256(path.name.encode()).digest(MIB)
    with path.open("wb") as disk:
        for offset in range(0, size, MIB):
            disk.write(block[: min(MIB, size - offset)])
    return path


def add_partition(disk: Path, start_sector: int, sectors: int) -> None:
    """Writes an MBR with one Linux partition (the boot code area keeps the pattern)."""
    entry = bytes([0x00, 0, 0, 0, 0x83, 0, 0, 0])
    entry += start_sector.to_bytes(4, "little") + sectors.to_bytes(4, "little")
    with disk.open("r+b") as file:
        file.seek(446)
        file.write(entry + bytes(48) + b"\x55\xaa")


@dataclass
class Lab:
    server: LabServer
    boots: dict[str, Boot]
    image: ImageInfo
    image_path: Path
    small_image: ImageInfo
    pattern_sha256: dict[str, dict[tuple[int, int], str]]

    def site(self, name: str) -> NodeSite:
        return self.server.nodes[name]


DEPLOY_MARKER = "TETSU-DEPLOYED-IMAGE-OK"


@pytest.fixture(scope="module")
def lab(ramdisk: Ramdisk, server: LabServer, tmp_path_factory: pytest.TempPathFactory) -> Lab:
    """Every case's machine, booted at the same time."""
    work = tmp_path_factory.mktemp("ramdisk-lab")
    image_path = work / "deployed.img"
    image = make_marker_image(image_path, DEPLOY_MARKER, 16 * MIB)
    small_path = work / "small.img"
    small_image = make_marker_image(small_path, "TETSU-SMALL", 2 * MIB + 512)
    server.images = {"deployed.img": image_path, "small.img": small_path}
    names = ("deploy", "mismatch", "missing", "nodisk", "quick", "full")
    token = {name: secrets.token_urlsafe(24) for name in names}
    base = server.base_url

    def deploy_job(node: str, image_name: str, info: ImageInfo, sha256: str | None = None) -> str:
        return make_job(
            server,
            node,
            token[node],
            action="deploy",
            image_url=f"{base}/images/{image_name}",
            image_size=info.size,
            image_sha256=sha256 or info.sha256,
        )

    server.nodes = {
        "deploy": NodeSite(
            deploy_job("deploy", "deployed.img", image), job_missing_for=2, callback_failures=1
        ),
        "mismatch": NodeSite(
            deploy_job("mismatch", "small.img", small_image, hashlib.sha256(b"x").hexdigest())
        ),
        "missing": NodeSite(deploy_job("missing", "missing.img", small_image)),
        "nodisk": NodeSite(deploy_job("nodisk", "small.img", small_image)),
        "quick": NodeSite(make_job(server, "quick", token["quick"], action="clean", wipe="quick")),
        "full": NodeSite(make_job(server, "full", token["full"], action="clean", wipe="full")),
    }
    disks = {
        "deploy": work / "deploy.disk",
        "mismatch": work / "mismatch.disk",
        "missing": work / "missing.disk",
        "quick": patterned_disk(work / "quick.disk", 16 * MIB),
        "quick-2": patterned_disk(work / "quick-2.disk", 4 * MIB),
        "quick-stick": patterned_disk(work / "quick-stick.disk", 4 * MIB),
        # Not a whole number of MiB: the wipe's last piece is smaller than its blocks.
        "full": patterned_disk(work / "full.disk", 8 * MIB + 3 * 512),
    }
    for name in ("deploy", "mismatch", "missing"):
        with disks[name].open("wb") as disk:
            disk.truncate(32 * MIB if name == "deploy" else 8 * MIB)
    add_partition(disks["quick"], start_sector=8192, sectors=8192)
    # The quick wipe's expected result: which ranges hold the pattern still.
    untouched = [(MIB, 4 * MIB), (5 * MIB, 15 * MIB)]
    pattern_sha256 = {
        "quick": {span: range_sha256(disks["quick"], *span) for span in untouched},
        "quick-2": {(MIB, 3 * MIB): range_sha256(disks["quick-2"], MIB, 3 * MIB)},
        "quick-stick": {(0, 4 * MIB): range_sha256(disks["quick-stick"], 0, 4 * MIB)},
    }
    boots = {name: Boot(name, disks.get(name), token[name]) for name in server.nodes}
    # Cleaning wipes every disk but a removable one.
    boots["quick"].more_disks = [disks["quick-2"]]
    boots["quick"].removable_disk = disks["quick-stick"]
    with ThreadPoolExecutor(len(boots)) as pool:
        for _ in pool.map(lambda boot: run_boot(ramdisk, server, boot, work), boots.values()):
            pass
    print("\nramdisk boot to first callback (s), all machines started together:")
    for boot in boots.values():
        seconds = boot.seconds_to_callback
        print(f"  {boot.name:9} {seconds:5.1f}" if seconds else f"  {boot.name:9} none")
    return Lab(server, boots, image, image_path, small_image, pattern_sha256)


def range_sha256(path: Path, start: int, end: int) -> str:
    with path.open("rb") as file:
        file.seek(start)
        return hashlib.sha256(file.read(end - start)).hexdigest()


def assert_reported(lab: Lab, name: str, success: bool) -> str:
    """The machine called back once with its token and ``success``, then powered off;
    returns the message."""
    boot, site = lab.boots[name], lab.site(name)
    body = boot.callback(site)
    assert body["token"] == boot.token
    assert body["success"] is success, body
    assert len(site.callbacks) == 1
    assert boot.exit_code == 0, f"{name} did not power off; serial output:\n{boot.serial}"
    assert boot.token not in boot.serial
    message = body["message"]
    assert isinstance(message, str)
    return message


def test_deploy_writes_the_image_and_the_machine_boots_it(lab: Lab) -> None:
    message = assert_reported(lab, "deploy", success=True)
    assert message == f"wrote {lab.image.size} bytes to /dev/vda, sha256 ok"
    boot, site = lab.boots["deploy"], lab.site("deploy")
    # It kept asking while the job was missing, and called again after the API's 503.
    assert site.job_fetches == 3
    assert "tetsu-ramdisk: writing 16 MiB to /dev/vda" in boot.serial
    assert "tetsu-ramdisk: sha256 ok" in boot.serial
    assert boot.disk is not None
    assert sha256_of(boot.disk, lab.image.size) == lab.image.sha256
    assert boot_disk(boot.disk, DEPLOY_MARKER) < 30


def test_a_wrong_checksum_is_reported_with_what_the_disk_holds(lab: Lab) -> None:
    message = assert_reported(lab, "mismatch", success=False)
    expected = hashlib.sha256(b"x").hexdigest()
    assert message == (
        f"checksum mismatch: expected {expected}, the disk holds {lab.small_image.sha256}"
    )


def test_a_missing_image_is_reported_with_its_url(lab: Lab) -> None:
    message = assert_reported(lab, "missing", success=False)
    assert message == f"image not found (HTTP 404) at {lab.server.base_url}/images/missing.img"


def test_a_machine_without_disk_reports_it(lab: Lab) -> None:
    assert assert_reported(lab, "nodisk", success=False) == "no disk found"


def test_quick_clean_zeroes_every_disks_edges_and_partition_starts(lab: Lab) -> None:
    message = assert_reported(lab, "quick", success=True)
    assert message == (
        "wiped the first and last MiB of /dev/vda and the first MiB of 1 partition(s); "
        "wiped the first and last MiB of /dev/vdb and the first MiB of 0 partition(s)"
    )
    boot = lab.boots["quick"]
    assert boot.disk is not None and boot.removable_disk is not None
    second = boot.more_disks[0]
    zero = hashlib.sha256(bytes(MIB)).hexdigest()
    wiped = [(boot.disk, 0), (boot.disk, 4 * MIB), (boot.disk, boot.disk.stat().st_size - MIB)]
    wiped += [(second, 0), (second, second.stat().st_size - MIB)]
    for disk, start in wiped:
        assert range_sha256(disk, start, start + MIB) == zero, f"{disk.name}@{start} not wiped"
    kept = [(boot.disk, "quick"), (second, "quick-2"), (boot.removable_disk, "quick-stick")]
    for disk, key in kept:
        for span, sha256 in lab.pattern_sha256[key].items():
            assert range_sha256(disk, *span) == sha256, f"{disk.name} {span} changed"
    lines = [line.strip() for line in boot.serial.splitlines()]
    assert "tetsu-ramdisk: disks to wipe: vda vdb" in lines
    assert "tetsu-ramdisk: not wiping removable /dev/sda" in boot.serial


def test_full_clean_zeroes_the_whole_disk(lab: Lab) -> None:
    message = assert_reported(lab, "full", success=True)
    disk = lab.boots["full"].disk
    assert disk is not None
    size = disk.stat().st_size
    assert message == f"wiped all {size} bytes of /dev/vda"
    assert disk.read_bytes() == bytes(size)
