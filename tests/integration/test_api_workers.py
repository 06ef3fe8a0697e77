"""`tetsu service api` with TETSU_API_WORKERS=2: worker processes on one port, on the real
PostgreSQL and RabbitMQ; a worker that dies is started again, /metrics counts every
worker's requests, SIGTERM stops them all, and the workers even out the connections that
clients keep alive."""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.stack import free_port, wait_for

HEALTHZ_COUNT = re.compile(
    r'^tetsu_api_requests_total\{method="GET",route="/healthz",status="200"\} ([0-9.e+]+)$',
    re.M,
)


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(c) for c in (task / "children").read_text().split())
    return found


def api_workers(pid: int) -> set[int]:
    """The worker processes of the API process ``pid`` (not multiprocessing's helper)."""
    workers = set()
    for child in children(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command:
            workers.add(child)
    return workers


def two_workers(pid: int) -> set[int] | None:
    workers = api_workers(pid)
    return workers if len(workers) == 2 else None


class Counted:
    """GET /healthz, each on a new connection, counting the answers the API gave."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.answered = 0

    def healthy(self) -> bool:
        try:
            response = httpx.get(f"{self.endpoint}/healthz", timeout=5)
        except httpx.TransportError:
            return False
        self.answered += 1
        return response.status_code == 200


@pytest.fixture
def api_process(
    pg_url: str, amqp_url: str, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    port = free_port()
    env = {
        **os.environ,
        "TETSU_DATABASE_URL": pg_url,
        "TETSU_TRANSPORT_URL": amqp_url,
        "TETSU_PORT": str(port),
        "TETSU_ADMIN_TOKEN": "workers-test-token",
        "TETSU_IMAGE_DIR": str(tmp_path / "images"),
        "TETSU_API_WORKERS": "2",
    }
    env.pop("TETSU_CONFIG", None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp_path / "api.log"
    with log.open("wb") as handle:
        popen = subprocess.Popen(
            [sys.executable, "-m", "libs.cli.main", "service", "api"],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        yield popen, f"http://127.0.0.1:{port}", log
    except BaseException:
        print(log.read_text(errors="replace")[-5000:])
        raise
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait()


def test_api_workers_stop_when_their_parent_is_killed(api_process):
    popen, endpoint, log = api_process
    # Every worker has started (the parent says so once each is serving).
    wait_for(lambda: "in 2 processes" in log.read_text(), timeout=60, what="the API started")
    workers = wait_for(lambda: two_workers(popen.pid), timeout=30, what="two workers")
    popen.kill()
    popen.wait()
    # Orphaned, they would go on serving the port: the kernel sends them SIGTERM.
    wait_for(
        lambda: not [pid for pid in workers if Path(f"/proc/{pid}").exists()],
        timeout=45,
        what="the workers gone",
    )
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{endpoint}/healthz", timeout=5)


def test_api_workers_share_the_port_and_the_counts_and_are_started_again(api_process):
    popen, endpoint, _ = api_process
    counted = Counted(endpoint)
    wait_for(counted.healthy, timeout=60, what="the API")
    workers = wait_for(lambda: two_workers(popen.pid), timeout=30, what="two workers")

    for _ in range(20):
        assert counted.healthy()

    # A worker killed outright: the other answers meanwhile, and a new one takes its place.
    victim = sorted(workers)[0]
    os.kill(victim, signal.SIGKILL)

    def replaced() -> set[int] | None:
        assert counted.healthy()
        now = two_workers(popen.pid)
        return now if now and victim not in now else None

    after = wait_for(replaced, timeout=30, what="the killed worker started again")
    assert len(after & workers) == 1
    for _ in range(20):
        assert counted.healthy()

    # Every answer is counted, whichever worker gave it, the killed one's too.
    metrics = httpx.get(f"{endpoint}/metrics", timeout=10).text
    (count,) = HEALTHZ_COUNT.findall(metrics)
    assert float(count) == counted.answered

    popen.send_signal(signal.SIGTERM)
    assert popen.wait(timeout=60) == 0
    # Each worker was waited for: none is left running (nor as a zombie).
    assert not [pid for pid in after if Path(f"/proc/{pid}").exists()]


def held_connections(pid: int, port: int) -> int:
    """The established TCP connections to ``port`` that process ``pid`` holds open."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    held = 0
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        established = fields[3] == "01"
        if local_port == port and established and fields[9] in inodes:
            held += 1
    return held


def test_api_workers_even_out_the_clients_that_keep_their_connections(api_process):
    popen, endpoint, _ = api_process
    wait_for(Counted(endpoint).healthy, timeout=60, what="the API")
    workers = wait_for(lambda: two_workers(popen.pid), timeout=30, what="two workers")
    port = int(endpoint.rsplit(":", 1)[1])
    busy, other = sorted(workers)

    # Seventeen connections while the other worker is stopped: the busy one accepts them
    # all; three more once both run. The busy one holds at least 17 of 20.
    connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(20)]
    os.kill(other, signal.SIGSTOP)
    try:
        for connection in connections[:17]:
            connection.connect()
        wait_for(
            lambda: held_connections(busy, port) == 17, timeout=30, what="17 connections accepted"
        )
    finally:
        os.kill(other, signal.SIGCONT)
    for connection in connections[17:]:
        connection.connect()
    wait_for(
        lambda: held_connections(busy, port) + held_connections(other, port) == 20,
        timeout=30,
        what="20 connections accepted",
    )
    started_with = held_connections(busy, port)
    assert started_with >= 17

    # Every client asks again and again (http.client opens a new connection where an
    # answer said Connection: close), as a burst's clients do. A connection the server
    # closed while it was idle (uvicorn's keep-alive timeout, on a slow machine) is
    # opened again.
    stop = threading.Event()
    answers: list[int] = []
    reopened: list[str] = []

    def client(connection: http.client.HTTPConnection) -> None:
        while not stop.is_set():
            try:
                connection.request("GET", "/healthz")
                response = connection.getresponse()
                response.read()
            except (http.client.RemoteDisconnected, ConnectionError) as exc:
                reopened.append(repr(exc))
                connection.close()
                continue
            answers.append(response.status)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in connections]
    for thread in threads:
        thread.start()
    try:
        # The busy worker answers more than its share, so it hands clients over.
        wait_for(
            lambda: held_connections(busy, port) <= started_with - 2,
            timeout=60,
            what="clients handed over to the other worker",
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
    assert answers and set(answers) == {200}
    assert len(reopened) < len(answers) / 10, reopened[:5]
    for connection in connections:
        connection.close()
