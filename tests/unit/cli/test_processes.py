"""The process runner sizes each service's database pool from its worker threads,
lowers its CPU priority as its settings say, and writes its threads' stacks on SIGUSR2."""

from __future__ import annotations

import faulthandler
import gc
import io
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import pytest
from pydantic import ValidationError

from libs.cli.processes import (
    ServiceName,
    dump_stacks_on_signal,
    freeze_startup_objects,
    lower_cpu_priority,
    pool_size_for,
    service_kind,
)
from libs.db.engine import DEFAULT_POOL_SIZE, MAX_OVERFLOW
from services.api.settings import APISettings
from services.conductor.settings import ConductorSettings
from services.netctl.settings import NetctlSettings
from services.scheduler.settings import SchedulerSettings
from tests.integration.compose_file import environment
from tests.integration.compose_file import load as load_compose

ROOT = Path(__file__).resolve().parents[3]


def test_a_service_gets_a_connection_per_worker_and_the_stack_fits_postgres() -> None:
    conductor = ConductorSettings(workers=16)
    scheduler = SchedulerSettings(workers=8)
    netctl = NetctlSettings()
    api = APISettings()

    assert pool_size_for(conductor) == 18
    assert pool_size_for(scheduler) == 10
    assert pool_size_for(api) == DEFAULT_POOL_SIZE
    # All in one process share one pool.
    assert pool_size_for(conductor, scheduler, api) == 18 + 10 + DEFAULT_POOL_SIZE
    # Separate processes, two conductors: inside PostgreSQL's default max_connections
    # (100, of which 3 are kept for superusers), overflow included.
    processes = [api, scheduler, netctl, conductor, conductor]
    assert sum(pool_size_for(p) + MAX_OVERFLOW for p in processes) <= 97
    # The compose file's stack (two API workers, each with its own pool) fits the limit
    # its PostgreSQL is given.
    compose = load_compose()
    workers = int(environment(compose["services"]["api"])["TETSU_API_WORKERS"])
    command = compose["services"]["postgres"]["command"]
    limit = int(command[command.index("-c") + 1].removeprefix("max_connections="))
    in_compose = [*[api] * workers, scheduler, netctl, conductor, conductor]
    assert sum(pool_size_for(p) + MAX_OVERFLOW for p in in_compose) <= limit - 3


@pytest.mark.parametrize("name", list(ServiceName))
def test_no_service_defaults_to_an_in_memory_database(
    name: ServiceName, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In memory, every thread would share one connection, and nothing would be kept.
    monkeypatch.delenv("TETSU_DATABASE_URL", raising=False)
    monkeypatch.delenv("TETSU_CONFIG", raising=False)
    settings = service_kind(name).settings()
    assert settings.database_url.startswith(("sqlite:///", "postgresql"))
    assert settings.database_url not in ("sqlite://", "sqlite:///:memory:")


def test_a_service_lowers_its_cpu_priority_for_itself_and_the_threads_it_starts() -> None:
    seen: dict[str, int] = {}

    def service_main() -> None:
        # In a thread of its own: a thread's priority is its own, so the test process
        # keeps its priority.
        before = os.getpriority(os.PRIO_PROCESS, 0)
        seen["target"] = min(before + 3, 19)
        seen["applied"] = lower_cpu_priority(seen["target"])
        seen["after"] = os.getpriority(os.PRIO_PROCESS, 0)
        worker = threading.Thread(
            target=lambda: seen.update(worker=os.getpriority(os.PRIO_PROCESS, 0))
        )
        worker.start()
        worker.join()
        # Asked for less than it has: stays (raising it back needs privileges).
        seen["again"] = lower_cpu_priority(before)
        seen["finally"] = os.getpriority(os.PRIO_PROCESS, 0)

    ours = os.getpriority(os.PRIO_PROCESS, 0)
    thread = threading.Thread(target=service_main)
    thread.start()
    thread.join()

    target = seen["target"]
    assert seen == {
        "target": target,
        "applied": target,
        "after": target,
        "worker": target,
        "again": target,
        "finally": target,
    }
    assert os.getpriority(os.PRIO_PROCESS, 0) == ours


def test_niceness_is_a_setting_of_every_service_within_unix_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TETSU_CONFIG", raising=False)
    monkeypatch.delenv("TETSU_NICE", raising=False)
    assert {service_kind(name).settings().nice for name in ServiceName} == {0}
    monkeypatch.setenv("TETSU_NICE", "10")
    assert ConductorSettings().nice == 10
    monkeypatch.setenv("TETSU_NICE", "20")
    with pytest.raises(ValidationError, match="nice"):
        ConductorSettings()


class Node:
    """An object in a reference cycle: only the garbage collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_freezing_collects_startup_garbage_and_hides_what_lives_on() -> None:
    garbage = Node()
    garbage_gone = weakref.ref(garbage)
    del garbage
    kept = Node()
    try:
        frozen = freeze_startup_objects()

        assert garbage_gone() is None  # collected, not frozen
        assert frozen == gc.get_freeze_count() > 0
        tracked = {id(o) for o in gc.get_objects()}
        assert id(kept) not in tracked  # no collection walks it any more
        # What the process makes afterwards is collected as before.
        later = Node()
        later_gone = weakref.ref(later)
        del later
        gc.collect()
        assert later_gone() is None
    finally:
        gc.unfreeze()
    assert id(kept) in {id(o) for o in gc.get_objects()}


STACKS_CHILD = """
import threading, time
from libs.cli.processes import dump_stacks_on_signal

def waiting_for_something_that_never_comes():
    threading.Event().wait()

assert dump_stacks_on_signal()
threading.Thread(target=waiting_for_something_that_never_comes, daemon=True).start()
print("ready", flush=True)
time.sleep(60)
"""


def test_sigusr2_writes_every_threads_stack_and_the_process_goes_on(tmp_path: Path) -> None:
    stderr = tmp_path / "stderr"
    with stderr.open("wb") as errors:
        child = subprocess.Popen(
            [sys.executable, "-c", STACKS_CHILD],
            stdout=subprocess.PIPE,
            stderr=errors,
            cwd=ROOT,
        )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        child.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 10
        while "waiting_for_something" not in stderr.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        dump = stderr.read_text()
        assert "waiting_for_something_that_never_comes" in dump  # the helper thread
        assert "<module>" in dump  # the main thread, asleep
        time.sleep(0.2)
        assert child.poll() is None, "the signal did not stop the process"
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("stderr", [io.StringIO(), None], ids=["not a file", "none"])
def test_no_stack_dumps_without_a_stderr_file(
    stderr: io.StringIO | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stderr", stderr)
    try:
        assert dump_stacks_on_signal() is False
    finally:
        faulthandler.unregister(signal.SIGUSR2)
