"""The boot server's TFTP side: the first chain step for machines whose network card does
not run iPXE already (it fetches ``undionly.kpxe`` or ``ipxe.efi``, which then speaks
HTTP). tftpy in a thread, read-only (a write request gets "access violation"), stoppable.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path

import tftpy  # type: ignore[import-untyped]  # no annotations shipped

from .tree import write_atomic

LOG = logging.getLogger(__name__)

#: iPXE builds copied into the TFTP root when the system has them (Debian's ``ipxe``).
IPXE_DIR = Path("/usr/lib/ipxe")
IPXE_ROMS = ("undionly.kpxe", "ipxe.efi")

#: Seconds between tftpy's looks at its stop flag, and its retransmit timeout per packet.
POLL_INTERVAL = 0.5
START_TIMEOUT = 5.0


def install_ipxe_roms(tftp_root: Path, source: Path = IPXE_DIR) -> list[str]:
    """Copy the iPXE builds from ``source`` into ``tftp_root`` where the copy there differs
    (an upgraded ``ipxe`` package, or a file changed in the root). Returns those served."""
    copied = []
    for name in IPXE_ROMS:
        rom = source / name
        if rom.is_file():
            target = tftp_root / name
            if not target.is_file() or _sha256(target) != _sha256(rom):
                # Atomically (a ROM is a few hundred KiB): a machine fetching it meanwhile gets
                # the old build or the new one, never half of one.
                write_atomic(target, rom.read_bytes())
            copied.append(name)
    if not copied:
        LOG.warning("boot server: no iPXE build in %s to serve over TFTP", source)
    return copied


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _refuse_upload(path: str, context: object) -> None:
    """tftpy's upload hook: None makes it answer "access violation". Without a hook it
    would write whatever a client sends into the root, over the served files."""
    LOG.warning("boot server: TFTP upload refused (%r)", Path(path).name)


def _quiet_tftpy() -> None:
    # tftpy logs every transfer at INFO and every packet at DEBUG under "tftpy".
    logging.getLogger("tftpy").setLevel(logging.WARNING)


class TFTPServer:
    """Serves the files in ``root`` over TFTP on ``host``:``port`` (0: any free port)."""

    def __init__(self, root: Path, host: str, port: int) -> None:
        self.root = root
        self.host = host
        self.requested_port = port
        self._server: tftpy.TftpServer | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        if self._server is None or not self._server.is_running.is_set():
            raise RuntimeError("the TFTP server is not running")
        return int(self._server.listenport)

    def start(self) -> None:
        """Listen; OSError if the port cannot be had (port 69 needs root)."""
        _quiet_tftpy()
        server = tftpy.TftpServer(str(self.root), upload_open=_refuse_upload)
        self._server = server
        self._error = None
        self._thread = threading.Thread(target=self._listen, name="boot-tftp", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not server.is_running.wait(0.05):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                server.stop(now=True)
                error = self._error
                self._server = self._thread = None
                if error is not None:
                    raise error
                raise RuntimeError("the TFTP server did not start")
        LOG.info("boot server: TFTP on %s:%d serving %s", self.host, self.port, self.root)

    def _listen(self) -> None:
        assert self._server is not None
        try:
            self._server.listen(self.host, self.requested_port, timeout=POLL_INTERVAL)
        except BaseException as exc:
            self._error = exc
            if self._server.is_running.is_set():
                LOG.exception("boot server: TFTP stopped")

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.stop(now=True)
        thread.join(timeout=START_TIMEOUT + POLL_INTERVAL * 4)
        self._server = self._thread = None
