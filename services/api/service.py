"""The API process: the FastAPI app served by uvicorn, in a background thread or in the
foreground (``tetsu service api``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, MutableSequence
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as ProcessEvent
from types import FrameType
from typing import Any

import uvicorn

from libs.db import Database
from libs.metrics import MULTIPROCESS_DIR_ENV
from libs.rpc import Transport, transport_from_url

from .app import create_app
from .balance import WorkerShares
from .settings import APISettings

LOG = logging.getLogger(__name__)

#: How long start() waits for uvicorn to serve, and stop() for requests in flight.
START_TIMEOUT = 30.0
GRACEFUL_SHUTDOWN = 30


class APIService:
    """Serves the API on ``settings.host``:``settings.port`` (port 0 picks a free one)."""

    def __init__(self, settings: APISettings, db: Database, transport: Transport) -> None:
        self.settings = settings
        self.app = create_app(settings, db, transport)
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port actually bound (known once started)."""
        if self._socket is None:
            raise RuntimeError("the API service is not started")
        port: int = self._socket.getsockname()[1]
        return port

    @property
    def url(self) -> str:
        host = self.settings.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def _bind(self) -> socket.socket:
        return bind_socket(self.settings)

    def _close_streams(self) -> None:
        close_streams(self.app)

    def _make_server(self) -> uvicorn.Server:
        return make_server(self.app, self.settings)

    def start(self) -> None:
        """Serve in a background thread; return once requests are accepted."""
        if self._thread is not None:
            raise RuntimeError("the API service is already started")
        self._socket = self._bind()
        server = self._server = self._make_server()
        sockets = [self._socket]
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": sockets}, name="api-uvicorn", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the API server did not start (see the log)")
            time.sleep(0.01)
        LOG.info("API serving on %s", self.url)

    def stop(self) -> None:
        """Stop accepting connections, let requests in flight finish, release the port."""
        server, thread = self._server, self._thread
        if server is not None and thread is not None:
            self._close_streams()
            server.should_exit = True
            thread.join(GRACEFUL_SHUTDOWN + 5)
            if thread.is_alive():
                server.force_exit = True
                thread.join(5)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def serve_forever(self) -> None:
        """Serve in this thread until SIGINT or SIGTERM (uvicorn handles both)."""
        if self._thread is not None:
            raise RuntimeError("the API service is already started")
        self._socket = self._bind()
        self._server = self._make_server()
        LOG.info("API serving on %s", self.url)
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self._socket.close()
            self._server = self._socket = None


def bind_socket(settings: APISettings) -> socket.socket:
    """The API's listening socket. Bound here rather than by uvicorn, so a busy port raises
    OSError to the caller (uvicorn would exit the process) and port 0 can be read back at
    once. The protocol is named: asyncio turns Nagle's algorithm off only on sockets whose
    ``proto`` is IPPROTO_TCP, and uvicorn writes an answer's head and body apart, so on a
    socket made with proto 0 every small answer on a kept-alive connection waited ~40 ms
    for the client's delayed ACK (measured: 44 ms per GET, 1 ms with this)."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((settings.host, settings.port))
    except OSError:
        sock.close()
        raise
    return sock


def close_streams(app: Any) -> None:
    """End the app's open event streams, so that stopping does not wait for them."""
    hub = getattr(app.state, "event_hub", None)
    if hub is not None:
        hub.close_streams()


def make_server(app: Any, settings: APISettings) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        lifespan="on",
        access_log=False,  # the middleware logs each request with its request id
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
    )
    return _Server(config, on_exit=lambda: close_streams(app))


#: How often the API's parent process looks for a worker process that died.
WATCH_INTERVAL = 1.0


class APIWorkers:
    """The API served by ``settings.api_workers`` processes on one socket: one Python
    process runs one thread at a time, so one API process uses one CPU at most (measured
    alone on two cores: 47 creations a second at 10 in flight, 73 with two). This process binds the
    port, starts the workers (each with its own database pool and bus connection, as
    ``tetsu service api`` with one worker has), starts a worker again when one dies, and
    stops them all with SIGTERM, which lets their requests in flight finish. The kernel
    hands each new connection to a worker waiting in accept(). Prometheus' counters are
    kept in files shared by the workers, so ``/metrics`` from any of them counts all."""

    def __init__(self, settings: APISettings, db: Database, transport: Transport) -> None:
        # This process serves nothing: the workers make their own database and transport,
        # and it keeps no connection of its own open.
        db.dispose()
        del transport
        self.settings = settings
        self._socket: socket.socket | None = None
        self._workers: list[tuple[BaseProcess, ProcessEvent]] = []
        self._metrics_dir: str | None = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._context = multiprocessing.get_context("spawn")
        # The requests each worker is answering, for the workers to share clients evenly.
        self._request_counts = self._context.RawArray("i", settings.api_workers)
        self._lock = threading.Lock()

    def start(self) -> None:
        if self._socket is not None:
            raise RuntimeError("the API workers are already started")
        self._socket = bind_socket(self.settings)
        self._socket.listen(2048)
        self._metrics_dir = tempfile.mkdtemp(prefix="tetsu-api-metrics-")
        os.environ[MULTIPROCESS_DIR_ENV] = self._metrics_dir  # the workers inherit it
        try:
            with self._lock:
                self._workers = [self._spawn(i) for i in range(self.settings.api_workers)]
            deadline = time.monotonic() + START_TIMEOUT
            for process, ready in list(self._workers):
                while not ready.wait(0.1):
                    if not process.is_alive() or time.monotonic() > deadline:
                        raise RuntimeError("an API worker did not start (see the log)")
        except BaseException:
            self.stop()
            raise
        self._watcher = threading.Thread(target=self._watch, name="api-workers", daemon=True)
        self._watcher.start()
        port = self._socket.getsockname()[1]
        LOG.info(
            "API serving on %s:%d in %d processes", self.settings.host, port, len(self._workers)
        )

    def _spawn(self, index: int) -> tuple[BaseProcess, ProcessEvent]:
        ready = self._context.Event()
        process = self._context.Process(
            target=serve_worker,
            args=(self._socket, ready, self._request_counts, index),
            name=f"tetsu-api-{index + 1}",
            daemon=False,
        )
        process.start()
        return process, ready

    def _watch(self) -> None:
        while not self._stopping.wait(WATCH_INTERVAL):
            with self._lock:
                for i, (process, _) in enumerate(self._workers):
                    # A worker that ended cleanly was asked to by a signal (Ctrl-C in a
                    # terminal reaches every process of the group): this one stops too.
                    if process.is_alive() or process.exitcode == 0 or self._stopping.is_set():
                        continue
                    LOG.error(
                        "API worker %d (pid %s) exited with %s; starting it again",
                        i + 1,
                        process.pid,
                        process.exitcode,
                    )
                    self._workers[i] = self._spawn(i)

    def stop(self) -> None:
        """SIGTERM to every worker (requests in flight finish), then release the port."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(WATCH_INTERVAL + 5)
        with self._lock:
            workers, self._workers = self._workers, []
        for process, _ in workers:
            if process.is_alive():
                process.terminate()
        for process, _ in workers:
            process.join(GRACEFUL_SHUTDOWN + 5)
            if process.is_alive():
                process.kill()
                process.join(5)
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._metrics_dir is not None:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
            os.environ.pop(MULTIPROCESS_DIR_ENV, None)
            self._metrics_dir = None


def serve_worker(
    sock: socket.socket,
    ready: ProcessEvent,
    request_counts: MutableSequence[int],
    index: int,
) -> None:
    """One API worker process (:class:`APIWorkers`): the app on its own database pool and
    bus connection, served on the socket its parent bound, until SIGTERM or SIGINT. It
    keeps to its share of the clients (:mod:`.balance`) with ``request_counts``, shared
    by the workers, slot ``index`` its own."""
    # Imported here: the parent process needs none of it.
    from libs.cli.processes import (  # noqa: PLC0415
        dump_stacks_on_signal,
        freeze_startup_objects,
        pool_size_for,
        return_big_blocks_to_the_system,
    )
    from libs.log import setup_logging  # noqa: PLC0415

    return_big_blocks_to_the_system()
    stop_with_parent()
    settings = APISettings()
    setup_logging("api", settings.log_level)
    dump_stacks_on_signal()
    db = Database(settings.database_url, pool_size=pool_size_for(settings))
    transport = transport_from_url(settings.transport_url)
    try:
        app = create_app(settings, db, transport)
        server = make_server(app, settings)
        if len(request_counts) > 1:
            app.state.worker_shares = WorkerShares(request_counts, index)

        def tell_when_started() -> None:
            while not server.started and not server.should_exit:
                time.sleep(0.01)
            if server.started:
                ready.set()

        threading.Thread(target=tell_when_started, daemon=True).start()
        freeze_startup_objects()
        server.run(sockets=[sock])
    finally:
        transport.close()
        db.dispose()


#: Linux's prctl() option: the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1


def stop_with_parent() -> bool:
    """Have the kernel send this process SIGTERM when its parent dies, even by SIGKILL, so
    that no worker goes on serving the port orphaned; whether it applied (Linux only)."""
    path = ctypes.util.find_library("c")
    try:
        prctl = ctypes.CDLL(path, use_errno=True).prctl if path else None
    except (OSError, AttributeError):
        prctl = None
    return bool(prctl is not None and prctl(PR_SET_PDEATHSIG, signal.SIGTERM) == 0)


def build_api(settings: APISettings, db: Database, transport: Transport) -> APIService | APIWorkers:
    """The API of ``tetsu service api``: served in this process, or by worker processes."""
    if settings.api_workers > 1:
        return APIWorkers(settings, db, transport)
    return APIService(settings, db, transport)


class _Server(uvicorn.Server):
    """uvicorn's server, ending the event streams first when a signal stops it."""

    def __init__(self, config: uvicorn.Config, *, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)
