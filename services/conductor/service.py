"""The conductor process: its RPC server on ``conductor@<hostname>``, the heartbeat and
periodic work, and an orderly start (heartbeat, take-over) and stop."""

from __future__ import annotations

import logging

from libs.db import Database
from libs.rpc import RPCServer, Target, Transport

from .manager import ConductorManager
from .rpcapi import TOPIC
from .settings import ConductorSettings

LOG = logging.getLogger(__name__)


class ConductorService:
    def __init__(self, settings: ConductorSettings, db: Database, transport: Transport) -> None:
        self.settings = settings
        self.manager = ConductorManager(settings, db, transport)
        self.server = RPCServer(
            transport,
            Target(TOPIC, server=settings.hostname),
            [self.manager],
            workers=settings.workers,
        )

    def start(self) -> None:
        """Join the ring, fail what died with an earlier run, then serve."""
        periodic = self.manager.periodic
        periodic.heartbeat()
        failed = periodic.take_over(at_start=True)
        if failed:
            LOG.warning("took over %d node(s) whose conductor had died", failed)
        self.server.start()
        periodic.start()
        LOG.info("conductor %s started", self.settings.hostname)

    def stop(self, timeout: float = 60.0) -> None:
        """Stop serving, let running node work finish (up to ``timeout`` seconds), and
        leave the ring."""
        self.server.stop()
        self.manager.periodic.stop()
        self.manager.stop(timeout)
        self.manager.periodic.heartbeat(online=False)
        LOG.info("conductor %s stopped", self.settings.hostname)
