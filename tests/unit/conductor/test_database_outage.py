"""A conductor through a database outage: the locks it could not release are released
once the database is back, and heartbeats that went stale with the database do not pass
for dead conductors."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from sqlmodel import col, update

from libs.db import Conductor, Database, utcnow
from tests.unit.conductor.conftest import HOST, Cloud, wait_for


@pytest.fixture
def down_db() -> Iterator[Database]:
    """A database that refuses every connection, as a stopped PostgreSQL does."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    db = Database(f"postgresql+psycopg://tetsu@127.0.0.1:{port}/tetsu")
    yield db
    db.dispose()


def test_a_lock_not_released_during_an_outage_is_released_when_the_database_is_back(
    cloud: Cloud, down_db: Database, monkeypatch: pytest.MonkeyPatch
):
    tasks = cloud.start_conductor().manager.tasks
    node_id = cloud.make_node(state="manageable")

    with tasks.acquire(cloud.ctxt, node_id, "work that ends during the outage"):
        monkeypatch.setattr(tasks, "db", down_db)
    assert cloud.node(node_id).reservation == HOST  # the release failed

    monkeypatch.setattr(tasks, "db", cloud.db)
    wait_for(lambda: cloud.node(node_id).reservation is None, what="the lock released")
    # Taken and released normally again.
    with tasks.acquire(cloud.ctxt, node_id, "later work"):
        assert cloud.node(node_id).reservation == HOST
    assert cloud.node(node_id).reservation is None


class Heartbeat:
    """Another conductor's heartbeat, which stops while the database is down."""

    def __init__(self, cloud: Cloud, hostname: str) -> None:
        self.cloud = cloud
        self.hostname = hostname
        self.beating = threading.Event()
        self.beating.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            if self.beating.is_set():
                with self.cloud.db.session() as session:
                    session.exec(
                        update(Conductor)
                        .where(col(Conductor.hostname) == self.hostname)
                        .values(updated_at=utcnow())
                    )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def test_heartbeats_stale_after_an_outage_do_not_make_a_take_over(
    cloud: Cloud, down_db: Database, monkeypatch: pytest.MonkeyPatch
):
    cloud.add_conductor("c2")
    node_id = cloud.make_node(
        state="wait call-back",
        owner="c2",
        ring=(HOST, "c2"),
        driver_internal_info={"conductor": "c2"},
    )
    other = Heartbeat(cloud, "c2")
    try:
        # The margins are seconds, not tenths: a loaded machine delays threads and queries.
        periodic = cloud.start_conductor(conductor_heartbeat_timeout=2.0).manager.periodic
        wait_for(
            lambda: periodic._live == frozenset({HOST, "c2"}), what="both conductors on the ring"
        )

        # The database goes away for both conductors, longer than the heartbeat timeout.
        monkeypatch.setattr(periodic, "db", down_db)
        other.beating.clear()
        time.sleep(2.5)
        # It is back; this conductor sees it first, the other beats half a second later.
        monkeypatch.setattr(periodic, "db", cloud.db)
        time.sleep(0.5)
        other.beating.set()
        # Once missing heartbeats are believed again, several ring checks run.
        wait_for(periodic._heartbeats_trusted, timeout=10, what="heartbeats trusted again")
        time.sleep(0.5)
    finally:
        other.stop()

    node = cloud.node(node_id)
    assert node.provision_state == "wait call-back"
    assert node.last_error is None
    assert periodic._live == frozenset({HOST, "c2"})
