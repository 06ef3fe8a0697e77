"""The lab harness's own safety: a running lab cannot be torn down by a second run, and a
BMC password on a command line does not reach an error message."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.lab.harness import LabError, exclusive, run

pytestmark = pytest.mark.lab


def test_a_failed_command_does_not_show_its_password() -> None:
    with pytest.raises(LabError) as caught:
        # Like vbmc: the password on the command line, echoed in the error output.
        run("sh", "-c", 'echo "bad password $1" >&2; exit 3', "--password", "Pw-s3cret-77")
    assert "Pw-s3cret-77" not in str(caught.value)
    assert str(caught.value).endswith("failed (rc 3): bad password ***")

    with pytest.raises(LabError, match=r"timed out after 0\.2 s") as timed_out:
        run("sh", "-c", "sleep 5", "--password", "Pw-s3cret-77", timeout=0.2)
    assert "Pw-s3cret-77" not in str(timed_out.value)


def test_a_second_lab_waits_for_the_one_running(tmp_path: Path) -> None:
    lock = tmp_path / "lab.lock"
    with exclusive(lock, wait=1.0):
        # Another process (another test run) cannot have the lab meanwhile.
        other = subprocess.run(
            ["flock", "--nonblock", str(lock), "true"], check=False, capture_output=True
        )
        assert other.returncode == 1
        assert lock.read_text().strip().isdigit()  # who holds it, for the error message

    holder = subprocess.Popen(["flock", str(lock), "sleep", "1.5"])
    try:
        time.sleep(0.3)
        with (
            pytest.raises(LabError, match=r"another lab .* has held .* for over 0 s"),
            exclusive(lock, wait=0.2),
        ):
            pass
        started = time.monotonic()
        with exclusive(lock, wait=10.0):  # waits for the holder, then has it
            assert time.monotonic() - started > 0.5
    finally:
        holder.wait()
