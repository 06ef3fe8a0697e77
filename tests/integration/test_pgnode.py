"""The throwaway PostgreSQL server of the outage tests: it starts, refuses connections
while stopped or killed, and comes back with its data."""

from __future__ import annotations

import psycopg
import pytest

from tests.integration.pgnode import PgNode

pytestmark = pytest.mark.integration


def count_rows(url: str) -> int:
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, connect_timeout=2) as connection:
        row = connection.execute("SELECT count(*) FROM kept").fetchone()
        assert row is not None
        return int(row[0])


@pytest.mark.parametrize("outage", ["fast", "immediate", "kill"])
def test_data_survives_an_outage_and_connections_fail_meanwhile(outage: str) -> None:
    with PgNode() as pg:
        url = pg.create_database("kept")
        conninfo = url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute("CREATE TABLE kept (n int)")
            connection.execute("INSERT INTO kept VALUES (1), (2)")
        held = psycopg.connect(conninfo, autocommit=True)  # a client's pooled connection
        try:
            assert pg.leftover_pids(), "the postmaster and its backends"
            if outage == "kill":
                pg.kill()
            else:
                pg.stop(outage)  # type: ignore[arg-type]
            assert not pg.is_running
            assert pg.leftover_pids() == []
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(conninfo, connect_timeout=2)
            with pytest.raises(psycopg.OperationalError):
                held.execute("SELECT 1")
            pg.start()  # while the old connection still lingers on the client's side
        finally:
            held.close()
        assert count_rows(url) == 2
    assert not pg.dir.exists()
