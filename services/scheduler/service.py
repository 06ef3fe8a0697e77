"""The scheduler process: its RPC server on the ``scheduler`` topic.

Any number of schedulers may run: they share the topic's queue, and the atomic claim
keeps them from handing one node to two instances.
"""

from __future__ import annotations

from libs import rpc
from libs.db import Database

from .manager import SchedulerManager
from .rpcapi import TOPIC
from .settings import SchedulerSettings


class SchedulerService:
    def __init__(self, settings: SchedulerSettings, db: Database, transport: rpc.Transport) -> None:
        self.settings = settings
        self.manager = SchedulerManager(settings, db, transport)
        self.server = rpc.RPCServer(
            transport,
            rpc.Target(TOPIC, server=settings.hostname),
            [self.manager],
            workers=settings.workers,
        )

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        """Take no new request; the ones being handled finish first."""
        self.server.stop()
