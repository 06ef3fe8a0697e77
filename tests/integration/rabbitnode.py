"""Throwaway RabbitMQ nodes for crash tests, and per-test vhosts on the main broker.

``RabbitNode`` runs a second, independent RabbitMQ node beside the machine's main one
(``rabbit@localhost`` on 127.0.0.1:5672, which other work uses and which must never be
killed). Each node gets a unique name (``tetsu-<hex>@localhost``), its own free AMQP and
Erlang distribution ports, and its own data, log, config, plugins and pid files under one
folder owned by user ``rabbitmq``. Tests can ``kill()`` it with SIGKILL (a real crash of
the Erlang VM) and ``restart()`` it on the same data, so durable queues and persistent
messages survive::

    with RabbitNode(tmp_path) as node:
        ...  # use node.url
        node.kill()
        node.restart()

``create_vhost``/``delete_vhost`` isolate tests that share the MAIN broker.

Requirements: run as root, with the Debian ``rabbitmq-server`` package (its
``rabbitmq-server``/``rabbitmqctl`` wrappers on PATH run the real scripts as user
``rabbitmq`` through ``su``).

Erlang cookie: the wrappers ``su`` to ``rabbitmq``, which sets HOME=/var/lib/rabbitmq, so
both the throwaway node and ``rabbitmqctl`` use the main node's cookie
``/var/lib/rabbitmq/.erlang.cookie``; one cookie then works for every node. We also pass
HOME=/var/lib/rabbitmq to ``rabbitmqctl`` so that it works if PATH holds the unwrapped
scripts: run directly as root with HOME=/root, rabbitmqctl cannot authenticate
("Erlang cookie hash" error) and Erlang creates a random /root/.erlang.cookie as a side
effect.

Traps met here:

* ``rabbitmqctl await_startup`` right after ``rabbitmq-server -detached`` fails (the node
  is not registered in epmd yet), so ``start()`` polls a real AMQP connection instead.
* A durable queue declared less than about 2 s before a kill -9 was sometimes lost with
  the node's metadata: declare, then wait (about 3 s) before crashing the node.
* pytest's ``/tmp/pytest-of-root`` is mode 0700, so user ``rabbitmq`` cannot reach a
  folder inside ``tmp_path``; giving it the search bit is not enough, because any other
  pytest session on the machine sets it back to 0700 (the running node then could not
  create files and stalled, and a restart never booted). The node's folder is a
  ``tempfile.mkdtemp`` folder of its own; ``base_dir`` gets a link to it.
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
from functools import partial
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import amqp

RABBITMQ_USER = "rabbitmq"
RABBITMQ_HOME = Path("/var/lib/rabbitmq")
MAIN_HOST = "127.0.0.1"
MAIN_PORT = 5672
LOOPBACK = "127.0.0.1"

# Ports are picked in this range: below Linux's ephemeral range (32768-60999), so that an
# outgoing connection cannot take a killed node's port before it restarts.
_PORT_RANGE = (20000, 32000)


def _which(name: str) -> str:
    """Return the path of a RabbitMQ tool on PATH (the Debian wrappers live in /usr/sbin)."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/usr/lib/rabbitmq/bin"
    found = shutil.which(name, path=path)
    if found is None:
        raise FileNotFoundError(f"{name} not found on PATH (apt-get install rabbitmq-server)")
    return found


def _ctl_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for ``rabbitmqctl``: HOME where the shared Erlang cookie lives."""
    env = dict(os.environ)
    if (RABBITMQ_HOME / ".erlang.cookie").exists():
        env["HOME"] = str(RABBITMQ_HOME)
    if extra:
        env.update(extra)
    return env


def rabbitmqctl(
    *args: str, node: str | None = None, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``rabbitmqctl [-n NODE] ARGS`` (about 1 s per call) and return its result.

    Without ``node`` it talks to the main node (``/etc/rabbitmq/rabbitmq-env.conf``).
    """
    cmd = [_which("rabbitmqctl")]
    if node is not None:
        cmd += ["-n", node]
    cmd += list(args)
    result = subprocess.run(
        cmd, env=_ctl_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({result.returncode}): {result.stdout}{result.stderr}"
        )
    return result


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:  # nothing may listen on any address either (e.g. 0.0.0.0)
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _free_port(exclude: set[int]) -> int:
    for _ in range(500):
        port = _PORT_RANGE[0] + secrets.randbelow(_PORT_RANGE[1] - _PORT_RANGE[0])
        if port not in exclude and _port_is_free(port):
            return port
    raise RuntimeError("no free TCP port found")


def _port_open(port: int, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie (PID 1 here reaps orphans with a delay)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _none_alive(pids: list[int]) -> bool:
    return not any(_pid_alive(pid) for pid in pids)


def _node_pids(node: str) -> list[int]:
    """PIDs of every process started for ``node`` (beam and its port helpers).

    The beam's command line does not name the node, but all its processes inherit
    RABBITMQ_NODENAME in their environment (readable by root).
    """
    marker = f"RABBITMQ_NODENAME={node}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0") and _pid_alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def _amqp_ready(host: str, port: int, vhost: str = "/") -> bool:
    """True if a real AMQP connection (login and a channel) works."""
    conn = amqp.Connection(
        host=f"{host}:{port}",
        userid="guest",
        password="guest",
        virtual_host=vhost,
        connect_timeout=2,
    )
    try:
        conn.connect()
        conn.channel().close()
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            conn.collect()
    return True


def _wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class RabbitNode:
    """An independent, throwaway RabbitMQ node for crash tests.

    All its files live in ``<base_dir>/<node short name>/`` (owned by ``rabbitmq``); the
    node keeps its name and ports across ``kill()``/``restart()``, so it reuses its data.
    """

    def __init__(self, base_dir: str | os.PathLike[str], *, name: str | None = None) -> None:
        """Pick a unique node name and free AMQP and distribution ports; start nothing."""
        short = name or f"tetsu-{secrets.token_hex(4)}"
        self.node_name: str = f"{short}@localhost"
        self.amqp_port: int = _free_port(set())
        self.dist_port: int = _free_port({self.amqp_port})
        self.dir: Path = Path(tempfile.mkdtemp(prefix=f"{short}-"))
        self.dir.chmod(0o755)
        link = Path(base_dir) / short  # where a test's files are: the node's logs
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(self.dir)
        self.pid_file: Path = self.dir / "rabbit.pid"
        self.log_dir: Path = self.dir / "log"
        self._pid: int | None = None
        self._prepared = False
        self._atexit_registered = False

    # -- public API -------------------------------------------------------------------

    @property
    def url(self) -> str:
        """AMQP URL of the node's default vhost (guest may log in from localhost only)."""
        return f"amqp://guest:guest@{LOOPBACK}:{self.amqp_port}//"

    @property
    def pid(self) -> int | None:
        """OS pid of the node's Erlang VM (beam.smp) while it runs."""
        return self._pid

    @property
    def is_running(self) -> bool:
        """True while the node's Erlang VM process is alive."""
        return self._pid is not None and _pid_alive(self._pid)

    def start(self, timeout: float = 60) -> None:
        """Start the node detached and wait until it accepts AMQP connections."""
        if self.is_running:
            raise RuntimeError(f"{self.node_name} is already running (pid {self._pid})")
        if _port_open(self.amqp_port) or _port_open(self.dist_port):
            raise RuntimeError(
                f"port {self.amqp_port} or {self.dist_port} is taken: cannot start {self.node_name}"
            )
        self._prepare()
        self.pid_file.unlink(missing_ok=True)
        deadline = time.monotonic() + timeout
        with open(self.dir / "start.out", "ab") as out:
            # The Debian wrapper su's to rabbitmq (keeping RABBITMQ_* variables); erl
            # -detached returns at once, leaving beam.smp in its own session.
            subprocess.run(
                [_which("rabbitmq-server"), "-detached"],
                env=self._server_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=True,
                timeout=timeout,
            )
        if not self._atexit_registered:
            atexit.register(self._cleanup_at_exit)
            self._atexit_registered = True
        while True:
            if self._pid is None:
                self._pid = self._read_pid()
            if self._pid is not None and not _pid_alive(self._pid):
                self._pid = None
                raise RuntimeError(f"{self.node_name} died while booting:\n{self._log_tail()}")
            if _port_open(self.amqp_port) and _amqp_ready(LOOPBACK, self.amqp_port):
                break
            if time.monotonic() >= deadline:
                self._kill_leftovers()
                raise TimeoutError(
                    f"{self.node_name} did not accept AMQP within {timeout} s:\n{self._log_tail()}"
                )
            time.sleep(0.2)
        if self._pid is None:
            self._pid = self._read_pid()

    def kill(self, timeout: float = 30) -> None:
        """Crash the node: SIGKILL its Erlang VM, wait until it and its port are gone."""
        pid = self._pid or self._read_pid()
        if pid is None or not _pid_alive(pid):
            raise RuntimeError(f"{self.node_name} is not running")
        os.kill(pid, signal.SIGKILL)
        if not _wait_until(lambda: not _pid_alive(pid), timeout):
            raise TimeoutError(f"{self.node_name} (pid {pid}) survived SIGKILL")
        if not _wait_until(lambda: not _port_open(self.amqp_port), timeout):
            raise TimeoutError(f"port {self.amqp_port} still open after killing {pid}")
        self._pid = None
        # Port helpers (erl_child_setup, inet_gethost) exit by themselves; make sure.
        self._kill_leftovers()

    def restart(self, timeout: float = 60) -> None:
        """Start the node again on the same data (stopping it cleanly first if it runs)."""
        if self.is_running:
            self.stop()
        self.start(timeout=timeout)

    def stop(self, timeout: float = 30) -> None:
        """Shut the node down cleanly, then kill -9 whatever of it is left.

        SIGTERM makes RabbitMQ 3.8+ stop gracefully (like ``rabbitmqctl stop``, without
        the CLI's start-up second). Its epmd registration goes away with the VM; the
        shared epmd daemon is left running (the main node uses it).
        """
        pid = self._pid or self._read_pid()
        if pid is not None and _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not _wait_until(lambda: not _pid_alive(pid), timeout):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _wait_until(lambda: not _pid_alive(pid), 10)
        self._pid = None
        self._kill_leftovers()
        _wait_until(lambda: not _port_open(self.amqp_port), 10)

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``rabbitmqctl -n <this node> ARGS``."""
        return rabbitmqctl(*args, node=self.node_name, check=check)

    def leftover_pids(self) -> list[int]:
        """PIDs of live processes of this node (empty after ``stop()``)."""
        return _node_pids(self.node_name)

    def __enter__(self) -> RabbitNode:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"RabbitNode({self.node_name!r}, amqp_port={self.amqp_port}, pid={self._pid})"

    # -- internals --------------------------------------------------------------------

    def _prepare(self) -> None:
        """Create the node folder, owned by rabbitmq, with its config files (once)."""
        if self._prepared:
            return
        if os.geteuid() != 0:
            raise PermissionError("RabbitNode must run as root (it starts rabbitmq via su)")
        user = pwd.getpwnam(RABBITMQ_USER)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        (self.dir / "mnesia").mkdir(exist_ok=True)
        (self.dir / "enabled_plugins").write_text("[].\n")  # no plugins: faster boot
        (self.dir / "rabbitmq-env.conf").write_text("")  # not /etc's (it names the main)
        # Listener address and port come from RABBITMQ_NODE_IP_ADDRESS/_PORT.
        (self.dir / "rabbitmq.conf").write_text("# throwaway node: defaults only\n")
        for path in [self.dir, *self.dir.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)
        self._prepared = True

    def _server_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            RABBITMQ_NODENAME=self.node_name,
            RABBITMQ_NODE_IP_ADDRESS=LOOPBACK,
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.log_dir),
            RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.dir / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            RABBITMQ_CONF_ENV_FILE=str(self.dir / "rabbitmq-env.conf"),
            RABBITMQ_PID_FILE=str(self.pid_file),
            # Distribution on loopback only, like the main node's rabbitmq-env.conf.
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            ERL_EPMD_ADDRESS=LOOPBACK,
        )
        return env

    def _read_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def _kill_leftovers(self) -> None:
        for _ in range(3):
            pids = _node_pids(self.node_name)
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _wait_until(partial(_none_alive, pids), 5)

    def _log_tail(self, lines: int = 30) -> str:
        texts = []
        for path in [self.dir / "start.out", *sorted(self.log_dir.glob("*.log"))]:
            with contextlib.suppress(OSError):
                texts.append(
                    f"--- {path.name}\n" + "\n".join(path.read_text().splitlines()[-lines:])
                )
        return "\n".join(texts)

    def _cleanup_at_exit(self) -> None:
        """Safety net: never leave a beam of this node behind the Python process."""
        with contextlib.suppress(Exception):
            if self.is_running or _node_pids(self.node_name):
                self._pid = self._pid or self._read_pid()
                if self._pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self._pid, signal.SIGKILL)
                self._kill_leftovers()


# -- the MAIN broker: one vhost per test ----------------------------------------------


def vhost_url(name: str, host: str = MAIN_HOST, port: int = MAIN_PORT) -> str:
    """AMQP URL (user guest) of vhost ``name`` on the broker at ``host:port``."""
    return f"amqp://guest:guest@{host}:{port}/{quote(name, safe='')}"


def create_vhost(name: str, *, host: str = MAIN_HOST, port: int = MAIN_PORT) -> str:
    """Create vhost ``name`` on the main broker, give guest full rights, return its URL.

    Idempotent (``add_vhost`` of an existing vhost succeeds).
    """
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    return vhost_url(name, host, port)


def delete_vhost(name: str) -> None:
    """Delete vhost ``name`` (with its queues and exchanges) from the main broker.

    A vhost that does not exist is not an error.
    """
    result = rabbitmqctl("delete_vhost", name, check=False)
    if result.returncode != 0 and "does not exist" not in result.stdout + result.stderr:
        raise RuntimeError(f"delete_vhost {name} failed: {result.stdout}{result.stderr}")
