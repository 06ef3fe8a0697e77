"""The benchmarks' CPU accounting: a process tree's CPU time counts its children, those
that have already exited too, and a meter gives each party's share of a window."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.scale.common import CpuMeter, find_process, tree_cpu_seconds

#: A child that spends about 0.4 s of CPU, then waits to be told to exit.
BURN = "import sys, time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\n"


@pytest.fixture
def parent() -> Iterator[subprocess.Popen[bytes]]:
    """A Python process that starts a CPU-burning child, reaps it, then sleeps."""
    code = (
        "import subprocess, sys, time\n"
        f"subprocess.run([sys.executable, '-c', {BURN!r}], check=True)\n"
        "print('reaped', flush=True)\n"
        "time.sleep(60)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def test_a_tree_counts_a_child_that_has_exited(parent: subprocess.Popen[bytes]) -> None:
    assert parent.stdout is not None
    assert parent.stdout.readline() == b"reaped\n"
    seconds = tree_cpu_seconds(parent.pid)
    assert seconds is not None
    assert seconds >= 0.35  # the child's 0.4 s, though it is gone


def test_a_meter_gives_each_party_its_share_of_the_window() -> None:
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        meter = CpuMeter({"idle": idle.pid, "self": os.getpid(), "gone": 2**22 + 1})
        meter.start()
        subprocess.run([sys.executable, "-c", BURN], check=True)  # a child of this process
        window = meter.stop()
    finally:
        idle.kill()
        idle.wait()
    assert set(window["cpu_s"]) == {"idle", "self"}  # a party without a process is left out
    assert window["cpu_s"]["idle"] < 0.1
    # This process's own time only: the child's 0.4 s is not the benchmark client's.
    assert window["cpu_s"]["self"] < 0.3
    assert window["seconds"] >= 0.35


def test_a_process_is_found_by_the_words_of_its_command_line() -> None:
    marker = f"tetsu-test-{uuid.uuid4().hex}"
    code = "import time; time.sleep(60)"
    process = subprocess.Popen([sys.executable, "-c", code, marker, "second-word"])
    try:
        # Right after the start its command line can still read empty, for a moment.
        deadline = time.monotonic() + 10
        while not Path(f"/proc/{process.pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert find_process(marker, "second-word") == process.pid
        assert find_process(marker, "a-word-it-lacks") is None
    finally:
        process.kill()
        process.wait()
