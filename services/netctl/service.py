"""The network controller process: its switch backend (for OpenFlow, a controller the
switches connect to) and its RPC server on ``netctl``."""

from __future__ import annotations

from libs import rpc
from libs.db import Database
from libs.metrics import MetricsServer, ServiceRegistry

from .backends import SwitchBackend, make_backend
from .manager import NetworkManager
from .rpcapi import TOPIC
from .settings import NetctlSettings


class NetctlService:
    def __init__(self, settings: NetctlSettings, db: Database, transport: rpc.Transport) -> None:
        self.settings = settings
        self.backend: SwitchBackend = make_backend(settings)
        self.manager = NetworkManager(settings, db, self.backend)
        self.server = rpc.RPCServer(
            transport,
            rpc.Target(TOPIC, server=settings.hostname),
            [self.manager],
            workers=settings.workers,
            retry_if=db.outage.retry_if,  # a cast met a database outage: handle it later
        )
        self.metrics = MetricsServer(
            settings.metrics_host, settings.metrics_port, ServiceRegistry()
        )

    def start(self) -> None:
        """Program the switches with what the database records, then take requests."""
        self.backend.start(self.manager.recorded_wiring())
        try:
            self.server.start()
        except BaseException:
            self.backend.stop()
            raise
        self.metrics.start()

    def stop(self) -> None:
        """Take no new request; the ones being handled finish first. The switches keep
        their flows, so traffic goes on while netctl is away."""
        self.server.stop()
        self.backend.stop()
        self.metrics.stop()
