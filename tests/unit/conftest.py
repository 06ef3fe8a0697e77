"""Fixtures for unit tests: a fresh SQLite database and the in-memory transport."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import SQLModel

from libs.db import Database
from libs.rpc import MemoryTransport


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """An empty database with every table (made from the models; the migrations are
    checked against the models by tests/unit/db/test_migrations.py)."""
    database = Database(f"sqlite:///{tmp_path / 'tetsu.db'}")
    SQLModel.metadata.create_all(database.engine)
    yield database
    database.dispose()


@pytest.fixture
def memory_transport() -> Iterator[MemoryTransport]:
    transport = MemoryTransport()
    yield transport
    transport.close()
