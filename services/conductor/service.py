"""The conductor process: its RPC server on ``conductor@<hostname>``, the heartbeat and
periodic work, the boot server when nodes network-boot (``pxe``), and an orderly start
(boot server, heartbeat, take-over) and stop."""

from __future__ import annotations

import logging

from libs.db import Database
from libs.rpc import RPCServer, Target, Transport

from .bootserver import BootServer
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
            retry_if=db.outage.retry_if,  # a cast met a database outage: handle it later
        )
        #: Serves the network-boot files; only a conductor that may boot nodes with pxe
        #: needs one (and the ramdisk files it links to).
        self.boot_server = (
            BootServer(settings) if "pxe" in settings.enabled_boot_interfaces else None
        )

    def start(self) -> None:
        """Start the boot server, join the ring, fail what died with an earlier run, then
        serve. A boot server that cannot start (no ramdisk, port taken) stops the start
        before the conductor joins the ring."""
        if self.boot_server is not None:
            self.boot_server.start()
        periodic = self.manager.periodic
        joined = False
        try:
            periodic.heartbeat()
            joined = True
            failed = periodic.take_over(at_start=True)
            if failed:
                LOG.warning("took over %d node(s) whose conductor had died", failed)
            self.server.start()
            periodic.start()
        except BaseException:
            # Undo what started, and leave the ring again: the others would route this
            # conductor's nodes to it until its heartbeat timed out.
            self.server.stop()
            periodic.stop()
            if joined:
                try:
                    periodic.heartbeat(online=False)
                except Exception:
                    LOG.exception("conductor %s: leaving the ring failed", self.settings.hostname)
            if self.boot_server is not None:
                self.boot_server.stop()
            raise
        LOG.info("conductor %s started", self.settings.hostname)

    def stop(self, timeout: float = 60.0) -> None:
        """Stop serving, let running node work finish (up to ``timeout`` seconds), and
        leave the ring. The boot server goes last: machines of the work still running
        fetch from it."""
        self.server.stop()
        self.manager.periodic.stop()
        self.manager.stop(timeout)
        self.manager.periodic.heartbeat(online=False)
        if self.boot_server is not None:
            self.boot_server.stop()
        LOG.info("conductor %s stopped", self.settings.hostname)
