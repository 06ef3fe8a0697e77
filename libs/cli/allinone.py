"""All four services in one process on the in-memory transport and SQLite: the embedded
default that needs no RabbitMQ or PostgreSQL (``tetsu all-in-one``)."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from pydantic import SecretStr

from libs.cli.processes import pool_size_for
from libs.db import Database, upgrade
from libs.rpc import MemoryTransport
from services.api.service import APIService
from services.api.settings import APISettings
from services.conductor.service import ConductorService
from services.conductor.settings import ConductorSettings
from services.netctl.service import NetctlService
from services.netctl.settings import NetctlSettings
from services.scheduler.service import SchedulerService
from services.scheduler.settings import SchedulerSettings

LOG = logging.getLogger(__name__)

HOSTNAME = "all-in-one"


def admin_token(state_dir: Path) -> str:
    """TETSU_ADMIN_TOKEN, else the token kept in ``state_dir/admin-token`` (made once,
    readable by its owner only), so a restarted all-in-one keeps the same token."""
    preset = os.environ.get("TETSU_ADMIN_TOKEN")
    if preset:
        return preset
    path = state_dir / "admin-token"
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


class AllInOne:
    """netctl, a conductor, the scheduler and the API sharing one transport and database."""

    def __init__(self, state_dir: Path, *, host: str = "127.0.0.1", port: int = 8000) -> None:
        self.state_dir = state_dir
        self.host = host
        state_dir.mkdir(parents=True, exist_ok=True)
        self.database_url = f"sqlite:///{state_dir.resolve() / 'tetsu.db'}"
        self.token = admin_token(state_dir)
        upgrade(self.database_url)
        url, bus = self.database_url, "memory://"
        # One process, one metrics registry: the API's /metrics shows all four services.
        netctl = NetctlSettings(
            database_url=url, transport_url=bus, hostname=HOSTNAME, metrics_port=0
        )
        conductor = ConductorSettings(
            database_url=url, transport_url=bus, hostname=HOSTNAME, metrics_port=0
        )
        scheduler = SchedulerSettings(
            database_url=url, transport_url=bus, hostname=HOSTNAME, metrics_port=0
        )
        api = APISettings(
            database_url=url,
            transport_url=bus,
            host=host,
            port=port,
            admin_token=SecretStr(self.token),
            image_dir=state_dir.resolve() / "images",
        )
        # One pool for the threads of all four services.
        pool_size = pool_size_for(netctl, conductor, scheduler, api)
        self.db = Database(self.database_url, pool_size=pool_size)
        self.transport = MemoryTransport()
        self.netctl = NetctlService(netctl, self.db, self.transport)
        self.conductor = ConductorService(conductor, self.db, self.transport)
        self.scheduler = SchedulerService(scheduler, self.db, self.transport)
        self.api = APIService(api, self.db, self.transport)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.api.port}"

    def start(self) -> None:
        # Consumers first, so nothing the API sends waits for a missing service.
        self.netctl.start()
        self.conductor.start()
        self.scheduler.start()
        self.api.start()

    def stop(self) -> None:
        for service in (self.api, self.scheduler, self.conductor, self.netctl):
            try:
                service.stop()
            except Exception:
                LOG.exception("stopping %s failed", type(service).__name__)
        self.transport.close()
        self.db.dispose()
