"""Every service of deploy/compose.yaml as a local process, with the command, environment
and start order the file gives it, on the real RabbitMQ and PostgreSQL: the migration,
the API, the scheduler, two conductors, netctl and the demo seed, then an instance made
over REST. A wrong command, variable or dependency in the file fails here even where no
container engine can run.

Only what a container would change is translated: the compose host names `rabbitmq`,
`postgres` and `api` become this machine (the session's own vhost and database, a free
port for the API), volumes become folders under the test's temporary directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from libs.cli.demo_cloud import FLAVOR, IMAGE, NETWORK
from tests.integration.compose_file import environment, load
from tests.integration.conftest import PG_ADMIN_URL, drop_database
from tests.integration.stack import Process, free_port, wait_for

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
#: Run by the machine's own RabbitMQ and PostgreSQL instead of containers.
INFRASTRUCTURE = ("rabbitmq", "postgres")


def empty_database() -> tuple[str, str]:
    """A new database without a schema: the compose file's migrate step must make it."""
    name = f"tetsu_compose_{os.urandom(5).hex()}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    return name, url


@dataclass
class ComposeProcesses:
    """The compose file's tetsu services run as processes of this machine."""

    spec: dict[str, Any]
    workdir: Path
    database_url: str
    transport_url: str
    ports: dict[tuple[str, int], int] = field(default_factory=dict)  # (service, port) -> local
    running: dict[str, Process] = field(default_factory=dict)
    finished: dict[str, int] = field(default_factory=dict)  # one-shot service -> exit status

    @property
    def services(self) -> dict[str, Any]:
        services: dict[str, Any] = self.spec["services"]
        return services

    # Translation of what a container sees into what this machine has

    def local_port(self, service: str, port: int) -> int:
        return self.ports.setdefault((service, port), free_port())

    def env_of(self, name: str) -> dict[str, str]:
        env = environment(self.services[name])
        volumes = self.volumes_of(name)
        translated = {key: self.translate(name, key, value, volumes) for key, value in env.items()}
        # No TETSU_* of the test run leaks in: the file must give each service all it needs.
        return {"PATH": os.environ["PATH"], "HOME": str(self.workdir), "LANG": "C.UTF-8"} | (
            translated
        )

    def translate(self, name: str, key: str, value: str, volumes: dict[str, Path]) -> str:
        if key == "TETSU_DATABASE_URL":
            self.check_database_url(value)
            return self.database_url
        if key == "TETSU_TRANSPORT_URL":
            self.check_transport_url(value)
            return self.transport_url
        if key == "TETSU_HOST":
            return "127.0.0.1"  # a test listens on loopback only
        if key == "TETSU_PORT":
            self.check_published(name, int(value))
            return str(self.local_port(name, int(value)))
        value = self.local_url(value)
        for target, folder in volumes.items():
            if value == target or value.startswith(target + "/"):
                return str(folder) + value[len(target) :]
        return value

    def local_url(self, value: str) -> str:
        """http://api:8000 -> http://127.0.0.1:<the API's local port>."""
        parts = urlsplit(value) if "://" in value else None
        if parts is None or parts.hostname not in self.services or parts.port is None:
            return value
        assert parts.hostname not in INFRASTRUCTURE, value
        local = self.local_port(parts.hostname, parts.port)
        return value.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{local}", 1)

    def volumes_of(self, name: str) -> dict[str, Path]:
        folders = {}
        for volume in self.services[name].get("volumes", []):
            source, target, *_ = volume.split(":")
            assert source in self.spec["volumes"], f"{name}: volume {source} is not declared"
            folder = self.workdir / "volumes" / source
            folder.mkdir(parents=True, exist_ok=True)
            folders[target] = folder
        return folders

    def check_database_url(self, value: str) -> None:
        url = make_url(value)
        postgres = environment(self.services["postgres"])
        assert url.host == "postgres"
        assert url.username == postgres["POSTGRES_USER"]
        assert url.password == postgres["POSTGRES_PASSWORD"]
        assert url.database == postgres["POSTGRES_DB"]

    def check_transport_url(self, value: str) -> None:
        url = urlsplit(value)
        rabbitmq = environment(self.services["rabbitmq"])
        assert url.hostname == "rabbitmq"
        assert url.username == rabbitmq["RABBITMQ_DEFAULT_USER"]
        assert url.password == rabbitmq["RABBITMQ_DEFAULT_PASS"]

    def check_published(self, name: str, port: int) -> None:
        published = [str(p).rsplit(":", 1)[-1] for p in self.services[name].get("ports", [])]
        assert str(port) in published, f"{name} listens on {port} but publishes {published}"

    # Running

    def command_of(self, name: str) -> list[str]:
        command = list(self.services[name]["command"])
        assert command[0] == "tetsu", f"{name}: {command}"
        return [str(BIN / "tetsu"), *command[1:]]

    def start(self, name: str) -> None:
        """Start ``name`` once its depends_on conditions hold, as compose does."""
        if name in self.running or name in self.finished:
            return
        for dependency, rule in self.services[name].get("depends_on", {}).items():
            if dependency in INFRASTRUCTURE:
                continue  # the session's broker and database are up
            self.start(dependency)
            condition = rule.get("condition", "service_started")
            if condition == "service_completed_successfully":
                assert self.finished[dependency] == 0, self.logs()
            elif condition == "service_healthy":
                wait_for(
                    partial(self.healthy, dependency), timeout=60, what=f"{dependency} healthy"
                )
        workdir = self.workdir / "work" / name
        workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / f"{name}.log"
        with log.open("wb") as handle:
            popen = subprocess.Popen(
                self.command_of(name),
                env=self.env_of(name),
                cwd=workdir,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        process = Process(name, popen, log)
        if self.services[name].get("restart") == "no":  # a one-shot step: runs to its end
            self.finished[name] = popen.wait(timeout=200)
            self.running[name] = process  # its log is kept for failures
        else:
            self.running[name] = process

    def healthy(self, name: str) -> bool:
        """The service's own healthcheck, run here against its local port."""
        self.check_alive()
        test = list(self.services[name]["healthcheck"]["test"])
        assert test[0] == "CMD" and test[1] == "python", test
        script = test[3]
        for (service, port), local in self.ports.items():
            if service == name:
                script = script.replace(f"127.0.0.1:{port}/", f"127.0.0.1:{local}/")
        check = subprocess.run(
            [sys.executable, test[2], script], capture_output=True, timeout=30, check=False
        )
        return check.returncode == 0

    def run_again(self, name: str) -> int:
        """A one-shot step once more (a second `docker compose up`)."""
        self.finished.pop(name)
        self.running.pop(name)
        self.start(name)
        return self.finished[name]

    def check_alive(self) -> None:
        dead = [
            p.name
            for p in self.running.values()
            if p.name not in self.finished and p.popen.poll() is not None
        ]
        assert not dead, f"exited: {dead}\n{self.logs()}"

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in self.running.values())

    def stop(self) -> dict[str, int | None]:
        """SIGTERM to every long-running service, as `docker compose down` sends."""
        codes: dict[str, int | None] = {}
        for process in self.running.values():
            if process.popen.poll() is None:
                process.popen.send_signal(signal.SIGTERM)
        for process in self.running.values():
            try:
                codes[process.name] = process.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                codes[process.name] = None
        return codes


def thread_niceness(pid: int) -> set[int]:
    """The niceness of each thread of process ``pid`` (field 19 of its stat)."""
    values = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        values.add(int(fields[16]))
    return values


@pytest.fixture
def compose(amqp_url: str, tmp_path: Path) -> Iterator[ComposeProcesses]:
    name, url = empty_database()
    stack = ComposeProcesses(load(), tmp_path, url, amqp_url)
    try:
        yield stack
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.stop()
        drop_database(name)


def test_the_compose_services_run_as_processes_and_serve_an_instance(compose):
    services = compose.services
    expected = {"rabbitmq", "postgres", "migrate", "api", "scheduler", "netctl", "seed"}
    assert expected <= set(services)
    conductors = sorted(n for n in services if n.startswith("conductor"))
    assert len(conductors) == 2
    hostnames = {environment(services[n])["TETSU_HOSTNAME"] for n in conductors}
    assert len(hostnames) == 2, "each conductor needs its own TETSU_HOSTNAME"

    # Everything, in the file's dependency order; the seed is last (it needs the rest).
    compose.start("seed")
    for name in services:
        if name not in INFRASTRUCTURE:
            compose.start(name)
    assert compose.finished == {"migrate": 0, "seed": 0}, compose.logs()
    assert "demo cloud ready" in compose.running["seed"].log.read_text()
    compose.check_alive()
    # The workers yield the CPU to the API (TETSU_NICE), every thread of theirs.
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    for name in ("scheduler", "netctl", *conductors):
        assert thread_niceness(compose.running[name].popen.pid) == {max(ours, 10)}, name
    assert thread_niceness(compose.running["api"].popen.pid) == {ours}
    # A second `docker compose up` runs the seed again: it keeps what is there.
    assert compose.run_again("seed") == 0, compose.logs()

    api = environment(services["api"])
    endpoint = f"http://127.0.0.1:{compose.local_port('api', int(api['TETSU_PORT']))}"
    headers = {"Authorization": f"Bearer {api['TETSU_ADMIN_TOKEN']}"}
    with httpx.Client(base_url=endpoint, headers=headers, timeout=30) as admin:
        alive = [c["hostname"] for c in admin.get("/v1/conductors").json()["conductors"]]
        assert sorted(alive) == sorted(hostnames)
        nodes = admin.get("/v1/nodes", params={"limit": 1000}).json()["nodes"]
        demo_nodes = int(services["seed"]["command"][-1])
        assert len(nodes) == demo_nodes
        assert {n["provision_state"] for n in nodes} == {"available"}

        (network,) = admin.get("/v1/networks", params={"name": NETWORK}).json()["networks"]
        created = admin.post(
            "/v1/instances",
            json={"name": "web1", "flavor": FLAVOR, "image": IMAGE, "networks": [network["id"]]},
        )
        assert created.status_code == 202, created.text

        def settled() -> dict[str, Any] | None:
            compose.check_alive()
            row: dict[str, Any] = admin.get(f"/v1/instances/{created.json()['id']}").json()
            return row if row["status"] in ("ACTIVE", "ERROR") else None

        instance = wait_for(settled, timeout=120, what="web1 ACTIVE")
        assert instance["status"] == "ACTIVE", instance
        assert instance["node_id"] in {n["id"] for n in nodes}

    codes = compose.stop()
    assert all(code == 0 for code in codes.values()), (codes, compose.logs())
