"""Which database errors mean "unavailable, try again", and the once-per-outage log."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from libs.db import OutageLog, is_unavailable


def test_a_lost_or_refused_connection_is_unavailability_a_bad_statement_is_not():
    refused = OperationalError("SELECT 1", {}, Exception("connection refused"))
    assert is_unavailable(refused)
    assert not is_unavailable(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not is_unavailable(ProgrammingError("SELEC", {}, Exception("syntax error")))
    assert not is_unavailable(ValueError("no"))


def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
):
    outage = OutageLog()
    error = OperationalError("SELECT 1", {}, Exception("connection refused\nmore detail"))
    with caplog.at_level(logging.WARNING):
        outage.succeeded()
        assert not outage.ended_within(60)
        for _ in range(5):
            outage.failed(error, "the heartbeat")
        assert outage.ended_within(60)
        outage.succeeded()
        outage.succeeded()
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2, messages
    assert "database unavailable" in messages[0] and "connection refused" in messages[0]
    assert "more detail" not in messages[0]
    assert "database available again" in messages[1]
    assert not outage.down and outage.ended_within(60) and not outage.ended_within(0)
