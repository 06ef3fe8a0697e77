"""The conductor process: its RPC server on ``conductor@<hostname>``, the heartbeat and
periodic work, the boot server when nodes network-boot (``pxe``), the sweep of old
events, its ``/metrics`` server, and an orderly start (boot server, heartbeat, take-over)
and stop."""

from __future__ import annotations

import logging
import threading

from libs.db import Database, is_unavailable
from libs.metrics import MetricsServer, ServiceRegistry
from libs.notify import sweep_events
from libs.rpc import RPCServer, Target, Transport

from .bootserver import BootServer
from .hypervisor import HypervisorReport
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
        self.db = db
        self.metrics = MetricsServer(
            settings.metrics_host, settings.metrics_port, ServiceRegistry(db)
        )
        #: A hypervisor host reports the capacity its VM nodes are made from.
        self.hypervisor = HypervisorReport(settings, db) if settings.hypervisor else None
        self._sweep_stop = threading.Event()
        self._sweeper: threading.Thread | None = None

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
            if self.hypervisor is not None:
                self.hypervisor.report()
            failed = periodic.take_over(at_start=True)
            if failed:
                LOG.warning("took over %d node(s) whose conductor had died", failed)
            self.server.start()
            periodic.start()
            self._start_sweeper()
            self.metrics.start()
        except BaseException:
            # Undo what started, and leave the ring again: the others would route this
            # conductor's nodes to it until its heartbeat timed out.
            self.server.stop()
            periodic.stop()
            self._stop_sweeper()
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
        self._stop_sweeper()
        self.manager.stop(timeout)
        self.manager.periodic.heartbeat(online=False)
        if self.boot_server is not None:
            self.boot_server.stop()
        self.metrics.stop()
        if self.manager.notifier.bus is not None:
            self.manager.notifier.bus.close()
        LOG.info("conductor %s stopped", self.settings.hostname)

    def sweep_events(self) -> int:
        """Delete the events past ``event_retention_hours``; returns how many."""
        deleted = sweep_events(self.db, self.settings.event_retention_hours)
        if deleted:
            LOG.info(
                "deleted %d event(s) older than %g h", deleted, self.settings.event_retention_hours
            )
        return deleted

    def _start_sweeper(self) -> None:
        self._sweep_stop.clear()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="event-sweep", daemon=True)
        self._sweeper.start()

    def _stop_sweeper(self) -> None:
        self._sweep_stop.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=30)
            self._sweeper = None

    def _sweep_loop(self) -> None:
        while not self._sweep_stop.wait(self.settings.event_sweep_interval):
            try:
                self.sweep_events()
            except Exception as exc:
                if is_unavailable(exc):
                    self.db.outage.failed(exc, "sweeping old events")
                else:
                    LOG.exception("sweeping old events failed; trying again later")
