"""The process runner sizes each service's database pool from its worker threads."""

from __future__ import annotations

import pytest

from libs.cli.processes import ServiceName, pool_size_for, service_kind
from libs.db.engine import DEFAULT_POOL_SIZE
from services.api.settings import APISettings
from services.conductor.settings import ConductorSettings
from services.scheduler.settings import SchedulerSettings


def test_a_service_gets_two_connections_per_worker_and_some_spare() -> None:
    conductor = ConductorSettings(workers=16)
    scheduler = SchedulerSettings(workers=8)
    api = APISettings()

    assert pool_size_for(conductor) == 36
    assert pool_size_for(scheduler) == 20
    assert pool_size_for(api) == DEFAULT_POOL_SIZE
    # All in one process share one pool.
    assert pool_size_for(conductor, scheduler, api) == 36 + 20 + DEFAULT_POOL_SIZE


@pytest.mark.parametrize("name", list(ServiceName))
def test_no_service_defaults_to_an_in_memory_database(
    name: ServiceName, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In memory, every thread would share one connection, and nothing would be kept.
    monkeypatch.delenv("TETSU_DATABASE_URL", raising=False)
    monkeypatch.delenv("TETSU_CONFIG", raising=False)
    settings = service_kind(name).settings()
    assert settings.database_url.startswith(("sqlite:///", "postgresql"))
    assert settings.database_url not in ("sqlite://", "sqlite:///:memory:")
