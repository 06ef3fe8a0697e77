"""Fixtures of the bare-metal lab tests: the real broker's vhost (shared with the integration
tests) and the deploy ramdisk, built once per test session."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import amqp_url  # noqa: F401 - a fixture, re-exported

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ramdisk_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The deploy ramdisk (kernel, initramfs), built by ``deploy/ramdisk/build.sh``."""
    out = tmp_path_factory.mktemp("ramdisk")
    subprocess.run(
        [str(ROOT / "deploy" / "ramdisk" / "build.sh"), "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out / "vmlinuz", out / "initramfs"
