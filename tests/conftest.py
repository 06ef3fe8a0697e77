"""Hooks for every test: a failed test that ran services shows their logs and where each
of their threads was at the failure."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from tests.integration.stack import RUNNING


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for stack in RUNNING:
            report.sections.append((f"service logs ({stack.workdir})", stack.logs()))
            if report.when == "call":
                stacks = stack.thread_stacks()
                report.sections.append((f"service thread stacks ({stack.workdir})", stacks))
    if report.when == "teardown":
        # Stacks a module's fixture keeps running stay listed for its next tests.
        RUNNING[:] = [stack for stack in RUNNING if stack.processes]
    return report
