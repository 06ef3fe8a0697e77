"""Prometheus metrics of every service: the metric definitions (one registry per
process, so an all-in-one process shows all four services at one ``/metrics``), the node
count read from the database at scrape time, and the small HTTP server of the services
other than the API (``metrics_port``).

Labels only ever take values from tetsu's own vocabulary (method names a server
dispatched, route templates, event types), never from raw input, so garbage on the bus
or odd URLs cannot grow the number of series.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func
from sqlmodel import select

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from libs.db import Database

LOG = logging.getLogger(__name__)

#: Where the processes of one service keep their counters when several serve it together
#: (the API's workers): prometheus_client reads it when it is imported.
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Deploys and cleanings take seconds (fake hardware) to tens of minutes (real disks).
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)

RPC_CALLS = Counter(
    "tetsu_rpc_calls",
    "RPC messages sent (client) and handled (server), by outcome",
    ["side", "kind", "target", "method", "outcome"],
)
RPC_SECONDS = Histogram(
    "tetsu_rpc_seconds",
    "Time to send a cast or get a call's reply (client), or to handle a message (server)",
    ["side", "kind", "target", "method"],
)
DEPLOY_SECONDS = Histogram(
    "tetsu_deploy_seconds",
    "Node deploys, from available -> deploying to active or deploy failed",
    ["outcome"],
    buckets=DURATION_BUCKETS,
)
CLEAN_SECONDS = Histogram(
    "tetsu_clean_seconds",
    "Node cleanings, from the start of cleaning to available or clean failed",
    ["outcome"],
    buckets=DURATION_BUCKETS,
)
ERRORS = Counter(
    "tetsu_errors",
    "Errors: API answers of 400 and above, RPC handler failures, error events",
    ["service", "code"],
)
API_REQUESTS = Counter(
    "tetsu_api_requests", "HTTP requests answered by the API", ["method", "route", "status"]
)
API_SECONDS = Histogram(
    "tetsu_api_request_seconds", "Time the API took to answer", ["method", "route"]
)


class NodesCollector(Collector):
    """``tetsu_nodes{provision_state, power_state}``: counted in the database at scrape time
    (every node, whichever conductor owns it)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[Metric]:
        from libs.db.models import Node  # noqa: PLC0415 (the models need no metrics)

        family = GaugeMetricFamily(
            "tetsu_nodes",
            "Nodes by provision and power state",
            labels=["provision_state", "power_state"],
        )
        try:
            with self.db.session() as session:
                rows = session.exec(
                    select(Node.provision_state, Node.power_state, func.count()).group_by(
                        Node.provision_state, Node.power_state
                    )
                ).all()
        except Exception as exc:
            LOG.warning("tetsu_nodes: the database could not be read (%s)", type(exc).__name__)
            return
        for provision_state, power_state, count in rows:
            family.add_metric([str(provision_state), str(power_state)], float(count))
        yield family


class ServiceRegistry(Collector):
    """What one process exposes: the process-wide metrics (of all the service's processes
    when several serve it), plus the node count when it has a database to read it from."""

    def __init__(self, db: Database | None = None) -> None:
        self._parts: list[Collector] = [REGISTRY]
        folder = os.environ.get(MULTIPROCESS_DIR_ENV)
        if folder:
            # One of several processes: the counts of them all, from their shared files.
            shared = CollectorRegistry()
            MultiProcessCollector(shared, path=folder)  # type: ignore[no-untyped-call]
            self._parts = [shared]
        if db is not None:
            self._parts.append(NodesCollector(db))

    def collect(self) -> Iterable[Metric]:
        for part in self._parts:
            yield from part.collect()


class MetricsServer:
    """Prometheus' HTTP server on ``host``:``port`` (0: none), for a service without the
    API's ``/metrics``. A port already taken is logged, not fatal: metrics are worth less
    than the service."""

    def __init__(self, host: str, port: int, registry: Collector) -> None:
        self.host = host
        self.port = port
        self.registry = registry
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.port == 0 or self._server is not None:
            return
        try:
            self._server, self._thread = start_http_server(
                self.port, addr=self.host, registry=self.registry
            )
        except OSError as exc:
            LOG.error("metrics not served on %s:%d: %s", self.host, self.port, exc)
            return
        LOG.info("metrics on http://%s:%d/metrics", self.host, self.port)

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)
