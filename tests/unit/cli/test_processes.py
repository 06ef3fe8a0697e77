"""The process runner sizes each service's database pool from its worker threads."""

from __future__ import annotations

import pytest

from libs.cli.processes import ServiceName, pool_size_for, service_kind
from libs.db.engine import DEFAULT_POOL_SIZE, MAX_OVERFLOW
from services.api.settings import APISettings
from services.conductor.settings import ConductorSettings
from services.netctl.settings import NetctlSettings
from services.scheduler.settings import SchedulerSettings


def test_a_service_gets_a_connection_per_worker_and_the_stack_fits_postgres() -> None:
    conductor = ConductorSettings(workers=16)
    scheduler = SchedulerSettings(workers=8)
    netctl = NetctlSettings()
    api = APISettings()

    assert pool_size_for(conductor) == 18
    assert pool_size_for(scheduler) == 10
    assert pool_size_for(api) == DEFAULT_POOL_SIZE
    # All in one process share one pool.
    assert pool_size_for(conductor, scheduler, api) == 18 + 10 + DEFAULT_POOL_SIZE
    # Separate processes, two conductors: inside PostgreSQL's default max_connections
    # (100, of which 3 are kept for superusers), overflow included.
    processes = [api, scheduler, netctl, conductor, conductor]
    assert sum(pool_size_for(p) + MAX_OVERFLOW for p in processes) <= 97


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
