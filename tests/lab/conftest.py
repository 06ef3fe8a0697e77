"""Fixtures of the bare-metal lab tests: the real broker's vhost (shared with the integration
tests) and the deploy ramdisk, built once per test session."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import amqp_url  # noqa: F401 - a fixture, re-exported
from tests.lab.harness import Lab

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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed lab test's report ends with each guest's console and libvirt domain state:
    what a guest did (or did not) boot is most of what explains a lab failure."""
    report = yield
    if report.when == "call" and report.failed:
        for value in getattr(item, "funcargs", {}).values():
            the_lab = getattr(value, "lab", None)
            if isinstance(the_lab, Lab):
                for guest in the_lab.guests:
                    try:
                        state = guest.domain_state()
                    except Exception as exc:  # a failure report must not fail in turn
                        state = f"unknown ({exc})"
                    report.sections.append(
                        (f"{guest.name} ({state}) serial", guest.serial()[-3000:])
                    )
                break
    return report
