"""The scheduler process: its RPC server on the ``scheduler`` topic.

Any number of schedulers may run: they share the topic's queue, and the atomic claim
keeps them from handing one node to two instances.
"""

from __future__ import annotations

import logging
import threading

from libs import rpc
from libs.db import Database, is_unavailable
from libs.errors import NoLiveConductor
from libs.metrics import MetricsServer, ServiceRegistry

from .manager import SchedulerManager
from .rpcapi import TOPIC
from .settings import SchedulerSettings

LOG = logging.getLogger(__name__)


class SchedulerService:
    def __init__(self, settings: SchedulerSettings, db: Database, transport: rpc.Transport) -> None:
        self.settings = settings
        self.manager = SchedulerManager(settings, db, transport)
        self.server = rpc.RPCServer(
            transport,
            rpc.Target(TOPIC, server=settings.hostname),
            [self.manager],
            workers=settings.workers,
            retry_if=self._retry_later,
        )

        self.metrics = MetricsServer(
            settings.metrics_host, settings.metrics_port, ServiceRegistry()
        )
        self._stop = threading.Event()
        self._periodic: threading.Thread | None = None

    def _retry_later(self, exc: BaseException) -> bool:
        """Requests that met a database outage, or came right after one before any
        conductor had beaten again (see SchedulerManager), are handled again later."""
        return self.manager.db.outage.retry_if(exc) or isinstance(exc, NoLiveConductor)

    def start(self) -> None:
        self.server.start()
        self._stop.clear()
        self._periodic = threading.Thread(
            target=self._look_for_stranded, name="scheduler-stranded", daemon=True
        )
        self._periodic.start()
        self.metrics.start()

    def stop(self) -> None:
        """Take no new request; the ones being handled finish first."""
        self._stop.set()
        if self._periodic is not None:
            self._periodic.join(timeout=30)
        self.server.stop()
        self.metrics.stop()
        if self.manager.notifier.bus is not None:
            self.manager.notifier.bus.close()

    def _look_for_stranded(self) -> None:
        while not self._stop.wait(self.settings.stranded_check_interval):
            ctxt = rpc.RequestContext.admin()
            token = rpc.current_context.set(ctxt)
            try:
                self.manager.schedule_stranded(ctxt)
                self.manager.db.outage.succeeded()
            except NoLiveConductor:
                pass  # right after a database outage: the next look schedules them
            except Exception as exc:
                if is_unavailable(exc):
                    self.manager.db.outage.failed(exc, "looking for stranded instances")
                else:
                    LOG.exception("looking for stranded instances failed; trying again later")
            finally:
                rpc.current_context.reset(token)
