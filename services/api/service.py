"""The API process: the FastAPI app served by uvicorn, in a background thread or in the
foreground (``tetsu service api``).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from types import FrameType

import uvicorn

from libs.db import Database
from libs.rpc import Transport

from .app import create_app
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
        # Bound here rather than by uvicorn, so a busy port raises OSError to the caller
        # (uvicorn would exit the process) and port 0 can be read back at once. The protocol
        # is named: asyncio turns Nagle's algorithm off only on sockets whose ``proto`` is
        # IPPROTO_TCP, and uvicorn writes an answer's head and body apart, so on a socket
        # made with proto 0 every small answer on a kept-alive connection waited ~40 ms for
        # the client's delayed ACK (measured: 44 ms per GET, 1 ms with this).
        family = socket.AF_INET6 if ":" in self.settings.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.settings.host, self.settings.port))
        except OSError:
            sock.close()
            raise
        return sock

    def _close_streams(self) -> None:
        """End the open event streams, so that stopping does not wait for them."""
        hub = getattr(self.app.state, "event_hub", None)
        if hub is not None:
            hub.close_streams()

    def _make_server(self) -> uvicorn.Server:
        config = uvicorn.Config(
            self.app,
            host=self.settings.host,
            port=self.settings.port,
            log_config=None,
            lifespan="on",
            access_log=False,  # the middleware logs each request with its request id
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
        )
        return _Server(config, on_exit=self._close_streams)

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


class _Server(uvicorn.Server):
    """uvicorn's server, ending the event streams first when a signal stops it."""

    def __init__(self, config: uvicorn.Config, *, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)
