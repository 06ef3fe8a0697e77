"""Fixtures for tests against the real RabbitMQ: a fresh vhost per test session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from libs.db import Database, upgrade
from tests.integration.rabbitnode import create_vhost, delete_vhost


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """An AMQP URL on a vhost of its own, deleted after the session.

    ``TETSU_TEST_AMQP_URL`` points the tests at an existing vhost instead (no rabbitmqctl).
    """
    preset = os.environ.get("TETSU_TEST_AMQP_URL")
    if preset:
        yield preset
        return
    name = f"tetsu-test-{uuid.uuid4().hex[:8]}"
    url = create_vhost(name)
    yield url
    delete_vhost(name)


PG_ADMIN_URL = os.environ.get(
    "TETSU_TEST_PG_URL", "postgresql+psycopg://tetsu:tetsu@127.0.0.1:5432/postgres"
)


def create_database() -> tuple[str, str]:
    """A new, empty PostgreSQL database with the schema migrated in; returns (name, url)."""
    name = f"tetsu_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    return name, url


def drop_database(name: str) -> None:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database (migrated) for one test, dropped afterwards."""
    name, url = create_database()
    yield url
    drop_database(name)


@pytest.fixture
def pg_database(pg_url: str) -> Iterator[Callable[[int], Database]]:
    """Makes a Database on this test's fresh PostgreSQL database with a pool of the size
    the test needs (one, to see a connection reused; two, to hold a lock on one); each
    is disposed of afterwards."""
    made: list[Database] = []

    def make(pool_size: int) -> Database:
        made.append(Database(pg_url, pool_size=pool_size))
        return made[-1]

    yield make
    for database in made:
        database.dispose()
