"""Operator commands fail with one line, not a traceback."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from libs.cli.main import app


@pytest.fixture(autouse=True)
def root_logging() -> Iterator[None]:
    """The commands set up logging on the runner's stderr: undo it afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_db_upgrade_to_an_unknown_revision_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("TETSU_DATABASE_URL", f"sqlite:///{tmp_path / 'tetsu.db'}")
    monkeypatch.delenv("TETSU_CONFIG", raising=False)

    result = CliRunner().invoke(app, ["db", "upgrade", "nonsense"])

    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == (
        "error: cannot upgrade to 'nonsense': Can't locate revision identified by 'nonsense'"
    )
    assert "Traceback" not in result.output
