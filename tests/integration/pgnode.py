"""Throwaway PostgreSQL servers for outage tests.

``PgNode`` runs a PostgreSQL server of its own beside the machine's main cluster (port
5432, which other tests use and which must never be stopped): a fresh data folder made by
``initdb`` under a temporary folder, its own free port on 127.0.0.1, trust
authentication for the user ``tetsu``. Tests stop it (``stop("fast")``: the way an
operator stops it, open connections are closed; ``stop("immediate")``: a crash without a
checkpoint, recovered at the next start), ``kill()`` it with SIGKILL, and ``start()`` it
again on the same data::

    with PgNode() as pg:
        url = pg.create_database("tetsu")
        ...
        pg.stop()
        pg.start()

Requirements: run as root, with the Debian ``postgresql`` package (``initdb`` and
``postgres`` in ``/usr/lib/postgresql/<version>/bin``). The server runs as user
``postgres``: PostgreSQL refuses to run as root.

Traps met here:

* pytest's ``/tmp/pytest-of-root`` is mode 0700, so user ``postgres`` cannot reach a
  folder inside ``tmp_path``; giving it the search bit does not last, since every pytest
  session (other tests run beside these) sets it back to 0700. The node's folder is
  therefore a folder of its own in ``/tmp``, deleted by ``cleanup()``.
* The backends cannot be found by their environment or command line (PostgreSQL
  overwrites both to show its process titles), only as the postmaster's children. After a
  SIGKILL of the postmaster they exit by themselves (measured: within 0.2 s); ``kill()``
  notes them first, waits for them and SIGKILLs any that linger, so that ``start()`` never
  meets a backend of the previous run still holding the shared memory.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Literal

import psycopg

PG_USER = "postgres"
DB_USER = "tetsu"
LOOPBACK = "127.0.0.1"

#: Signals the postmaster understands as shutdown modes (PostgreSQL's server docs).
STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}

StopMode = Literal["smart", "fast", "immediate"]

# Ports below Linux's ephemeral range (32768-60999), so that an outgoing connection
# cannot take a stopped node's port before it starts again; apart from RabbitNode's.
_PORT_RANGE = (32000, 32700)


def pg_bin_dir() -> Path:
    """The newest installed PostgreSQL's program folder."""
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda path: int(path.parent.parent.name),
    )
    if not versions:
        raise FileNotFoundError("no PostgreSQL server found (apt-get install postgresql)")
    return versions[-1].parent


def _port_is_free(port: int) -> bool:
    for address in (LOOPBACK, "0.0.0.0"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((address, port))
            except OSError:
                return False
    return True


def _listening(port: int) -> bool:
    """Whether something accepts connections on the port (a bind test would fail while
    connections of the last run linger in TIME_WAIT; PostgreSQL itself binds regardless)."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


def _free_port() -> int:
    for _ in range(200):
        port = _PORT_RANGE[0] + secrets.randbelow(_PORT_RANGE[1] - _PORT_RANGE[0])
        if _port_is_free(port):
            return port
    raise RuntimeError("no free TCP port found")


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class PgNode:
    """A throwaway PostgreSQL server; its data survives ``stop()``/``kill()``/``start()``."""

    def __init__(self) -> None:
        """Make a folder and pick a free port; start nothing."""
        self.dir: Path = Path(tempfile.mkdtemp(prefix="tetsu-pg-"))
        self.data_dir: Path = self.dir / "data"
        self.log_file: Path = self.dir / "postgres.log"
        self.port: int = _free_port()
        self._bin = pg_bin_dir()
        self._popen: subprocess.Popen[bytes] | None = None
        self._atexit_registered = False

    # -- public API -------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL of ``database`` on this server."""
        return f"postgresql+psycopg://{DB_USER}@{LOOPBACK}:{self.port}/{database}"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        popen = self._popen
        return popen.pid if popen is not None and popen.poll() is None else None

    @property
    def is_running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def start(self, timeout: float = 30) -> None:
        """Start the server (running ``initdb`` the first time) and wait until it accepts
        connections."""
        if self.is_running:
            raise RuntimeError(f"PostgreSQL on port {self.port} is already running")
        self._prepare()
        log = self.log_file.open("ab")
        try:
            self._popen = subprocess.Popen(
                [
                    str(self._bin / "postgres"),
                    "-D",
                    str(self.data_dir),
                    "-p",
                    str(self.port),
                    "-c",
                    f"listen_addresses={LOOPBACK}",
                    "-c",
                    f"unix_socket_directories={self.dir}",
                    # A test server: durability is not what is tested, speed is welcome.
                    "-c",
                    "fsync=off",
                    "-c",
                    "max_connections=200",
                ],
                user=PG_USER,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of pytest does not reach the server
            )
        finally:
            log.close()
        if not self._atexit_registered:
            atexit.register(self._cleanup_at_exit)
            self._atexit_registered = True
        if not _wait_until(self._accepts_connections, timeout, 0.1):
            self.kill()
            raise TimeoutError(f"PostgreSQL did not start in {timeout} s:\n{self.log_tail()}")

    def stop(self, mode: StopMode = "fast", timeout: float = 30) -> None:
        """Shut the server down in ``mode`` (``fast``: as an operator stops it; ``immediate``:
        a crash without checkpoint) and wait until it and its port are gone."""
        popen = self._popen
        if popen is None or popen.poll() is not None:
            raise RuntimeError(f"PostgreSQL on port {self.port} is not running")
        backends = self.leftover_pids()
        popen.send_signal(STOP_SIGNALS[mode])
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return
        self._wait_gone(backends)

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend of this server."""
        backends = self.leftover_pids()
        if not backends:
            self._popen = None
            return
        if self._popen is not None and self._popen.poll() is None:
            self._popen.kill()
            self._popen.wait()
        if not _wait_until(lambda: not any(_pid_alive(pid) for pid in backends), 5):
            for pid in backends:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._wait_gone(backends)

    def leftover_pids(self) -> list[int]:
        """Live processes of this server: the postmaster and its children (backends)."""
        popen = self._popen
        if popen is None:
            return []
        pids = [popen.pid] if _pid_alive(popen.pid) else []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("PPid:"):
                    if int(line.split()[1]) == popen.pid and _pid_alive(int(entry.name)):
                        pids.append(int(entry.name))
                    break
        return pids

    def create_database(self, name: str) -> str:
        """Create database ``name`` (owned by ``tetsu``) and return its URL."""
        with psycopg.connect(self._conninfo("postgres"), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def cleanup(self) -> None:
        """Kill the server if it runs and delete its folder."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PgNode:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"PgNode(port={self.port}, pid={self.pid})"

    # -- internals --------------------------------------------------------------------

    def _conninfo(self, database: str) -> str:
        return f"host={LOOPBACK} port={self.port} user={DB_USER} dbname={database}"

    def _accepts_connections(self) -> bool:
        if self._popen is None or self._popen.poll() is not None:
            raise RuntimeError(f"PostgreSQL exited while starting:\n{self.log_tail()}")
        try:
            with psycopg.connect(self._conninfo("postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def _wait_gone(self, backends: list[int]) -> None:
        """Wait until the postmaster and ``backends`` are gone and the port is closed."""

        def gone() -> bool:
            return not any(_pid_alive(pid) for pid in backends) and not _listening(self.port)

        if not _wait_until(gone, 15):
            raise TimeoutError(f"PostgreSQL on port {self.port} survives")
        self._popen = None

    def _prepare(self) -> None:
        """Create the folder, owned by postgres, and the cluster in it (once)."""
        if self.data_dir.exists():
            return
        if os.geteuid() != 0:
            raise PermissionError("PgNode must run as root (the server runs as postgres)")
        user = pwd.getpwnam(PG_USER)
        os.chown(self.dir, user.pw_uid, user.pw_gid)
        result = subprocess.run(
            [
                str(self._bin / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                DB_USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
            user=PG_USER,
            cwd=self.dir,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed ({result.returncode}): {result.stderr}")

    def _cleanup_at_exit(self) -> None:
        """Safety net: never leave a server of this node behind the Python process."""
        with contextlib.suppress(Exception):
            self.kill()
