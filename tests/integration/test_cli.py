"""The `tetsu` command against the real RabbitMQ."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def tetsu(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TETSU_TRANSPORT_URL": url, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "libs.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_demo_calls_and_casts_a_second_process(amqp_url):
    result = tetsu("demo", "--casts", "7", url=amqp_url)
    assert result.returncode == 0, result.stderr
    assert "hello, tetsu (from pid" in result.stdout
    assert "7 of 7 casts handled" in result.stdout
    assert "refused: NoSuchMethod" in result.stdout


def test_rpc_call_without_a_server_says_so(amqp_url):
    result = tetsu("rpc", "call", "nobody-here", "ping", "--timeout", "30", url=amqp_url)
    assert result.returncode == 1
    assert "NoConsumer" in result.stdout


def test_rpc_call_rejects_arguments_that_are_not_name_value(amqp_url):
    result = tetsu("rpc", "call", "demo", "hello", "oops", url=amqp_url)
    assert result.returncode == 2
    assert "name=value" in result.stdout + result.stderr


def test_help_explains_the_commands():
    result = subprocess.run(
        [sys.executable, "-m", "libs.cli.main", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert "demo" in result.stdout
    assert "rpc" in result.stdout


def test_demo_without_a_broker_fails_cleanly_and_hides_the_password():
    result = tetsu("demo", url="amqp://admin:s3cret-pw@127.0.0.1:1//")
    assert result.returncode == 1
    assert "could not reach the message bus at amqp://admin:**@127.0.0.1:1//" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert "s3cret-pw" not in result.stdout + result.stderr
