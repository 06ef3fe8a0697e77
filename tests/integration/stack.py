"""The four services as separate processes (``tetsu service NAME``) on the real RabbitMQ
and PostgreSQL, as an operator would run them, with their logs kept for failures."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

#: The stacks started by the running test or its fixtures: a failed test's report shows
#: their logs (tests/conftest.py), stopped ones are forgotten after the test.
RUNNING: list[Stack] = []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    condition: Callable[[], Any], *, timeout: float = 60.0, interval: float = 0.2, what: str = ""
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    service: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


@dataclass
class Stack:
    """Running services, an admin HTTP client and their log files."""

    endpoint: str
    admin_token: str
    env: dict[str, str]
    workdir: Path
    processes: dict[str, Process] = field(default_factory=dict)
    seen: dict[str, Path] = field(default_factory=dict)  # every service's log, by name

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token or self.admin_token}"}
        return httpx.Client(base_url=self.endpoint, headers=headers, timeout=30.0)

    def start(self, name: str, service: str, extra_env: Mapping[str, str] | None = None) -> None:
        log = self.workdir / f"{name}.log"
        env = {**self.env, **(extra_env or {})}
        handle = log.open("ab")  # a restarted service's log goes on in the same file
        popen = subprocess.Popen(
            [sys.executable, "-m", "libs.cli.main", "service", service],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        handle.close()
        self.processes[name] = Process(name, popen, log, service, dict(extra_env or {}))
        self.seen[name] = log

    def restart(self, name: str, *, kill: bool = False) -> None:
        """Stop one service (SIGTERM, or SIGKILL with ``kill``) and start it again with
        the same settings; it is not waited for (the API: :meth:`wait_api`)."""
        process = self.processes[name]
        self.stop(name, kill=kill)
        self.start(name, process.service, process.extra_env)

    def wait_api(self, timeout: float = 60.0) -> None:
        """Wait until the API answers ``/healthz`` (every service still running)."""

        def api_ready() -> bool:
            self.check_alive()
            try:
                return httpx.get(f"{self.endpoint}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(api_ready, timeout=timeout, what="the API")

    def stop(self, name: str, *, kill: bool = False) -> None:
        process = self.processes.pop(name)
        if process.popen.poll() is None:
            process.popen.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                process.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait()

    def logs(self, lines: int = 40) -> str:
        """The last lines of every service's log, stopped services included."""
        parts = []
        for name, log in self.seen.items():
            text = log.read_text(errors="replace").splitlines() if log.exists() else []
            parts.append(f"--- {name} ---\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)

    def thread_stacks(self, wait: float = 1.0) -> str:
        """Every running service's threads' stacks (each writes them to its log on
        SIGUSR2 and goes on running): where a stuck service waits."""
        sizes = {}
        for name, process in self.processes.items():
            if process.popen.poll() is None:
                sizes[name] = process.log.stat().st_size
                process.popen.send_signal(signal.SIGUSR2)
        time.sleep(wait if sizes else 0)
        parts = []
        for name, size in sizes.items():
            with self.processes[name].log.open("rb") as log:
                log.seek(size)
                parts.append(f"--- {name} ---\n" + log.read().decode(errors="replace"))
        return "\n".join(parts)

    def check_alive(self) -> None:
        dead = [p for p in self.processes.values() if p.popen.poll() is not None]
        if dead:
            raise AssertionError(
                "service(s) exited: "
                + ", ".join(f"{p.name} (rc {p.popen.returncode})" for p in dead)
                + "\n"
                + self.logs()
            )


@contextmanager
def running_stack(
    workdir: Path,
    *,
    database_url: str,
    transport_url: str,
    conductors: int = 1,
    port: int | None = None,
    extra_env: Mapping[str, str] | None = None,
    worker_env: Mapping[str, str] | None = None,
) -> Iterator[Stack]:
    """The services running in ``workdir``; ``extra_env`` adds settings (``TETSU_*``),
    ``worker_env`` settings of the workers only (netctl, conductors, scheduler)."""
    port = port or free_port()
    token = secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "TETSU_DATABASE_URL": database_url,
        "TETSU_TRANSPORT_URL": transport_url,
        "TETSU_ADMIN_TOKEN": token,
        "TETSU_PORT": str(port),
        "TETSU_IMAGE_DIR": str(workdir / "images"),
        "TETSU_HEARTBEAT_INTERVAL": "1",
        "TETSU_CONDUCTOR_HEARTBEAT_TIMEOUT": "6",
        "TETSU_CHECK_INTERVAL": "1",
        "TETSU_LOG_LEVEL": "INFO",
        **(extra_env or {}),
    }
    for key in ("TETSU_CONFIG", "TETSU_HOSTNAME"):
        env.pop(key, None)
    stack = Stack(f"http://127.0.0.1:{port}", token, env, workdir)
    RUNNING.append(stack)
    try:
        workers = dict(worker_env or {})
        stack.start("netctl", "netctl", {**workers, "TETSU_HOSTNAME": "netctl-1"})
        for i in range(1, conductors + 1):
            name = f"conductor-{i}"
            stack.start(name, "conductor", {**workers, "TETSU_HOSTNAME": name})
        stack.start("scheduler", "scheduler", {**workers, "TETSU_HOSTNAME": "scheduler-1"})
        stack.start("api", "api")

        def api_ready() -> bool:
            stack.check_alive()
            try:
                return httpx.get(f"{stack.endpoint}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(api_ready, timeout=60, what="the API")
        with stack.client() as client:

            def conductors_alive() -> bool:
                stack.check_alive()
                rows = client.get("/v1/conductors").json()["conductors"]
                return sum(1 for row in rows if row["alive"]) == conductors

            wait_for(conductors_alive, timeout=60, what="conductor heartbeats")
        yield stack
    finally:
        for name in list(stack.processes):
            stack.stop(name)
