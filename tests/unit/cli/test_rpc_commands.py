"""`tetsu rpc call|cast`: messages sent by hand, and clear errors when they cannot be."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from libs.cli.main import app


@pytest.mark.parametrize("command", ["call", "cast"])
def test_a_bus_url_of_no_known_kind_is_a_usage_error(command):
    result = CliRunner().invoke(app, ["rpc", command, "conductor", "ping", "--url", "foo://bar"])

    assert result.exit_code == 2
    assert "Invalid value for '--url': transport URL must start with amqp://" in result.output
    assert "Traceback" not in result.output


def test_a_call_nobody_answers_fails_with_one_line():
    result = CliRunner().invoke(
        app, ["rpc", "call", "conductor", "ping", "--url", "memory://", "--timeout", "0.2"]
    )

    assert result.exit_code == 1
    assert result.output.strip() == "NoConsumer: no server listens on 'conductor:call'"
