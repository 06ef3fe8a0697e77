"""Running tetsu's services: one per process (``tetsu service NAME``) or all in one.

Each service is built the same way, from its settings class: a database, a transport,
then ``XService(settings, db, transport).start()``; SIGTERM or Ctrl-C stops it cleanly
(running work finishes, a conductor marks itself offline).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import enum
import faulthandler
import gc
import importlib
import io
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any, Protocol

from sqlalchemy.engine import make_url

from libs.config import CommonSettings
from libs.db import Database, upgrade
from libs.db.engine import DEFAULT_POOL_SIZE
from libs.log import setup_logging
from libs.rpc import Transport, transport_from_url
from libs.rpc.transports import safe_url

LOG = logging.getLogger(__name__)


class ServiceName(enum.StrEnum):
    API = "api"
    SCHEDULER = "scheduler"
    CONDUCTOR = "conductor"
    NETCTL = "netctl"


class Service(Protocol):
    def start(self) -> Any: ...
    def stop(self) -> None: ...


@dataclass(frozen=True)
class ServiceKind:
    settings: type[CommonSettings]
    build: Callable[[Any, Database, Transport], Service]


#: Each service's settings class and service class, as "module:attribute": a process
#: imports only the service it runs (a conductor does not load the web framework).
SERVICES: dict[ServiceName, tuple[str, str]] = {
    ServiceName.API: ("services.api.settings:APISettings", "services.api.service:build_api"),
    ServiceName.SCHEDULER: (
        "services.scheduler.settings:SchedulerSettings",
        "services.scheduler.service:SchedulerService",
    ),
    ServiceName.CONDUCTOR: (
        "services.conductor.settings:ConductorSettings",
        "services.conductor.service:ConductorService",
    ),
    ServiceName.NETCTL: (
        "services.netctl.settings:NetctlSettings",
        "services.netctl.service:NetctlService",
    ),
}


def _load(path: str) -> Any:
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def service_kind(name: ServiceName) -> ServiceKind:
    """The settings class and constructor of a service."""
    settings, service = SERVICES[name]
    return ServiceKind(_load(settings), _load(service))


@contextlib.contextmanager
def stop_signals() -> Iterator[threading.Event]:
    """SIGTERM and SIGINT set the event this yields, from the moment the block starts (main
    thread only): a signal that arrives while a service is still starting is not lost, nor
    does it kill the process before it can stop cleanly."""
    stop = threading.Event()

    def _handler(signum: int, _frame: FrameType | None) -> None:
        LOG.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, _handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def wait_for_signal(stop: threading.Event | None = None) -> None:
    """Block until SIGTERM or SIGINT arrives (main thread only), or until ``stop`` (from
    :func:`stop_signals`) is set."""
    if stop is None:
        with stop_signals() as signalled:
            wait_for_signal(signalled)
        return
    while not stop.wait(1.0):
        pass


#: glibc's mallopt() parameter for the size from which blocks are mmap()ed.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024


def return_big_blocks_to_the_system() -> bool:
    """Make glibc's malloc hand every freed block of 128 KiB or more straight back to the
    system. By default it raises that threshold after each big free and from then on keeps
    big freed blocks in per-thread arenas: a service sent a few 10 MB messages (garbage on
    the bus) then grew by hundreds of MB, more with every round. Returns whether it applied
    (not on a C library without mallopt, e.g. musl)."""
    path = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(path).mallopt if path else None
    except (OSError, AttributeError):
        mallopt = None
    return bool(mallopt is not None and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1)


def freeze_startup_objects() -> int:
    """Collect what starting left as garbage, then move every object still alive (modules,
    classes, the app with its routes and schemas: they live as long as the process) out
    of the garbage collector's sight; returns how many. A full collection
    walks every object it sees while holding the GIL: in an API worker that took 80-150 ms,
    and every request in the process waited for it (the burst's slowest answers came in
    groups, all ending together). Afterwards it walks only what the process made since."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


#: The signal on which a service writes every thread's stack to its stderr (as OpenStack
#: services write their "Guru Meditation" report on SIGUSR2).
STACKS_SIGNAL = signal.SIGUSR2


def dump_stacks_on_signal() -> bool:
    """Write every thread's Python stack to stderr whenever the process gets SIGUSR2:
    ``kill -USR2 PID`` shows where a service that seems stuck is waiting, without
    stopping it. The stacks are written by the interpreter itself, so they come even when
    every Python thread is blocked. Returns False when stderr is not a file (closed, or
    replaced by an object without a file descriptor): then the signal keeps its default."""
    try:
        faulthandler.register(STACKS_SIGNAL, file=sys.stderr, all_threads=True)
    except (RuntimeError, AttributeError, ValueError, io.UnsupportedOperation):
        return False
    return True


def lower_cpu_priority(niceness: int) -> int:
    """Run the calling thread, and every thread it starts from now on, at ``niceness``
    unless it already runs lower; returns the niceness it runs at. On Linux a priority
    belongs to a thread and a new thread inherits its creator's, so a service calls this
    before it starts any. Raising a priority back needs privileges a service lacks: this
    never tries."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if niceness > current:
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
        return niceness
    return current


def run_service(name: ServiceName, *, migrate: bool = False) -> None:
    """Run one service in this process until a signal stops it."""
    return_big_blocks_to_the_system()
    kind = service_kind(name)
    settings = kind.settings()
    niceness = lower_cpu_priority(settings.nice)  # before any thread starts
    setup_logging(name.value, settings.log_level)
    dump_stacks_on_signal()
    if migrate:
        upgrade(settings.database_url)
    db = Database(settings.database_url, pool_size=pool_size_for(settings))
    db.check()
    transport = transport_from_url(settings.transport_url)
    service = kind.build(settings, db, transport)
    LOG.info(
        "starting %s (bus %s, database %s, niceness %d)",
        name.value,
        safe_url(settings.transport_url),
        _safe_db_url(settings.database_url),
        niceness,
    )
    with stop_signals() as stop:  # a signal during start() stops the service once started
        service.start()
        frozen = freeze_startup_objects()
        LOG.info(
            "%s running (%d objects from its start kept out of garbage collection)",
            name.value,
            frozen,
        )
        try:
            wait_for_signal(stop)
        finally:
            service.stop()
            transport.close()
            db.dispose()
            LOG.info("%s stopped", name.value)


def pool_size_for(*services: CommonSettings) -> int:
    """Database connections for a process running these services: one per worker and two
    for periodic jobs and timers (threads beyond wait for a free connection; the pool's
    small overflow covers bursts); the default for a service without workers (the API).
    With the defaults a stack of API, scheduler, netctl and two conductors holds at most
    86 connections, inside PostgreSQL's default max_connections of 100."""
    total = 0
    for settings in services:
        workers = getattr(settings, "workers", None)
        total += DEFAULT_POOL_SIZE if workers is None else int(workers) + 2
    return total


def _safe_db_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)
