"""The README's first command: ``tetsu all-in-one --demo`` on embedded defaults, and the
clear start-up errors of ``tetsu service``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def tetsu(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "COLUMNS": "200", **(env or {})}
    for name in ("TETSU_CONFIG", "TETSU_DATABASE_URL", "TETSU_ADMIN_TOKEN"):
        if name not in (env or {}):
            environment.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "libs.cli.main", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_all_in_one_demo_creates_an_instance_end_to_end_and_again(tmp_path: Path) -> None:
    args = (
        "all-in-one",
        "--demo",
        "--exit-after-demo",
        "--port",
        "0",
        "--state-dir",
        str(tmp_path),
    )
    first = tetsu(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "demo nodes: 4 of 4 available" in first.stdout
    assert "BUILD" in first.stdout
    assert "demo-server is ACTIVE on node demo-" in first.stdout
    assert "Traceback" not in first.stdout + first.stderr
    token = (tmp_path / "admin-token").read_text().strip()
    assert oct((tmp_path / "admin-token").stat().st_mode & 0o777) == "0o600"
    assert token not in first.stdout + first.stderr
    log = (tmp_path / "tetsu.log").read_text()
    assert "wait call-back" in log and "-> active" in log
    assert token not in log

    # A second run reuses the estate kept in the state directory.
    second = tetsu(*args)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "demo-server is ACTIVE" in second.stdout


def test_a_service_on_an_empty_database_says_how_to_fix_it(tmp_path: Path) -> None:
    result = tetsu(
        "service", "scheduler", env={"TETSU_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    )
    assert result.returncode == 1
    assert "tetsu db upgrade" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_setting_is_named(tmp_path: Path) -> None:
    result = tetsu("service", "scheduler", env={"TETSU_MAX_ATTEMPTS": "zero"})
    assert result.returncode == 1
    assert "max_attempts" in result.stderr
    assert "Traceback" not in result.stderr


def test_db_upgrade_then_the_service_starts_cleanly(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    upgraded = tetsu("db", "upgrade", env={"TETSU_DATABASE_URL": url})
    assert upgraded.returncode == 0, upgraded.stderr
    process = subprocess.Popen(
        [sys.executable, "-m", "libs.cli.main", "service", "netctl"],
        env={**os.environ, "TETSU_DATABASE_URL": url, "TETSU_TRANSPORT_URL": "memory://"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "netctl running" in line:
                break
        else:
            pytest.fail("netctl never said it was running")
        process.terminate()
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
