"""Fixtures for tests against the real RabbitMQ: a fresh vhost per test session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

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
